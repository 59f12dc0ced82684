//! What a replica's releaser does while nobody and somebody waits on Redis:
//! it sleeps until the instant it has a reason to wake (a slot, a
//! heartbeat, a pause's end), never in a loop, and asks Redis only as often
//! as the heartbeat says. The real binary, a real redis-server; work is
//! judged by the process's own CPU time and Redis's own count of script runs.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::Method;
use support::{
    client, get, hup, scrape, send, wait_metric, BinProxy, MockUpstream, RedisServer, TestClient,
};
use tokio::time::Instant;

/// Calls wait for their slot (up to a minute) unless a test says otherwise.
const QUEUE: &str = "on_limit = \"queue\"\nmax_wait = \"60s\"";

fn config(redis: &RedisServer, limit: u32, on_error: &str, admission: &str) -> String {
    format!(
        "[[limits]]\nrequests = {limit}\nper = \"30s\"\n[admission]\nmargin = \"0s\"\n{admission}\n\
         [store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-wait\"\non_error = \"{on_error}\"\nreplicas = 1\n",
        redis.url()
    )
}

/// One replica (the binary) of `config`, its upstream, its Redis and a client.
struct Replica {
    up: MockUpstream,
    redis: RedisServer,
    proxy: BinProxy,
    c: TestClient,
    _dir: tempfile::TempDir,
}

async fn replica(limit: u32, on_error: &str, admission: &str) -> Replica {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &config(&redis, limit, on_error, admission));
    Replica {
        up,
        redis,
        proxy,
        c: client(),
        _dir: dir,
    }
}

/// CPU time the process has used (user and system), from /proc; the
/// kernel reports it in USER_HZ ticks, 100 a second.
fn cpu(proxy: &BinProxy) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", proxy.pid())).unwrap();
    // Fields after the command's closing parenthesis: state is field 3,
    // utime and stime fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// CPU time used over `span` of wall time. A releaser in a loop spends the
/// whole span on a core; a sleeping one next to nothing.
async fn cpu_over(proxy: &BinProxy, span: Duration) -> Duration {
    let before = cpu(proxy);
    tokio::time::sleep(span).await;
    cpu(proxy) - before
}

