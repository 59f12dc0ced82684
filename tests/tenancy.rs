//! A shared gateway's tenants (SPEC §9.3) through the real stack: a caller
//! may ask to wait less than `max_wait` (`Prefer: wait=N`, RFC 7240), never
//! more, and is told what was applied; a dry run forwards everything and
//! counts what would have waited; with Redis, `max_wait` bounds a queued
//! call's whole wait.

mod support;

use axum::body::Body;
use http::Method;
use support::*;

/// 1 per 400 ms, `max_wait` 30 s. With the slot taken, `Prefer: wait=0`
/// is refused at once (nothing sent), a longer preference is capped at
/// `max_wait` and served; both say what was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_may_ask_to_wait_less_never_more() {
    let up = MockUpstream::start().await;
    let extra = "[[limits]]\nrequests = 1\nper = \"400ms\"\n[admission]\nmax_wait = \"30s\"\n";
    let p = TestProxy::start(&up, extra).await;
    let c = client();
    let first = get(&c, &p.url("/v1/a")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("preference-applied"), None, "nothing asked");
    let now = send(
        &c,
        Method::GET,
        &p.url("/v1/b"),
        &[("prefer", "wait=0")],
        Body::empty(),
    )
    .await;
    assert_eq!(now.status, 429);
    assert_eq!(now.code(), "quota_exhausted");
    assert_eq!(now.header("preference-applied"), Some("wait=0"));
    assert!(now.header("retry-after").is_some());
    assert_eq!(up.count(), 1, "the refused call was not sent");
    let long = send(
        &c,
        Method::GET,
        &p.url("/v1/c"),
        &[("prefer", "respond-async, wait=100")],
        Body::empty(),
    )
    .await;
    assert_eq!(long.status, 200, "queued for the next slot and served");
    assert_eq!(
        long.header("preference-applied"),
        Some("wait=30"),
        "capped at max_wait"
    );
    assert_eq!(up.count(), 2);
}

/// `admission.dry_run`: every call is forwarded at once (the upstream sees
/// them all), and the ones that would have queued are counted exactly
/// (`dry_run_total`); `/quota` and the status page say the quota is unguarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_forwards_everything_and_counts_what_would_have_waited() {
    let up = MockUpstream::start().await;
    let extra =
        "[[limits]]\nrequests = 2\nper = \"1m\"\n[admission]\nmax_wait = \"2m\"\ndry_run = true\n";
    let p = TestProxy::start(&up, extra).await;
    let c = client();
    let metrics_url = p.admin_url("/metrics");
    let metrics =
        || async { String::from_utf8(get(&c, &metrics_url).await.body.to_vec()).unwrap() };
    let before = metrics().await;
    assert!(
        before.contains("dastra_proxy_dry_run_total{client=\"anonymous\",would=\"queue\"} 0"),
        "the series exist from start-up"
    );
    for i in 0..6 {
        assert_eq!(get(&c, &p.url(&format!("/v1/{i}"))).await.status, 200);
    }
    assert_eq!(up.count(), 6, "nothing waited or was refused");
    let after = metrics().await;
    assert!(
        after.contains("dastra_proxy_dry_run_total{client=\"anonymous\",would=\"queue\"} 4"),
        "{after}"
    );
    assert!(after.contains("dastra_proxy_dry_run_total{client=\"anonymous\",would=\"reject\"} 0"));
    let q = get(&c, &p.admin_url("/quota")).await.json();
    assert!(q["degraded"].to_string().contains("dry run"), "{q}");
}

