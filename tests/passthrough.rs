//! Passthrough keys are credentials, not spellings (SPEC §9.1): one
//! credential is one quota however it is written, two credentials in one
//! call are refused, and junk keys cannot lock real ones out. Judged on the
//! mock upstream's own arrivals.

mod support;

use axum::body::Body;
use http::{Method, StatusCode};
use support::*;

const FIVE_PER_20S: &str =
    "[[limits]]\nrequests = 5\nper = \"20s\"\n[admission]\non_limit = \"reject\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_spellings_of_one_bearer_token_share_one_quota() {
    let up = MockUpstream::start().await;
    let proxy = passthrough(&up, "", FIVE_PER_20S).await;
    let c = client();
    let spellings = ["Bearer T", "bearer T", "BEARER T", "Bearer  T"];
    let mut ok = 0;
    for i in 0..20 {
        let auth = spellings[i % 4];
        let r = send(
            &c,
            Method::GET,
            &proxy.url("/v1/x"),
            &[("authorization", auth)],
            Body::empty(),
        )
        .await;
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(r.code(), "quota_exhausted"),
            s => panic!("{s}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(
        up.arrivals("/v1/x").len(),
        5,
        "one token, one window at Dastra"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_two_credentials_is_refused_and_sends_nothing() {
    let up = MockUpstream::start().await;
    let proxy = passthrough(&up, "", FIVE_PER_20S).await;
    let c = client();
    let both = [("x-api-key", "junk"), ("authorization", "Bearer T")];
    for _ in 0..10 {
        let r = send(&c, Method::GET, &proxy.url("/v1/x"), &both, Body::empty()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "ambiguous_credential");
    }
    assert_eq!(up.count(), 0);
    // The real credential alone still has its whole window.
    for _ in 0..5 {
        let r = send(
            &c,
            Method::GET,
            &proxy.url("/v1/x"),
            &both[1..],
            Body::empty(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_keys_cannot_lock_a_real_one_out() {
    let up = MockUpstream::start().await;
    let proxy = passthrough(&up, "max_keys = 10\n", FIVE_PER_20S).await;
    let c = client();
    // Ten junk keys, one call each: Dastra answers 401 (the mock, told so).
    for i in 0..10 {
        let key = format!("junk-{i}");
        let h = [("x-api-key", key.as_str()), ("x-mock-status", "401")];
        let r = send(&c, Method::GET, &proxy.url("/v1/junk"), &h, Body::empty()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Every slot of the map is taken by a rejected key: the real one gets in.
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/v1/real"),
        &[("x-api-key", "real")],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.code());
    // A key Dastra accepted is not evicted for the next junk key.
    for i in 10..20 {
        let key = format!("junk-{i}");
        let h = [("x-api-key", key.as_str()), ("x-mock-status", "401")];
        send(&c, Method::GET, &proxy.url("/v1/junk"), &h, Body::empty()).await;
    }
    for _ in 0..4 {
        let r = send(
            &c,
            Method::GET,
            &proxy.url("/v1/real"),
            &[("x-api-key", "real")],
            Body::empty(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/v1/real"),
        &[("x-api-key", "real")],
        Body::empty(),
    )
    .await;
    assert_eq!(r.code(), "quota_exhausted", "its five sends were kept");
    assert_eq!(up.arrivals("/v1/real").len(), 5);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_fill_the_key_map() {
    let up = MockUpstream::start().await;
    let extra = format!("{FIVE_PER_20S}[access]\nallow = [\"127.0.0.0/8\"]\n");
    let proxy = passthrough(&up, "max_keys = 10\nmax_keys_per_ip = 3\n", &extra).await;
    let churner = client_from("127.0.0.1");
    for i in 0..6 {
        let key = format!("churn-{i}");
        let r = send(
            &churner,
            Method::GET,
            &proxy.url("/v1/c"),
            &[("x-api-key", key.as_str())],
            Body::empty(),
        )
        .await;
        if i < 3 {
            assert_eq!(r.status, StatusCode::OK);
        } else {
            assert_eq!(r.code(), "too_many_keys");
        }
    }
    let other = client_from("127.0.0.2");
    let r = send(
        &other,
        Method::GET,
        &proxy.url("/v1/c"),
        &[("x-api-key", "theirs")],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "another address still has room");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_refused_and_never_forwarded() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let r = send(
        &client(),
        Method::TRACE,
        &proxy.url("/v1/x"),
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "method_not_allowed");
    assert!(r.header("allow").unwrap().contains("GET"));
    assert_eq!(up.count(), 0);
    proxy.shutdown().await;
}

/// A 403 comes from a real key without the right to one resource: Dastra
/// counts its sends, so it is never forgotten to make room for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_answered_403_keeps_its_window() {
    let up = MockUpstream::start().await;
    let proxy = passthrough(&up, "max_keys = 1\n", FIVE_PER_20S).await;
    let c = client();
    let h = [("x-api-key", "real-but-limited"), ("x-mock-status", "403")];
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/v1/forbidden"),
        &h,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/v1/x"),
        &[("x-api-key", "other")],
        Body::empty(),
    )
    .await;
    assert_eq!(r.code(), "too_many_keys", "the 403 key's send still counts");
    proxy.shutdown().await;
}

/// A key Dastra paused (429, Retry-After 3 s) is not forgotten once its
/// sends have left the window: forgotten, its next call would go out
/// during the pause. A new key meanwhile waits for the pause, so says its
/// Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_key_is_kept_after_its_window_empties() {
    let up = MockUpstream::start().await;
    let limits = "[[limits]]\nrequests = 5\nper = \"500ms\"\n[admission]\non_limit = \"reject\"\nupstream_429 = \"pause\"\n";
    let proxy = passthrough(&up, "max_keys = 1\n", limits).await;
    let c = client();
    let key = [("x-api-key", "paused")];
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/retry-after/3"),
        &key,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let other = [("x-api-key", "other")];
    let r = send(&c, Method::GET, &proxy.url("/v1/x"), &other, Body::empty()).await;
    assert_eq!(r.code(), "too_many_keys", "the paused key was forgotten");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(after >= 1, "Retry-After {after}: the pause holds 2 s more");
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/v1/during"),
        &key,
        Body::empty(),
    )
    .await;
    assert_eq!(r.code(), "upstream_throttled");
    assert_eq!(up.arrivals("/v1/").len(), 0);
    proxy.shutdown().await;
}
