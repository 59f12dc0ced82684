//! Retries of calls Dastra failed (`upstream.retries`, `retry_budget`).
//!
//! Only idempotent methods without a body (GET, HEAD, OPTIONS, DELETE; a PUT
//! with an empty body) are tried again, and only when Dastra answered 502,
//! 503 or 504 or was never reached: sending them twice changes nothing.
//! POST and PATCH never are, and a body is never kept to be sent again (a
//! PUT with one is tried once). Each retry is a send like any other: it
//! waits for a quota slot of its own, so a retry never breaks a window. The
//! budget is the Envoy model: every call earns `retry_budget` of a retry,
//! so a Dastra failing every call sees at most that share more calls, not a
//! storm of `retries` times the traffic.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};

use crate::error::ProxyError;
use crate::upstream::CallError;

/// Retries a quiet proxy may make before calls have earned any.
const FLOOR: f64 = 3.0;
/// The first retry waits about this long; each next one twice as long.
const BACKOFF: Duration = Duration::from_millis(100);

/// The retries left to spend, earned by calls.
#[derive(Debug)]
pub struct RetryBudget {
    retries: u32,
    share: f64,
    tokens: Mutex<f64>,
}

impl RetryBudget {
    pub fn new(retries: u32, share: f64) -> Self {
        Self {
            retries,
            share,
            tokens: Mutex::new(FLOOR),
        }
    }

    /// A new call: it earns its share of a retry.
    pub fn earn(&self) {
        if self.retries == 0 {
            return;
        }
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        // Never more saved up than a burst of `FLOOR` plus the share of 100 calls.
        *t = (*t + self.share).min(FLOOR + self.share * 100.0);
    }

    /// Whether the `attempt`-th retry (1-based) of a call may go; spends it.
    pub fn spend(&self, attempt: u32) -> bool {
        if attempt > self.retries {
            return false;
        }
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if *t < 1.0 {
            return false;
        }
        *t -= 1.0;
        true
    }
}

/// The head of a call that may be sent again, or `None`.
pub fn replayable(req: &Request<Body>) -> Option<Request<()>> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    ) || (req.method() == Method::PUT && bodiless(req));
    if !idempotent || !bodiless(req) {
        return None;
    }
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// A request again from its copied head (its body was empty).
pub fn again(head: &Request<()>) -> Request<Body> {
    let mut req = Request::new(Body::empty());
    *req.method_mut() = head.method().clone();
    *req.uri_mut() = head.uri().clone();
    *req.version_mut() = head.version();
    *req.headers_mut() = head.headers().clone();
    *req.extensions_mut() = head.extensions().clone();
    req
}

fn bodiless(req: &Request<Body>) -> bool {
    use http_body::Body as _;
    req.body().size_hint().exact() == Some(0)
}

/// Whether this outcome is worth another try: Dastra said it could not
/// answer now (502, 503, 504) or was never reached.
pub fn worth_retrying(result: &Result<Response<Body>, ProxyError>) -> bool {
    match result {
        Ok(r) => matches!(
            r.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
        Err(ProxyError::Upstream(CallError::NotConnected(_))) => true,
        Err(_) => false,
    }
}

/// How long before the `attempt`-th retry: exponential, with full jitter
/// between half and all of it, so retries of many calls do not align.
pub fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1)).min(64);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
    full.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, body: &'static str) -> Request<Body> {
        let mut r = Request::new(Body::from(body));
        *r.method_mut() = method;
        r
    }

    #[test]
    fn only_idempotent_bodiless_calls_are_replayable() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::DELETE,
            Method::PUT,
        ] {
            assert!(replayable(&req(m.clone(), "")).is_some(), "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(
                replayable(&req(m.clone(), "")).is_none(),
                "{m} is never retried"
            );
        }
        assert!(
            replayable(&req(Method::PUT, "x")).is_none(),
            "a body is not kept"
        );
        let head = replayable(&req(Method::DELETE, "")).unwrap();
        assert_eq!(again(&head).method(), Method::DELETE);
    }

    #[test]
    fn the_budget_is_a_share_of_calls_and_the_attempts_are_capped() {
        let b = RetryBudget::new(2, 0.1);
        assert!(!b.spend(3), "past `retries`");
        let mut spent = 0;
        for _ in 0..1000 {
            b.earn();
            if b.spend(1) {
                spent += 1;
            }
        }
        assert!(
            (100..=103).contains(&spent),
            "{spent} retries for 1000 calls"
        );
        let off = RetryBudget::new(0, 0.1);
        off.earn();
        assert!(!off.spend(1));
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        for attempt in 1..=3 {
            let full = BACKOFF * 2u32.pow(attempt - 1);
            let d = backoff(attempt);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        let ok = |s: u16| Ok(Response::builder().status(s).body(Body::empty()).unwrap());
        assert!(worth_retrying(&ok(503)) && worth_retrying(&ok(502)) && worth_retrying(&ok(504)));
        assert!(
            !worth_retrying(&ok(500)) && !worth_retrying(&ok(429)) && !worth_retrying(&ok(200))
        );
    }
}
