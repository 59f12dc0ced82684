//! Forwarding one call to Dastra, as SPEC §4 describes it.
//!
//! The stages run in this order, each able to answer by itself: target check
//! (not an open proxy), access (allow-list, client key), the client's own rate
//! guard, body size, quota admission, then the upstream call. Cheap refusals
//! come before admission so that no refused call ever spends a quota slot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::access::{Identity, ANONYMOUS};
use crate::admission::{Admission, Caller, Refusal};
use crate::app::App;
use crate::body::LimitedBody;
use crate::config::Upstream429;
use crate::error::ProxyError;

/// How long to hold sending after an upstream 429 that names no `Retry-After`.
pub const DEFAULT_UPSTREAM_PAUSE: Duration = Duration::from_secs(10);
/// Bodies up to this size are kept so an OAuth2 call can be replayed after a 401.
const REPLAYABLE_BODY: u64 = 64 * 1024;

/// The connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// What the access log and metrics say about one call.
#[derive(Debug, Default)]
struct Outcome {
    client: Option<Arc<str>>,
    queue_wait: Option<Duration>,
    upstream: Option<Duration>,
}

/// Serves one request: never fails, every error becomes its JSON response.
pub async fn serve(
    app: Arc<App>,
    conn: ConnInfo,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut outcome = Outcome::default();
    let span = tracing::info_span!("request", request_id = %request_id.to_str().unwrap_or(""), method = %method);
    let result = forward(&app, conn, req, &request_id, &mut outcome)
        .instrument(span.clone())
        .await;
    let client = outcome.client.clone().unwrap_or_else(|| ANONYMOUS.into());
    let mut resp = match result {
        Ok(resp) => resp,
        Err((err, admission)) => {
            app.metrics
                .rejected_total
                .with_label_values(&[&client, err.code()])
                .inc();
            let mut resp = err.into_response();
            if let Some(a) = admission {
                add_ratelimit_fields(resp.headers_mut(), &a);
            }
            resp
        }
    };
    resp.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), request_id.clone());
    let status = resp.status();
    let elapsed = started.elapsed();
    app.metrics
        .requests_total
        .with_label_values(&[&client, method.as_str(), status.as_str()])
        .inc();
    app.metrics
        .request_duration_seconds
        .with_label_values(&[&client, method.as_str()])
        .observe(elapsed.as_secs_f64());
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let _enter = span.enter();
    tracing::info!(
        target: "dastra_proxy::access",
        client = %client,
        path = %path,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        queue_ms = ms(outcome.queue_wait),
        upstream_ms = ms(outcome.upstream),
        "request"
    );
    resp
}

type Failure = (ProxyError, Option<Admission>);

