//! The browser stage, between the access log and the rescue stage (so
//! refusals' envelopes carry its headers too): a CORS preflight from an
//! address the allow-list admits is answered here, with no key asked and no
//! quota spent; a call from an allowed origin gets the CORS grant on its
//! answer, whatever the answer (`crate::cors` says what each holds).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::Layer;

use crate::access::ConnInfo;
use crate::app::Policy;
use crate::cors::{is_preflight, Cors};

/// The browser stage: it reads the policy of the moment (its CORS rules and
/// allow-lists), nothing else of the `App`.
#[derive(Debug, Clone)]
pub(crate) struct BrowserLayer(pub(crate) Arc<ArcSwap<Policy>>);

impl<S> Layer<S> for BrowserLayer {
    type Service = Browser<S>;
    fn layer(&self, inner: S) -> Browser<S> {
        Browser {
            policies: self.0.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Browser<S> {
    policies: Arc<ArcSwap<Policy>>,
    inner: S,
}

impl<S> Service<Request<Body>> for Browser<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BrowserFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Only browsers send `Origin`: every other call passes for one lookup.
        if !req.headers().contains_key(http::header::ORIGIN) {
            return BrowserFuture::Inner {
                inner: self.inner.call(req),
                origin: None,
            };
        }
        let policy = self.policies.load_full();
        if is_preflight(req.method(), req.headers()) {
            let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.ip());
            // An address the allow-list refuses goes on to the access stage's 403.
            if peer.is_some_and(|p| policy.access.admits_address(p, req.headers()).is_ok()) {
                let (status, headers) = policy.cors.preflight(req.headers());
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                return BrowserFuture::Answered {
                    resp: Some(Box::new(resp)),
                };
            }
        }
        let origin = policy.cors.allowed(req.headers()).cloned();
        BrowserFuture::Inner {
            inner: self.inner.call(req),
            origin,
        }
    }
}

pin_project! {
    #[project = BrowserProj]
    pub(crate) enum BrowserFuture<F> {
        Inner { #[pin] inner: F, origin: Option<HeaderValue> },
        // Boxed: every call's future is as large as its largest variant.
        Answered { resp: Option<Box<Response<Body>>> },
    }
}

impl<F, E> Future for BrowserFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BrowserProj::Answered { resp } => {
                Poll::Ready(Ok(*resp.take().expect("polled after its answer")))
            }
            BrowserProj::Inner { inner, origin } => {
                let mut resp = std::task::ready!(inner.poll(cx))?;
                if let Some(o) = origin.take() {
                    Cors::expose(o, resp.headers_mut());
                }
                Poll::Ready(Ok(resp))
            }
        }
    }
}
