//! The savings stage, before admission so that what it answers spends no
//! quota: a stored answer still fresh for this caller (a `[[cache.rules]]`
//! path, RFC 9111), or the answer of an identical GET already in flight. A
//! stale entry is revalidated, not fetched blind; a write evicts what it can
//! have changed. Every answer that went through it says what happened, as
//! RFC 9211 `Cache-Status`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use http::{header, HeaderValue, Method, Request, Response};
use tokio::time::Instant;
use tower::{Service, ServiceExt as _};

use super::cached::{
    ask_if_changed, fixed, respond, respond_not_modified, respond_with, set_status, Fwd,
};
use super::layer::AppStage;
use super::lead::{lead, Keep};
use super::ratelimit::add_quota_fields;
use super::stale::or_stale;
use super::{MaybeBoxed, StageFuture};
use crate::app::App;
use crate::cache::{not_modified, Join, Key, Landing, Request as Sharing, Stored, Watchers};
use crate::error::ProxyError;
use crate::upstream::CallError;

/// Identical GETs share a call; cached answers are served.
#[derive(Debug, Clone)]
pub(crate) struct Share;

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
        // Computed once here (a SHA-256 in passthrough) and handed to
        // admission; a configured credential's key is the route's own.
        let (quota, computed) = match super::facts::route(&req) {
            Ok(route) => (
                route.quota_key(req.headers()).map_err(ProxyError::from),
                route.computes_key(),
            ),
            Err(e) => (Err(e), false),
        };
        let quota = match quota {
            Ok(q) => q,
            Err(e) => return MaybeBoxed::boxed(std::future::ready(Err(e))),
        };
        if computed {
            req.extensions_mut().insert(super::facts::CallQuota(quota));
        }
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
            let app = self.app.clone();
            return MaybeBoxed::boxed(async move {
                let resp = inner.call(req).await?;
                if resp.status().is_success() || resp.status().is_redirection() {
                    cache.evict(&quota, &path);
                    // What the write says it changed too (RFC 9111 §4.4).
                    for name in [header::LOCATION, header::CONTENT_LOCATION] {
                        if let Some(p) = resp.headers().get(name).and_then(|v| same_origin(&app, v))
                        {
                            cache.evict(&quota, &p);
                        }
                    }
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
        let (kind, asks) = (scan.kind, scan.directives);
        let coalesce = cfg.coalesce
            && method == Method::GET
            && !asks.no_cache
            && !asks.no_store
            && kind == Sharing::Plain
            && bodiless(&req);
        if kind == Sharing::Own && ttl.is_some() && asks.only_if_cached {
            // Its own call, never the cache's: nothing stored may answer it.
            return MaybeBoxed::boxed(std::future::ready(Err(ProxyError::NotCached)));
        }
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
        let mut fwd = if asks.no_cache {
            Fwd::Request
        } else {
            Fwd::Miss
        };
        let mut base = None;
        if ttl.is_some() {
            let now = Instant::now();
            match cache.lookup(&key, req.headers(), now) {
                Some(stored) if stored.freshness.usable(&asks, now) => {
                    let resp = self.hit(&key, &stored, &req, kind, None, now);
                    return MaybeBoxed::boxed(std::future::ready(Ok(resp)));
                }
                Some(stored)
                    if stored
                        .freshness
                        .usable_behind(&asks, now, cfg.stale_while_revalidate) =>
                {
                    let stale = Some(fixed("dastra-proxy; hit; stale"));
                    let resp = self.hit(&key, &stored, &req, kind, stale, now);
                    if kind == Sharing::Plain && !head {
                        let keep = Keep {
                            ttl: ttl.unwrap_or_default(),
                            req: Arc::new(req.headers().clone()),
                            asks,
                            sent: SystemTime::now(),
                            base: stored.freshness.validators.then_some(stored),
                        };
                        self.revalidate_behind(req, key, keep, cfg.max_entry);
                    }
                    return MaybeBoxed::boxed(std::future::ready(Ok(resp)));
                }
                Some(stored) => {
                    let f = &stored.freshness;
                    if fwd == Fwd::Miss && (f.no_cache || f.age(now) >= f.lifetime) {
                        fwd = Fwd::Stale;
                    } else {
                        fwd = Fwd::Request;
                    }
                    // Asked whether it still holds, not fetched blind (§4.3).
                    if f.validators && kind == Sharing::Plain && !head {
                        base = Some(stored);
                    }
                }
                None => {}
            }
            if asks.only_if_cached {
                // Nothing usable is stored: 504, with nothing sent (§5.2.1.7).
                return MaybeBoxed::boxed(std::future::ready(Err(ProxyError::NotCached)));
            }
        }
        if kind == Sharing::Conditional {
            // Its answer may be a 304 meant for it alone: neither kept nor shared.
            return MaybeBoxed::Direct {
                inner: self.inner.call(req),
            };
        }
        let max_entry = cfg.max_entry;
        // HEAD never fills the cache (no body to keep). One copy of the
        // request's headers as the caller sent them (for the answer's `Vary`),
        // shared with the stale-if-error fallback: only a GET the cache keeps
        // can be answered stale.
        let headers = ttl
            .filter(|_| !head)
            .map(|_| Arc::new(req.headers().clone()));
        if let Some(b) = &base {
            ask_if_changed(&mut req, &b.snap);
        }
        let stale = headers.clone().filter(|_| !cfg.stale_if_error.is_zero());
        let keep = ttl.zip(headers).map(|(ttl, req)| {
            Box::new(Keep {
                ttl,
                req,
                asks,
                sent: SystemTime::now(),
                base,
            })
        });
        if !coalesce {
            let call = self.inner.call(req);
            let fut = lead(call, cache.clone(), key.clone(), keep, None, max_entry, fwd);
            if let Some(headers) = stale {
                return MaybeBoxed::boxed(or_stale(fut, cache, key, headers, self.app.clone()));
            }
            return MaybeBoxed::boxed(fut);
        }
        // Out of quota in reject mode: the 429 comes at once and costs less
        // than a flight to share it in (a cached answer was served above).
        if self
            .app
            .quotas
            .existing(&key.quota)
            .is_some_and(|a| a.refuses_now())
        {
            let call = self.inner.call(req);
            if let Some(headers) = stale {
                return MaybeBoxed::boxed(or_stale(call, cache, key, headers, self.app.clone()));
            }
            return MaybeBoxed::boxed(call);
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
                            let collapsed = fixed("dastra-proxy; fwd=uri-miss; collapsed");
                            let mut resp = respond_with(&snap, false, collapsed, false);
                            if let Some(a) = app.quotas.existing(&key.quota) {
                                add_quota_fields(resp.headers_mut(), &a);
                            }
                            Ok(resp)
                        }
                        Landing::Failed(e) => {
                            let failed = std::future::ready(Err(ProxyError::Shared(e)));
                            match stale {
                                Some(headers) => or_stale(failed, cache, key, headers, app).await,
                                None => failed.await,
                            }
                        }
                        // Too large to share, or the lead broke off: a call of its own.
                        Landing::Own => {
                            let mut resp = inner.ready().await?.call(req).await?;
                            set_status(&mut resp, fixed("dastra-proxy; fwd=uri-miss"));
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
                let fut: StageFuture = match stale {
                    Some(headers) => {
                        let (c, k) = (cache.clone(), key.clone());
                        let led = lead(call, c, k, keep, Some(flight), max_entry, fwd);
                        Box::pin(or_stale(led, cache, key, headers, self.app.clone()))
                    }
                    None => Box::pin(lead(call, cache, key, keep, Some(flight), max_entry, fwd)),
                };
                MaybeBoxed::boxed(Detach {
                    fut: Some(fut),
                    followers,
                })
            }
        }
    }
}

