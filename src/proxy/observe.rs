//! The outermost stage: every call, forwarded or refused, gets its request id,
//! and is counted and written to the access log once, after its answer is known.
//!
//! Inner stages say what they learned (who called, how long it queued and
//! waited for Dastra, which refusal) through the [`Outcome`] this stage puts
//! in the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Method, Request, Response};
use tokio::time::Instant;
use tower::Service;
use tracing::Instrument as _;

use super::layer::AppStage;
use super::request_id::{request_id, X_REQUEST_ID};
use crate::access::Identity;
use crate::admission::Admission;
use crate::app::{App, Policy};
use crate::config::ANONYMOUS;
use crate::metrics::method_label;
use crate::trace::{hex, parse, CallTrace, Finished, TRACEPARENT};

/// What the inner stages learned about one call; the one per-call value in
/// the request's extensions, so stages share it without more allocations.
#[derive(Debug, Default)]
pub(crate) struct Outcome(Mutex<Record>);

#[derive(Debug, Default)]
pub(crate) struct Record {
    pub(crate) client: Option<Arc<str>>,
    /// Who called, once the access stage knows.
    pub(crate) identity: Option<Identity>,
    /// The config generation this call runs under, loaded once.
    pub(crate) policy: Option<Arc<Policy>>,
    /// The quota key's admission, once chosen: refusals carry its RateLimit fields.
    pub(crate) admission: Option<Admission>,
    /// A refusal by the client's own window: its `RateLimit-Policy` and
    /// `RateLimit`, carried instead of the credential's.
    pub(crate) own_limit: Option<(HeaderValue, HeaderValue)>,
    pub(crate) queue_wait: Option<Duration>,
    pub(crate) upstream: Option<Duration>,
    /// The call's `X-Request-Id`, for its answer and for Dastra.
    pub(crate) request_id: Option<HeaderValue>,
    /// Whether the request carries it already (the caller's own); a fresh
    /// one is written by the forward stage, so a refused call never is.
    pub(crate) id_on_request: bool,
    /// The error code the rescue stage answered with.
    pub(crate) code: Option<&'static str>,
    /// The wait the caller's `Prefer: wait=N` was held to (admission writes it).
    pub(crate) wait_applied: Option<Duration>,
}

impl Outcome {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Record> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The access log and metrics of every call.
#[derive(Debug, Clone)]
pub(crate) struct Observe;

impl<S> Service<Request<Body>> for AppStage<Observe, S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let method = req.method().clone();
        // Kept for the access log's path only when that log is on; a copy, so
        // a waiting call does not keep hyper's read buffer (see `head`).
        let trace = self.app.tracer.start(req.headers());
        let path = (trace.as_ref().is_some_and(|t| t.sampled)
            || tracing::enabled!(target: "dastra_proxy::access", tracing::Level::INFO))
        .then(|| Box::<str>::from(req.uri().path()));
        let (request_id, fresh) = request_id(req.headers());
        let span = tracing::info_span!(
            "request",
            request_id = request_id.to_str().unwrap_or(""),
            method = method_label(&method),
            trace_id = tracing::field::Empty,
        );
        // Every log line of the call names its trace: ours, or (tracing
        // off) the one the caller's `traceparent` names, which goes to
        // Dastra as it came.
        let trace_id = match &trace {
            Some(t) => Some(t.trace_id),
            // Looked up only when the call's log lines are written at all.
            None if span.is_disabled() => None,
            None => req
                .headers()
                .get(&TRACEPARENT)
                .and_then(parse)
                .map(|p| p.trace_id),
        };
        if let Some(id) = trace_id {
            span.record("trace_id", hex(&id));
        }
        if let Some(t) = &trace {
            req.extensions_mut().insert(t.clone());
        }
        let outcome = Arc::new(Outcome(Mutex::new(Record {
            request_id: Some(request_id),
            id_on_request: !fresh,
            ..Record::default()
        })));
        req.extensions_mut().insert(outcome.clone());
        ObserveFuture {
            call: self.inner.call(req).instrument(span.clone()),
            after: Some(After {
                app: self.app.clone(),
                outcome,
                method,
                started,
                path,
                span,
                trace,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The call, then its count and log line. A future of its own rather
    /// than a boxed `async` block: hyper keeps each connection's call future
    /// in place, so the outermost stage needs no allocation per call.
    pub(crate) struct ObserveFuture<F> {
        #[pin]
        call: tracing::instrument::Instrumented<F>,
        after: Option<After>,
    }
}

/// What the answer is counted and logged with.
struct After {
    app: Arc<App>,
    outcome: Arc<Outcome>,
    method: Method,
    started: Instant,
    path: Option<Box<str>>,
    span: tracing::Span,
    trace: Option<Arc<CallTrace>>,
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.call.poll(cx))?;
        let after = this.after.take().expect("polled after completion");
        after.answered(&mut resp);
        Poll::Ready(Ok(resp))
    }
}

impl After {
    fn answered(self, resp: &mut Response<Body>) {
        let rec = std::mem::take(&mut *self.outcome.lock());
        // Unless Dastra answered with an id of its own.
        if let Some(id) = rec.request_id {
            resp.headers_mut().entry(&X_REQUEST_ID).or_insert(id);
        }
        if let Some(w) = rec.wait_applied {
            resp.headers_mut()
                .insert(super::prefer::PREFERENCE_APPLIED, super::prefer::applied(w));
        }
        let client = rec.client.as_deref().unwrap_or(ANONYMOUS);
        let status = resp.status();
        let elapsed = self.started.elapsed();
        // Refused before the access stage: the anonymous caller, as the
        // policy of the moment counts it.
        let policy = rec.policy.unwrap_or_else(|| self.app.policy());
        let index = rec.identity.as_ref().and_then(|i| i.index);
        policy
            .calls
            .answered(index, &self.method, status, rec.code, elapsed);
        if let Some(t) = &self.trace {
            t.finish(Finished {
                method: &self.method,
                path: self.path.as_deref(),
                status: status.as_u16(),
                client,
                request_id: resp
                    .headers()
                    .get(&X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok()),
                code: rec.code,
            });
        }
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let _enter = self.span.enter();
        tracing::info!(
            target: "dastra_proxy::access",
            client = %client,
            path = self.path.as_deref().unwrap_or(""),
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            queue_ms = ms(rec.queue_wait),
            upstream_ms = ms(rec.upstream),
            "request"
        );
    }
}