async fn forward(
    app: &App,
    conn: ConnInfo,
    req: Request<hyper::body::Incoming>,
    request_id: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Response<Body>, Failure> {
    let policy = app.policy();
    let path_and_query = check_target(app, &req).map_err(|e| (e, None))?;
    let identity: Identity = policy
        .access
        .authorize(conn.peer.ip(), req.headers())
        .map_err(|e| (e, None))?;
    outcome.client = Some(identity.name.clone());
    policy.guard.check(&identity).map_err(|e| (e, None))?;

    let limit = app.config.server.max_request_body;
    let length = content_length(req.headers());
    if length.is_some_and(|n| n > limit) {
        return Err((ProxyError::BodyTooLarge { limit }, None));
    }

    let (parts, body) = req.into_parts();
    let admission = app.quotas.get(app.credential.quota_key(&parts.headers));
    let caller = Caller {
        name: identity.name.clone(),
        weight: identity.weight,
    };
    let fail = |e: ProxyError| (e, Some(admission.clone()));
    let take_slot = || async {
        admission
            .acquire(&caller)
            .await
            .map_err(|r| (refusal(r), Some(admission.clone())))
    };
    // Admission before the upstream request is prepared: a refused call costs
    // no more than the refusal.
    let mut first_slot = Some(take_slot().await?);

    let uri = upstream_uri(app, &path_and_query).map_err(fail)?;
    let mut headers = parts.headers;
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    add_forwarding(&mut headers, &identity, conn, request_id);

    // Small bodies of OAuth2 calls are kept so that a 401 can be retried once.
    let replayable =
        app.credential.refreshes() && !chunked && length.unwrap_or(0) <= REPLAYABLE_BODY;
    let (limited, overflowed) = LimitedBody::new(body, limit);
    let mut body = if replayable {
        let bytes = Box::pin(limited.collect())
            .await
            .map_err(|_| fail(ProxyError::BodyTooLarge { limit }))?
            .to_bytes();
        Outgoing::Kept(bytes)
    } else {
        Outgoing::Stream(Some(Body::new(limited)))
    };

    let mut retried = false;
    loop {
        let permit = match first_slot.take() {
            Some(p) => p,
            None => take_slot().await?,
        };
        outcome.queue_wait = Some(permit.waited());
        if !permit.waited().is_zero() {
            app.metrics
                .queue_wait_seconds
                .with_label_values(&[&caller.name])
                .observe(permit.waited().as_secs_f64());
        }
        // Only a call that may be retried after a 401 needs its headers twice.
        let mut h = if body.can_replay() {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        app.credential
            .inject(&mut h)
            .await
            .map_err(|e| fail(ProxyError::UpstreamUnreachable(e.to_string())))?;
        let used_auth = h.get(header::AUTHORIZATION).cloned();
        let mut out = Request::new(body.take());
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri.clone();
        *out.headers_mut() = h;

        let sent_at = Instant::now();
        let sent = permit.sent();
        let result =
            tokio::time::timeout(app.config.upstream.timeout, app.client.request(out)).await;
        let upstream_time = sent_at.elapsed();
        outcome.upstream = Some(upstream_time);
        app.metrics
            .upstream_duration_seconds
            .with_label_values(&[parts.method.as_str()])
            .observe(upstream_time.as_secs_f64());
        let resp = match result {
            Err(_) => {
                return Err(fail(ProxyError::UpstreamTimeout(
                    app.config.upstream.timeout,
                )))
            }
            Ok(Err(e)) => {
                if overflowed.load(Ordering::Acquire) {
                    return Err(fail(ProxyError::BodyTooLarge { limit }));
                }
                if e.is_connect() {
                    sent.refund();
                }
                tracing::warn!(error = %error_chain(&e), "upstream call failed");
                return Err(fail(ProxyError::UpstreamUnreachable(format!(
                    "cannot reach {}: {}",
                    app.config.upstream.origin(),
                    error_chain(&e)
                ))));
            }
            Ok(Ok(resp)) => {
                sent.landed();
                resp
            }
        };
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            app.metrics.upstream_429_total.inc();
            if policy.upstream_429 == Upstream429::Pause {
                let pause = retry_after(resp.headers()).unwrap_or(DEFAULT_UPSTREAM_PAUSE);
                tracing::warn!(
                    pause_ms = pause.as_millis() as u64,
                    "Dastra answered 429; holding all sends"
                );
                admission.pause_until(Instant::now() + pause);
            }
        }
        if resp.status() == StatusCode::UNAUTHORIZED && app.credential.refreshes() {
            app.credential.invalidate(used_auth.as_ref()).await;
            if !retried && body.can_replay() {
                retried = true;
                tracing::info!("upstream answered 401; retrying once with a fresh token");
                continue;
            }
        }
        return Ok(response(app, resp, &admission));
    }
}

/// The request body: streamed once, or kept in memory to allow one replay.
enum Outgoing {
    Stream(Option<Body>),
    Kept(Bytes),
}

impl Outgoing {
    fn take(&mut self) -> Body {
        match self {
            Outgoing::Stream(b) => b.take().unwrap_or_else(Body::empty),
            Outgoing::Kept(bytes) => Body::from(bytes.clone()),
        }
    }

    fn can_replay(&self) -> bool {
        matches!(self, Outgoing::Kept(_))
    }
}

fn refusal(r: Refusal) -> ProxyError {
    let now = Instant::now();
    match r {
        Refusal::QuotaExhausted { retry_at } => ProxyError::QuotaExhausted {
            retry_after: retry_at.saturating_duration_since(now),
        },
        Refusal::QueueFull { retry_at } => ProxyError::QueueFull {
            retry_after: retry_at.saturating_duration_since(now),
        },
        Refusal::ShuttingDown => ProxyError::ShuttingDown,
        Refusal::StoreUnavailable => ProxyError::StoreUnavailable,
    }
}

/// Origin-form targets only; HTTP/1 absolute-form only when it names this proxy or
/// Dastra itself. `CONNECT` never: this is not an open proxy.
fn check_target(app: &App, req: &Request<hyper::body::Incoming>) -> Result<String, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported: this is not an open proxy".into(),
        ));
    }
    let uri = req.uri();
    // HTTP/2 always carries `:authority`; only HTTP/1 absolute-form is a
    // forward-proxy request.
    let absolute_form = req.version() < http::Version::HTTP_2;
    if let Some(authority) = uri.authority().filter(|_| absolute_form) {
        let ours = [
            app.public_authority.as_deref(),
            Some(app.config.upstream.authority.as_str()),
        ];
        if !ours
            .iter()
            .flatten()
            .any(|a| a.eq_ignore_ascii_case(authority.as_str()))
        {
            return Err(ProxyError::BadRequest(format!(
                "absolute-form request to another host ({authority}) refused: this is not an open proxy"
            )));
        }
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    if !pq.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "the request target must start with /".into(),
        ));
    }
    Ok(pq.to_owned())
}

