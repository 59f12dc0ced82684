//! The innermost stage: the call as Dastra sees it (its URL, forwarding
//! headers), sent through the injectable [`Upstream`] within
//! `upstream.timeout`, and the answer as the caller sees it (hop-by-hop
//! headers out, upstream URLs rewritten to ours).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use http::uri::PathAndQuery;
use http::{header, Method, Request, Response, Uri, Version};
use tokio::time::error::Elapsed;
use tokio::time::{Instant, Timeout};
use tower::Service;

use super::check::CheckFuture;
use super::facts::{facts, Facts};
use super::headers::{add_forwarding, rewrite_location};
use super::request_id::X_REQUEST_ID;
use crate::access::ConnInfo;
use crate::app::App;
use crate::body::BodyFault;
use crate::error::ProxyError;
use crate::target::{strip_hop_by_hop, TargetError};
use crate::trace::{CallTrace, SpanId, TRACEPARENT};
use crate::upstream::{CallError, Upstream, UpstreamFuture};

#[derive(Debug, Clone)]
pub(crate) struct Forward {
    app: Arc<App>,
    upstream: Upstream,
}

impl Forward {
    pub(crate) fn new(app: Arc<App>, upstream: Upstream) -> Self {
        Self { app, upstream }
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = CheckFuture<ForwardFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.upstream.poll_ready(cx).map_err(ProxyError::from)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let facts = match facts(&req) {
            Ok(f) => f.clone(),
            Err(e) => return CheckFuture::refused(e),
        };
        let (hops, trusted) = match facts.caller() {
            Ok(c) => (c.identity.forwarded.clone(), c.identity.via_trusted_proxy),
            Err(e) => return CheckFuture::refused(e),
        };
        let (mut parts, body) = req.into_parts();
        let ext = std::mem::take(&mut parts.extensions);
        // A fresh request id goes to Dastra (over an insane one of the caller's).
        if !facts.id_on_request {
            parts
                .headers
                .insert(&X_REQUEST_ID, facts.request_id.clone());
        }
        // This exchange's own span, named as the parent in what Dastra gets.
        let trace = ext.get::<Arc<CallTrace>>().map(|t| {
            let (id, traceparent) = t.upstream_context();
            parts.headers.insert(TRACEPARENT, traceparent);
            (t.clone(), id)
        });
        let conn = ext.get::<ConnInfo>();
        let fault = ext.get::<BodyFault>().cloned();
        let uri = match upstream_uri(&self.app, &parts.uri) {
            Ok(u) => u,
            Err(e) => return CheckFuture::refused(e),
        };
        parts.headers.remove(header::HOST);
        if let Some(conn) = conn {
            add_forwarding(&mut parts.headers, &hops, conn, trusted);
        }
        let method = parts.method.clone();
        let mut out = Request::new(body);
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        // The pool speaks HTTP/1.1 or HTTP/2 as ALPN decides, whatever the caller spoke.
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = parts.headers;
        let timeout = self.app.config.upstream.timeout;
        let sent_at = Instant::now();
        CheckFuture::Inner {
            inner: ForwardFuture {
                call: tokio::time::timeout_at(sent_at + timeout, self.upstream.call(out)),
                after: Some(After {
                    app: self.app.clone(),
                    facts,
                    method,
                    fault,
                    sent_at,
                    trace,
                }),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The upstream call within `upstream.timeout`, then the answer as the
    /// caller sees it. A future of its own: the stage above holds it in
    /// place (no allocation per call beyond the `Upstream`'s own).
    pub(crate) struct ForwardFuture {
        #[pin]
        call: Timeout<UpstreamFuture>,
        after: Option<After>,
    }
}

/// What the answer is finished with.
struct After {
    app: Arc<App>,
    facts: Arc<Facts>,
    method: Method,
    fault: Option<BodyFault>,
    sent_at: Instant,
    trace: Option<(Arc<CallTrace>, SpanId)>,
}

impl Future for ForwardFuture {
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.call.poll(cx));
        let mut after = this.after.take().expect("polled after completion");
        let trace = after
            .trace
            .take()
            .map(|t| (t, after.method.clone(), after.sent_at));
        let out = after.answered(result);
        if let Some(((t, id), method, sent_at)) = trace {
            let status = out.as_ref().map(|r| r.status().as_u16());
            t.upstream(id, sent_at, &method, status.map_err(ProxyError::code));
        }
        Poll::Ready(out)
    }
}

impl After {
    fn answered(
        self,
        result: Result<Result<Response<Body>, CallError>, Elapsed>,
    ) -> Result<Response<Body>, ProxyError> {
        let app = &self.app;
        let took = self.sent_at.elapsed();
        self.facts.set_upstream(took);
        app.metrics.upstream_took(&self.method, took);
        let resp = match result {
            Err(_) => return Err(CallError::Timeout(app.config.upstream.timeout).into()),
            Ok(Err(e)) => {
                let s = &app.config.server;
                if let Some(e) = self
                    .fault
                    .and_then(|f| f.get(s.max_request_body, s.body_read_timeout))
                {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "upstream call failed");
                return Err(e.into());
            }
            Ok(Ok(resp)) => resp,
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(v) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
                if let Some(rewritten) = rewrite_location(&app.config, v) {
                    parts.headers.insert(name, rewritten);
                }
            }
        }
        Ok(Response::from_parts(parts, body))
    }
}

fn upstream_uri(app: &App, uri: &Uri) -> Result<Uri, TargetError> {
    let u = &app.config.upstream;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(u.scheme.clone());
    parts.authority = Some(u.authority.clone());
    parts.path_and_query = Some(match uri.path_and_query() {
        // The caller's path as it is (a shared buffer, not parsed again).
        Some(pq) if u.base_path.is_empty() => pq.clone(),
        pq => {
            let pq = pq.map_or("/", |p| p.as_str());
            PathAndQuery::try_from(format!("{}{}", u.base_path, pq))
                .map_err(|e| TargetError::Malformed(e.to_string()))?
        }
    });
    Uri::from_parts(parts).map_err(|e| TargetError::Malformed(e.to_string()))
}