impl<S> AppStage<Share, S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    /// A stored answer used without asking Dastra: the whole answer, its
    /// headers alone for HEAD, or a 304 when the caller holds its validator.
    /// `status`: `Cache-Status` when not a plain hit.
    fn hit(
        &self,
        key: &Key,
        stored: &Stored,
        req: &Request<Body>,
        kind: Sharing,
        status: Option<HeaderValue>,
        now: Instant,
    ) -> Response<Body> {
        self.app.cache.saved("cached");
        let status = status.unwrap_or_else(|| {
            // Written into one buffer, not formatted: this is the hit path.
            let left = stored.freshness.left(now).as_secs();
            let mut b = bytes::BytesMut::with_capacity(32);
            b.extend_from_slice(b"dastra-proxy; hit; ttl=");
            b.extend_from_slice(itoa::Buffer::new().format(left).as_bytes());
            HeaderValue::from_maybe_shared(b.freeze())
                .unwrap_or_else(|_| fixed("dastra-proxy; hit"))
        });
        let conditional = kind == Sharing::Conditional;
        let mut resp = if conditional && not_modified(req.headers(), &stored.snap) {
            respond_not_modified(stored, status, now)
        } else {
            respond(stored, req.method() == Method::HEAD, status, now)
        };
        // Computed now, never replayed from the entry (SPEC §9.5).
        if let Some(a) = self.app.quotas.existing(&key.quota) {
            add_quota_fields(resp.headers_mut(), &a);
        }
        resp
    }

    /// RFC 5861: the caller got the stale entry; one revalidation (a send,
    /// through admission like any) refreshes it behind, unless one already runs.
    fn revalidate_behind(&mut self, mut req: Request<Body>, key: Key, keep: Keep, max_entry: u64) {
        let cache = self.app.cache.clone();
        let Join::Lead(flight) = cache.join(key.clone()) else {
            return;
        };
        crate::head::detach(&mut req);
        if let Some(b) = &keep.base {
            ask_if_changed(&mut req, &b.snap);
        }
        let call = self.inner.call(req);
        let fut = lead(
            call,
            cache,
            key,
            Some(Box::new(keep)),
            Some(flight),
            max_entry,
            Fwd::Stale,
        );
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::info!(error = %e, "revalidating a stale entry behind its answer failed");
            }
        });
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

/// A GET without a body: only those are the same call as another.
fn bodiless(req: &Request<Body>) -> bool {
    !req.headers().contains_key(header::TRANSFER_ENCODING)
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// The path a write's `Location` / `Content-Location` names, when it is
/// this gateway's (relative, or under `public_url`, where Dastra's own
/// `Location` is rewritten to).
fn same_origin(app: &App, v: &HeaderValue) -> Option<String> {
    let v = v.to_str().ok()?;
    let rest = v
        .strip_prefix(app.config.server.public_url.trim_end_matches('/'))
        .unwrap_or(v);
    rest.starts_with('/')
        .then(|| rest.split(['?', '#']).next().unwrap_or(rest).to_owned())
}
