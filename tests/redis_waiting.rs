//! What a replica's releaser does while nobody and somebody waits on Redis:
//! it sleeps until the instant it has a reason to wake (a slot, a
//! heartbeat, a pause's end), never in a loop, and asks Redis only as often
//! as the heartbeat says. The real binary, a real redis-server; work is
//! judged by the process's own CPU time and Redis's own count of script runs.

mod support;

use std::time::Duration;

use support::replica::*;
use support::{client, get, hup, BinProxy, MockUpstream, RedisServer};
use tokio::time::Instant;

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
