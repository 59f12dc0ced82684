//! The credential stage: the caller's credential out, the proxy's in; after
//! an upstream 401 the token that was used is dropped so the next call (or
//! the buffer stage's one retry, `proxy/buffer.rs`) fetches a fresh one.

use std::task::{Context, Poll};

use axum::body::Body;
use http::{header, Request, Response};
use tower::{Service, ServiceExt as _};

use tower::Layer;

use super::MaybeBoxed;
use crate::error::ProxyError;

/// The Dastra credential on each call: the call's route names it, so the
/// stage needs nothing of the `App`.
#[derive(Debug, Clone)]
pub(crate) struct InjectLayer;

impl<S> Layer<S> for InjectLayer {
    type Service = Inject<S>;
    fn layer(&self, inner: S) -> Inject<S> {
        Inject { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Inject<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Inject<S>
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // A held key (or passthrough) is in place at once, and no 401 can be
        // mended by a fresh one: nothing to wait for before or after.
        let credential = match super::facts::route(&req) {
            Ok(route) => route.credential.clone(),
            Err(e) => return MaybeBoxed::boxed(std::future::ready(Err(e))),
        };
        if credential.inject_held(req.headers_mut()) {
            return MaybeBoxed::Direct {
                inner: self.inner.call(req),
            };
        }
        // A token may have to be fetched first (see `head`).
        crate::head::detach(&mut req);
        let mut inner = super::take_ready(&mut self.inner);
        MaybeBoxed::boxed(async move {
            let fresh = credential.inject(req.headers_mut()).await?;
            let refreshes = credential.refreshes();
            let used = refreshes
                .then(|| req.headers().get(header::AUTHORIZATION).cloned())
                .flatten();
            // The token fetch may have taken a while: ready again first.
            let mut resp = inner.ready().await?.call(req).await?;
            if fresh {
                resp.extensions_mut().insert(super::facts::FreshToken);
            }
            // A token fetched for this very call that meets a 401 is not the
            // problem: dropping it would only make every call fetch another.
            if credential.token_refused(resp.status(), fresh) {
                credential.invalidate(used.as_ref()).await;
            }
            Ok(resp)
        })
    }
}
