//! OpenTelemetry traces of each call (SPEC §9.4, `[tracing]`): the caller's
//! W3C `traceparent` continued (or a trace started), sent on to Dastra, and
//! three kinds of span — the call, its wait for quota, each exchange with
//! Dastra — exported over OTLP/HTTP by a task of their own.
//!
//! Off (`otlp_endpoint` empty), nothing here runs per call: the caller's
//! `traceparent` goes to Dastra as it came, and its trace id is logged.

mod context;
mod export;
mod proto;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method};
use tokio::time::Instant;

use crate::config::TracingConfig;
pub use context::{hex, parse, Parent, SpanId, TraceId, TRACEPARENT};
use proto::{KeyValue, Span, Value};

/// Starts each call's trace; shared by all calls.
#[derive(Debug, Default)]
pub struct Tracer {
    on: Option<On>,
}

#[derive(Debug)]
struct On {
    /// A started trace is sampled when its id's low 64 bits fall below this
    /// (as OpenTelemetry's ratio sampler: replicas agree on a trace).
    below: u64,
    out: export::Sender,
}

impl Tracer {
    /// With an endpoint, spawns the exporter: must run inside a tokio runtime.
    pub fn new(cfg: &TracingConfig, connect_timeout: Duration) -> Self {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Self::default();
        };
        let below = match cfg.sample_ratio {
            r if r >= 1.0 => u64::MAX,
            r => (r * u64::MAX as f64) as u64,
        };
        let out = export::spawn(endpoint.clone(), cfg.service_name.clone(), connect_timeout);
        Self {
            on: Some(On { below, out }),
        }
    }

    /// The call's trace, continued from the caller's `traceparent` or new;
    /// `None` when tracing is off.
    pub fn start(&self, headers: &HeaderMap) -> Option<Arc<CallTrace>> {
        let on = self.on.as_ref()?;
        let parent = headers.get(&TRACEPARENT).and_then(parse);
        let (trace_id, parent_span, sampled) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
            None => {
                let id = context::new_trace_id();
                let low = u64::from_be_bytes(id[8..].try_into().expect("8 bytes"));
                (id, None, on.below == u64::MAX || low < on.below)
            }
        };
        Some(Arc::new(CallTrace {
            trace_id,
            span_id: context::new_span_id(),
            parent: parent_span,
            sampled,
            start_ns: unix_nanos(),
            started: Instant::now(),
            spans: Mutex::new(Vec::new()),
            out: sampled.then(|| on.out.clone()),
        }))
    }

    /// Sends what is batched and waits for the collector's answer (at shutdown).
    pub async fn flush(&self) {
        if let Some(on) = &self.on {
            on.out.flush().await;
        }
    }
}

/// One call's trace: its ids, and its spans until the call is answered.
#[derive(Debug)]
pub struct CallTrace {
    pub trace_id: TraceId,
    /// The call's own span: the parent of its quota waits and upstream exchanges.
    pub span_id: SpanId,
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent: Option<SpanId>,
    /// Whether spans are recorded; the ids go to Dastra either way.
    pub sampled: bool,
    start_ns: u64,
    started: Instant,
    spans: Mutex<Vec<Span>>,
    out: Option<export::Sender>,
}

impl CallTrace {
    /// A span id for one exchange with Dastra and the `traceparent` it goes with.
    pub fn upstream_context(&self) -> (SpanId, HeaderValue) {
        let id = context::new_span_id();
        (id, context::header(&self.trace_id, &id, self.sampled))
    }

    /// One exchange with Dastra ended: `status` is its answer's, or why none came.
    pub fn upstream(&self, id: SpanId, from: Instant, method: &Method, status: Result<u16, &str>) {
        if !self.sampled {
            return;
        }
        let mut attrs = vec![KeyValue::new(
            "http.request.method",
            Value::String(method.as_str().to_owned()),
        )];
        let error = match status {
            Ok(s) => {
                attrs.push(KeyValue::new(
                    "http.response.status_code",
                    Value::Int(s.into()),
                ));
                (s >= 500).then(|| s.to_string())
            }
            Err(e) => Some(e.to_owned()),
        };
        self.child(id, "upstream", proto::KIND_CLIENT, from, attrs, error);
    }

