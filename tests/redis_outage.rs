//! A Redis-mode replica while Redis is down and when it comes back: idle,
//! it sleeps; with `on_error = "reject"` a call already waiting is refused;
//! `/readyz` says Redis is unreachable until Redis itself answers, and
//! ready again without a call. The real binary, a real redis-server.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::Method;
use support::replica::*;
use support::{get, send, RedisServer};
use tokio::time::Instant;

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