/// With replicas sharing the quota through Redis, `max_wait` bounds the
/// whole wait too, and the overtaken call's Retry-After is Redis's own
/// projection. 1 per 800 ms, `max_wait` 2 s: a light client's call queues
/// to start at 0.8 s; a heavy client's two calls (1000:1) overtake it, at
/// 0.8 and 1.6 s; the light call is refused at 2 s, told to come back when
/// the window next frees (2.4 s), not served late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_an_overtaken_call_is_refused_when_its_max_wait_runs_out() {
    use std::sync::Arc;
    use std::time::Duration;

    use dastra_proxy::admission::{Admission, Caller, Refusal, Remote};
    use dastra_proxy::config::{AdmissionConfig, Limit, OnLimit, StoreOnError, Upstream429};
    use dastra_proxy::store::RedisStore;
    use tokio::time::Instant;

    let redis = RedisServer::start();
    let limits = [Limit {
        requests: 1,
        per: Duration::from_millis(800),
        name: "800ms".into(),
    }];
    let store = RedisStore::new(
        &redis.url(),
        "dp-tenancy",
        "k",
        &limits,
        Duration::ZERO,
        Duration::from_secs(5),
    )
    .unwrap()
    .with_settle(Duration::ZERO);
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_queue: 100,
        max_wait: Duration::from_millis(2000),
        margin: Duration::ZERO,
        upstream_429: Upstream429::Pause,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: std::time::Duration::from_secs(10),
    };
    let remote = Remote::new(
        Arc::new(store),
        StoreOnError::Reject,
        dastra_proxy::metrics::Metrics::new(),
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
        1,
    );
    let a = Admission::with_remote(&limits, &cfg, Some(remote));
    let who = |name: &str, weight| Caller {
        name: name.into(),
        weight,
        wait: None,
        priority: dastra_proxy::admission::NORMAL,
    };
    let t0 = Instant::now();
    a.acquire(&who("heavy", 1000))
        .await
        .unwrap()
        .sent()
        .landed();
    let light = {
        let a = a.clone();
        let c = who("light", 1);
        tokio::spawn(async move { (a.acquire(&c).await.map(|_| ()), Instant::now()) })
    };
    while a.waiting() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let heavy: Vec<_> = (0..2)
        .map(|_| {
            let a = a.clone();
            let c = who("heavy", 1000);
            tokio::spawn(async move {
                let p = a.acquire(&c).await.unwrap();
                let at = Instant::now();
                p.sent().landed();
                at
            })
        })
        .collect();
    let (got, at) = light.await.unwrap();
    let waited = at - t0;
    assert!(
        waited >= Duration::from_millis(2000) && waited < Duration::from_millis(2400),
        "refused when its max_wait ran out, not served late: {waited:?}"
    );
    match got {
        Err(Refusal::QuotaExhausted { retry_at }) => {
            let after = retry_at - t0;
            assert!(
                after >= Duration::from_millis(2300) && after <= Duration::from_millis(2600),
                "Retry-After from Redis's projection: {after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    for h in heavy {
        let sent = h.await.unwrap() - t0;
        assert!(sent < Duration::from_millis(2000), "{sent:?}");
    }
}

/// `Priority: u=7` (RFC 9218 background) lowers a high client's call
/// through the real stack: 1 per 500 ms, the slot taken, then queued in
/// this order a normal call, the high client's call marked `u=7`, and its
/// unmarked call. Dastra sees the unmarked high call first, then the
/// normal one, then the lowered one (without the header the two high calls
/// would go first, in their FIFO order). `u=0` from a normal client raises
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_may_lower_its_priority_never_raise_it() {
    use sha2::{Digest as _, Sha256};
    let up = MockUpstream::start().await;
    let key = |n: &str| format!("{n}-tenancy-client-key-0001");
    let digest = |n: &str| hex::encode(Sha256::digest(key(n).as_bytes()));
    let extra = format!(
        "[[limits]]\nrequests = 1\nper = \"500ms\"\n\
         [admission]\nmax_wait = \"30s\"\naging = \"60s\"\nmargin = \"10ms\"\n\
         [[clients]]\nname = \"form\"\nkey_sha256 = \"{}\"\npriority = \"high\"\n\
         [[clients]]\nname = \"sync\"\nkey_sha256 = \"{}\"\n",
        digest("form"),
        digest("sync")
    );
    let p = TestProxy::start(&up, &extra).await;
    let c = client();
    let call = |who: &'static str, path: &'static str, priority: Option<&'static str>| {
        let (c, url, key) = (c.clone(), p.url(path), key(who));
        tokio::spawn(async move {
            let mut headers = vec![("x-api-key", key.as_str())];
            headers.extend(priority.map(|u| ("priority", u)));
            send(&c, Method::GET, &url, &headers, Body::empty())
                .await
                .status
        })
    };
    assert_eq!(call("sync", "/v1/first", None).await.unwrap(), 200);
    let mut calls = Vec::new();
    for (who, path, u) in [
        ("sync", "/v1/normal", Some("u=0")),
        ("form", "/v1/lowered", Some("u=7")),
        ("form", "/v1/high", None),
    ] {
        calls.push(call(who, path, u));
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let order: Vec<String> = up.log().into_iter().map(|r| r.target).collect();
    assert_eq!(
        order,
        ["/v1/first", "/v1/high", "/v1/normal", "/v1/lowered"]
    );
}
