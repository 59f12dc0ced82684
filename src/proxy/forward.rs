//! The innermost stage: the call as Dastra sees it (its URL, forwarding
//! headers), sent through the injectable [`Upstream`] within
//! `upstream.timeout`, and the answer as the caller sees it (hop-by-hop
//! headers out, upstream URLs rewritten to ours).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::uri::PathAndQuery;
use http::{header, Request, Response, Uri, Version};
use tokio::time::Instant;
use tower::Service;

use super::headers::{add_forwarding, rewrite_location, X_REQUEST_ID};
use super::observe::Outcome;
use super::StageFuture;
use crate::access::ConnInfo;
use crate::app::App;
use crate::error::ProxyError;
use crate::target::{strip_hop_by_hop, TargetError};
use crate::upstream::{CallError, Upstream};

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
    type Future = StageFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.upstream.poll_ready(cx).map_err(ProxyError::from)
    }

    fn call(&mut self, req: Request<Body>) -> StageFuture {
        let app = self.app.clone();
        let (mut parts, body) = req.into_parts();
        let ext = std::mem::take(&mut parts.extensions);
        let outcome = ext.get::<Arc<Outcome>>().cloned();
        let conn = ext.get::<ConnInfo>().copied();
        let (hops, trusted, fault) = outcome.as_ref().map_or((Vec::new(), false, None), |o| {
            let rec = o.lock();
            // A fresh request id goes to Dastra (over an insane one of the caller's).
            if let (false, Some(id)) = (rec.id_on_request, &rec.request_id) {
                parts.headers.insert(&X_REQUEST_ID, id.clone());
            }
            let (hops, trusted) = rec.identity.as_ref().map_or((Vec::new(), false), |i| {
                (i.forwarded.clone(), i.via_trusted_proxy)
            });
            (hops, trusted, rec.body_fault.clone())
        });
        let uri = match upstream_uri(&app, &parts.uri) {
            Ok(u) => u,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
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
        let call = self.upstream.call(out);
        Box::pin(async move {
            let sent_at = Instant::now();
            let timeout = app.config.upstream.timeout;
            let result = tokio::time::timeout(timeout, call).await;
            let took = sent_at.elapsed();
            if let Some(o) = &outcome {
                o.lock().upstream = Some(took);
            }
            app.metrics.upstream_took(&method, took);
            let resp = match result {
                Err(_) => return Err(CallError::Timeout(timeout).into()),
                Ok(Err(e)) => {
                    let s = &app.config.server;
                    if let Some(e) =
                        fault.and_then(|f| f.get(s.max_request_body, s.body_read_timeout))
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
        })
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
