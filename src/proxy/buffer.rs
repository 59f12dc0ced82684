//! The buffer stage: a small body of known length (up to 64 KiB) is read
//! whole *before* the call queues for quota. A stalled or slow upload then
//! spends nothing and holds no slot while it trickles in (it is cut after
//! `body_read_timeout`), and the call can be sent again: with OAuth2, a 401
//! to a token Dastra no longer takes is retried once with a fresh token —
//! for such a call and for a bodiless one (any method: a 401 means Dastra
//! did not process it), never for a call whose token was fetched for it.
//! It sits outside admission, so that retry takes its own quota slot.
//!
//! Larger bodies, and bodies without a length, stream once, after admission.

use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tower::{Layer, Service, ServiceExt as _};

use super::MaybeBoxed;
use crate::body::{BodyError, ReadAhead};
use crate::credential::Route;
use crate::error::ProxyError;

/// Bodies up to this size are read before admission and can be replayed.
pub(crate) const SMALL_BODY: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct BufferLayer {
    /// `server.max_request_body` and `body_read_timeout`, to name a body's fault.
    pub(crate) limit: u64,
    pub(crate) timeout: std::time::Duration,
    /// `server.max_buffered_body`, shared by every connection.
    pub(crate) read_ahead: std::sync::Arc<ReadAhead>,
}

impl<S> Layer<S> for BufferLayer {
    type Service = Buffer<S>;
    fn layer(&self, inner: S) -> Buffer<S> {
        Buffer {
            cfg: self.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Buffer<S> {
    cfg: BufferLayer,
    inner: S,
}

impl<S> Service<Request<Body>> for Buffer<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = MaybeBoxed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let small = req
            .body()
            .size_hint()
            .exact()
            .filter(|n| *n > 0 && *n <= SMALL_BODY);
        // Whether a 401 can be mended by a fresh credential (this call's is
        // OAuth2): then a bodiless call can be sent again after a 401 too.
        let credential = (req.extensions().get::<Route>())
            .filter(|r| r.credential.refreshes())
            .map(|r| r.credential.clone());
        let refreshes = credential.is_some();
        let bodiless = refreshes && req.body().is_end_stream();
        let len = match small {
            Some(n) => n,
            None if bodiless => 0,
            // Nothing to read ahead (empty, large or of unknown length). The
            // common GET goes through without an async stage of its own.
            None => {
                return MaybeBoxed::Direct {
                    inner: self.inner.call(req),
                }
            }
        };
        // Held until the call ends: the bytes live as long as a retry may need them.
        let hold = match self.cfg.read_ahead.take(len) {
            Ok(h) => h,
            Err(e) => return MaybeBoxed::boxed(std::future::ready(Err(e.into()))),
        };
        let mut inner = super::take_ready(&mut self.inner);
        let cfg = self.cfg.clone();
        MaybeBoxed::Boxed {
            inner: Box::pin(async move {
                let _hold = hold;
                let fault = req.extensions().get::<crate::body::BodyFault>().cloned();
                let (parts, body) = req.into_parts();
                let bytes: Bytes = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return Err(fault
                            .and_then(|f| f.get(cfg.limit, cfg.timeout))
                            .unwrap_or(BodyError::TooLarge(cfg.limit))
                            .into());
                    }
                };
                let again = |parts: &http::request::Parts| {
                    let mut r = Request::new(Body::from(bytes.clone()));
                    *r.method_mut() = parts.method.clone();
                    *r.uri_mut() = parts.uri.clone();
                    *r.version_mut() = parts.version;
                    *r.headers_mut() = parts.headers.clone();
                    *r.extensions_mut() = parts.extensions.clone();
                    r
                };
                // The body was read first: ready again before calling.
                if !refreshes {
                    // No retry can follow (only OAuth2 mends a 401): the
                    // request moves on whole, nothing copied.
                    let req = Request::from_parts(parts, Body::from(bytes));
                    return inner.ready().await?.call(req).await;
                }
                let resp = inner.ready().await?.call(again(&parts)).await?;
                let fresh = resp
                    .extensions()
                    .get::<super::facts::FreshToken>()
                    .is_some();
                let retry = credential.is_some_and(|c| c.token_refused(resp.status(), fresh));
                if !retry {
                    return Ok(resp);
                }
                tracing::info!("upstream answered 401; retrying once with a fresh token");
                inner.ready().await?.call(again(&parts)).await
            }),
        }
    }
}
