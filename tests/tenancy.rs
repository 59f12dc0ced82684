//! A shared gateway's tenants (SPEC §9.3) through the real stack: a caller
//! may ask to wait less than `max_wait` (`Prefer: wait=N`, RFC 7240), never
//! more, and is told what was applied.

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
