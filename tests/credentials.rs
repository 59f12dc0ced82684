//! Credential injection end to end: exactly the expected header reaches the
//! mock Dastra, and the caller's own credential never does.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use http::Method;
use support::*;

const API_KEY_SECTION: &str =
    "[credential]\nkind = \"api_key\"\napi_key_env = \"TEST_DASTRA_KEY\"\n";

async fn proxy_with(up: &MockUpstream, credential: &str, extra: &str) -> TestProxy {
    let credential = credential.to_owned();
    TestProxy::start_edit(up, extra, move |s| s.replace(API_KEY_SECTION, &credential)).await
}

fn oauth2_section(up: &MockUpstream) -> String {
    format!(
        "[credential]\nkind = \"oauth2\"\ntoken_url = \"{}/connect/token\"\nscope = \"api1\"\n\
         public_key_env = \"TEST_DASTRA_PUBLIC\"\nprivate_key_env = \"TEST_DASTRA_PRIVATE\"\n",
        up.url()
    )
}

#[tokio::test]
async fn basic_credential_is_injected_and_the_callers_removed() {
    let up = MockUpstream::start().await;
    let section = "[credential]\nkind = \"basic\"\npublic_key_env = \"TEST_DASTRA_PUBLIC\"\nprivate_key_env = \"TEST_DASTRA_PRIVATE\"\n";
    let proxy = proxy_with(&up, section, "").await;
    let r = send(
        &client(),
        Method::GET,
        &proxy.url("/v1/x"),
        &[
            ("authorization", "Bearer caller-token"),
            ("x-api-key", "caller-key"),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    let h = &up.log()[0].headers;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("pub-id:priv-secret")
    );
    assert_eq!(h["authorization"], expected.as_str());
    assert!(
        h.get("x-api-key").is_none(),
        "the caller's key never reaches Dastra"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn passthrough_keeps_the_callers_credential_and_quotas_each_separately() {
    let up = MockUpstream::start().await;
    let extra = "[[limits]]\nrequests = 1\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n";
    let proxy = proxy_with(&up, "[credential]\nkind = \"passthrough\"\n", extra).await;
    let c = client();
    let a = send(
        &c,
        Method::GET,
        &proxy.url("/v1/a"),
        &[("x-api-key", "app-a-key")],
        Body::empty(),
    )
    .await;
    let b = send(
        &c,
        Method::GET,
        &proxy.url("/v1/b"),
        &[("x-api-key", "app-b-key")],
        Body::empty(),
    )
    .await;
    let a2 = send(
        &c,
        Method::GET,
        &proxy.url("/v1/a2"),
        &[("x-api-key", "app-a-key")],
        Body::empty(),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), b.status.as_u16(), a2.status.as_u16()),
        (200, 200, 429),
        "one window per credential"
    );
    assert_eq!(up.log()[0].headers["x-api-key"], "app-a-key");
    assert_eq!(up.log()[1].headers["x-api-key"], "app-b-key");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_fifty_concurrent_first_calls_fetch_one_token() {
    let up = MockUpstream::start().await;
    let proxy = proxy_with(&up, &oauth2_section(&up), "").await;
    let c = client();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let (c, url) = (c.clone(), proxy.url(&format!("/v1/o/{i}")));
            tokio::spawn(async move { get(&c, &url).await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(
        up.state.token_calls.load(Ordering::SeqCst),
        1,
        "single flight"
    );
    for rec in up.log().iter().filter(|r| r.target.starts_with("/v1/o/")) {
        assert_eq!(rec.headers["authorization"], "Bearer tok-1");
    }
    assert!(proxy
        .metrics
        .render()
        .contains("dastra_proxy_token_refresh_total{result=\"ok\"} 1"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn oauth2_token_is_refreshed_shortly_before_expiry() {
    let up = MockUpstream::start().await;
    up.state.token_expires_in.store(1, Ordering::SeqCst);
    let proxy = proxy_with(&up, &oauth2_section(&up), "").await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/a")).await.status, 200);
    assert_eq!(get(&c, &proxy.url("/v1/b")).await.status, 200);
    assert_eq!(
        up.state.token_calls.load(Ordering::SeqCst),
        1,
        "still valid"
    );
    // A 1 s token is due for refresh at half its life.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&c, &proxy.url("/v1/c")).await.status, 200);
    assert_eq!(up.state.token_calls.load(Ordering::SeqCst), 2);
    let last = up.log().into_iter().rfind(|r| r.target == "/v1/c").unwrap();
    assert_eq!(last.headers["authorization"], "Bearer tok-2");
    proxy.shutdown().await;
}

#[tokio::test]
async fn oauth2_a_huge_expires_in_is_capped_not_overflowed() {
    let up = MockUpstream::start().await;
    up.state.token_expires_in.store(u64::MAX, Ordering::SeqCst);
    let proxy = proxy_with(&up, &oauth2_section(&up), "").await;
    let c = client();
    for i in 0..3 {
        assert_eq!(get(&c, &proxy.url(&format!("/v1/h/{i}"))).await.status, 200);
    }
    assert_eq!(
        up.state.token_calls.load(Ordering::SeqCst),
        1,
        "one token, kept (for a day at most)"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn oauth2_upstream_401_refreshes_and_retries_once() {
    let up = MockUpstream::start().await;
    let proxy = proxy_with(&up, &oauth2_section(&up), "").await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/warm")).await.status, 200);
    up.state.revoked.lock().unwrap().insert("tok-1".into());
    let r = send(
        &c,
        Method::POST,
        &proxy.url("/v1/replay"),
        &[("content-type", "application/json")],
        "{\"x\":1}",
    )
    .await;
    assert_eq!(r.status, 200, "retried with a fresh token");
    let tries: Vec<_> = up
        .log()
        .into_iter()
        .filter(|r| r.target == "/v1/replay")
        .collect();
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[0].headers["authorization"], "Bearer tok-1");
    assert_eq!(tries[1].headers["authorization"], "Bearer tok-2");
    assert_eq!(tries[1].body_len, 7, "the body was replayed");
    up.state.revoked.lock().unwrap().insert("tok-2".into());
    up.state.revoked.lock().unwrap().insert("tok-3".into());
    let r = get(&c, &proxy.url("/v1/twice")).await;
    assert_eq!(r.status, 401, "only one retry: the second 401 is passed on");
    let tries: Vec<_> = up
        .log()
        .into_iter()
        .filter(|r| r.target == "/v1/twice")
        .collect();
    assert_eq!(tries.len(), 2, "the bodiless GET was retried once");
    assert_eq!(tries[0].headers["authorization"], "Bearer tok-2");
    assert_eq!(tries[1].headers["authorization"], "Bearer tok-3");
    proxy.shutdown().await;
}

#[tokio::test]
async fn oauth2_a_bodiless_call_meeting_a_revoked_token_is_retried_once() {
    let up = MockUpstream::start().await;
    let proxy = proxy_with(&up, &oauth2_section(&up), "").await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/warm")).await.status, 200);
    up.state.revoked.lock().unwrap().insert("tok-1".into());
    for (method, path) in [(Method::GET, "/v1/get"), (Method::DELETE, "/v1/delete")] {
        let r = send(&c, method, &proxy.url(path), &[], Body::empty()).await;
        assert_eq!(r.status, 200, "{path}: retried with a fresh token");
    }
    let get_tries = up.arrivals("/v1/get").len();
    assert_eq!(get_tries, 2, "one 401, one retry");
    assert_eq!(
        up.arrivals("/v1/delete").len(),
        1,
        "the fresh token works at once"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn oauth2_a_401_to_a_token_fetched_for_this_call_is_not_retried() {
    let up = MockUpstream::start().await;
    up.state.revoked.lock().unwrap().insert("tok-1".into());
    let proxy = proxy_with(&up, &oauth2_section(&up), "").await;
    let r = get(&client(), &proxy.url("/v1/first")).await;
    assert_eq!(r.status, 401, "the token is not the problem: passed on");
    assert_eq!(up.arrivals("/v1/first").len(), 1);
    assert_eq!(up.state.token_calls.load(Ordering::SeqCst), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn failing_token_endpoint_gives_502_and_is_not_hammered() {
    let up = MockUpstream::start().await;
    up.state.token_fail.store(true, Ordering::SeqCst);
    let proxy = proxy_with(&up, &oauth2_section(&up), "").await;
    let c = client();
    for _ in 0..5 {
        let r = get(&c, &proxy.url("/v1/x")).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.code(), "upstream_unreachable");
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OAuth2 token endpoint"));
    }
    assert_eq!(
        up.state.token_calls.load(Ordering::SeqCst),
        1,
        "backoff: one request, not five"
    );
    assert!(
        up.arrivals("/v1/x").is_empty(),
        "no call went upstream without a credential"
    );
    let q = get(&c, &proxy.admin_url("/quota")).await.json();
    assert_eq!(
        q["windows"][0]["used"], 0,
        "calls that could not get a token gave their slots back: {q}"
    );
    proxy.shutdown().await;
}
