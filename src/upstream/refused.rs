//! What Dastra turned away over HTTP/2, and what may go again for it.

use axum::body::Body;
use http::Request;

/// Whether Dastra turned the stream away: `Some(true)` for REFUSED_STREAM
/// (never processed, RFC 9113 §8.7), `Some(false)` for a GOAWAY (processed
/// or not: h2 reports a stream cut by the closing connection the same way
/// as one above the last id), `None` for any other failure.
pub(super) fn unprocessed(e: &hyper::Error) -> Option<bool> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if !h2.is_remote() {
                return None;
            }
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) && !h2.is_go_away() {
                return Some(true);
            }
            return h2.is_go_away().then_some(false);
        }
        source = s.source();
    }
    None
}

/// A bodiless request's head, to send again.
pub(super) fn head_of(req: &Request<Body>) -> Request<Body> {
    let mut r = Request::new(Body::empty());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}
