//! The savings stage, before admission so that what it answers spends no
//! quota: a cached answer (a `[[cache.rules]]` path, within its ttl), or the
//! answer of an identical GET already in flight. A 2xx write evicts what it
//! can have changed. Every answer that went through it says what happened,
//! as RFC 9211 `Cache-Status`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt as _;
use tokio::time::Instant;
use tower::{Service, ServiceExt as _};

use super::headers::add_ratelimit_fields;
use super::layer::AppStage;
use super::stale::or_stale;
use super::{MaybeBoxed, StageFuture};
use crate::cache::{
    not_modified, shareable, Cache, Join, Key, Landing, Request as Sharing, Snapshot, Watchers,
    NOT_MODIFIED_HEADERS,
};
use crate::error::ProxyError;
use crate::upstream::CallError;

/// Identical GETs share a call; cached answers are served.
#[derive(Debug, Clone)]
pub(crate) struct Share;

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

impl<S> Service<Request<Body>> for AppStage<Share, S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = MaybeBoxed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Computed once here (a SHA-256 in passthrough) and handed to admission.
        let quota = match self.app.credential.load().quota_key(req.headers()) {
            Ok(q) => q,
            Err(e) => return MaybeBoxed::boxed(std::future::ready(Err(e.into()))),
        };
        super::stages::outcome(&req).lock().quota = Some(quota);
        let cache = self.app.cache.clone();
        let cfg = cache.config();
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            if method == Method::OPTIONS || cfg.rules.is_empty() {
                return MaybeBoxed::Direct {
                    inner: self.inner.call(req),
                };
            }
            let mut inner = super::take_ready(&mut self.inner);
            let path = req.uri().path().to_owned();
            return MaybeBoxed::boxed(async move {
                let resp = inner.call(req).await?;
                if resp.status().is_success() {
                    cache.evict(&quota, &path);
                }
                Ok(resp)
            });
        }
        let ttl = cache.ttl_for(req.uri().path());
        if ttl.is_none() && !cfg.coalesce {
            // Straight through: the inner stage's future as it is.
            return MaybeBoxed::Direct {
                inner: self.inner.call(req),
            };
        }
        // A cookie, a range or a precondition: an answer for this caller alone.
        let scan = crate::cache::scan(req.headers());
        let (kind, no_cache) = (scan.kind, scan.no_cache);
        let coalesce = cfg.coalesce
            && method == Method::GET
            && !no_cache
            && kind == Sharing::Plain
            && bodiless(&req);
        if kind == Sharing::Own || (ttl.is_none() && !coalesce) {
            return MaybeBoxed::Direct {
                inner: self.inner.call(req),
            };
        }
        let key = Key::from_scan(
            quota,
            req.uri()
                .path_and_query()
                .map_or(b"/".as_slice(), |p| p.as_str().as_bytes()),
            &scan,
            req.headers(),
        );
        let head = method == Method::HEAD;
        if ttl.is_some() && !no_cache {
            if let Some((snap, left)) = cache.get(&key, Instant::now()) {
                cache.saved("cached");
                let status = format!("dastra-proxy; hit; ttl={}", left.as_secs());
                let mut resp = if kind == Sharing::Conditional && not_modified(req.headers(), &snap)
                {
                    respond_not_modified(&snap, &status)
                } else {
                    respond(&snap, head, &status)
                };
                // Computed now, never replayed from the entry (SPEC §9.5).
                if let Some(a) = self.app.quotas.existing(&key.quota) {
                    add_ratelimit_fields(resp.headers_mut(), &a);
                }
                return MaybeBoxed::boxed(std::future::ready(Ok(resp)));
            }
        }
        if kind == Sharing::Conditional {
            // Its answer may be a 304 meant for it alone: neither kept nor shared.
            return MaybeBoxed::Direct {
                inner: self.inner.call(req),
            };
        }
        let max_entry = cfg.max_entry;
        // Only a GET the cache keeps can be answered stale.
        let stale = !cfg.stale_if_error.is_zero() && ttl.is_some() && !head;
        // HEAD never fills the cache (no body to keep); no-cache refreshes it.
        let ttl = ttl.filter(|_| !head);
        let fwd = if no_cache { Fwd::Request } else { Fwd::Miss };
        if !coalesce {
            let call = self.inner.call(req);
            if stale {
                let fut = lead(call, cache.clone(), key.clone(), ttl, None, max_entry, fwd);
                return MaybeBoxed::boxed(or_stale(fut, cache, key, self.app.clone()));
            }
            return MaybeBoxed::boxed(lead(call, cache, key, ttl, None, max_entry, fwd));
        }
        // Out of quota in reject mode: the 429 comes at once and costs less
        // than a flight to share it in (a cached answer was served above).
        if self
            .app
            .quotas
            .existing(&key.quota)
            .is_some_and(|a| a.refuses_now())
        {
            if stale {
                let call = self.inner.call(req);
                return MaybeBoxed::boxed(or_stale(call, cache, key, self.app.clone()));
            }
            return MaybeBoxed::Direct {
                inner: self.inner.call(req),
            };
        }
        match cache.join(key.clone()) {
            Join::Follow(follower) => {
                // It waits for the leader's answer (see `head`).
                crate::head::detach(&mut req);
                let mut inner = super::take_ready(&mut self.inner);
                let app = self.app.clone();
                MaybeBoxed::boxed(async move {
                    let landing = follower.landing().await;
                    drop(follower);
                    match landing {
                        Landing::Answer(snap) => {
                            cache.saved("coalesced");
                            let mut resp =
                                respond(&snap, false, "dastra-proxy; fwd=uri-miss; collapsed");
                            if let Some(a) = app.quotas.existing(&key.quota) {
                                add_ratelimit_fields(resp.headers_mut(), &a);
                            }
                            Ok(resp)
                        }
                        Landing::Failed(e) if stale => {
                            let failed = std::future::ready(Err(ProxyError::Shared(e)));
                            or_stale(failed, cache, key, app).await
                        }
                        Landing::Failed(e) => Err(ProxyError::Shared(e)),
                        // Too large to share, or the lead broke off: a call of its own.
                        Landing::Own => {
                            let mut resp = inner.ready().await?.call(req).await?;
                            set_status(&mut resp, "dastra-proxy; fwd=uri-miss");
                            Ok(resp)
                        }
                    }
                })
            }
            Join::Lead(flight) => {
                let followers = flight.watchers();
                // `lead` boxed as it is: an async block around it would hold
                // its arguments twice (1.8 KB per waiting GET).
                let call = self.inner.call(req);
                let fut: StageFuture = if stale {
                    let (c, k) = (cache.clone(), key.clone());
                    let led = lead(call, c, k, ttl, Some(flight), max_entry, fwd);
                    Box::pin(or_stale(led, cache, key, self.app.clone()))
                } else {
                    Box::pin(lead(call, cache, key, ttl, Some(flight), max_entry, fwd))
                };
                MaybeBoxed::boxed(Detach {
                    fut: Some(fut),
                    followers,
                })
            }
        }
    }
}

