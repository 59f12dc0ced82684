//! Redis loses nothing silently (SPEC §9.1): a restore from an older dump,
//! the sends key evicted alone, a flush while calls are queued on another
//! replica. Two real replicas (the binary) and a real redis-server; the
//! quota is judged on the mock upstream's own arrival log.

mod support;

use std::time::Duration;

use dastra_proxy::config::Limit;
use dastra_proxy::store::{Decision, RedisStore};
use support::{client, get, BinProxy, MockUpstream, RedisServer, TestClient};
use tokio::time::Instant;

fn config(redis: &RedisServer, limit: u32, admission: &str) -> String {
    format!(
        "[[limits]]\nrequests = {limit}\nper = \"30s\"\n[admission]\nmargin = \"0s\"\n{admission}\n\
         [store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-loss\"\non_error = \"reject\"\nreplicas = 2\n",
        redis.url()
    )
}

/// The most arrivals any 30 s window of the upstream log holds.
fn most_in_30s(up: &MockUpstream) -> usize {
    let mut a = up.arrivals("/v1/");
    a.sort();
    (0..a.len())
        .map(|i| {
            a[i..]
                .iter()
                .take_while(|t| **t - a[i] < Duration::from_secs(30))
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn script_runs(redis: &RedisServer) -> u64 {
    redis.script_runs()
}

/// Two replicas of one config, each in a directory of its own.
fn two(up: &MockUpstream, cfg: &str) -> ([tempfile::TempDir; 2], BinProxy, BinProxy) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = BinProxy::start(dirs[0].path(), up, cfg);
    let b = BinProxy::start(dirs[1].path(), up, cfg);
    (dirs, a, b)
}

async fn ok(c: &TestClient, p: &BinProxy, path: &str) {
    assert_eq!(get(c, &p.url(path)).await.status, 200, "{path}");
}

/// Calls alternating between the replicas, all at once, each given up
/// after `patience` (a queued call that would wait longer).
async fn burst(c: &TestClient, a: &BinProxy, b: &BinProxy, n: usize, patience: Duration) {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url(&format!("/v1/after/{i}"))
            } else {
                b.url(&format!("/v1/after/{i}"))
            };
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::timeout(patience, get(&c, &url))
                    .await
                    .map(|r| r.status)
            })
        })
        .collect();
    for call in calls {
        if let Ok(status) = call.await.unwrap() {
            assert_ne!(status, 200, "admitted on a log Redis had partly lost");
        }
    }
}

/// Until every landing reached Redis (landings are written in the background).
async fn settled(redis: &RedisServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["ZCARD", "{dp-loss:0000000000000000}:sends"]) != n.to_string() {
        assert!(Instant::now() < deadline, "Redis never held the {n} sends");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_an_older_dump_loses_no_send() {
    let up = MockUpstream::start().await;
    let mut redis = RedisServer::start();
    let cfg = config(&redis, 5, "on_limit = \"reject\"");
    let (_dirs, a, b) = two(&up, &cfg);
    let c = client();
    ok(&c, &a, "/v1/a/0").await;
    ok(&c, &a, "/v1/a/1").await;
    settled(&redis, 2).await;
    assert_eq!(redis.cli(&["SAVE"]), "OK");
    for i in 0..3 {
        ok(&c, &b, &format!("/v1/b/{i}")).await;
    }
    settled(&redis, 5).await;
    // Redis comes back with the dump: A's two sends, none of B's three.
    redis.restart_from_dump();
    assert_eq!(
        redis.cli(&["ZCARD", "{dp-loss:0000000000000000}:sends"]),
        "2"
    );
    burst(&c, &a, &b, 8, Duration::from_secs(5)).await;
    assert_eq!(
        most_in_30s(&up),
        5,
        "{} arrivals",
        up.arrivals("/v1/").len()
    );
}

/// A send Redis admits, landed: through a settle if Redis has one on.
async fn admitted(s: &RedisStore) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let id = s.next_id();
        match s.reserve(id, 0, None).await.unwrap() {
            Decision::Admitted => return s.land(id, None).await.unwrap(),
            Decision::Settling(w) => tokio::time::sleep(w).await,
            d => panic!("{d:?}"),
        }
        assert!(Instant::now() < deadline, "never admitted");
    }
}

