//! The exporter: finished calls' spans queued (bounded: a slow or absent
//! collector never holds a call or grows memory), batched, and sent to the
//! collector as OTLP/HTTP protobuf by one task, off the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderValue, Method, Request, Uri, Version};
use http_body_util::BodyExt as _;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::proto::{
    ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans,
    Span, Value,
};
use crate::upstream::HttpClient;

/// Finished calls waiting for the exporter; beyond it spans are dropped (and
/// the drop logged), never the call held.
const QUEUE: usize = 4096;
/// Spans per request to the collector.
const BATCH: usize = 512;
/// How long spans wait for a batch to fill (OpenTelemetry's batch processor
/// waits 5 s; 1 s keeps a trace viewer close to live).
const EVERY: Duration = Duration::from_secs(1);
/// One export's bound: a collector that hangs delays the next batch, not calls.
const TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    Spans(Vec<Span>),
    Flush(oneshot::Sender<()>),
}

/// Where calls hand their spans; cloned into each sampled call.
#[derive(Debug, Clone)]
pub(super) struct Sender {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Sender {
    pub(super) fn send(&self, spans: Vec<Span>) {
        if self.tx.try_send(Msg::Spans(spans)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the exporter task for `endpoint` (`…/v1/traces`).
pub(super) fn spawn(endpoint: Uri, service: String, connect_timeout: Duration) -> Sender {
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    match crate::upstream::build_client(None, connect_timeout) {
        Ok(client) => {
            let resource = Resource {
                attributes: vec![KeyValue::new("service.name", Value::String(service))],
            };
            tokio::spawn(run(rx, client, endpoint, resource, dropped.clone()));
        }
        Err(e) => tracing::error!(error = %e, "tracing: no HTTP client; spans are dropped"),
    }
    Sender { tx, dropped }
}

async fn run(
    mut rx: mpsc::Receiver<Msg>,
    client: HttpClient,
    endpoint: Uri,
    resource: Resource,
    dropped: Arc<AtomicU64>,
) {
    let mut spans = Vec::new();
    let mut flushes = Vec::new();
    let take = |m: Msg, spans: &mut Vec<Span>, flushes: &mut Vec<_>| match m {
        Msg::Spans(s) => spans.extend(s),
        Msg::Flush(f) => flushes.push(f),
    };
    while let Some(first) = rx.recv().await {
        take(first, &mut spans, &mut flushes);
        let deadline = Instant::now() + EVERY;
        while spans.len() < BATCH && flushes.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => take(m, &mut spans, &mut flushes),
                Ok(None) | Err(_) => break,
            }
        }
        if !spans.is_empty() {
            let batch = std::mem::take(&mut spans);
            if let Err(e) = export(&client, &endpoint, &resource, batch).await {
                tracing::warn!(error = %e, endpoint = %endpoint, "tracing: the collector did not take a batch of spans");
            }
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                calls = lost,
                "tracing: spans dropped, the exporter's queue was full"
            );
        }
    }
}

async fn export(
    client: &HttpClient,
    endpoint: &Uri,
    resource: &Resource,
    spans: Vec<Span>,
) -> Result<(), String> {
    let body = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "dastra-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    }
    .encode_to_vec();
    let mut req = Request::new(Body::from(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = endpoint.clone();
    *req.version_mut() = Version::HTTP_11;
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    let call = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read to the end: the connection goes back to the pool.
        let _ = resp.into_body().collect().await;
        match status.is_success() {
            true => Ok(()),
            false => Err(format!("answered {status}")),
        }
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))?
}
