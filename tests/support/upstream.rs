//! A mock Dastra over real TLS: it stands for the network, and records every
//! request it receives (method, target, headers, body size, arrival time).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::TestPki;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub target: String,
    pub version: Version,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub at: Instant,
}

#[derive(Default)]
pub struct MockState {
    pub log: Mutex<Vec<Recorded>>,
    pub token_calls: AtomicUsize,
    pub token_fail: AtomicBool,
    pub token_expires_in: AtomicU64,
    pub revoked: Mutex<HashSet<String>>,
    pub in_flight: AtomicUsize,
    /// After this many requests a connection is shut down gracefully (an
    /// HTTP/2 GOAWAY, like nginx's `keepalive_requests`); 0: never.
    pub requests_per_conn: AtomicUsize,
    /// While nonzero, every call but the token endpoint's is answered with
    /// this status (a Dastra outage the test turns on and off).
    pub fail_status: AtomicUsize,
    /// While set, every other call (the 1st, 3rd, ...) is answered 503.
    pub fail_alternate: AtomicBool,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub pki: TestPki,
    pub state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// HTTP/2 and HTTP/1.1 offered by ALPN.
    pub async fn start() -> Self {
        Self::start_with(&[b"h2", b"http/1.1"]).await
    }

    pub async fn start_with(alpn: &[&[u8]]) -> Self {
        let pki = TestPki::new();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState::default());
        state.token_expires_in.store(3600, Ordering::SeqCst);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let served = Arc::new(AtomicUsize::new(0));
                    let enough = Arc::new(tokio::sync::Notify::new());
                    let (count, notify) = (served.clone(), enough.clone());
                    let limit = st.requests_per_conn.load(Ordering::SeqCst);
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == limit {
                            notify.notify_one();
                        }
                        async move { Ok::<_, Infallible>(handle(st, addr, req).await) }
                    });
                    let builder = Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = enough.notified() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            pki,
            state,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    /// Arrival times of calls whose target starts with `prefix`.
    pub fn arrivals(&self, prefix: &str) -> Vec<Instant> {
        self.log()
            .into_iter()
            .filter(|r| r.target.starts_with(prefix))
            .map(|r| r.at)
            .collect()
    }
}