/// Failed contacts with Redis so far, all operations together.
async fn store_errors(c: &TestClient, p: &BinProxy) -> f64 {
    scrape(c, p.admin)
        .await
        .lines()
        .filter(|l| l.starts_with("dastra_proxy_store_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const QUIET: Duration = Duration::from_millis(300);

async fn ok(c: &TestClient, p: &BinProxy, path: &str) {
    assert_eq!(get(c, &p.url(path)).await.status, 200, "{path}");
}

/// Spawns a call that will wait in the queue, and returns once it does.
async fn queue_one(
    c: &TestClient,
    p: &BinProxy,
    path: &str,
) -> tokio::task::JoinHandle<support::Reply> {
    let call = {
        let (c, url) = (c.clone(), p.url(path));
        tokio::spawn(async move { get(&c, &url).await })
    };
    // One quota key: the gauge's one sample is its queue.
    wait_metric(c, p.admin, "dastra_proxy_queue_depth", 1.0).await;
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_sends_sleeps_idle_waiting_and_falling_back() {
    let Replica {
        up,
        mut redis,
        proxy,
        c,
        _dir,
    } = replica(3, "local", QUEUE).await;
    for i in 0..3 {
        ok(&c, &proxy, &format!("/v1/sent/{i}")).await;
    }
    // Idle with sends to watch: a heartbeat every 200 ms, nothing between.
    let used = cpu_over(&proxy, Duration::from_millis(1500)).await;
    assert!(used < QUIET, "idle with sends: {used:?} of CPU in 1.5 s");
    // One call waits for a slot 30 s away, Redis up.
    let _waiting = queue_one(&c, &proxy, "/v1/waiting").await;
    let used = cpu_over(&proxy, Duration::from_millis(1500)).await;
    assert!(used < QUIET, "one call queued: {used:?} of CPU in 1.5 s");
    // Redis gone and, after a reload, the window no longer known full: the
    // replica waits in its own share, asking Redis again twice a second.
    redis.stop();
    hup(&c, &proxy, "ok", 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let errors = store_errors(&c, &proxy).await;
    let used = cpu_over(&proxy, Duration::from_millis(1500)).await;
    assert!(
        used < QUIET,
        "queued on the fallback: {used:?} of CPU in 1.5 s"
    );
    let asked = store_errors(&c, &proxy).await - errors;
    assert!(
        (1.0..=12.0).contains(&asked),
        "{asked} failed asks in 1.5 s"
    );
    assert_eq!(up.arrivals("/v1/waiting").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_sleeps_while_redis_is_down() {
    let Replica {
        up: _up,
        mut redis,
        proxy,
        c,
        _dir,
    } = replica(3, "local", QUEUE).await;
    for i in 0..2 {
        ok(&c, &proxy, &format!("/v1/sent/{i}")).await;
    }
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every heartbeat fails: the next is still a heartbeat away.
    let used = cpu_over(&proxy, Duration::from_millis(1500)).await;
    assert!(used < QUIET, "idle, Redis down: {used:?} of CPU in 1.5 s");
}

/// A granted slot wakes the releaser (it starts watching the new send),
/// which asks Redis only when a heartbeat is due: calls cost their own
/// script runs, not one more each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cost_redis_their_own_script_runs_not_a_heartbeat_each() {
    let Replica {
        up: _up,
        redis,
        proxy,
        c,
        _dir,
    } = replica(1000, "local", QUEUE).await;
    ok(&c, &proxy, "/v1/first").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = 40;
    let (runs, t0) = (redis.script_runs(), Instant::now());
    for i in 0..n {
        ok(&c, &proxy, &format!("/v1/call/{i}")).await;
    }
    let heartbeats = (t0.elapsed().as_millis() / 200) as u64 + 2;
    let runs = redis.script_runs() - runs;
    // One run to admit, one to land each call.
    assert!(
        runs <= 2 * n + heartbeats,
        "{runs} script runs for {n} calls in {:?}",
        t0.elapsed()
    );
}

/// Calls queued behind an upstream pause (Dastra's 429): the releaser sleeps
/// until the pause ends, asking Redis nothing, then serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_out_a_pause_asks_redis_nothing_until_it_ends() {
    let Replica {
        up: _up,
        redis,
        proxy,
        c,
        _dir,
    } = replica(100, "local", &format!("{QUEUE}\nupstream_429 = \"pause\"")).await;
    assert_eq!(get(&c, &proxy.url("/retry-after/3")).await.status, 429);
    let paused_at = Instant::now();
    let waiting = queue_one(&c, &proxy, "/v1/after-the-pause").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let runs = redis.script_runs();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = redis.script_runs() - runs;
    assert!(asked <= 1, "{asked} script runs in 1 s of a pause");
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(paused_at.elapsed() >= Duration::from_millis(2500));
}

/// `on_error = "reject"`: a call already waiting when Redis goes is refused
/// (503, `store_unavailable`) once a heartbeat finds Redis gone, not kept
/// waiting on what the replica knew of the window nor admitted from a local
/// share; so is the next call, and `/readyz` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_error_reject_a_waiting_call_is_refused_when_redis_goes() {
    let Replica {
        up,
        mut redis,
        proxy,
        c,
        _dir,
    } = replica(2, "reject", QUEUE).await;
    ok(&c, &proxy, "/v1/a").await;
    ok(&c, &proxy, "/v1/b").await;
    let waiting = queue_one(&c, &proxy, "/v1/waiting").await;
    redis.stop();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting call is answered once Redis is gone")
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "store_unavailable");
    // The window is still known full: that is no answer from Redis.
    let r = get(&c, &proxy.url("/v1/next")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (503, "store_unavailable".into())
    );
    let ready = get(&c, &format!("http://{}/readyz", proxy.admin)).await;
    assert_eq!(ready.status, 503);
    assert_eq!(up.arrivals("/v1/").len(), 2);
    // Redis back (empty, as after a restart): the heartbeat finds it with
    // no call to ask, the replica is ready again, and a call meets Redis'
    // answer — the two sends written back fill the window — not a 503.
    let _redis = RedisServer::start_on(redis.port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&c, &format!("http://{}/readyz", proxy.admin))
        .await
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = proxy.url("/v1/again");
    let r = send(
        &c,
        Method::GET,
        &url,
        &[("prefer", "wait=1")],
        Body::empty(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (429, "quota_exhausted".into())
    );
}

/// Idle, a replica still watches its sends: when Redis loses them (a
/// flush) its next heartbeat writes them back, with no call to ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_writes_back_the_sends_redis_lost() {
    let Replica {
        up: _up,
        redis,
        proxy,
        c,
        _dir,
    } = replica(5, "local", QUEUE).await;
    for i in 0..3 {
        ok(&c, &proxy, &format!("/v1/sent/{i}")).await;
    }
    let held = || redis.cli(&["ZCARD", "{dp-wait:0000000000000000}:sends"]);
    let until = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        let what = what.to_string();
        async move {
            while held() != "3" {
                assert!(Instant::now() < deadline, "{what}: Redis holds {}", held());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until("landed").await;
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    until("written back").await;
}

/// Refused through Redis, at once (`reject`, or a wait past `max_wait`):
/// Retry-After says when the oldest send leaves the 30 s window, never
/// earlier, and the code says the quota, not the shorter pause beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_through_redis_says_when_the_window_frees() {
    let up = MockUpstream::start().await;
    for mode in [
        "on_limit = \"reject\"",
        "on_limit = \"queue\"\nmax_wait = \"5s\"",
    ] {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let admission = format!("{mode}\nupstream_429 = \"pause\"");
        let proxy = BinProxy::start(dir.path(), &up, &config(&redis, 3, "local", &admission));
        let c = client();
        ok(&c, &proxy, "/v1/a").await;
        ok(&c, &proxy, "/v1/b").await;
        // The third send meets Dastra's 429: a 2 s pause, the window full for 30 s.
        assert_eq!(get(&c, &proxy.url("/retry-after/2")).await.status, 429);
        for path in ["/v1/c", "/v1/d"] {
            let r = tokio::time::timeout(Duration::from_secs(3), get(&c, &proxy.url(path)))
                .await
                .unwrap_or_else(|_| panic!("{mode}: {path} was kept waiting"));
            assert_eq!(
                (r.status.as_u16(), r.code()),
                (429, "quota_exhausted".into()),
                "{mode}"
            );
            let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((29..=30).contains(&after), "{mode}: Retry-After {after}");
        }
    }
    assert_eq!(up.arrivals("/v1/c").len() + up.arrivals("/v1/d").len(), 0);
}

/// A full queue refuses (`queue_full`) with when the first slot frees, as
/// memory mode does — not when a call at the back of the queue would start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_when_the_first_slot_frees() {
    let Replica {
        up: _up,
        redis: _redis,
        proxy,
        c,
        _dir,
    } = replica(1, "local", &format!("{QUEUE}\nmax_queue = 1")).await;
    ok(&c, &proxy, "/v1/a").await;
    let _waiting = queue_one(&c, &proxy, "/v1/waiting").await;
    let r = get(&c, &proxy.url("/v1/one-too-many")).await;
    assert_eq!((r.status.as_u16(), r.code()), (429, "queue_full".into()));
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&after), "Retry-After {after}");
}

/// Dastra's 429 met while Redis was down: the pause never reached Redis,
/// and when Redis is back (empty) this replica still holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_redis_never_heard_still_holds_this_replica() {
    let Replica {
        up,
        mut redis,
        proxy,
        c,
        _dir,
    } = replica(
        100,
        "local",
        "on_limit = \"reject\"\nupstream_429 = \"pause\"",
    )
    .await;
    ok(&c, &proxy, "/v1/before").await;
    redis.stop();
    assert_eq!(get(&c, &proxy.url("/retry-after/30")).await.status, 429);
    let _redis = RedisServer::start_on(redis.port);
    // Past the reconnect backoff: the next call's decision goes to Redis.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = get(&c, &proxy.url("/v1/during")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (429, "upstream_throttled".into())
    );
    assert_eq!(up.arrivals("/v1/during").len(), 0);
}

