//! What may share an answer (SPEC §9.1), through the real server stack and
//! judged on the mock upstream's own log: a caller never receives an answer
//! produced for a request that differs in a header the answer can vary by,
//! nor one meant for another caller alone (a cookie, `private`, `Vary`).

mod support;

use http::Method;
use proptest::prelude::*;
use support::upstream::seen;
use support::{client, send, MockUpstream, Reply, TestClient, TestProxy};

/// Cache rules on the mock's `/seq/<ms>/<flags>` answers.
const CACHED: &str = "[cache]\n[[cache.rules]]\npath = \"/seq/*/*\"\nttl = \"10s\"\n[[cache.rules]]\npath = \"/seq/*/*/*\"\nttl = \"10s\"\n";

type Headers = Vec<(&'static str, &'static str)>;

async fn together(c: &TestClient, calls: Vec<(String, Headers)>) -> Vec<Reply> {
    support::gets_together(c, calls).await
}

fn calls_to(up: &MockUpstream, prefix: &str) -> usize {
    up.arrivals(prefix).len()
}

/// What the mock reports it answered, for a request with these headers.
fn seen_for(headers: &Headers) -> String {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.append(*k, v.parse().unwrap());
    }
    seen(&h)
}

fn assert_own(replies: &[Reply], asked: &[Headers]) {
    for (r, h) in replies.iter().zip(asked) {
        assert_eq!(
            r.header("x-seen"),
            Some(seen_for(h).as_str()),
            "a caller with {h:?} got an answer made for another request ({:?})",
            r.header("cache-status")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_gets_differing_in_a_varying_header_never_share() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let pairs: [(&str, Headers, Headers); 5] = [
        ("ae", vec![("accept-encoding", "gzip")], vec![]),
        (
            "al",
            vec![("accept-language", "fr")],
            vec![("accept-language", "de")],
        ),
        ("range", vec![("range", "bytes=0-3")], vec![]),
        ("inm", vec![("if-none-match", "\"v1\"")], vec![]),
        (
            "cookie",
            vec![("cookie", "who=alice")],
            vec![("cookie", "who=bob")],
        ),
    ];
    for (name, a, b) in pairs {
        let url = proxy.url(&format!("/seq/300/etag/{name}"));
        let asked = vec![a.clone(), b.clone(), a, b];
        let replies = together(&c, asked.iter().map(|h| (url.clone(), h.clone())).collect()).await;
        assert_own(&replies, &asked);
        for (r, h) in replies.iter().zip(&asked) {
            let want = if h.iter().any(|(k, _)| *k == "range") {
                206
            } else if h.iter().any(|(k, _)| *k == "if-none-match") {
                304
            } else {
                200
            };
            assert_eq!(r.status, want, "{name}: {h:?}");
            let gzip = r.header("content-encoding") == Some("gzip");
            assert_eq!(
                gzip,
                h.iter().any(|(k, _)| *k == "accept-encoding"),
                "{name}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_for_one_caller_alone_are_never_handed_to_another() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, CACHED).await;
    let c = client();
    // Coalescing: four identical GETs in flight, each flag its own path.
    for flag in ["private", "setcookie", "varystar", "varycookie", "nocache"] {
        let path = format!("/seq/300/{flag}");
        let replies = together(&c, (0..4).map(|_| (proxy.url(&path), vec![])).collect()).await;
        assert_eq!(calls_to(&up, &path), 4, "{flag}: shared a call");
        let mut bodies: Vec<_> = replies.iter().map(|r| r.body.clone()).collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 4, "{flag}: a caller got another's answer");
        // The cache: one after the other, never answered from a stored copy.
        let path = format!("/seq/0/{flag}");
        for _ in 0..2 {
            let r = send(
                &c,
                Method::GET,
                &proxy.url(&path),
                &[],
                axum::body::Body::empty(),
            )
            .await;
            assert_eq!(r.status, 200);
        }
        // RFC 9111 §4.1 (SPEC §9.6): an answer that varies by a header outside
        // the key is stored with the request's value of it, and serves only
        // requests that agree; a request with a cookie never reads the cache.
        let stored = usize::from(flag == "varycookie");
        assert_eq!(
            calls_to(&up, &path),
            2 - stored,
            "{flag}: served from the cache"
        );
    }
    let path = "/seq/0/varycookie";
    let r = send(
        &c,
        Method::GET,
        &proxy.url(path),
        &[("cookie", "a=b")],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(calls_to(&up, path), 2, "a cookie's call is its own");
    // A Vary on a header of the key is shared and stored like any answer.
    let path = "/seq/0/varyalang";
    for _ in 0..3 {
        let h = [("accept-language", "fr")];
        let r = send(
            &c,
            Method::GET,
            &proxy.url(path),
            &h,
            axum::body::Body::empty(),
        )
        .await;
        assert_eq!(r.header("content-language"), Some("fr"));
    }
    let h = [("accept-language", "de")];
    let r = send(
        &c,
        Method::GET,
        &proxy.url(path),
        &h,
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(r.header("content-language"), Some("de"));
    assert_eq!(calls_to(&up, path), 2, "one call per language");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_get_is_answered_from_a_cached_200_by_its_validator() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, CACHED).await;
    let c = client();
    let url = proxy.url("/seq/0/etag/poll");
    let first = send(&c, Method::GET, &url, &[], axum::body::Body::empty()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("etag"), Some("\"v1\""));
    for tag in ["\"v1\"", "W/\"v1\"", "\"v0\", \"v1\"", "*"] {
        let r = send(
            &c,
            Method::GET,
            &url,
            &[("if-none-match", tag)],
            axum::body::Body::empty(),
        )
        .await;
        assert_eq!(r.status, 304, "{tag}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert!(r.header("cache-status").unwrap().contains("hit"));
    }
    let other = send(
        &c,
        Method::GET,
        &url,
        &[("if-none-match", "\"v2\"")],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, first.body, "no match: the stored 200");
    assert_eq!(
        calls_to(&up, "/seq/0/etag/poll"),
        1,
        "pollers spend nothing"
    );

    // Not cached yet: the conditional goes upstream and its 304 is not kept
    // for the next, unconditional caller.
    let url = proxy.url("/seq/0/etag/fresh");
    let r = send(
        &c,
        Method::GET,
        &url,
        &[("if-none-match", "\"v1\"")],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(r.status, 304);
    let r = send(&c, Method::GET, &url, &[], axum::body::Body::empty()).await;
    assert_eq!(r.status, 200);
    assert_eq!(calls_to(&up, "/seq/0/etag/fresh"), 2);
}

/// A reply is right for `h` when it was made for a request agreeing with `h`
/// on every varying header; from the cache, a validator the stored answer
/// does not match is answered with the stored 200 (RFC 9110 §13.1.2), and a
/// matching one with a bodiless 304.
fn judge(r: &Reply, h: &Headers) {
    let hit = r.header("cache-status").is_some_and(|s| s.contains("hit"));
    let strip = |s: &str| -> String {
        s.split(';')
            .filter(|f| !(hit && f.starts_with("if-none-match=")))
            .collect::<Vec<_>>()
            .join(";")
    };
    if hit && r.status == 304 {
        assert!(h.contains(&("if-none-match", "\"v1\"")), "304 for {h:?}");
        return;
    }
    assert_eq!(
        r.header("x-seen").map(strip),
        Some(strip(&seen_for(h))),
        "{h:?} ({:?})",
        r.header("cache-status")
    );
}

/// The header values the property draws from.
fn header_set() -> impl Strategy<Value = Headers> {
    let pick = |name: &'static str, values: &'static [&'static str]| {
        prop::option::of(prop::sample::select(values)).prop_map(move |v| v.map(|v| (name, v)))
    };
    (
        pick("accept", &["application/json", "text/csv"]),
        pick("accept-encoding", &["gzip", "br"]),
        pick("accept-language", &["fr", "de"]),
        pick("cookie", &["who=alice", "who=bob"]),
        pick("range", &["bytes=0-3"]),
        pick("if-none-match", &["\"v1\"", "\"v9\""]),
    )
        .prop_map(|(a, b, c, d, e, f)| [a, b, c, d, e, f].into_iter().flatten().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Random interleavings of GETs with random varying headers, through
    /// coalescing and the cache: every caller gets the answer made for a
    /// request that agrees with its own on every header the answer can vary by.
    #[test]
    fn no_caller_gets_an_answer_made_for_a_different_request(
        asked in prop::collection::vec(header_set(), 2..24),
        cached in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let up = MockUpstream::start().await;
            let proxy = TestProxy::start(&up, if cached { CACHED } else { "" }).await;
            let c = client();
            let url = proxy.url("/seq/200/etag/mixed");
            // Twice: the second round may find the first's answers stored.
            for _ in 0..2 {
                let replies = together(&c, asked.iter().map(|h| (url.clone(), h.clone())).collect()).await;
                for (r, h) in replies.iter().zip(&asked) {
                    judge(r, h);
                }
            }
            proxy.shutdown().await;
        });
    }
}