fn text(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::from(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

async fn handle(st: Arc<MockState>, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    st.in_flight.fetch_add(1, Ordering::SeqCst);
    // Count the body as it streams by; never hold it whole (uploads are large).
    let mut body = body;
    let mut len = 0u64;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(d) = frame.data_ref() {
            len += d.len() as u64;
            if kept.len() < 1 << 20 {
                kept.extend_from_slice(d);
            }
        }
    }
    // This request's number in the log, taken as it is logged: read later,
    // two calls arriving together could both see the same count.
    let number = {
        let mut log = st.log.lock().unwrap();
        log.push(Recorded {
            method: parts.method.clone(),
            target: target.clone(),
            version: parts.version,
            authority: parts
                .uri
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    parts
                        .headers
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default(),
            headers: parts.headers.clone(),
            body_len: len,
            at,
        });
        log.len()
    };
    let resp = route(
        &st,
        number,
        addr,
        &parts.method,
        &path,
        &target,
        &parts.headers,
        kept,
        len,
    )
    .await;
    st.in_flight.fetch_sub(1, Ordering::SeqCst);
    resp
}

#[allow(clippy::too_many_arguments)]
async fn route(
    st: &MockState,
    number: usize,
    addr: SocketAddr,
    method: &Method,
    path: &str,
    target: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
    len: u64,
) -> Response<Body> {
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if st
            .revoked
            .lock()
            .unwrap()
            .contains(auth.trim_start_matches("Bearer "))
            && path != "/connect/token"
        {
            return text(401, "token revoked");
        }
    }
    if st.fail_alternate.load(Ordering::SeqCst) && number % 2 == 1 && path != "/connect/token" {
        return text(503, "every other call fails");
    }
    let failing = st.fail_status.load(Ordering::SeqCst);
    if failing != 0 && path != "/connect/token" {
        return text(failing as u16, "outage");
    }
    if let Some(code) = headers.get("x-mock-status").and_then(|v| v.to_str().ok()) {
        return text(code.parse().unwrap_or(500), format!("status {code}"));
    }
    if let Some(spec) = headers.get("x-mock-answer").and_then(|v| v.to_str().ok()) {
        return answer_as_told(number, spec, headers);
    }
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match seg.as_slice() {
        ["echo"] => {
            let mut r = text(200, body);
            if let Some(ct) = headers.get("content-type") {
                r.headers_mut().insert("content-type", ct.clone());
            }
            r
        }
        ["status", code] => {
            let mut r = text(code.parse().unwrap_or(500), format!("status {code}"));
            if *code == "429" {
                r.headers_mut().insert("retry-after", "1".parse().unwrap());
            }
            r
        }
        // Dastra's own view of the quota: X-RateLimit-* or IETF RateLimit.
        ["ratelimit", kind, r, t] => {
            let mut res = text(200, "limited");
            let h = res.headers_mut();
            if *kind == "ietf" {
                h.insert(
                    "ratelimit",
                    format!("\"default\";r={r};t={t}").parse().unwrap(),
                );
            } else {
                h.insert("x-ratelimit-remaining", r.parse().unwrap());
                h.insert("x-ratelimit-reset", t.parse().unwrap());
            }
            res
        }
        ["retry-after", secs] => {
            let mut r = text(429, "slow down");
            r.headers_mut().insert("retry-after", secs.parse().unwrap());
            r
        }
        ["redirect"] => {
            let mut r = text(302, "");
            let h = r.headers_mut();
            h.insert(
                "location",
                format!("https://localhost:{}/v1/after?x=1", addr.port())
                    .parse()
                    .unwrap(),
            );
            h.insert(
                "content-location",
                format!("https://localhost:{}/v1/cl", addr.port())
                    .parse()
                    .unwrap(),
            );
            r
        }
        ["elsewhere"] => {
            let mut r = text(302, "");
            r.headers_mut()
                .insert("location", "https://example.org/x".parse().unwrap());
            r
        }
        ["hop"] => {
            let mut r = text(200, "hop");
            let h = r.headers_mut();
            h.insert("x-hop", "1".parse().unwrap());
            h.insert("connection", "x-hop".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-end-to-end", "1".parse().unwrap());
            r
        }
        ["download", n] => {
            let total: u64 = n.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_stream(total, chunk);
            Response::new(Body::new(StreamBody::new(stream)))
        }
        ["upload"] => text(200, len.to_string()),
        // /seq/<ms>/...: answers after <ms> with this request's number in the
        // log (which call answered proves who shared it); `big` makes a 2 MiB
        // body; the other flags are in `seq_reply`.
        ["seq", ms, rest @ ..] => {
            let n = number;
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            let body = if rest.contains(&"big") {
                vec![b'b'; 2 << 20]
            } else {
                format!("id={n} target={target}").into_bytes()
            };
            seq_reply(number, rest, headers, body)
        }
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            text(200, "slow")
        }
        ["connect", "token"] => {
            let n = st.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if st.token_fail.load(Ordering::SeqCst) {
                return text(500, "token endpoint down");
            }
            let form = String::from_utf8_lossy(&body);
            let auth_ok = headers
                .get("authorization")
                .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Basic "));
            if !form.contains("grant_type=client_credentials")
                || !form.contains("scope=api1")
                || !auth_ok
            {
                return text(400, "bad token request");
            }
            let exp = st.token_expires_in.load(Ordering::SeqCst);
            let mut r = text(
                200,
                format!(r#"{{"access_token":"tok-{n}","expires_in":{exp},"token_type":"Bearer"}}"#),
            );
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        _ => {
            let n = st.log.lock().unwrap().len();
            let v = serde_json::json!({ "method": method.as_str(), "target": target, "len": len, "n": n });
            let mut r = text(200, v.to_string());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    }
}

/// What a request said that its answer may depend on, as `x-seen` reports it.
pub fn seen(headers: &HeaderMap) -> String {
    [
        "accept",
        "accept-encoding",
        "accept-language",
        "cookie",
        "range",
        "if-none-match",
    ]
    .iter()
    .map(|h| {
        let v = headers.get(*h).and_then(|v| v.to_str().ok()).unwrap_or("-");
        format!("{h}={v}")
    })
    .collect::<Vec<_>>()
    .join(";")
}

/// A `/seq` answer as an origin that honours its request would give it:
/// `x-seen` says what it was answering, `If-None-Match: "v1"` gets 304 when
/// the path has `etag`, a `Range` gets 206, `gzip` in `Accept-Encoding` gets
/// `Content-Encoding: gzip`. Path flags add headers: `nostore`, `private`,
/// `nocache`, `mustreval` (Cache-Control), `setcookie`, `varystar`, `varycookie`,
/// `varyalang`, `etag`.
fn seq_reply(n: usize, flags: &[&str], req: &HeaderMap, body: Vec<u8>) -> Response<Body> {
    let etag = flags.contains(&"etag");
    let inm = req.get("if-none-match").and_then(|v| v.to_str().ok());
    let mut r = if etag && inm == Some("\"v1\"") {
        text(304, "")
    } else if req.contains_key("range") {
        text(206, body)
    } else {
        text(200, body)
    };
    let h = r.headers_mut();
    h.insert("x-seen", seen(req).parse().unwrap());
    let gzip = req
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if gzip {
        h.insert("content-encoding", "gzip".parse().unwrap());
    }
    if let Some(l) = req.get("accept-language") {
        h.insert("content-language", l.clone());
    }
    for (flag, name, value) in [
        ("nostore", "cache-control", "no-store".to_owned()),
        ("private", "cache-control", "private, max-age=60".to_owned()),
        ("nocache", "cache-control", "no-cache".to_owned()),
        ("setcookie", "set-cookie", format!("session={n}")),
        ("varystar", "vary", "*".to_owned()),
        ("varycookie", "vary", "Accept, Cookie".to_owned()),
        ("varyalang", "vary", "Accept-Language".to_owned()),
        ("etag", "etag", "\"v1\"".to_owned()),
        ("mustreval", "cache-control", "must-revalidate".to_owned()),
    ] {
        if flags.contains(&flag) {
            h.append(name, value.parse().unwrap());
        }
    }
    r
}

/// An answer with the headers `x-mock-answer` lists (`name=value|name=value`;
/// `status=N` sets the status)
/// and the request's number as its body; `304` with those headers when the
/// request's `If-None-Match` is the listed `etag` (an origin that honours it).
fn answer_as_told(number: usize, spec: &str, req: &HeaderMap) -> Response<Body> {
    let pairs: Vec<(&str, &str)> = spec.split('|').filter_map(|p| p.split_once('=')).collect();
    let etag = pairs.iter().find(|(k, _)| *k == "etag").map(|(_, v)| *v);
    let inm = req.get("if-none-match").and_then(|v| v.to_str().ok());
    let status = pairs
        .iter()
        .find(|(k, _)| *k == "status")
        .map_or(200, |(_, v)| v.parse().unwrap());
    let mut r = match etag.is_some() && inm == etag {
        true => text(304, ""),
        false => text(status, format!("n={number}")),
    };
    for (k, v) in pairs.into_iter().filter(|(k, _)| *k != "status") {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// `total` bytes in 64 KiB chunks, produced as they are read.
fn futures_stream(
    total: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    struct Gen {
        left: u64,
        chunk: Bytes,
    }
    impl futures_core::Stream for Gen {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let n = self.left.min(self.chunk.len() as u64) as usize;
            self.left -= n as u64;
            std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
        }
    }
    Gen { left: total, chunk }
}