fn upstream_uri(app: &App, path_and_query: &str) -> Result<Uri, ProxyError> {
    let u = &app.config.upstream;
    Uri::builder()
        .scheme(u.scheme.clone())
        .authority(u.authority.clone())
        .path_and_query(if u.base_path.is_empty() {
            path_and_query.to_owned()
        } else {
            format!("{}{}", u.base_path, path_and_query)
        })
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("malformed request target: {e}")))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The hop-by-hop headers of RFC 9110 §7.6.1 (and the legacy
/// `Proxy-Connection` / `Keep-Alive`), parsed once.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers and those `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        if h.contains_key(n) {
            h.remove(n);
        }
    }
}

fn add_forwarding(h: &mut HeaderMap, id: &Identity, conn: ConnInfo, request_id: &HeaderValue) {
    // The chain is only extended when the peer was trusted to write it.
    let peer = conn.peer.ip();
    let chain = if id.addr != peer {
        h.get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(|v| format!("{v}, {peer}"))
    } else {
        None
    };
    let xff = chain.unwrap_or_else(|| peer.to_string());
    h.remove(header::FORWARDED);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    h.insert(HeaderName::from_static("x-request-id"), request_id.clone());
}

fn response(
    app: &App,
    resp: Response<hyper::body::Incoming>,
    admission: &Admission,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(v) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
            if let Some(rewritten) = rewrite_location(app, v) {
                parts.headers.insert(name, rewritten);
            }
        }
    }
    add_ratelimit_fields(&mut parts.headers, admission);
    Response::from_parts(parts, Body::new(body))
}

/// `https://api.dastra.eu/v1/x` → `<public_url>/v1/x`; other hosts untouched.
fn rewrite_location(app: &App, v: &str) -> Option<HeaderValue> {
    let u = &app.config.upstream;
    let origin = u.origin();
    let head = v.get(..origin.len())?;
    if !head.eq_ignore_ascii_case(&origin) {
        return None;
    }
    let rest = &v[origin.len()..];
    if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        return None;
    }
    let rest = rest.strip_prefix(u.base_path.as_str()).unwrap_or(rest);
    HeaderValue::from_str(&format!("{}{}", app.config.server.public_url, rest)).ok()
}

fn add_ratelimit_fields(h: &mut HeaderMap, admission: &Admission) {
    let (policy, state) = admission.ratelimit_fields();
    h.insert(HeaderName::from_static("ratelimit-policy"), policy);
    h.insert(HeaderName::from_static("ratelimit"), state);
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(3600)),
    )
}

/// Keeps a sane caller-sent id, or makes a unique one without a syscall.
fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    static PREFIX: LazyLock<u64> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{:016x}{n:016x}", *PREFIX))
        .expect("hex is a valid header value")
}

/// An error and its causes on one line: hyper's top-level messages are terse.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}