/// `on_error = "reject"`, a replica with no sends of its own (nothing for a
/// heartbeat to watch): refusing while Redis is down, it asks on its own
/// whether Redis is back, and is ready again with no call to find out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_replica_is_ready_again_when_redis_is_back() {
    let Replica {
        up,
        mut redis,
        proxy,
        c,
        _dir,
    } = replica(2, "reject", QUEUE).await;
    let readyz = format!("http://{}/readyz", proxy.admin);
    assert_eq!(get(&c, &readyz).await.status, 200);
    redis.stop();
    let r = get(&c, &proxy.url("/v1/refused")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (503, "store_unavailable".into())
    );
    assert_eq!(get(&c, &readyz).await.status, 503);
    let _redis = RedisServer::start_on(redis.port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&c, &readyz).await.status != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.arrivals("/v1/").len(), 0);
}

/// A replica asks Redis only with a reason: nothing while it has no sends
/// to watch, and a flood against a window it knows full costs one question
/// (`on_error = "reject"` with Redis up, where what it knew counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_asks_redis_only_with_a_reason() {
    let Replica {
        up: _up,
        redis,
        proxy,
        c,
        _dir,
    } = replica(2, "reject", "on_limit = \"reject\"").await;
    let runs = redis.script_runs();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(redis.script_runs() - runs, 0, "asked with nothing to watch");
    ok(&c, &proxy, "/v1/a").await;
    ok(&c, &proxy, "/v1/b").await;
    let (runs, t0) = (redis.script_runs(), Instant::now());
    for i in 0..30 {
        let r = get(&c, &proxy.url(&format!("/v1/flood/{i}"))).await;
        assert_eq!(r.code(), "quota_exhausted");
    }
    let heartbeats = (t0.elapsed().as_millis() / 200) as u64 + 2;
    let asked = redis.script_runs() - runs;
    assert!(
        asked <= 5 + heartbeats,
        "{asked} script runs for 30 refusals"
    );
}

/// `on_error = "local"`, Redis down: the replica holds its share and says
/// so. A refusal answered from what it knew of the window (full) is no word
/// from Redis: `/readyz` goes on saying the store is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_what_the_replica_knew_is_no_word_from_redis() {
    let Replica {
        up: _up,
        mut redis,
        proxy,
        c,
        _dir,
    } = replica(2, "local", "on_limit = \"reject\"").await;
    ok(&c, &proxy, "/v1/a").await;
    ok(&c, &proxy, "/v1/b").await;
    assert_eq!(
        get(&c, &proxy.url("/v1/full")).await.code(),
        "quota_exhausted"
    );
    redis.stop();
    let readyz = format!("http://{}/readyz", proxy.admin);
    let unreachable = |r: &support::Reply| String::from_utf8_lossy(&r.body).contains("unreachable");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !unreachable(&get(&c, &readyz).await) {
        assert!(Instant::now() < deadline, "never noticed Redis gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        let r = get(&c, &proxy.url(&format!("/v1/known/{i}"))).await;
        assert_eq!(r.code(), "quota_exhausted");
        let ready = get(&c, &readyz).await;
        assert!(unreachable(&ready), "after call {i}: {:?}", ready.body);
    }
}
