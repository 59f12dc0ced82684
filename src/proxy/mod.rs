//! Forwarding one call to Dastra, as SPEC §4 describes it: a tower service
//! stack built in one place, [`stack`], where each stage can answer by itself.
//!
//! Cheap refusals come before admission, so no refused call ever spends a
//! quota slot; the upstream is an injectable [`Upstream`], so the whole path
//! runs in unit tests without sockets.

mod admit;
mod buffer;
mod cached;
mod check;
mod cors;
mod facts;
#[cfg(test)]
mod fault_props;
mod forward;
mod headers;
mod inject;
mod layer;
mod lead;
mod observe;
#[cfg(test)]
mod order_tests;
mod prefer;
mod ratelimit;
#[cfg(test)]
mod ready_tests;
mod replay;
mod request_id;
mod rescue;
mod send;
mod share;
mod signals;
mod slots;
mod stages;
mod stale;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use http::{Request, Response};
use tower::{Service, ServiceBuilder};

use crate::app::App;
use crate::error::ProxyError;
use check::CheckLayer;
use layer::AppLayer;
use stages::{AccessStage, BodyLimitStage, GuardStage, TargetStage};

/// The future of an asynchronous stage: boxed once per stage, which also keeps
/// a queued call's future small.
pub(crate) type StageFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

pin_project_lite::pin_project! {
    /// A stage's future when most calls pass straight through: the inner
    /// stage's own future as it is (no box, no copy), or one of the stage's
    /// own, boxed.
    #[project = MaybeBoxedProj]
    pub(crate) enum MaybeBoxed<F> {
        Direct { #[pin] inner: F },
        Boxed { inner: StageFuture },
    }
}

/// The service that was polled ready for this call, leaving a clone in its
/// place (tower's idiom: a clone is not ready because the original was). A
/// stage that calls later (after a wait) or again asks `ready()` first, so a
/// stock layer inside the stack (a timeout, a concurrency limit) holds.
pub(crate) fn take_ready<S: Clone>(s: &mut S) -> S {
    let fresh = s.clone();
    std::mem::replace(s, fresh)
}

impl<F> MaybeBoxed<F> {
    pub(crate) fn boxed(
        f: impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static,
    ) -> Self {
        Self::Boxed { inner: Box::pin(f) }
    }
}

impl<F> Future for MaybeBoxed<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            MaybeBoxedProj::Direct { inner } => inner.poll(cx),
            MaybeBoxedProj::Boxed { inner } => inner.as_mut().poll(cx),
        }
    }
}

/// Builds the request path, outermost first. Requests go down the list,
/// answers come back up it. The type stays concrete (not boxed): every
/// connection takes a copy (called in place, see `server`), and a concrete
/// clone is a few `Arc`s.
pub fn stack(
    app: Arc<App>,
) -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    stack_with(app, tower::layer::util::Identity::new())
}

/// [`stack`] with `inside` between the credential stage and the forward
/// stage: the tests put a stock tower layer there (a concurrency limit,
/// which panics when called without being polled ready) to hold every
/// stage above to tower's readiness contract.
pub(crate) fn stack_with<L>(
    app: Arc<App>,
    inside: L,
) -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
       + Send
       + 'static
where
    L: tower::Layer<forward::Forward>,
    L::Service: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send,
{
    let limit = app.config.server.max_request_body;
    let upstream = forward::Forward::new(app.clone(), app.upstream.clone());
    ServiceBuilder::new()
        // Access log and metrics outside everything that can refuse, so every
        // refusal is logged and counted once, with its client and code. It
        // also gives the call its request id (a caller's is kept only if
        // sane), which every stage's logs carry and every answer returns,
        // error envelopes included.
        .layer(AppLayer::<observe::Observe>::new(app.clone()))
        // Browser callers: a CORS preflight is answered here (no key, no
        // quota, never sent to Dastra); an allowed origin's answers carry the
        // CORS grant, refusals included (so outside the rescue stage).
        .layer(cors::BrowserLayer(app.policies()))
        // The one place a stage's error becomes its JSON envelope (error.rs);
        // everything below answers with typed errors.
        .layer(rescue::RescueLayer)
        // The synchronous checks, in this order, as one stage (the request
        // moves on once):
        .layer(CheckLayer((
            // not an open proxy; hop-by-hop headers out before anything reads
            // them, and the caller's credentials marked sensitive (never
            // HPACK-indexed upstream, never printed by a Debug of the headers);
            TargetStage(app.target.clone()),
            // allow-lists and client keys: nothing below runs for a stranger;
            AccessStage(app.policies()),
            // the client's own rate before it can queue for the shared quota;
            GuardStage,
            // 413 by Content-Length before a slot is taken; while streaming, a
            // cut at the size limit (413) or after a stall of
            // body_read_timeout (408). Hand-written: tower-http's
            // RequestBodyLimit answers its own plain 413 instead of an error
            // the rescue stage can turn into our envelope.
            BodyLimitStage {
                limit,
                timeout: app.config.server.body_read_timeout,
            },
        )))
        // Small bodies are read before a slot is taken (a stalled upload
        // holds none), which also lets an OAuth2 401 be retried: outside
        // admission, so the retry takes a slot of its own.
        .layer(buffer::BufferLayer {
            limit,
            timeout: app.config.server.body_read_timeout,
            read_ahead: app.read_ahead.clone(),
        })
        // Quota savings before the slot: a cached answer, or the answer of an
        // identical GET in flight, spends none. A 2xx write evicts entries.
        .layer(AppLayer::<share::Share>::new(app.clone()))
        // The quota slot, held by this stage's future until the answer's head.
        .layer(AppLayer::<admit::Admit>::new(app.clone()))
        // The Dastra credential, injected as late as possible.
        .layer(inject::InjectLayer)
        .layer(inside)
        // The call as Dastra sees it (its URL, forwarding headers), within
        // upstream.timeout, through the injectable `Upstream`.
        .service(upstream)
}