/// The leader's call, polled by its own caller (no task, no channel on the
/// common path). If that caller goes away while followers wait, the rest of
/// the call runs in a task of its own, so their answer still comes; with
/// nobody following it is dropped, and a queued call spends no quota.
struct Detach {
    fut: Option<StageFuture>,
    followers: Watchers,
}

impl Future for Detach {
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err(
                CallError::Failed("polled after its answer".into()).into()
            ));
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl Drop for Detach {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        if self.followers.count() > 0 {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = fut.await;
                });
            }
        }
    }
}

/// Makes the call, reads its answer whole when it fits `max_entry`, hands it
/// to the followers and keeps it for `ttl`; a larger answer streams to this
/// caller alone and the followers make their own calls.
/// Takes the call already made (not the service and the request): an async
/// fn keeps every argument for its whole life, and the request is large.
async fn lead<F>(
    call: F,
    cache: Arc<Cache>,
    key: Key,
    ttl: Option<std::time::Duration>,
    mut flight: Option<crate::cache::Flight>,
    max_entry: u64,
    fwd: Fwd,
) -> Result<Response<Body>, ProxyError>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    // A plain function of the flight, not a closure that would hold it twice.
    fn land(flight: &mut Option<crate::cache::Flight>, l: Landing) {
        if let Some(f) = flight.take() {
            f.land(l);
        }
    }
    let resp = match call.await {
        Ok(r) => r,
        Err(e) => {
            let e = Arc::new(e);
            land(&mut flight, Landing::Failed(e.clone()));
            return Err(ProxyError::Shared(e));
        }
    };
    let miss = fwd.status(false);
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_entry) {
        land(&mut flight, Landing::Own);
        let mut resp = resp;
        set_status(&mut resp, miss);
        return Ok(resp);
    }
    let (parts, mut body) = resp.into_parts();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                len += data.len() as u64;
                chunks.push(data);
                if len > max_entry {
                    land(&mut flight, Landing::Own);
                    let rest =
                        futures_util::stream::iter(chunks.into_iter().map(Ok::<_, axum::Error>))
                            .chain(body.into_data_stream());
                    let mut resp = Response::from_parts(parts, Body::from_stream(rest));
                    set_status(&mut resp, miss);
                    return Ok(resp);
                }
            }
            Some(Err(e)) => {
                // The answer broke off: this caller sees what came, then the error.
                land(&mut flight, Landing::Own);
                let got = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, axum::Error>))
                    .chain(futures_util::stream::iter([Err(e)]));
                return Ok(Response::from_parts(parts, Body::from_stream(got)));
            }
        }
    }
    // Copied out: hyper's chunks and header values are slices of its read
    // buffers, which a kept slice would hold whole (7.6 KB per cached 1 KiB
    // answer before this copy, scripts/bench-cache).
    let body = Bytes::from(chunks.concat());
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    for (k, v) in &parts.headers {
        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
            headers.append(k.clone(), v);
        }
    }
    let snap = Arc::new(Snapshot {
        status: parts.status,
        headers,
        body,
    });
    if !shareable(&snap) {
        // A cookie, `private`, or a `Vary` outside the key: this caller's
        // alone; whoever followed makes a call of its own.
        land(&mut flight, Landing::Own);
        return Ok(respond_with(&snap, false, miss, true));
    }
    let stored = ttl.is_some_and(|t| cache.put(key, snap.clone(), t, Instant::now()));
    land(&mut flight, Landing::Answer(snap.clone()));
    let status = if stored { fwd.status(true) } else { miss };
    Ok(respond_with(&snap, false, status, true))
}

