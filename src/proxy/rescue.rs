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

use super::facts::{facts, Facts};
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
        match facts(&req) {
            Ok(f) => RescueFuture::Inner {
                facts: f.clone(),
                inner: self.inner.call(req),
            },
            Err(e) => RescueFuture::Misordered { error: Some(e) },
        }
    }
}

pin_project! {
    #[project = RescueProj]
    pub(crate) enum RescueFuture<F> {
        Inner { #[pin] inner: F, facts: Arc<Facts> },
        // Built without the observe stage outside: answered at once.
        Misordered { error: Option<ProxyError> },
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (err, facts) = match self.project() {
            RescueProj::Inner { inner, facts } => match std::task::ready!(inner.poll(cx)) {
                Ok(resp) => return Poll::Ready(Ok(resp)),
                Err(e) => (e, Some(facts)),
            },
            RescueProj::Misordered { error } => {
                (error.take().expect("polled after completion"), None)
            }
        };
        let code = err.code();
        let mut resp = err.into_response();
        if let Some(facts) = facts {
            facts.set_code(code);
            // Any failure after admission chose the quota says what it holds.
            if let Some(fields) = facts.failure_fields() {
                super::ratelimit::insert(resp.headers_mut(), fields);
            }
        }
        Poll::Ready(Ok(resp))
    }
}
