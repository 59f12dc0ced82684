//! A flood against a Redis-mode replica costs Redis next to nothing: once
//! Redis said "no slot before T", refusals before T are answered locally, and
//! the first call at T asks again. A refund elsewhere leaves a replica only
//! conservative; its own refund, a reload, a pause or a lost key make it ask.
//! A real redis-server; the store's own clock (tokio's) is paused once the
//! window is full, so "before T" and "at T" are exact instants.

mod support;

use std::time::Duration;

use dastra_proxy::config::Limit;
use dastra_proxy::store::{Decision, RedisStore};
use support::*;
use tokio::time::Instant;

const SPAN: Duration = Duration::from_secs(60);

fn store(redis: &RedisServer) -> RedisStore {
    let limits = [Limit {
        requests: 3,
        per: SPAN,
        name: "1m".into(),
    }];
    redis.store("dp-flood", &limits).with_settle(Duration::ZERO)
}

async fn reserve(s: &RedisStore) -> (u64, Decision) {
    let id = s.next_id();
    (id, s.reserve(id, 0, None).await.unwrap())
}

/// Fills the window with three landed sends; the fourth call is refused.
async fn full(s: &RedisStore) -> Duration {
    for _ in 0..3 {
        let (id, d) = reserve(s).await;
        assert_eq!(d, Decision::Admitted);
        s.land(id, None).await.unwrap();
    }
    match reserve(s).await.1 {
        Decision::Wait(w) => w,
        d => panic!("a full window admitted: {d:?}"),
    }
}

#[tokio::test]
async fn refusals_before_t_ask_nothing_and_the_first_call_at_t_asks_again() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let w = full(&s).await;
    assert!(w > SPAN - Duration::from_secs(5) && w <= SPAN, "{w:?}");
    tokio::time::pause();
    let t = match reserve(&s).await.1 {
        Decision::Wait(left) => Instant::now() + left,
        d => panic!("{d:?}"),
    };
    assert!(t >= Instant::now() + w - Duration::from_millis(50));
    let (runs, cmds) = (redis.script_runs(), redis.commands_processed());
    for i in 0..1000u64 {
        let now = Instant::now();
        let (_, d) = reserve(&s).await;
        assert_eq!(d, Decision::Wait(t - now), "never early: refusal {i}");
        assert_eq!(s.project(0).await.unwrap(), Decision::Wait(t - now));
        tokio::time::advance((t - now - Duration::from_millis(1)) / 1000).await;
    }
    assert_eq!(redis.script_runs(), runs, "a refusal before T asked Redis");
    // The two INFO commands themselves are the only ones counted since.
    assert!(redis.commands_processed() - cmds <= 2);
    tokio::time::advance(t - Instant::now()).await;
    tokio::time::resume();
    assert!(matches!(reserve(&s).await.1, Decision::Wait(_)));
    assert_eq!(redis.script_runs(), runs + 1, "at T the replica asks again");
}

#[tokio::test]
async fn a_refund_elsewhere_leaves_it_conservative_until_it_forgets() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis), store(&redis));
    for _ in 0..2 {
        let (id, d) = reserve(&a).await;
        assert_eq!(d, Decision::Admitted);
        a.land(id, None).await.unwrap();
    }
    let (held, d) = reserve(&b).await;
    assert_eq!(d, Decision::Admitted, "B holds the third slot, in flight");
    assert!(matches!(reserve(&a).await.1, Decision::Wait(_)));
    b.release(held, None).await.unwrap();
    let runs = redis.script_runs();
    assert!(
        matches!(reserve(&a).await.1, Decision::Wait(_)),
        "A does not know of B's refund: conservative, never early"
    );
    assert_eq!(redis.script_runs(), runs);
    a.reconfigure(
        &[Limit {
            requests: 3,
            per: SPAN,
            name: "1m".into(),
        }],
        Duration::ZERO,
    );
    assert_eq!(
        reserve(&a).await.1,
        Decision::Admitted,
        "a reload makes it ask, and the refunded slot is taken"
    );

    // Its own refund makes it ask at once.
    let redis = RedisServer::start();
    let s = store(&redis);
    for _ in 0..2 {
        let (id, _) = reserve(&s).await;
        s.land(id, None).await.unwrap();
    }
    let (inflight, d) = reserve(&s).await;
    assert_eq!(d, Decision::Admitted);
    assert!(matches!(reserve(&s).await.1, Decision::Wait(_)));
    s.release(inflight, None).await.unwrap();
    assert_eq!(reserve(&s).await.1, Decision::Admitted);
}

