//! Synchronous stages as one generic layer: each looks at the request, may
//! annotate it, and either passes it on or refuses it with its own error.
//! No boxing, no allocation: the future is the inner one or a ready error.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::ProxyError;

/// One synchronous stage of the request path.
pub(crate) trait Check: Clone {
    type Error: Into<ProxyError>;
    fn check(&self, req: &mut Request<Body>) -> Result<(), Self::Error>;
}

/// Consecutive checks as one stage: each runs in order on the same request,
/// which then moves to the inner service once, not once per check.
impl<A, B, C, D> Check for (A, B, C, D)
where
    A: Check,
    B: Check,
    C: Check,
    D: Check,
{
    type Error = ProxyError;
    fn check(&self, req: &mut Request<Body>) -> Result<(), ProxyError> {
        self.0.check(req).map_err(Into::into)?;
        self.1.check(req).map_err(Into::into)?;
        self.2.check(req).map_err(Into::into)?;
        self.3.check(req).map_err(Into::into)
    }
}

/// Runs a [`Check`] before the inner service.
#[derive(Debug, Clone)]
pub(crate) struct CheckLayer<C>(pub(crate) C);

impl<C: Clone, S> Layer<S> for CheckLayer<C> {
    type Service = CheckService<C, S>;
    fn layer(&self, inner: S) -> Self::Service {
        CheckService {
            check: self.0.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CheckService<C, S> {
    check: C,
    inner: S,
}

impl<C, S> Service<Request<Body>> for CheckService<C, S>
where
    C: Check,
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = CheckFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match self.check.check(&mut req) {
            Ok(()) => CheckFuture::Inner {
                inner: self.inner.call(req),
            },
            Err(e) => CheckFuture::refused(e),
        }
    }
}

pin_project! {
    /// The inner service's future, or the stage's refusal.
    #[project = CheckProj]
    pub(crate) enum CheckFuture<F> {
        Inner { #[pin] inner: F },
        Refused { error: Option<ProxyError> },
    }
}

impl<F> CheckFuture<F> {
    /// The stage's answer without calling the inner service.
    pub(crate) fn refused(e: impl Into<ProxyError>) -> Self {
        CheckFuture::Refused {
            error: Some(e.into()),
        }
    }
}

impl<F> Future for CheckFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckProj::Inner { inner } => inner.poll(cx),
            CheckProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}