/// Why a call went upstream, as `Cache-Status` says it (static strings:
/// no formatting per call).
#[derive(Debug, Clone, Copy)]
enum Fwd {
    /// Not in the cache (or no rule for it).
    Miss,
    /// The caller asked for a fresh answer (`Cache-Control: no-cache`).
    Request,
}

impl Fwd {
    fn status(self, stored: bool) -> &'static str {
        match (self, stored) {
            (Fwd::Miss, false) => "dastra-proxy; fwd=uri-miss",
            (Fwd::Miss, true) => "dastra-proxy; fwd=uri-miss; stored",
            (Fwd::Request, false) => "dastra-proxy; fwd=request",
            (Fwd::Request, true) => "dastra-proxy; fwd=request; stored",
        }
    }
}

/// A GET without a body: only those are the same call as another.
fn bodiless(req: &Request<Body>) -> bool {
    !req.headers().contains_key(header::TRANSFER_ENCODING)
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// A shared answer for one caller. The RateLimit fields it was stored with
/// are dropped: they describe the window then, not now.
fn respond(snap: &Snapshot, head: bool, status: &str) -> Response<Body> {
    respond_with(snap, head, status, false)
}

/// `own`: the answer of this caller's own call, whose RateLimit fields are current.
pub(super) fn respond_with(snap: &Snapshot, head: bool, status: &str, own: bool) -> Response<Body> {
    let body = if head {
        Body::empty()
    } else {
        Body::from(snap.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = snap.status;
    let h = resp.headers_mut();
    for (k, v) in &snap.headers {
        if own || (k != "ratelimit" && k != "ratelimit-policy") {
            h.append(k, v.clone());
        }
    }
    set_status(&mut resp, status);
    resp
}

/// `304 Not Modified` from a stored 200 whose validator the caller holds.
fn respond_not_modified(snap: &Snapshot, status: &str) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = http::StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    for name in &NOT_MODIFIED_HEADERS {
        for v in snap.headers.get_all(name) {
            h.append(name, v.clone());
        }
    }
    set_status(&mut resp, status);
    resp
}

fn set_status(resp: &mut Response<Body>, status: &str) {
    if let Ok(v) = HeaderValue::from_str(status) {
        resp.headers_mut().insert(CACHE_STATUS, v);
    }
}
