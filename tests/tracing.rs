//! Traces (SPEC §9.4, `[tracing]`) through the real stack and the real
//! binary, judged by an in-test OTLP/HTTP collector that decodes what the
//! proxy sends with opentelemetry-proto's generated types, and by the
//! `traceparent` the mock Dastra receives.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use support::*;

/// A caller's trace: its id and the caller's own span.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector: every span of every export, and the resource's
/// `service.name` of each.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let me = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                state
                                    .paths
                                    .lock()
                                    .unwrap()
                                    .push(req.uri().path().to_owned());
                                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                for rs in export.resource_spans {
                                    for kv in rs.resource.unwrap().attributes {
                                        if kv.key == "service.name" {
                                            if let Some(Value::StringValue(s)) =
                                                kv.value.and_then(|v| v.value)
                                            {
                                                state.services.lock().unwrap().push(s);
                                            }
                                        }
                                    }
                                    for ss in rs.scope_spans {
                                        state.spans.lock().unwrap().extend(ss.spans);
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (me, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` spans arrived.
    async fn wait_for(&self, n: usize) -> Vec<Span> {
        for _ in 0..100 {
            if self.spans().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.spans()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn tracing_section(collector: SocketAddr, ratio: f64) -> String {
    format!(
        "[tracing]\notlp_endpoint = \"http://{collector}\"\nsample_ratio = {ratio}\n\
         service_name = \"gateway-test\"\n"
    )
}

/// The `traceparent` the mock Dastra received with the call to `path`.
fn sent_traceparent(up: &MockUpstream, path: &str) -> Option<String> {
    up.log()
        .iter()
        .find(|r| r.target == path)
        .and_then(|r| r.headers.get("traceparent"))
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A call that queued for quota: its trace continues the caller's, and
/// shows side by side how long it waited for a slot (and where it stood in
/// the queue) and how long Dastra took, each span under the call's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_calls_trace_shows_its_quota_wait_beside_dastras_time() {
    let (collector, at) = Collector::start().await;
    let up = MockUpstream::start().await;
    let extra = format!(
        "{}[[limits]]\nrequests = 1\nper = \"600ms\"\n\
         [admission]\nmax_wait = \"5s\"\n",
        tracing_section(at, 1.0)
    );
    let p = TestProxy::start(&up, &extra).await;
    let c = client();
    let first = get(&c, &p.url("/v1/first")).await;
    assert_eq!(first.status, 200);
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let second = send(
        &c,
        Method::GET,
        &p.url("/v1/second"),
        &[("traceparent", caller.as_str())],
        Body::empty(),
    )
    .await;
    assert_eq!(second.status, 200);
    // Shutting down flushes what is batched.
    p.shutdown().await;
    let spans = collector.wait_for(6).await;
    assert_eq!(
        collector.services.lock().unwrap()[0],
        "gateway-test",
        "the resource names the service"
    );
    assert_eq!(collector.paths.lock().unwrap()[0], "/v1/traces");

    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == CALLER_TRACE)
        .collect();
    assert_eq!(
        in_trace.len(),
        3,
        "call, quota wait, upstream: {in_trace:#?}"
    );
    let call = in_trace
        .iter()
        .find(|s| s.kind == 2)
        .expect("a server span");
    assert_eq!(
        hex(&call.parent_span_id),
        CALLER_SPAN,
        "continues the caller's span"
    );
    assert_eq!(
        attr(call, "url.path"),
        Some(&Value::StringValue("/v1/second".into()))
    );
    assert_eq!(
        attr(call, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    let wait = in_trace
        .iter()
        .find(|s| s.name == "quota wait")
        .expect("a quota-wait span");
    let upstream = in_trace
        .iter()
        .find(|s| s.kind == 3)
        .expect("a client span");
    for child in [wait, upstream] {
        assert_eq!(child.parent_span_id, call.span_id, "under the call's span");
        assert!(child.start_time_unix_nano >= call.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= call.end_time_unix_nano);
    }
    let Some(Value::DoubleValue(waited_ms)) = attr(wait, "dastra_proxy.queue.wait_ms") else {
        panic!("wait_ms: {wait:?}")
    };
    assert!(
        *waited_ms > 300.0,
        "the second call waited for the 600 ms window to free: {waited_ms} ms"
    );
    let span_ms = (wait.end_time_unix_nano - wait.start_time_unix_nano) as f64 / 1e6;
    assert!(
        (span_ms - waited_ms).abs() < 50.0,
        "{span_ms} vs {waited_ms}"
    );
    assert_eq!(
        attr(wait, "dastra_proxy.queue.position"),
        Some(&Value::IntValue(0)),
        "first in the queue"
    );
    assert_eq!(
        attr(wait, "dastra_proxy.queue.outcome"),
        Some(&Value::StringValue("admitted".into()))
    );
    assert!(
        upstream.start_time_unix_nano >= wait.end_time_unix_nano,
        "Dastra's time starts when the wait ends"
    );
    assert_eq!(
        attr(upstream, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    // Dastra got the trace, with the upstream span as its parent.
    assert_eq!(
        sent_traceparent(&up, "/v1/second").unwrap(),
        format!("00-{CALLER_TRACE}-{}-01", hex(&upstream.span_id))
    );
    // The first call started a trace of its own, also sent on to Dastra.
    let own = sent_traceparent(&up, "/v1/first").unwrap();
    let own_trace = &own[3..35];
    assert_ne!(own_trace, CALLER_TRACE);
    assert!(spans
        .iter()
        .any(|s| hex(&s.trace_id) == own_trace && s.kind == 2 && s.parent_span_id.is_empty()));
}

/// A refusal is traced too: the quota-wait span names the refusal, and
/// nothing reached Dastra.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_calls_wait_span_names_the_refusal() {
    let (collector, at) = Collector::start().await;
    let up = MockUpstream::start().await;
    let extra = format!(
        "{}[[limits]]\nrequests = 1\nper = \"1m\"\n\
         [admission]\non_limit = \"reject\"\n",
        tracing_section(at, 1.0)
    );
    let p = TestProxy::start(&up, &extra).await;
    let c = client();
    assert_eq!(get(&c, &p.url("/v1/a")).await.status, 200);
    let refused = get(&c, &p.url("/v1/b")).await;
    assert_eq!(refused.status, 429);
    p.shutdown().await;
    let spans = collector.wait_for(5).await;
    let call = spans
        .iter()
        .find(|s| attr(s, "url.path") == Some(&Value::StringValue("/v1/b".into())))
        .expect("the refused call's span");
    assert_eq!(
        attr(call, "http.response.status_code"),
        Some(&Value::IntValue(429))
    );
    assert_eq!(
        attr(call, "error.type"),
        Some(&Value::StringValue("quota_exhausted".into()))
    );
    let wait = spans
        .iter()
        .find(|s| s.trace_id == call.trace_id && s.name == "quota wait")
        .expect("its wait span");
    assert_eq!(
        attr(wait, "dastra_proxy.queue.outcome"),
        Some(&Value::StringValue("quota_exhausted".into()))
    );
    assert!(!spans
        .iter()
        .any(|s| s.trace_id == call.trace_id && s.kind == 3));
    assert_eq!(up.count(), 1);
}

/// `sample_ratio = 0`: the proxy records none of the traces it starts, yet
/// Dastra still gets a `traceparent` (unsampled); a caller's sampled trace
/// is still recorded (its sampling decision is the caller's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ratio_decides_for_new_traces_and_the_caller_for_its_own() {
    let (collector, at) = Collector::start().await;
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, &tracing_section(at, 0.0)).await;
    let c = client();
    for i in 0..5 {
        assert_eq!(get(&c, &p.url(&format!("/v1/n{i}"))).await.status, 200);
    }
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = send(
        &c,
        Method::GET,
        &p.url("/v1/c"),
        &[("traceparent", caller.as_str())],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    p.shutdown().await;
    let spans = collector.wait_for(3).await;
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == CALLER_TRACE),
        "only the caller's sampled trace: {spans:#?}"
    );
    assert_eq!(spans.len(), 3);
    let tp = sent_traceparent(&up, "/v1/n0").unwrap();
    assert!(
        tp.starts_with("00-") && tp.ends_with("-00"),
        "unsampled: {tp}"
    );
}

/// Off (no endpoint): the caller's `traceparent` reaches Dastra exactly as
/// sent, and none is made up for a call without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_the_callers_traceparent_passes_as_it_came() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, "").await;
    let c = client();
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    send(
        &c,
        Method::GET,
        &p.url("/v1/with"),
        &[("traceparent", caller.as_str()), ("tracestate", "x=1")],
        Body::empty(),
    )
    .await;
    get(&c, &p.url("/v1/without")).await;
    assert_eq!(sent_traceparent(&up, "/v1/with").unwrap(), caller);
    let with = up
        .log()
        .into_iter()
        .find(|r| r.target == "/v1/with")
        .unwrap();
    assert_eq!(with.headers["tracestate"], "x=1");
    assert_eq!(sent_traceparent(&up, "/v1/without"), None);
}

/// A collector that is down costs calls nothing: they are answered, and
/// the proxy shuts down in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_holds_no_call() {
    let up = MockUpstream::start().await;
    let closed = free_port();
    let p = TestProxy::start(&up, &tracing_section(closed, 1.0)).await;
    let c = client();
    for i in 0..20 {
        assert_eq!(get(&c, &p.url(&format!("/v1/{i}"))).await.status, 200);
    }
    tokio::time::timeout(Duration::from_secs(10), p.shutdown())
        .await
        .expect("shutdown does not wait on the collector");
}

/// A send retried after Dastra's 503 is the same call: it goes out with the
/// call's trace too, as a span of its own (the retry's copy of the request
/// once carried only the facts the later stages read, and lost the trace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_carries_the_calls_trace() {
    let up = MockUpstream::start().await;
    up.state
        .fail_alternate
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let p = TestProxy::start(&up, &tracing_section(free_port(), 1.0)).await;
    assert_eq!(get(&client(), &p.url("/v1/retried")).await.status, 200);
    let sent: Vec<String> = up
        .log()
        .iter()
        .filter(|r| r.target == "/v1/retried")
        .map(|r| r.headers["traceparent"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent.len(), 2, "one failed send and its retry: {sent:?}");
    assert_eq!(sent[0][3..35], sent[1][3..35], "one trace: {sent:?}");
    assert_ne!(
        sent[0][36..52],
        sent[1][36..52],
        "a span per send: {sent:?}"
    );
}

/// The real binary's JSON access log names the trace of each call: the one
/// Dastra received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_carries_the_trace_id_dastra_got() {
    let (_collector, at) = Collector::start().await;
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}[log]\nformat = \"json\"\n", tracing_section(at, 1.0));
    let mut proxy = BinProxy::start(dir.path(), &up, &extra);
    proxy.relaunch_logging(dir.path(), "info");
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/logged")).await.status, 200);
    proxy.signal("TERM");
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("/v1/logged"))
        .unwrap_or_else(|| panic!("an access line: {logs}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let logged = v["span"]["trace_id"]
        .as_str()
        .expect("trace_id in the line");
    let sent = sent_traceparent(&up, "/v1/logged").unwrap();
    assert_eq!(logged, &sent[3..35]);
}
