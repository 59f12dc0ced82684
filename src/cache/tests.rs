use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::config::CacheConfig;

pub(super) fn cache(max_bytes: u64) -> Arc<Cache> {
    let cfg = CacheConfig {
        coalesce: true,
        max_entry: max_bytes,
        max_bytes,
        stale_if_error: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
        rules: Vec::new(),
    };
    Cache::new(&cfg, Metrics::new())
}

/// Stores `snap` as the share stage would, for a request with no headers.
fn put(c: &Cache, key: Key, snap: Arc<Snapshot>, ttl: Duration, now: Instant) -> bool {
    let at = SystemTime::now();
    let timing = Timing {
        sent: at,
        received: at,
        now,
    };
    let asks = directives::Request::default();
    match freshness::storable(snap.status, &snap.headers, &asks, timing, ttl) {
        Some(s) => c.store(key, &HeaderMap::new(), snap, s, ttl).is_some(),
        None => false,
    }
}

/// A stored answer usable as it is at `now`, and the freshness it has left.
fn get(c: &Cache, key: &Key, now: Instant) -> Option<(Arc<Snapshot>, Duration)> {
    let asks = directives::Request::default();
    c.lookup(key, &HeaderMap::new(), now)
        .filter(|s| s.freshness.usable(&asks, now))
        .map(|s| (s.snap, s.freshness.left(now)))
}

pub(super) fn key(quota: u8, target: &str) -> Key {
    Key::of(QuotaKey([quota; 32]), target.as_bytes(), &HeaderMap::new())
}

