//! The outermost stage: every call, forwarded or refused, gets its request id,
//! and is counted and written to the access log once, after its answer is known.
//!
//! Inner stages say what they learned (who called, how long it queued and
//! waited for Dastra, which refusal) through the call's [`Facts`], which this
//! stage puts in the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response};
use tokio::time::Instant;
use tower::Service;
use tracing::Instrument as _;

use super::facts::Facts;
use super::layer::AppStage;
use super::request_id::{request_id, X_REQUEST_ID};
use crate::app::App;
use crate::config::ANONYMOUS;
use crate::metrics::method_label;
use crate::trace::{hex, parse, CallTrace, Finished, TRACEPARENT};

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
        let facts = Arc::new(Facts::new(request_id, !fresh));
        req.extensions_mut().insert(facts.clone());
        ObserveFuture {
            call: self.inner.call(req).instrument(span.clone()),
            after: Some(After {
                app: self.app.clone(),
                facts,
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
    facts: Arc<Facts>,
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
        let facts = &self.facts;
        // Unless Dastra answered with an id of its own.
        resp.headers_mut()
            .entry(&X_REQUEST_ID)
            .or_insert_with(|| facts.request_id.clone());
        if let Some(w) = facts.wait_applied() {
            resp.headers_mut()
                .insert(super::prefer::PREFERENCE_APPLIED, super::prefer::applied(w));
        }
        let caller = facts.caller_if_known();
        let client = caller.map_or(ANONYMOUS, |c| &*c.identity.name);
        let status = resp.status();
        let elapsed = self.started.elapsed();
        let code = facts.code();
        // Refused before the access stage: the anonymous caller, as the
        // policy of the moment counts it.
        match caller {
            Some(c) => {
                (c.policy.calls).answered(c.identity.index, &self.method, status, code, elapsed)
            }
            None => (self.app.policy().calls).answered(None, &self.method, status, code, elapsed),
        }
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
                code,
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
            queue_ms = ms(facts.queue_wait()),
            upstream_ms = ms(facts.upstream()),
            "request"
        );
    }
}