#[tokio::test]
async fn a_pause_or_a_lost_key_makes_it_ask_again() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let w = full(&s).await;
    s.pause(SPAN * 2).await.unwrap();
    let runs = redis.script_runs();
    match reserve(&s).await.1 {
        Decision::Wait(p) => assert!(p > w + Duration::from_secs(30), "{p:?} ignores the pause"),
        d => panic!("{d:?}"),
    }
    assert_eq!(redis.script_runs(), runs + 1, "after a pause it asked");

    let redis = RedisServer::start();
    let s = store(&redis);
    full(&s).await;
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    // The heartbeat's question finds the key lost and writes the sends back.
    s.check().await.unwrap();
    let runs = redis.script_runs();
    assert!(matches!(reserve(&s).await.1, Decision::Wait(_)));
    assert_eq!(redis.script_runs(), runs + 1, "after a lost key it asked");
}

fn fleet_config(redis: &RedisServer, admission: &str) -> String {
    format!(
        "[[limits]]\nrequests = 5\nper = \"30s\"\n[admission]\nmargin = \"0s\"\n{admission}\n\
         [store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-fleet\"\nreplicas = 4\n",
        redis.url()
    )
}

/// Floods four real replicas with `n` calls, 32 at a time; the replies.
async fn flood(c: &TestClient, fleet: &[BinProxy], n: usize) -> Vec<Reply> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let calls = chunk
            .iter()
            .map(|i| {
                (
                    fleet[i % fleet.len()].url(&format!("/v1/flood/{i}")),
                    vec![],
                )
            })
            .collect();
        out.extend(gets_together(c, calls).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_flooded_send_nothing_extra_and_keep_redis_quiet() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let cfg = fleet_config(&redis, "on_limit = \"reject\"");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let fleet: Vec<BinProxy> = dirs
        .iter()
        .map(|d| BinProxy::start(d.path(), &up, &cfg))
        .collect();
    let c = client();
    // Only the first replica sends, so only it asks Redis now and then
    // whether Redis lost its sends (the heartbeat, every 200 ms).
    for i in 0..5 {
        let r = get(&c, &fleet[0].url(&format!("/v1/fill/{i}"))).await;
        assert_eq!(r.status, 200);
    }
    let (cmds, runs, began) = (
        redis.commands_processed(),
        redis.script_runs(),
        Instant::now(),
    );
    let replies = flood(&c, &fleet, 2000).await;
    let elapsed = began.elapsed();
    let (cmds, runs) = (
        redis.commands_processed() - cmds,
        redis.script_runs() - runs,
    );
    for r in &replies {
        assert_eq!(r.status, 429, "{:?}", r.body);
        assert_eq!(r.code(), "quota_exhausted");
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&after), "Retry-After {after}");
        assert!(
            r.header("ratelimit").unwrap().contains(";r=0;"),
            "{:?}",
            r.header("ratelimit")
        );
    }
    assert_eq!(
        up.arrivals("/v1/").len(),
        5,
        "the window holds 5 in any 30 s"
    );
    // Each replica learns T once (a replica new to the key first learns its
    // epoch: three runs); then only the first replica's heartbeat asks.
    let heartbeats = (elapsed.as_millis() / 200) as u64 + 2;
    assert!(
        runs <= 3 * 4 + heartbeats,
        "{runs} script runs for {} refusals in {elapsed:?}",
        replies.len()
    );
    assert!(
        cmds <= 4 * 3 * 20 + heartbeats * 12 + 2,
        "{cmds} Redis commands for {} refusals in {elapsed:?}",
        replies.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_locally_too() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let cfg = fleet_config(
        &redis,
        "on_limit = \"queue\"\nmax_queue = 2\nmax_wait = \"60s\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let p = BinProxy::start(dir.path(), &up, &cfg);
    let c = client();
    for i in 0..5 {
        assert_eq!(get(&c, &p.url(&format!("/v1/fill/{i}"))).await.status, 200);
    }
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let (c, url) = (c.clone(), p.url(&format!("/v1/queued/{i}")));
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = get(&c, &format!("http://{}/metrics", p.admin)).await;
        let depth = String::from_utf8_lossy(&m.body)
            .lines()
            .any(|l| l.starts_with("dastra_proxy_queue_depth") && l.ends_with(" 2"));
        if depth {
            break;
        }
        assert!(Instant::now() < deadline, "the calls never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (runs, began) = (redis.script_runs(), Instant::now());
    let replies = flood(&c, std::slice::from_ref(&p), 500).await;
    let runs = redis.script_runs() - runs;
    for r in &replies {
        assert_eq!(r.status, 429);
        assert_eq!(r.code(), "queue_full");
    }
    let heartbeats = (began.elapsed().as_millis() / 200) as u64 + 2;
    assert!(
        runs <= 1 + heartbeats,
        "{runs} script runs for 500 refusals"
    );
    for w in waiting {
        w.abort();
    }
    assert_eq!(up.arrivals("/v1/").len(), 5);
}

/// Dastra's "none left until T" read by one replica holds every replica:
/// with Redis it becomes the shared pause (a partial cap stays local).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dastras_none_left_pauses_every_replica() {
    use dastra_proxy::admission::{Admission, Remote};
    use dastra_proxy::config::{AdmissionConfig, OnLimit, StoreOnError, Upstream429};
    let redis = RedisServer::start();
    let limits = [Limit {
        requests: 3,
        per: SPAN,
        name: "1m".into(),
    }];
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Reject,
        max_queue: 10,
        max_wait: Duration::from_secs(30),
        margin: Duration::ZERO,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: std::time::Duration::from_secs(10),
        upstream_429: Upstream429::Pause,
    };
    let remote = Remote::new(
        std::sync::Arc::new(store(&redis)),
        StoreOnError::Reject,
        dastra_proxy::metrics::Metrics::new(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        2,
    );
    let a = Admission::with_remote(&limits, &cfg, Some(remote));
    a.adapt(0, Instant::now() + Duration::from_secs(20));
    // The pause goes to Redis in the background.
    let other = store(&redis);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (id, d) = reserve(&other).await;
        match d {
            Decision::Wait(w) => {
                assert!(
                    w > Duration::from_secs(15) && w <= Duration::from_secs(20),
                    "{w:?}: not the pause"
                );
                break;
            }
            _ => {
                // Admitted before the pause reached Redis: give it back.
                other.release(id, None).await.unwrap();
                assert!(
                    Instant::now() < deadline,
                    "the other replica was never paused"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A call queued with time to spare whose `max_wait` then runs out behind
/// Dastra's pause (a 429 heard while it waited) is refused as the pause's:
/// `upstream_throttled`, Retry-After the pause's end, not the quota's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_overtaken_by_a_pause_is_refused_as_the_pauses() {
    overtaken_by_a_pause(false).await;
}

/// The same with the 429 heard by another replica: the pause reaches this
/// one only through Redis' reply, and is weighed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_overtaken_by_another_replicas_pause_is_refused_as_the_pauses() {
    overtaken_by_a_pause(true).await;
}

async fn overtaken_by_a_pause(heard_elsewhere: bool) {
    use dastra_proxy::admission::{Admission, Caller, Refusal, Remote, NORMAL};
    use dastra_proxy::config::{AdmissionConfig, OnLimit, StoreOnError, Upstream429};
    let redis = RedisServer::start();
    let limits = [Limit {
        requests: 1,
        per: Duration::from_secs(2),
        name: "2s".into(),
    }];
    let store = || redis.store("dp-overtaken", &limits);
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_queue: 10,
        max_wait: Duration::from_secs(3),
        margin: Duration::ZERO,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: Duration::from_secs(10),
        upstream_429: Upstream429::Pause,
    };
    let remote = Remote::new(
        std::sync::Arc::new(store()),
        StoreOnError::Reject,
        dastra_proxy::metrics::Metrics::new(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        2,
    );
    let a = Admission::with_remote(&limits, &cfg, Some(remote));
    let caller = Caller {
        name: "app".into(),
        weight: 1,
        wait: None,
        priority: NORMAL,
    };
    a.acquire(&caller).await.unwrap().sent().landed();
    // Its slot 2 s away, within max_wait: it waits.
    let waiting = {
        let (a, caller) = (a.clone(), caller.clone());
        tokio::spawn(async move { a.acquire(&caller).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let until = Instant::now() + Duration::from_secs(20);
    if heard_elsewhere {
        store().pause(Duration::from_secs(20)).await.unwrap();
    } else {
        a.pause_until(until);
    }
    match waiting.await.unwrap() {
        Err(Refusal::UpstreamThrottled { retry_at }) => {
            assert!(retry_at + Duration::from_millis(50) >= until, "early")
        }
        other => panic!("{:?}", other.map(drop)),
    }
}
