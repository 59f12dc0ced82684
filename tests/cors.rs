//! Browser callers (SPEC §9.4) through the real stack: a CORS preflight is
//! answered by the proxy — no key, no quota, nothing sent to Dastra — with
//! the grant only for an allowed origin; an allowed origin's answers,
//! refusals included, expose the RateLimit fields and the other headers a
//! browser app must read; other origins get no CORS headers at all.

mod support;

use axum::body::Body;
use http::Method;
use support::*;

const KEY: &str = "browser-app-client-key-AAAAAAAAAAAAAAAAAAAAAA";
const ORIGIN: &str = "https://app.example.com";

async fn proxy(up: &MockUpstream) -> TestProxy {
    let extra = format!(
        "[cors]\nallow_origins = [\"https://App.example.com\"]\n\
         [[clients]]\nname = \"web\"\nkey_sha256 = \"{}\"\n",
        dastra_proxy::access::hash_key(KEY)
    );
    TestProxy::start(up, &extra).await
}

async fn preflight(c: &TestClient, url: &str, origin: &str) -> Reply {
    let h = [
        ("origin", origin),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "x-api-key, content-type"),
    ];
    send(c, Method::OPTIONS, url, &h, Body::empty()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_is_answered_here_without_a_key_or_a_slot() {
    let up = MockUpstream::start().await;
    let p = proxy(&up).await;
    let c = client();
    let url = p.url("/v1/ws/1/Actors");
    let r = preflight(&c, &url, ORIGIN).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("x-api-key, content-type")
    );
    assert!(r.header("access-control-max-age").is_some());
    // Another origin: answered too (a preflight is never Dastra's), no grant.
    let other = preflight(&c, &url, "https://evil.example.net").await;
    assert_eq!(other.status, 204);
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(other.header("access-control-allow-methods"), None);
    assert_eq!(up.count(), 0, "no preflight reached Dastra");
    assert_eq!(window_used(&c, &p).await, 0, "nor took a slot");
    // A plain OPTIONS (no Origin) is still a call like any, keyed.
    let plain = send(&c, Method::OPTIONS, &url, &[], Body::empty()).await;
    assert_eq!(plain.code(), "unauthenticated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_can_read_the_answer_and_its_refusals() {
    let up = MockUpstream::start().await;
    let p = proxy(&up).await;
    let c = client();
    let url = p.url("/v1/ws/1/Actors");
    let ok = send(
        &c,
        Method::GET,
        &url,
        &[("origin", ORIGIN), ("x-api-key", KEY)],
        Body::empty(),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some(ORIGIN));
    let exposed = ok.header("access-control-expose-headers").unwrap();
    for h in [
        "RateLimit",
        "RateLimit-Policy",
        "Retry-After",
        "Cache-Status",
        "X-Request-Id",
    ] {
        assert!(exposed.contains(h), "{h} in {exposed}");
    }
    assert!(ok.headers.get_all("vary").iter().any(|v| v == "Origin"));
    // A refusal (no key) is readable by the app too: it can show why.
    let refused = send(&c, Method::GET, &url, &[("origin", ORIGIN)], Body::empty()).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("access-control-allow-origin"), Some(ORIGIN));
    // Another origin gets no CORS header, on an answer or a refusal.
    for key in [Some(KEY), None] {
        let mut h = vec![("origin", "https://evil.example.net")];
        h.extend(key.map(|k| ("x-api-key", k)));
        let r = send(&c, Method::GET, &url, &h, Body::empty()).await;
        assert_eq!(r.header("access-control-allow-origin"), None);
        assert_eq!(r.header("access-control-expose-headers"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_address_off_the_allow_list_is_refused() {
    let up = MockUpstream::start().await;
    let extra = "[cors]\nallow_origins = [\"https://app.example.com\"]\n[access]\nallow = [\"10.0.0.0/8\"]\n";
    let p = TestProxy::start(&up, extra).await;
    let r = preflight(&client(), &p.url("/v1/x"), ORIGIN).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "ip_not_allowed");
}
