//! Variants (RFC 9111 §4.1): a stored answer serves only requests that
//! agree on what it varies by, and a key keeps a bounded number of them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::tests::{cache, key};
use super::*;

#[tokio::test(start_paused = true)]
async fn variants_serve_only_requests_that_agree_on_what_they_vary_by() {
    let c = cache(100_000);
    let now = Instant::now();
    let req = |v: Option<&'static str>| {
        let mut h = HeaderMap::new();
        if let Some(v) = v {
            h.insert("x-t", v.parse().unwrap());
        }
        h
    };
    let asks = directives::Request::default();
    let timing = Timing {
        sent: SystemTime::now(),
        received: SystemTime::now(),
        now,
    };
    let ttl = Duration::from_secs(60);
    for (i, v) in [Some("a"), Some("b"), None].into_iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("vary", "X-T".parse().unwrap());
        headers.insert("x-version", i.into());
        let s = Arc::new(Snapshot {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
        });
        let st = freshness::storable(s.status, &s.headers, &asks, timing, ttl).unwrap();
        assert!(c.store(key(1, "/v"), &req(v), s, st, ttl).is_some());
    }
    let version = |v: Option<&'static str>| {
        c.lookup(&key(1, "/v"), &req(v), now)
            .map(|s| s.snap.headers["x-version"].to_str().unwrap().to_owned())
    };
    assert_eq!(version(Some("a")).as_deref(), Some("0"));
    assert_eq!(version(Some("b")).as_deref(), Some("1"));
    assert_eq!(version(None).as_deref(), Some("2"));
    assert_eq!(version(Some("c")), None);
    assert_eq!(c.lock().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_key_keeps_a_bounded_number_of_variants() {
    let c = cache(1 << 20);
    let now = Instant::now();
    let asks = directives::Request::default();
    let timing = Timing {
        sent: SystemTime::now(),
        received: SystemTime::now(),
        now,
    };
    let ttl = Duration::from_secs(60);
    for i in 0..100u32 {
        let mut headers = HeaderMap::new();
        headers.insert("vary", "X-T".parse().unwrap());
        let s = Arc::new(Snapshot {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
        });
        let mut req = HeaderMap::new();
        req.insert("x-t", i.into());
        let st = freshness::storable(s.status, &s.headers, &asks, timing, ttl).unwrap();
        assert!(c.store(key(1, "/v"), &req, s, st, ttl).is_some());
    }
    assert_eq!(
        c.lock().len(),
        16,
        "a churned header keeps 16 variants, not 100"
    );
    let mut newest = HeaderMap::new();
    newest.insert("x-t", 99u32.into());
    assert!(
        c.lookup(&key(1, "/v"), &newest, now).is_some(),
        "the newest stays"
    );
}

/// The key of a GET holds each varying header in its own place: two
/// requests that send one value under different varying headers, or that
/// differ in a second line of one, never share an answer.
#[test]
fn each_varying_header_and_each_of_its_lines_is_in_the_key() {
    let of = |pairs: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, http::HeaderValue::from_static(v));
        }
        Key::of(crate::credential::QuotaKey([1; 32]), b"/v1/a", &h)
    };
    let keys = [
        of(&[("accept", "x")]),
        of(&[("accept-encoding", "x")]),
        of(&[("accept-language", "x")]),
    ];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
    let two = of(&[("accept", "a"), ("accept", "b")]);
    assert_ne!(two, of(&[("accept", "b")]), "a second line is not lost");
    assert_eq!(two, of(&[("accept", "a, b")]), "two lines are one list");
}

/// `Accept-Language` compares as language ranges do (RFC 4647): in any
/// case, spaces and tabs around commas meaningless.
#[test]
fn accept_language_is_one_key_in_any_case_and_spacing() {
    let of = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert("accept-language", http::HeaderValue::from_static(v));
        Key::of(crate::credential::QuotaKey([1; 32]), b"/v1/a", &h)
    };
    let plain = of("en-us,fr");
    for v in ["en-US, fr", "EN-US,FR", "en-us, fr", "en-us,\tfr"] {
        assert_eq!(of(v), plain, "{v}");
    }
    assert_ne!(of("en-gb,fr"), plain);
}

/// What a key counts in an entry's size: the credential's 32 bytes, the
/// target and each varying value, byte for byte.
#[test]
fn a_keys_size_counts_its_bytes() {
    let mut h = HeaderMap::new();
    h.insert("accept", http::HeaderValue::from_static("xy"));
    let k = Key::of(crate::credential::QuotaKey([1; 32]), b"/abc", &h);
    assert_eq!(k.size(), 32 + 4 + 2);
}
