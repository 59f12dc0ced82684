//! The replay stage (OAuth2 only): a small body of known length is read
//! before the call queues for quota, so that a 401 from a token Dastra no
//! longer takes can be retried once with a fresh token. It sits outside
//! admission, so the retry takes its own quota slot like any other send.

use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tower::{Layer, Service};

use super::StageFuture;
use crate::body::TooLarge;
use crate::error::ProxyError;

/// Bodies up to this size are kept so an OAuth2 call can be replayed after a 401.
pub(crate) const REPLAYABLE_BODY: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct ReplayLayer {
    /// `server.max_request_body`, named in the 413 of a body that lied about its length.
    pub(crate) limit: u64,
}

impl<S> Layer<S> for ReplayLayer {
    type Service = Replay<S>;
    fn layer(&self, inner: S) -> Replay<S> {
        Replay {
            limit: self.limit,
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Replay<S> {
    limit: u64,
    inner: S,
}

impl<S> Service<Request<Body>> for Replay<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = StageFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> StageFuture {
        let mut inner = self.inner.clone();
        let limit = self.limit;
        Box::pin(async move {
            // Only a body whose length is known and small is kept; anything
            // else streams once and a 401 is passed on.
            let small = req
                .body()
                .size_hint()
                .exact()
                .is_some_and(|n| n <= REPLAYABLE_BODY);
            if !small {
                return inner.call(req).await;
            }
            let (parts, body) = req.into_parts();
            let bytes: Bytes = body
                .collect()
                .await
                .map_err(|_| TooLarge(limit))?
                .to_bytes();
            let again = |parts: &http::request::Parts| {
                let mut r = Request::new(Body::from(bytes.clone()));
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                *r.extensions_mut() = parts.extensions.clone();
                r
            };
            let resp = inner.call(again(&parts)).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            tracing::info!("upstream answered 401; retrying once with a fresh token");
            inner.call(again(&parts)).await
        })
    }
}
