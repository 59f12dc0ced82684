//! The token cache on tokio's paused clock, against a stand-in token
//! endpoint: when a token is due, how failures back off, what size of answer
//! is a token (each pins a mutant cargo-mutants found surviving).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode};
use tokio::time::advance;

use super::{TokenCache, TokenError};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

struct Endpoint {
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    cache: TokenCache,
}

/// A token endpoint answering `expires_in = 100` with a token of
/// `token_len` characters (failing with 500 while `failing` is set).
fn endpoint(token_len: usize) -> Endpoint {
    endpoint_for(token_len, 100)
}

fn endpoint_for(token_len: usize, expires_in: u64) -> Endpoint {
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (c, f) = (calls.clone(), failing.clone());
    let upstream = Upstream::new(tower::service_fn(move |_req| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = f.load(Ordering::SeqCst);
        async move {
            if fail {
                return Ok(Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Body::empty())
                    .unwrap());
            }
            let token = format!("t{n}{}", "x".repeat(token_len.saturating_sub(2)));
            let body = format!(r#"{{"access_token":"{token}","expires_in":{expires_in}}}"#);
            Ok(Response::new(Body::from(body)))
        }
    }));
    let cache = TokenCache::new(
        upstream,
        "https://account.test/connect/token".parse().unwrap(),
        "api1".into(),
        HeaderValue::from_static("Basic cHViOnByaXY="),
        Metrics::new(),
    );
    Endpoint {
        calls,
        failing,
        cache,
    }
}

/// A 100 s token is used until 30 s before it expires, and fetched again at
/// exactly that instant.
#[tokio::test(start_paused = true)]
async fn a_token_is_refreshed_exactly_when_due() {
    let e = endpoint(8);
    let (_, fresh) = e.cache.bearer().await.unwrap();
    assert!(fresh);
    advance(Duration::from_secs(70) - Duration::from_millis(1)).await;
    let (_, fresh) = e.cache.bearer().await.unwrap();
    assert!(!fresh, "still valid just before it is due");
    advance(Duration::from_millis(1)).await;
    let (_, fresh) = e.cache.bearer().await.unwrap();
    assert!(fresh, "due at exactly 70 s");
    assert_eq!(e.calls.load(Ordering::SeqCst), 2);
}

/// Failures back off 1 s, then 2 s (doubling), and a new attempt is made at
/// exactly the end of a backoff.
#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_to_the_instant() {
    let e = endpoint(8);
    e.failing.store(true, Ordering::SeqCst);
    assert!(matches!(
        e.cache.bearer().await,
        Err(TokenError::Status(500))
    ));
    match e.cache.bearer().await {
        Err(TokenError::Backoff(d)) => assert_eq!(d, Duration::from_millis(1000)),
        other => panic!("{other:?}"),
    }
    advance(Duration::from_millis(1000)).await;
    assert!(
        matches!(e.cache.bearer().await, Err(TokenError::Status(500))),
        "asked again at exactly the end of the backoff"
    );
    match e.cache.bearer().await {
        Err(TokenError::Backoff(d)) => assert_eq!(d, Duration::from_millis(2000)),
        other => panic!("{other:?}"),
    }
    e.failing.store(false, Ordering::SeqCst);
    advance(Duration::from_millis(2000)).await;
    assert!(e.cache.bearer().await.unwrap().1);
    assert_eq!(e.calls.load(Ordering::SeqCst), 3);
}

/// A JWT of a few KB is a token; an answer past 64 KiB is not.
#[tokio::test(start_paused = true)]
async fn a_large_jwt_is_a_token_an_oversized_answer_is_not() {
    let (value, _) = endpoint(4096).cache.bearer().await.unwrap();
    assert_eq!(value.len(), "Bearer ".len() + 4096);
    assert!(matches!(
        endpoint(70 * 1024).cache.bearer().await,
        Err(TokenError::Unreachable(_))
    ));
}

/// A two-hour token is used for two hours (less 30 s); only a lifetime past
/// a day is capped (SPEC §9.1).
#[tokio::test(start_paused = true)]
async fn a_long_lived_token_is_kept_up_to_a_day() {
    let e = endpoint_for(8, 7200);
    assert!(e.cache.bearer().await.unwrap().1);
    advance(Duration::from_secs(7000)).await;
    assert!(!e.cache.bearer().await.unwrap().1, "not due before 7170 s");
    let e = endpoint_for(8, 10 * 24 * 3600);
    assert!(e.cache.bearer().await.unwrap().1);
    advance(Duration::from_secs(24 * 3600 - 30)).await;
    assert!(e.cache.bearer().await.unwrap().1, "capped at a day");
}
