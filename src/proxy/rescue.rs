//! The rescue stage: any stage's error becomes its JSON envelope here, and
//! only here (`error.rs` holds the mapping). Errors never reach hyper, which
//! would drop the connection instead of answering.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::headers::add_ratelimit_fields;
use super::observe::Outcome;
use crate::error::ProxyError;

#[derive(Debug, Clone)]
pub(crate) struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Rescue<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness never fails: admission waits inside the call, not here.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let outcome = req.extensions().get::<Arc<Outcome>>().cloned();
        RescueFuture {
            inner: self.inner.call(req),
            outcome,
        }
    }
}

pin_project! {
    pub(crate) struct RescueFuture<F> {
        #[pin]
        inner: F,
        outcome: Option<Arc<Outcome>>,
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let err = match std::task::ready!(this.inner.poll(cx)) {
            Ok(resp) => return Poll::Ready(Ok(resp)),
            Err(e) => e,
        };
        let code = err.code();
        let mut resp = err.into_response();
        if let Some(outcome) = this.outcome {
            let mut rec = outcome.lock();
            rec.code = Some(code);
            if let Some((policy, state)) = rec.own_limit.take() {
                let h = resp.headers_mut();
                h.insert(http::HeaderName::from_static("ratelimit-policy"), policy);
                h.insert(http::HeaderName::from_static("ratelimit"), state);
            } else if let Some(a) = &rec.admission {
                add_ratelimit_fields(resp.headers_mut(), a);
            }
        }
        Poll::Ready(Ok(resp))
    }
}
