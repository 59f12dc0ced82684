//! Which calls may be sent again after Dastra failed them, and their copy.
//!
//! Only idempotent methods without a body (GET, HEAD, OPTIONS, DELETE; a PUT
//! with an empty body), and only when Dastra answered 502, 503 or 504 or was
//! never reached. POST and PATCH never are, and a body is never kept.

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};

use crate::error::ProxyError;
use crate::upstream::CallError;

/// The head of a call that may be sent again, or `None`.
pub(super) fn replayable(req: &Request<Body>) -> Option<Request<()>> {
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
    // Every fact of the call (a hand-kept list of what the later stages
    // read once left the trace out of every retry).
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// A request again from its copied head (its body was empty).
pub(super) fn again(head: &Request<()>) -> Request<Body> {
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
pub(super) fn worth_retrying(result: &Result<Response<Body>, ProxyError>) -> bool {
    match result {
        Ok(r) => matches!(
            r.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
        Err(ProxyError::Upstream(CallError::NotConnected(_) | CallError::Interrupted(_))) => true,
        Err(_) => false,
    }
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
    fn only_502_503_504_and_unreached_are_worth_another_try() {
        let ok = |s: u16| Ok(Response::builder().status(s).body(Body::empty()).unwrap());
        assert!(worth_retrying(&ok(503)) && worth_retrying(&ok(502)) && worth_retrying(&ok(504)));
        assert!(
            !worth_retrying(&ok(500)) && !worth_retrying(&ok(429)) && !worth_retrying(&ok(200))
        );
        assert!(worth_retrying(&Err(
            CallError::NotConnected("x".into()).into()
        )));
        assert!(!worth_retrying(&Err(CallError::Timeout(
            std::time::Duration::ZERO
        )
        .into())));
    }
}
