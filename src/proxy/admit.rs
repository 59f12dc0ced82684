//! The admission stage: a quota slot for the call, held for exactly as long
//! as the call is in flight. The permit lives in this stage's future: it is
//! spent when the inner stages send, logged when the response head arrives,
//! and given back when nothing reached Dastra (connect failure, no token) or
//! the caller went away while queued. What Dastra's answer says about the
//! quota (a 429's pause, its rate-limit headers) is read in `signals`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use tokio::time::Instant;
use tower::{Service, ServiceExt as _};

use super::check::CheckFuture;
use super::facts::{facts, CallQuota, Facts};
use super::layer::AppStage;
use super::ratelimit::add_quota_fields;
use super::send;
use super::slots::{admitted, refused, take_part, CallQuotas, Slots};
use super::StageFuture;
use crate::admission::{Admission, Caller, Permit, Refusal};
use crate::config::Upstream429;
use crate::error::ProxyError;
use crate::trace::CallTrace;

/// The quota slot of each call.
#[derive(Debug, Clone)]
pub(crate) struct Admit;

impl<S> Service<Request<Body>> for AppStage<Admit, S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = CheckFuture<StageFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let app = self.app.clone();
        let entered = Instant::now();
        let trace = req.extensions().get::<Arc<CallTrace>>().cloned();
        let facts = match facts(&req) {
            Ok(f) => f.clone(),
            Err(e) => return CheckFuture::refused(e),
        };
        let key = req.extensions().get::<CallQuota>().map(|q| q.0);
        let (mut caller, pause, owner) = match facts.caller() {
            Ok(c) => (
                Caller {
                    name: c.identity.name.clone(),
                    weight: c.identity.weight,
                    wait: None,
                    priority: c.identity.priority,
                },
                c.policy.upstream_429 == Upstream429::Pause,
                c.identity.addr,
            ),
            Err(e) => return CheckFuture::refused(e),
        };
        // Hop-by-hop headers are gone by now: the key is the credential that
        // will actually be forwarded.
        let route = match super::facts::route(&req) {
            Ok(r) => r,
            Err(e) => return CheckFuture::refused(e),
        };
        let credential = route.name.clone();
        let key = match key.map_or_else(|| route.quota_key(req.headers()), Ok) {
            Ok(k) => k,
            Err(e) => return CheckFuture::refused(e),
        };
        let admission = match app.quotas.get(key, Some(owner)) {
            Ok(a) => a,
            Err(refusal) => return CheckFuture::refused(refusal),
        };
        facts.set_quota(admission.clone());
        // Before admission: an open breaker spends no quota.
        let ticket = match app.breaker.enter(entered) {
            Ok(t) => t,
            Err(until) => {
                return CheckFuture::refused(ProxyError::Unavailable(
                    until.saturating_duration_since(entered),
                ))
            }
        };
        // The client's own windows first: over them, the call never queues.
        let gate = app.quotas.client_gate(&caller.name);
        let (mut own, mut own_later) = (None, None);
        if let Some(g) = &gate {
            match g.try_acquire() {
                Some(Ok(p)) => own = Some(opened(&app, &caller.name, p)),
                Some(Err((refusal, at))) => {
                    let error = own_refused(&facts, g, refusal, at);
                    if let Some(t) = &trace {
                        t.quota_wait(entered, 0, error.code());
                    }
                    return CheckFuture::refused(error);
                }
                // Redis decides: asked first thing in the call's future.
                None => own_later = Some(g.clone()),
            }
        }
        // A credential split by reserves: the call's part first (async).
        let shares = app.quotas.shares(&caller.name, &credential);
        // A refusal that needs no waiting is answered without an async stage.
        let fast = match (&own_later, &shares) {
            (None, None) => admission.try_acquire(),
            _ => None,
        };
        let now = match fast {
            Some(Err((refusal, at))) => {
                let error = ProxyError::refused_at(refusal, at);
                if let Some(t) = &trace {
                    t.quota_wait(entered, 0, error.code());
                }
                return CheckFuture::refused(error);
            }
            Some(Ok(permit)) => Some(permit),
            None => None,
        };
        if now.is_none() {
            // The caller's own cap on its wait (`Prefer: wait=N`) matters
            // only to a call that may wait: read here, off the paths that
            // answer at once.
            if let Some(w) = super::prefer::wait(req.headers()) {
                caller.wait = Some(Duration::from_secs(w));
                let max = shares
                    .as_ref()
                    .map_or_else(|| admission.max_wait(), |s| s.max_wait());
                facts.set_wait_applied(super::prefer::capped(w, max));
            }
            // So is its priority: `Priority: u=5..7` may lower it.
            caller.priority = super::prefer::priority(req.headers(), caller.priority);
            // The call waits for a slot (see `head`).
            crate::head::detach(&mut req);
        }
        // Every call earns its share of a retry; an idempotent one without a
        // body keeps its head to be sent again.
        app.retry.earn();
        let replay = match app.config.upstream.retries {
            0 => None,
            _ => super::replay::replayable(&req),
        };
        // Passthrough never comes or goes on reload: read from the config.
        let passthrough = app.config.passthrough().is_some();
        let mut inner = super::take_ready(&mut self.inner);
        let quotas = CallQuotas {
            key: admission,
            own: gate,
            shares,
        };
        CheckFuture::Inner {
            inner: Box::pin(async move {
                if let Some(g) = own_later {
                    // Boxed: only a limited client through Redis takes this
                    // path; inline, it would sit in every waiting call's future.
                    match Box::pin(g.acquire(&caller)).await {
                        Ok(p) => own = Some(opened(&app, &caller.name, p)),
                        Err(r) => return Err(own_refused(&facts, &g, r, Instant::now())),
                    }
                }
                let part = match &quotas.shares {
                    Some(s) => match take_part(s, &mut caller, entered).await {
                        Ok(p) => Some(p),
                        Err(r) => {
                            facts.set_own_fields(s.ratelimit_fields());
                            return Err(refused(&trace, entered, r));
                        }
                    },
                    None => None,
                };
                let key = match now {
                    Some(p) => p,
                    None => match quotas.key.acquire(&caller).await {
                        Ok(p) => p,
                        Err(r) => return Err(refused(&trace, entered, r)),
                    },
                };
                let slots = Slots { key, own, part };
                admitted(&trace, entered, slots.part.as_ref().unwrap_or(&slots.key));
                if let Some(would) =
                    (slots.part.as_ref().and_then(Permit::would)).or(slots.key.would())
                {
                    dry_run(&app, &caller.name, would);
                }
                let waited = slots.waited();
                facts.set_queue_wait(waited);
                if !waited.is_zero() {
                    app.metrics
                        .queue_wait_seconds
                        .with_label_values(&[&caller.name])
                        .observe(waited.as_secs_f64());
                }
                // The sends: the first, then any retry (`send`) on slots of its own.
                let (mut ticket, mut slots, mut req, mut attempt) = (ticket, slots, Some(req), 0);
                let result = loop {
                    if let Err(until) = ticket.recheck(Instant::now()) {
                        // The breaker opened while this call waited: the
                        // unsent slots go back.
                        drop(slots);
                        return Err(ProxyError::Unavailable(
                            until.saturating_duration_since(Instant::now()),
                        ));
                    }
                    let sending = slots.send();
                    let this = req.take().expect("a request for every send");
                    // After a wait in the queue: ready again first.
                    let result = match inner.ready().await {
                        Ok(ready) => ready.call(this).await,
                        Err(e) => Err(e),
                    };
                    send::verdict(ticket, &result);
                    sending.settle(&result, &app.spent, &caller.name);
                    if let Ok(r) = &result {
                        // Before any retry: it waits for the time Dastra named.
                        super::signals::unavailable(&app, &quotas.key, r);
                    }
                    let Some(head) = &replay else { break result };
                    attempt += 1;
                    if !send::worth_another(&app, &result, attempt) {
                        break result;
                    }
                    // Boxed: only a retry takes this path.
                    let retry = send::Retry {
                        app: &app,
                        quotas: &quotas,
                        trace: &trace,
                    };
                    match Box::pin(retry.slots(&mut caller, attempt)).await {
                        Some((t, s)) => (ticket, slots) = (t, s),
                        None => break result,
                    }
                    req = Some(super::replay::again(head));
                };
                let mut resp = result?;
                let heard = super::signals::Heard {
                    credential: &credential,
                    pause,
                    passthrough,
                };
                super::signals::heed(&app, &quotas.key, &resp, heard);
                add_quota_fields(resp.headers_mut(), &quotas.key);
                Ok(resp)
            }),
        }
    }
}

