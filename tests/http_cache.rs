//! The cache as an HTTP cache (SPEC §9.6, RFC 9111), through the real stack
//! over TLS: Dastra's freshness, revalidation, `Age`, the caller's
//! directives, `Vary` variants, invalidation, stale-while-revalidate. The
//! mock answers with the headers each request's `x-mock-answer` lists, and
//! `304` to an `If-None-Match` of the listed `etag`; its body is the
//! request's number at the mock, so a body says which call it came from.

mod support;

use std::time::Duration;

use http::Method;
use support::*;

const RULES: &str = "[cache]\n[[cache.rules]]\npath = \"/v1/ws/*/*\"\nttl = \"1h\"\n\
                     [[cache.rules]]\npath = \"/v1/ws/*/*/*\"\nttl = \"1h\"\n";

/// A GET whose answer, if it reaches the mock, carries `answer`'s headers.
async fn fetch(c: &TestClient, url: &str, answer: &str, extra: &[(&str, &str)]) -> Reply {
    let mut h = vec![("x-mock-answer", answer)];
    h.extend_from_slice(extra);
    send(c, Method::GET, url, &h, axum::body::Body::empty()).await
}

fn calls(up: &MockUpstream, path: &str) -> Vec<support::upstream::Recorded> {
    up.log().into_iter().filter(|r| r.target == path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_dastra_marked_stale_is_never_served_without_asking() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, RULES).await;
    let c = client();
    let past = "expires=Thu, 01 Jan 2015 00:00:00 GMT";
    for (i, answer) in [
        "cache-control=max-age=0",
        past,
        "expires=soon",
        "cache-control=no-cache",
        "cache-control=max-age=3600, no-cache",
        "cache-control=max-age=3600|cache-control=max-age=0",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/v1/ws/1/stale{i}");
        for _ in 0..2 {
            assert_eq!(fetch(&c, &p.url(&path), answer, &[]).await.status, 200);
        }
        assert_eq!(
            calls(&up, &path).len(),
            2,
            "{answer}: served from the cache"
        );
    }
    // The control: an answer fresh for an hour is used.
    let path = "/v1/ws/1/fresh";
    for _ in 0..3 {
        fetch(&c, &p.url(path), "cache-control=max-age=3600", &[]).await;
    }
    assert_eq!(calls(&up, path).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_is_revalidated_and_dastras_304_refreshes_it() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, RULES).await;
    let c = client();
    let url = p.url("/v1/ws/1/Actors");
    let first = fetch(
        &c,
        &url,
        "cache-control=max-age=0|etag=\"v1\"|x-version=a",
        &[],
    )
    .await;
    assert_eq!(first.body, "n=1");
    let used = window_used(&c, &p).await;
    // Stale at once: asked with its ETag; the 304 becomes the stored 200.
    let second = fetch(
        &c,
        &url,
        "cache-control=max-age=0|etag=\"v1\"|x-version=b",
        &[],
    )
    .await;
    assert_eq!(
        (second.status.as_u16(), &second.body[..]),
        (200, &b"n=1"[..])
    );
    assert_eq!(second.header("x-version"), Some("b"), "the 304's headers");
    assert_eq!(
        second.header("cache-status"),
        Some("dastra-proxy; fwd=stale; fwd-status=304; stored")
    );
    let log = calls(&up, "/v1/ws/1/Actors");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].headers["if-none-match"], "\"v1\"");
    assert_eq!(
        window_used(&c, &p).await,
        used + 1,
        "a revalidation is a send"
    );
    // Dastra's 304 now says fresh for an hour: the stored answer is used.
    fetch(
        &c,
        &url,
        "cache-control=max-age=3600|etag=\"v1\"|x-version=c",
        &[],
    )
    .await;
    let hit = fetch(&c, &url, "cache-control=max-age=0", &[]).await;
    assert_eq!(hit.body, "n=1");
    assert_eq!(hit.header("x-version"), Some("c"));
    assert!(hit.header("cache-status").unwrap().contains("hit"));
    assert_eq!(calls(&up, "/v1/ws/1/Actors").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_answers_from_the_cache_or_504_spending_nothing() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, RULES).await;
    let c = client();
    let url = p.url("/v1/ws/1/Only");
    let ask = [("cache-control", "only-if-cached")];
    let miss = fetch(&c, &url, "cache-control=max-age=3600", &ask).await;
    assert_eq!(
        (miss.status.as_u16(), miss.code()),
        (504, "not_cached".to_owned())
    );
    assert_eq!(up.count(), 0, "nothing sent");
    assert_eq!(window_used(&c, &p).await, 0, "no slot spent");
    fetch(&c, &url, "cache-control=max-age=3600", &[]).await;
    let hit = fetch(&c, &url, "cache-control=max-age=3600", &ask).await;
    assert_eq!((hit.status.as_u16(), &hit.body[..]), (200, &b"n=1"[..]));
    // A stored answer that is stale is not usable either.
    let stale = p.url("/v1/ws/1/OnlyStale");
    fetch(&c, &stale, "cache-control=max-age=0|etag=\"x\"", &[]).await;
    let r = fetch(&c, &stale, "cache-control=max-age=0", &ask).await;
    assert_eq!(r.status, 504);
    // A range is the caller's own call, never the cache's: nothing sent either.
    let r = fetch(
        &c,
        &url,
        "",
        &[("cache-control", "only-if-cached"), ("range", "bytes=0-1")],
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_grows_and_the_callers_directives_count() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, RULES).await;
    let c = client();
    let url = p.url("/v1/ws/1/Aged");
    let answer = "cache-control=max-age=3600|age=100|etag=\"a\"";
    let first = fetch(&c, &url, answer, &[]).await;
    assert_eq!(first.header("age"), Some("100"), "Dastra's own, passed on");
    let age = |r: &Reply| r.header("age").unwrap().parse::<u64>().unwrap();
    let hit = fetch(&c, &url, answer, &[]).await;
    assert!((100..102).contains(&age(&hit)), "{:?}", hit.header("age"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = fetch(&c, &url, answer, &[]).await;
    assert!(age(&later) > age(&hit), "Age grows while it is stored");
    assert_eq!(calls(&up, "/v1/ws/1/Aged").len(), 1);
    // max-age=50: older than the caller accepts, so it is validated first.
    let r = fetch(&c, &url, answer, &[("cache-control", "max-age=50")]).await;
    assert_eq!(r.body, "n=1", "the 304 refreshed the stored answer");
    let log = calls(&up, "/v1/ws/1/Aged");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].headers["if-none-match"], "\"a\"");
    // min-fresh beyond what is left, then Pragma: no-cache: each asks again.
    fetch(&c, &url, answer, &[("cache-control", "min-fresh=99999")]).await;
    fetch(&c, &url, answer, &[("pragma", "no-cache")]).await;
    assert_eq!(calls(&up, "/v1/ws/1/Aged").len(), 4);
    // no-store: the answer is passed on, not stored.
    let url = p.url("/v1/ws/1/NoStore");
    for _ in 0..2 {
        fetch(
            &c,
            &url,
            "cache-control=max-age=3600",
            &[("cache-control", "no-store")],
        )
        .await;
    }
    assert_eq!(calls(&up, "/v1/ws/1/NoStore").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_serves_only_requests_that_agree_on_what_it_varies_by() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, RULES).await;
    let c = client();
    let url = p.url("/v1/ws/1/Varied");
    let answer = "cache-control=max-age=3600|vary=X-Tenant";
    let mut bodies = Vec::new();
    for tenant in ["a", "b", "a", "b", "a,b", "a, b"] {
        let r = fetch(&c, &url, answer, &[("x-tenant", tenant)]).await;
        bodies.push(String::from_utf8(r.body.to_vec()).unwrap());
    }
    assert_eq!(bodies, ["n=1", "n=2", "n=1", "n=2", "n=3", "n=3"]);
    let none = fetch(&c, &url, answer, &[]).await;
    assert_eq!(none.body, "n=4", "no X-Tenant is a value of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_invalidates_what_its_location_names() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, RULES).await;
    let c = client();
    let fresh = "cache-control=max-age=3600";
    let named = p.url("/v1/ws/1/Actors/5");
    let other = p.url("/v1/ws/2/Things");
    fetch(&c, &named, fresh, &[]).await;
    fetch(&c, &other, fresh, &[]).await;
    let w = send(
        &c,
        Method::POST,
        &p.url("/v1/ws/1/Moves"),
        &[("x-mock-answer", "location=/v1/ws/1/Actors/5")],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(w.status, 200);
    assert_eq!(fetch(&c, &named, fresh, &[]).await.body, "n=4");
    assert!(fetch(&c, &other, fresh, &[])
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, RULES).await;
    let c = client();
    let url = p.url("/v1/ws/1/Behind");
    let answer = "cache-control=max-age=0, stale-while-revalidate=60|etag=\"s\"";
    fetch(&c, &url, answer, &[]).await;
    let r = fetch(&c, &url, answer, &[]).await;
    assert_eq!(r.body, "n=1");
    assert_eq!(r.header("cache-status"), Some("dastra-proxy; hit; stale"));
    // One revalidation went out behind the answer.
    for _ in 0..100 {
        if calls(&up, "/v1/ws/1/Behind").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = calls(&up, "/v1/ws/1/Behind");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].headers["if-none-match"], "\"s\"");
    // must-revalidate forbids it.
    let url = p.url("/v1/ws/1/Strict");
    let strict = "cache-control=max-age=0, stale-while-revalidate=60, must-revalidate|etag=\"s\"";
    fetch(&c, &url, strict, &[]).await;
    let r = fetch(&c, &url, strict, &[]).await;
    assert!(r.header("cache-status").unwrap().contains("fwd=stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidations_take_quota_slots_and_never_break_the_window() {
    let up = MockUpstream::start().await;
    let limits = "[[limits]]\nrequests = 3\nper = \"2s\"\n[admission]\non_limit = \"reject\"\n";
    let p = TestProxy::start(&up, &format!("{limits}{RULES}")).await;
    let c = client();
    let url = p.url("/v1/ws/1/Always");
    let answer = "cache-control=max-age=0|etag=\"v\"";
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(fetch(&c, &url, answer, &[]).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(
        calls(&up, "/v1/ws/1/Always").len(),
        3,
        "arrivals within the window"
    );
}