/// The restore above, with the replica that asks first after it being the
/// one the dump holds whole: its counter and its newest send are both in
/// Redis, so only its new connection tells it Redis may have gone back in
/// time. Its first decision starts a new epoch (a settle, while every
/// replica writes back), never a slot on the two-of-five the dump shows.
/// Two stores of one key, no heartbeat: nobody else asks first.
#[tokio::test]
async fn the_first_decision_over_a_new_connection_starts_a_new_epoch() {
    let mut redis = RedisServer::start();
    let limits = [Limit {
        requests: 5,
        per: Duration::from_secs(30),
        name: "30s".into(),
    }];
    let (a, b) = (
        redis.store("dp-gen", &limits),
        redis.store("dp-gen", &limits),
    );
    admitted(&a).await;
    admitted(&a).await;
    assert_eq!(redis.cli(&["SAVE"]), "OK");
    for _ in 0..3 {
        admitted(&b).await;
    }
    redis.restart_from_dump();
    assert_eq!(redis.cli(&["ZCARD", "{dp-gen:k}:sends"]), "2");
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        let id = a.next_id();
        match a.reserve(id, 0, None).await {
            Ok(d) => break d,
            // The old connection's failure, then the reconnect's backoff.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        assert!(Instant::now() < deadline, "Redis never answered again");
    };
    assert!(
        matches!(first, Decision::Settling(_)),
        "{first:?} on a log Redis had partly lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sends_key_deleted_alone_is_written_back_before_anyone_is_admitted() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let cfg = config(&redis, 5, "on_limit = \"reject\"");
    let (_dirs, a, b) = two(&up, &cfg);
    let c = client();
    for i in 0..3 {
        ok(&c, &a, &format!("/v1/a/{i}")).await;
    }
    ok(&c, &b, "/v1/b/0").await;
    ok(&c, &b, "/v1/b/1").await;
    settled(&redis, 5).await;
    // The epoch stays: only the sends are gone (an eviction of that key).
    assert_eq!(redis.cli(&["DEL", "{dp-loss:0000000000000000}:sends"]), "1");
    burst(&c, &a, &b, 8, Duration::from_secs(5)).await;
    assert_eq!(
        most_in_30s(&up),
        5,
        "{} arrivals",
        up.arrivals("/v1/").len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_while_calls_wait_on_another_replica_loses_no_send() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let cfg = config(&redis, 6, "on_limit = \"queue\"\nmax_wait = \"60s\"");
    let (_dirs, a, b) = two(&up, &cfg);
    let c = client();
    for i in 0..3 {
        ok(&c, &a, &format!("/v1/a/{i}")).await;
        ok(&c, &b, &format!("/v1/b/{i}")).await;
    }
    settled(&redis, 6).await;
    // One call waits on B for a slot 30 s away.
    let queued = {
        let (c, url) = (c.clone(), b.url("/v1/b/queued"));
        tokio::spawn(async move { get(&c, &url).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&get(&c, &format!("http://{}/metrics", b.admin)).await.body)
        .lines()
        .any(|l| l.starts_with("dastra_proxy_queue_depth") && !l.ends_with(" 0"))
    {
        assert!(Instant::now() < deadline, "the call never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Waiting, B asks Redis again within a heartbeat (200 ms), not in a
    // loop: a handful of script runs a second, not thousands.
    let before = script_runs(&redis);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = script_runs(&redis) - before;
    assert!(
        asked <= 20,
        "{asked} script runs in 1 s with one call queued"
    );
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let (c, url) = (c.clone(), a.url(&format!("/v1/after/{i}")));
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(3), get(&c, &url)).await
            })
        })
        .collect();
    for call in calls {
        assert!(
            call.await.unwrap().is_err(),
            "admitted on a log that had lost B's sends"
        );
    }
    queued.abort();
    assert_eq!(
        most_in_30s(&up),
        6,
        "{} arrivals",
        up.arrivals("/v1/").len()
    );
}

/// Redis flushed, then written to again by one replica before another
/// asks: the other's counter check passes (the new counter went past what
/// it had seen) and its newest-send check is off (Redis' clock is set by
/// the test), so only the new epoch — a number no earlier epoch had —
/// tells it to write its sends back. Judged on what Redis holds.
#[tokio::test]
async fn a_flushed_key_comes_back_under_an_epoch_no_replica_knew() {
    let redis = RedisServer::start();
    let limits = [Limit {
        requests: 100,
        per: Duration::from_secs(60),
        name: "1m".into(),
    }];
    let store = || redis.store("dp-epoch", &limits).with_settle(Duration::ZERO);
    let (a, b) = (store(), store());
    let base: u64 = 1_700_000_000_000_000;
    let mut ms = 0;
    let mut send = async |s: &RedisStore| {
        ms += 1;
        let id = s.next_id();
        let d = s.reserve(id, 0, Some(base + ms * 1000)).await.unwrap();
        assert_eq!(d, Decision::Admitted);
        s.land(id, Some(base + ms * 1000)).await.unwrap();
    };
    send(&b).await;
    for _ in 0..5 {
        send(&a).await;
    }
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    for _ in 0..5 {
        send(&a).await;
    }
    assert_eq!(
        redis.cli(&["ZCARD", "{dp-epoch:k}:sends"]),
        "10",
        "A wrote back"
    );
    send(&b).await;
    assert_eq!(
        redis.cli(&["ZCARD", "{dp-epoch:k}:sends"]),
        "12",
        "B's send before the flush was not written back"
    );
}