/// A slot in the client's own windows; a dry-run client over them goes,
/// counted as the refusal it would have met.
fn opened(app: &crate::app::App, client: &str, permit: Permit) -> Permit {
    if permit.would().is_some() {
        dry_run(app, client, crate::admission::Would::Reject);
    }
    permit
}

/// The client's own window refused the call: `client_quota_exhausted`, with
/// that window's RateLimit fields rather than the credential's.
fn own_refused(facts: &Facts, gate: &Admission, r: Refusal, at: Instant) -> ProxyError {
    let r = match r {
        Refusal::QuotaExhausted { retry_at } => Refusal::ClientQuotaExhausted { retry_at },
        other => other,
    };
    facts.set_own_fields(gate.ratelimit_fields());
    ProxyError::refused_at(r, at)
}

/// `admission.dry_run`: a call that went at once but would have queued or
/// been refused, counted and logged for the operator watching a limit.
fn dry_run(app: &crate::app::App, client: &str, would: crate::admission::Would) {
    app.metrics
        .dry_run_total
        .with_label_values(&[client, would.label()])
        .inc();
    tracing::info!(
        client,
        would = would.label(),
        "dry run: sent at once; without admission.dry_run this call would have been {}",
        match would {
            crate::admission::Would::Queue => "queued",
            crate::admission::Would::Reject => "refused",
        }
    );
}
