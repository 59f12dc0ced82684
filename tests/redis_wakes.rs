//! What a Redis-mode replica does at once, not at its next heartbeat: a
//! slot given back through Redis goes to the call waiting for it, and the
//! first reply after an outage marks Redis reachable; and what it does only
//! once a heartbeat however many calls come: ask whether Redis is back.
//! The store's heartbeat is set longer than each test's patience, so only
//! the prompt path can pass. The real admission over a real redis-server,
//! in process.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dastra_proxy::admission::{Admission, Caller, Refusal, Remote, NORMAL};
use dastra_proxy::config::{AdmissionConfig, Limit, OnLimit, StoreOnError, Upstream429};
use dastra_proxy::metrics::Metrics;
use support::RedisServer;
use tokio::time::Instant;

/// Longer than any test here waits: a heartbeat never stands in for a wake.
const HEARTBEAT: Duration = Duration::from_secs(120);
const PATIENCE: Duration = Duration::from_secs(10);

fn admission(
    redis: &RedisServer,
    requests: u32,
    on_error: StoreOnError,
) -> (Admission, Arc<AtomicBool>, Metrics) {
    let limits = [Limit {
        requests,
        per: Duration::from_secs(60),
        name: "1m".into(),
    }];
    let store = redis
        .store("dp-wakes", &limits)
        .with_settle(Duration::ZERO)
        .with_heartbeat(HEARTBEAT);
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_queue: 10,
        max_wait: Duration::from_secs(300),
        margin: Duration::ZERO,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: Duration::from_secs(10),
        upstream_429: Upstream429::Pause,
    };
    let healthy = Arc::new(AtomicBool::new(true));
    let metrics = Metrics::new();
    let remote = Remote::new(
        Arc::new(store),
        on_error,
        metrics.clone(),
        healthy.clone(),
        1,
    );
    (
        Admission::with_remote(&limits, &cfg, Some(remote)),
        healthy,
        metrics,
    )
}

fn caller() -> Caller {
    Caller {
        name: "app".into(),
        weight: 1,
        wait: None,
        priority: NORMAL,
    }
}

/// A call that never reached Dastra gives its slot back; the call queued
/// behind the full window gets it as soon as Redis has it back, not when
/// the window would have freed it (a minute) or the heartbeat looks (two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_given_back_through_redis_goes_to_the_waiting_call_at_once() {
    let redis = RedisServer::start();
    let (a, _, _) = admission(&redis, 1, StoreOnError::Reject);
    let sent = a.acquire(&caller()).await.unwrap().sent();
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.acquire(&caller()).await.map(drop) })
    };
    let deadline = Instant::now() + PATIENCE;
    while a.waiting() == 0 {
        assert!(Instant::now() < deadline, "the second call never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sent.refund();
    match tokio::time::timeout(PATIENCE, waiter).await {
        Ok(r) => r.unwrap().unwrap(),
        Err(_) => panic!("the waiting call never got the slot given back"),
    }
}

/// `on_error = "reject"`: refused while Redis is down; the first call Redis
/// answers after it is back marks it reachable (`/readyz` follows this
/// flag) — without waiting for the heartbeat to find out. A current-thread
/// runtime: nothing else runs between the call's answer and the check.
#[tokio::test]
async fn the_first_reply_after_an_outage_marks_redis_reachable() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (a, healthy, _) = admission(&redis, 10, StoreOnError::Reject);
    a.acquire(&caller()).await.unwrap().sent().landed();
    redis.stop();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match a.acquire(&caller()).await {
            Err(Refusal::StoreUnavailable) => break,
            Ok(p) => drop(p),
            Err(e) => panic!("{e:?}"),
        }
        assert!(Instant::now() < deadline, "never refused with Redis down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!healthy.load(Ordering::Relaxed), "down, yet reachable");
    let _back = RedisServer::start_on(port);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match a.acquire(&caller()).await {
            Ok(_) => break,
            Err(Refusal::StoreUnavailable) => {}
            Err(e) => panic!("{e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "never admitted once Redis was back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        healthy.load(Ordering::Relaxed),
        "Redis answered the call, yet this replica still says it is unreachable"
    );
}

/// Redis down, `on_error = "reject"`, no sends to watch: each refused call
/// wakes the releaser (so that an idle one starts asking whether Redis is
/// back), yet Redis is asked once a heartbeat, not once a call — a flood
/// during an outage neither hammers the link nor inflates
/// `store_errors_total{op="check"}`.
#[tokio::test]
async fn refusals_during_an_outage_ask_once_a_heartbeat_not_once_a_call() {
    let mut redis = RedisServer::start();
    let (a, healthy, metrics) = admission(&redis, 10, StoreOnError::Reject);
    redis.stop();
    for _ in 0..50 {
        match a.acquire(&caller()).await {
            Err(Refusal::StoreUnavailable) => {}
            other => panic!("{:?}", other.map(drop)),
        }
        // The releaser runs between refusals.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!healthy.load(Ordering::Relaxed));
    let checks = metrics
        .store_errors_total
        .with_label_values(&["check"])
        .get();
    assert_eq!(checks, 1, "{checks} heartbeats for 50 refused calls");
}