    /// One wait for a quota slot: where the call stood in the queue, how
    /// long it waited, and whether it got the slot.
    pub fn quota_wait(&self, from: Instant, position: usize, outcome: &str) {
        if !self.sampled {
            return;
        }
        let waited = Instant::now().saturating_duration_since(from);
        let attrs = vec![
            KeyValue::new("dastra_proxy.queue.position", Value::Int(position as i64)),
            KeyValue::new(
                "dastra_proxy.queue.wait_ms",
                Value::Double(waited.as_secs_f64() * 1000.0),
            ),
            KeyValue::new(
                "dastra_proxy.queue.outcome",
                Value::String(outcome.to_owned()),
            ),
        ];
        let error = (outcome != "admitted").then(|| outcome.to_owned());
        let id = context::new_span_id();
        self.child(id, "quota wait", proto::KIND_INTERNAL, from, attrs, error);
    }

    fn child(
        &self,
        id: SpanId,
        name: &str,
        kind: i32,
        from: Instant,
        attributes: Vec<KeyValue>,
        error: Option<String>,
    ) {
        let span = Span {
            trace_id: self.trace_id.to_vec(),
            span_id: id.to_vec(),
            parent_span_id: self.span_id.to_vec(),
            name: name.to_owned(),
            kind,
            start_time_unix_nano: self.at(from),
            end_time_unix_nano: self.at(Instant::now()),
            attributes,
            status: error.map(status),
            flags: proto::FLAGS_HAS_IS_REMOTE | 1,
        };
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(span);
    }

    /// The call was answered: its span and its children go to the exporter.
    pub fn finish(&self, call: Finished<'_>) {
        let Some(out) = &self.out else { return };
        let mut attrs = vec![
            KeyValue::new(
                "http.request.method",
                Value::String(call.method.as_str().to_owned()),
            ),
            KeyValue::new("http.response.status_code", Value::Int(call.status.into())),
            KeyValue::new("dastra_proxy.client", Value::String(call.client.to_owned())),
        ];
        if let Some(path) = call.path {
            attrs.push(KeyValue::new("url.path", Value::String(path.to_owned())));
        }
        if let Some(id) = call.request_id {
            attrs.push(KeyValue::new(
                "dastra_proxy.request_id",
                Value::String(id.to_owned()),
            ));
        }
        if let Some(code) = call.code {
            attrs.push(KeyValue::new("error.type", Value::String(code.to_owned())));
        }
        let remote = match self.parent {
            Some(_) => proto::FLAGS_IS_REMOTE,
            None => 0,
        };
        let mut spans = std::mem::take(&mut *self.spans.lock().unwrap_or_else(|e| e.into_inner()));
        spans.push(Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: call.method.as_str().to_owned(),
            kind: proto::KIND_SERVER,
            start_time_unix_nano: self.start_ns,
            end_time_unix_nano: self.at(Instant::now()),
            attributes: attrs,
            status: (call.status >= 500).then(|| status(call.code.unwrap_or("").to_owned())),
            flags: proto::FLAGS_HAS_IS_REMOTE | remote | 1,
        });
        out.send(spans);
    }

    /// A tokio instant as Unix nanoseconds: the call's start read once from
    /// the wall clock, then the monotonic clock (a wall-clock step mid-call
    /// does not bend its spans).
    fn at(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.started);
        self.start_ns.saturating_add(since.as_nanos() as u64)
    }
}

/// What the call span says of the answered call.
#[derive(Debug)]
pub struct Finished<'a> {
    pub method: &'a Method,
    pub path: Option<&'a str>,
    pub status: u16,
    pub client: &'a str,
    pub request_id: Option<&'a str>,
    /// The refusal's error code, if the proxy answered with one.
    pub code: Option<&'a str>,
}

fn status(message: String) -> proto::Status {
    proto::Status {
        message,
        code: proto::STATUS_ERROR,
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