fn snap(status: u16, body: &[u8], version: u64) -> Arc<Snapshot> {
    let mut headers = HeaderMap::new();
    headers.insert("x-version", version.into());
    Arc::new(Snapshot {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

#[tokio::test(start_paused = true)]
async fn entries_live_for_their_ttl_and_the_lru_bound_holds() {
    let c = cache(10_000);
    let now = Instant::now();
    assert!(put(
        &c,
        key(1, "/v1/ws/1/A"),
        snap(200, b"x", 1),
        Duration::from_secs(5),
        now
    ));
    assert!(
        !put(
            &c,
            key(1, "/v1/ws/1/B"),
            snap(500, b"x", 1),
            Duration::from_secs(5),
            now
        ),
        "500s are never kept"
    );
    tokio::time::advance(Duration::from_millis(4999)).await;
    assert!(get(&c, &key(1, "/v1/ws/1/A"), Instant::now()).is_some());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(get(&c, &key(1, "/v1/ws/1/A"), Instant::now()).is_none());
    // Fill far past max_bytes: the bound holds, the newest entries stay.
    for i in 0..100 {
        put(
            &c,
            key(1, &format!("/v1/ws/1/E{i}")),
            snap(200, &[0; 500], i),
            Duration::from_secs(60),
            Instant::now(),
        );
        assert!(c.lock().bytes() <= 10_000);
    }
    assert!(get(&c, &key(1, "/v1/ws/1/E99"), Instant::now()).is_some());
    assert!(get(&c, &key(1, "/v1/ws/1/E0"), Instant::now()).is_none());
}

#[test]
fn writes_evict_their_resource_and_only_their_credentials() {
    let c = cache(1 << 20);
    let now = Instant::now();
    let ttl = Duration::from_secs(60);
    for (q, t) in [
        (1, "/v1/ws/1/Actors"),
        (1, "/v1/ws/1/Actors/5?x=1"),
        (1, "/v1/ws/1/Other"),
        (2, "/v1/ws/1/Actors"),
    ] {
        put(&c, key(q, t), snap(200, b"x", 0), ttl, now);
    }
    c.evict(&QuotaKey([1; 32]), "/v1/ws/1/Actors/9");
    assert!(get(&c, &key(1, "/v1/ws/1/Actors"), now).is_none());
    assert!(get(&c, &key(1, "/v1/ws/1/Actors/5?x=1"), now).is_none());
    assert!(get(&c, &key(1, "/v1/ws/1/Other"), now).is_some());
    assert!(
        get(&c, &key(2, "/v1/ws/1/Actors"), now).is_some(),
        "another credential's entry"
    );
    c.evict(&QuotaKey([1; 32]), "/v1/ws");
    assert!(
        get(&c, &key(1, "/v1/ws/1/Other"), now).is_none(),
        "a shorter path evicts all of the key's"
    );
}

#[derive(Debug, Clone)]
enum Step {
    Get(u8),
    Write(u8),
    Advance(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4).prop_map(Step::Get),
        (0u8..4).prop_map(Step::Write),
        (0u16..3000).prop_map(Step::Advance),
    ]
}

proptest! {
    /// Against a model of what upstream holds: an answer served from the
    /// cache is never older than its ttl and never from before a 2xx write
    /// to its resource.
    #[test]
    fn a_cached_answer_is_never_stale_nor_from_before_a_write(steps in proptest::collection::vec(step(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let c = cache(1 << 20);
            let ttl = Duration::from_millis(1000);
            // Per resource: the version upstream holds now, and when each was fetched.
            let mut version = [0u64; 4];
            let paths = ["/v1/ws/1/A", "/v1/ws/1/A/x", "/v1/ws/1/B", "/v1/ws/2/A"];
            let resource = |i: usize| paths[i].split('/').take(5).collect::<Vec<_>>().join("/");
            let mut fetched: [Option<(u64, Instant)>; 4] = [None; 4];
            for s in steps {
                let now = Instant::now();
                match s {
                    Step::Get(i) => {
                        let i = i as usize;
                        let k = key(1, paths[i]);
                        match get(&c, &k, now) {
                            Some((hit, _)) => {
                                let v: u64 = hit.headers["x-version"].to_str().unwrap().parse().unwrap();
                                let (fv, at) = fetched[i].unwrap();
                                prop_assert_eq!(v, fv);
                                prop_assert!(now - at < ttl, "served past its ttl");
                                prop_assert_eq!(v, version[i], "served from before a write");
                            }
                            None => {
                                put(&c, k, snap(200, b"x", version[i]), ttl, now);
                                fetched[i] = Some((version[i], now));
                            }
                        }
                    }
                    Step::Write(i) => {
                        let i = i as usize;
                        for (j, v) in version.iter_mut().enumerate() {
                            if resource(j) == resource(i) {
                                *v += 1;
                            }
                        }
                        c.evict(&QuotaKey([1; 32]), paths[i]);
                    }
                    Step::Advance(ms) => tokio::time::advance(Duration::from_millis(ms as u64)).await,
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_purged_not_only_pushed_out() {
    let c = cache(1 << 20);
    let now = Instant::now();
    for i in 0..100 {
        let k = key(1, &format!("/v1/ws/1/A/{i}"));
        assert!(put(&c, k, snap(200, b"x", 1), Duration::from_secs(1), now));
    }
    let long = key(1, "/v1/ws/1/B");
    assert!(put(
        &c,
        long.clone(),
        snap(200, b"x", 1),
        Duration::from_secs(60),
        now
    ));
    let alone = cache(1 << 20);
    put(
        &alone,
        long.clone(),
        snap(200, b"x", 1),
        Duration::from_secs(60),
        now,
    );
    let one = alone.lock().bytes();
    tokio::time::advance(Duration::from_secs(2)).await;
    // Any use of the cache drops what has expired, even entries never asked for again.
    assert!(get(&c, &long, Instant::now()).is_some());
    assert_eq!(c.lock().len(), 1);
    assert_eq!(c.lock().bytes(), one);
}

#[tokio::test(start_paused = true)]
async fn an_entry_counts_the_bytes_of_its_key() {
    let c = cache(1 << 20);
    let now = Instant::now();
    let small = key(1, "/v1/ws/1/A");
    assert!(put(
        &c,
        small,
        snap(200, b"x", 1),
        Duration::from_secs(5),
        now
    ));
    let before = c.lock().bytes();
    let mut h = HeaderMap::new();
    h.insert(http::header::ACCEPT, "a".repeat(60_000).parse().unwrap());
    let large = Key::of(QuotaKey([1; 32]), b"/v1/ws/1/A", &h);
    assert!(put(
        &c,
        large,
        snap(200, b"x", 1),
        Duration::from_secs(5),
        now
    ));
    assert!(
        c.lock().bytes() - before >= 60_000,
        "a 60 KB Accept counted as {} bytes",
        c.lock().bytes() - before
    );
}

#[test]
fn what_may_share() {
    let h = |pairs: &[(&'static str, &'static str)]| {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    };
    assert_eq!(Request::of(&h(&[("accept", "x")])), Request::Plain);
    for own in [
        "cookie",
        "range",
        "if-match",
        "if-unmodified-since",
        "if-range",
    ] {
        assert_eq!(
            Request::of(&h(&[(own, "x"), ("if-none-match", "x")])),
            Request::Own,
            "{own}"
        );
    }
    for cond in ["if-none-match", "if-modified-since"] {
        assert_eq!(Request::of(&h(&[(cond, "x")])), Request::Conditional);
    }
    let answer = |pairs: &[(&'static str, &'static str)]| Snapshot {
        status: StatusCode::OK,
        headers: h(pairs),
        body: Bytes::new(),
    };
    assert!(shareable(&answer(&[
        ("vary", "Accept-Encoding, accept"),
        ("cache-control", "max-age=5")
    ])));
    for not in [
        ("set-cookie", "a=b"),
        ("cache-control", "Private"),
        ("cache-control", "max-age=5, no-cache"),
        ("cache-control", "no-store"),
        ("vary", "*"),
        ("vary", "Accept, Cookie"),
    ] {
        assert!(!shareable(&answer(&[not])), "{not:?}");
    }
    let stored = answer(&[
        ("etag", "W/\"7\""),
        ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
    ]);
    assert!(not_modified(&h(&[("if-none-match", "\"7\"")]), &stored));
    assert!(!not_modified(&h(&[("if-none-match", "\"8\"")]), &stored));
    assert!(not_modified(
        &h(&[("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")]),
        &stored
    ));
    assert!(!not_modified(
        &h(&[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")]),
        &stored
    ));
    // If-None-Match decides alone when both are sent (RFC 9110 §13.2.2).
    assert!(!not_modified(
        &h(&[
            ("if-none-match", "\"8\""),
            ("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")
        ]),
        &stored
    ));
}

#[tokio::test(start_paused = true)]
async fn an_expired_entry_is_kept_stale_for_stale_if_error_unless_it_must_revalidate() {
    let c = Cache::new(
        &CacheConfig {
            coalesce: true,
            max_entry: 10_000,
            max_bytes: 10_000,
            stale_if_error: Duration::from_secs(10),
            stale_while_revalidate: Duration::ZERO,
            rules: Vec::new(),
        },
        Metrics::new(),
    );
    let t0 = Instant::now();
    let with = |cc: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", http::HeaderValue::from_static(cc));
        Arc::new(Snapshot {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"y"),
        })
    };
    assert!(put(
        &c,
        key(1, "/a"),
        snap(200, b"x", 1),
        Duration::from_secs(5),
        t0
    ));
    // Kept a minute (a rule's ttl) past a freshness of 5 s: only the
    // stale rules, not the entry's end, decide what stands in.
    let minute = Duration::from_secs(60);
    let strict = with("max-age=5, must-revalidate");
    assert!(put(&c, key(1, "/b"), strict, minute, t0));
    assert!(put(&c, key(1, "/c"), with("max-age=5"), minute, t0));
    let none = HeaderMap::new();
    assert!(
        c.get_stale(&key(1, "/a"), &none, t0).is_some(),
        "a fresh entry stands in too (a caller's no-cache call failed)"
    );
    let t = t0 + Duration::from_secs(5);
    assert!(get(&c, &key(1, "/a"), t).is_none());
    assert!(c.get_stale(&key(1, "/a"), &none, t).is_some());
    assert!(
        c.get_stale(&key(1, "/b"), &none, t).is_none(),
        "must-revalidate"
    );
    let late = t + Duration::from_secs(10) - Duration::from_nanos(1);
    assert!(c.get_stale(&key(1, "/a"), &none, late).is_some());
    assert!(c
        .get_stale(&key(1, "/a"), &none, t + Duration::from_secs(10))
        .is_none());
    // The window ends 10 s after the freshness, the entry much later.
    let end = t + Duration::from_secs(10);
    assert!(c.get_stale(&key(1, "/c"), &none, late).is_some());
    assert!(
        c.get_stale(&key(1, "/c"), &none, end).is_none(),
        "past the window"
    );
}

/// An answer that could only ever be served after asking Dastra again
/// (`no-cache`, or already older than its lifetime) and that has nothing
/// to ask with (no validator) nor a stale use is not kept: it would only
/// take room.
#[tokio::test(start_paused = true)]
async fn an_answer_never_usable_as_it_is_is_not_kept() {
    let c = cache(10_000);
    let now = Instant::now();
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", "no-cache, max-age=60".parse().unwrap());
    let no_cache = Arc::new(Snapshot {
        status: StatusCode::OK,
        headers,
        body: Bytes::from_static(b"z"),
    });
    assert!(!put(
        &c,
        key(1, "/n"),
        no_cache,
        Duration::from_secs(60),
        now
    ));
}

/// What `max_bytes` counts of an answer: its body and each header's name
/// and value byte for byte, plus a measured fixed cost per header and per
/// answer.
#[test]
fn an_answers_size_counts_each_byte_once() {
    let snap = |name: &'static str, value: &'static str, body: usize| {
        let mut headers = HeaderMap::new();
        headers.insert(name, http::HeaderValue::from_static(value));
        Snapshot {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(vec![0; body]),
        }
        .size()
    };
    let base = snap("x-abcde", "abc", 10);
    assert_eq!(base, 10 + 7 + 3 + 96 + 512);
    assert_eq!(snap("x-abcde", "abcd", 10), base + 1);
    assert_eq!(snap("x-abcdef", "abc", 10), base + 1);
    assert_eq!(snap("x-abcde", "abc", 11), base + 1);
}
