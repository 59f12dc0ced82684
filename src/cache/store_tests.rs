//! The store's bookkeeping: which stored variant a request's header lists
//! select, which entry the LRU bound drops, and what an entry counts
//! against `max_bytes`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use tokio::time::Instant;

use super::tests::{cache, key};
use super::*;

fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, http::HeaderValue::from_static(v));
    }
    h
}

/// An answer of `body` bytes that varies by `X-T`, stored for `req`.
fn keep(c: &Cache, path: &str, req: &HeaderMap, body: usize) -> bool {
    let mut headers = HeaderMap::new();
    headers.insert("vary", "X-T".parse().unwrap());
    let s = Arc::new(Snapshot {
        status: StatusCode::OK,
        headers,
        body: Bytes::from(vec![0; body]),
    });
    let timing = Timing {
        sent: SystemTime::now(),
        received: SystemTime::now(),
        now: Instant::now(),
    };
    let ttl = Duration::from_secs(60);
    let asks = directives::Request::default();
    let st = freshness::storable(s.status, &s.headers, &asks, timing, ttl).unwrap();
    c.store(key(1, path), req, s, st, ttl).is_some()
}

/// Lists match item by item: spaces around commas and a split over two
/// lines change nothing, a missing comma does.
#[test]
fn header_lists_select_a_variant_item_by_item() {
    let names = [HeaderName::from_static("x-t")];
    let of = |pairs| store::values(&names, &req(pairs));
    let plain = of(&[("x-t", "a,b")]);
    assert_eq!(of(&[("x-t", "a, b")]), plain);
    assert_eq!(of(&[("x-t", "a"), ("x-t", "b")]), plain);
    assert_ne!(of(&[("x-t", "ab")]), plain);
    assert_eq!(of(&[]), vec![None]);
}

/// The bound drops the least recently *used* entry, not the oldest stored.
#[tokio::test(start_paused = true)]
async fn the_bound_drops_the_least_recently_used() {
    let c = cache(2_500);
    let none = HeaderMap::new();
    assert!(keep(&c, "/a", &none, 500));
    assert!(keep(&c, "/b", &none, 500));
    assert!(c.lookup(&key(1, "/a"), &none, Instant::now()).is_some());
    assert!(keep(&c, "/c", &none, 500));
    let kept = |p| c.lookup(&key(1, p), &none, Instant::now()).is_some();
    assert_eq!((kept("/a"), kept("/b"), kept("/c")), (true, false, true));
}

/// An entry counts its answer, its key and the values it was stored
/// under; one of exactly `max_bytes` is kept, one byte more is not.
#[tokio::test(start_paused = true)]
async fn an_entry_counts_its_answer_key_and_values_up_to_max_bytes() {
    let c = cache(1 << 20);
    let r = req(&[("x-t", "abc")]);
    assert!(keep(&c, "/a", &r, 10));
    let snap = c.lookup(&key(1, "/a"), &r, Instant::now()).unwrap().snap;
    let size = snap.size() + key(1, "/a").size() + 3;
    assert_eq!(c.lock().bytes(), size);
    let exact = cache(size);
    assert!(keep(&exact, "/a", &r, 10), "exactly max_bytes");
    let short = cache(size - 1);
    assert!(!keep(&short, "/a", &r, 10), "one byte over");
    // Two that fill it exactly are both kept.
    let two = cache(2 * size);
    assert!(keep(&two, "/a", &r, 10) && keep(&two, "/b", &r, 10));
    assert!(two.lookup(&key(1, "/a"), &r, Instant::now()).is_some());
}

/// Storing a variant again replaces it: a key holding its most variants
/// loses none of the others for it.
#[tokio::test(start_paused = true)]
async fn a_variant_stored_again_replaces_only_itself() {
    let c = cache(1 << 20);
    let variants: Vec<HeaderMap> = (0..16u32)
        .map(|i| {
            let mut h = HeaderMap::new();
            h.insert("x-t", i.into());
            h
        })
        .collect();
    for r in &variants {
        assert!(keep(&c, "/v", r, 1));
    }
    assert!(keep(&c, "/v", &variants[5], 1));
    for r in &variants {
        assert!(
            c.lookup(&key(1, "/v"), r, Instant::now()).is_some(),
            "{r:?}"
        );
    }
}

/// An entry is kept until its end and not at it: found a nanosecond
/// before, gone at the instant (a ttl of 60 s, nothing stale).
#[tokio::test(start_paused = true)]
async fn an_entry_is_gone_at_the_instant_it_ends() {
    let c = cache(1 << 20);
    let none = HeaderMap::new();
    let t0 = Instant::now();
    assert!(keep(&c, "/a", &none, 1));
    let end = t0 + Duration::from_secs(60);
    let found = |at| c.lookup(&key(1, "/a"), &none, at).is_some();
    assert!(found(end - Duration::from_nanos(1)));
    assert!(!found(end));
}
