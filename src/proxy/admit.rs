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
use super::headers::add_ratelimit_fields;
use super::layer::AppStage;
use super::observe::Outcome;
use super::stages::outcome;
use super::StageFuture;
use crate::admission::{Admission, Caller, Permit, Refusal};
use crate::config::{Upstream429, ANONYMOUS};
use crate::error::ProxyError;
use crate::trace::CallTrace;
use crate::upstream::CallError;

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
        let outcome = outcome(&req).clone();
        let key = req
            .extensions()
            .get::<super::stages::CallQuota>()
            .map(|q| q.0);
        let (mut caller, pause, owner) = {
            let rec = outcome.lock();
            let caller = rec.identity.as_ref().map_or_else(
                || Caller {
                    name: ANONYMOUS.into(),
                    weight: 1,
                    wait: None,
                    priority: crate::admission::NORMAL,
                },
                |id| Caller {
                    name: id.name.clone(),
                    weight: id.weight,
                    wait: None,
                    priority: id.priority,
                },
            );
            let pause = rec
                .policy
                .as_ref()
                .is_none_or(|p| p.upstream_429 == Upstream429::Pause);
            (caller, pause, rec.identity.as_ref().map(|id| id.addr))
        };
        // Hop-by-hop headers are gone by now: the key is the credential that
        // will actually be forwarded.
        let (credential, key) = match super::stages::route(&req) {
            Ok(route) => (
                route.name.clone(),
                key.map_or_else(|| route.quota_key(req.headers()), Ok)
                    .map_err(ProxyError::from),
            ),
            Err(e) => (Arc::from(""), Err(e.into())),
        };
        let key = match key {
            Ok(k) => k,
            Err(e) => return CheckFuture::Refused { error: Some(e) },
        };
        let admission = match app.quotas.get(key, owner) {
            Ok(a) => a,
            Err(refusal) => {
                return CheckFuture::Refused {
                    error: Some(refusal.into()),
                }
            }
        };
        outcome.lock().admission = Some(admission.clone());
        // Before admission: an open breaker spends no quota.
        let ticket = match app.breaker.enter(entered) {
            Ok(t) => t,
            Err(until) => {
                return CheckFuture::Refused {
                    error: Some(ProxyError::Unavailable(
                        until.saturating_duration_since(entered),
                    )),
                }
            }
        };
        // The client's own windows first: over them, the call never queues.
        let gate = app.quotas.client_gate(&caller.name);
        let (mut own, mut own_later) = (None, None);
        if let Some(g) = &gate {
            match g.try_acquire() {
                Some(Ok(p)) => own = Some(opened(&app, &caller.name, p)),
                Some(Err((refusal, at))) => {
                    let error = own_refused(&outcome, g, refusal, at);
                    if let Some(t) = &trace {
                        t.quota_wait(entered, 0, error.code());
                    }
                    return CheckFuture::Refused { error: Some(error) };
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
                return CheckFuture::Refused { error: Some(error) };
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
                outcome.lock().wait_applied = Some(super::prefer::capped(w, max));
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
        CheckFuture::Inner {
            inner: Box::pin(async move {
                if let Some(g) = own_later {
                    // Boxed: only a limited client through Redis takes this
                    // path; inline, it would sit in every waiting call's future.
                    match Box::pin(g.acquire(&caller)).await {
                        Ok(p) => own = Some(opened(&app, &caller.name, p)),
                        Err(r) => return Err(own_refused(&outcome, &g, r, Instant::now())),
                    }
                }
                let mut part = match &shares {
                    Some(s) => match take_part(s, &mut caller, entered).await {
                        Ok(p) => Some(p),
                        Err(r) => {
                            outcome.lock().own_limit = Some(s.ratelimit_fields());
                            return Err(refused(&trace, entered, r));
                        }
                    },
                    None => None,
                };
                let mut permit = match now {
                    Some(p) => p,
                    None => match admission.acquire(&caller).await {
                        Ok(p) => p,
                        Err(r) => return Err(refused(&trace, entered, r)),
                    },
                };
                admitted(&trace, entered, part.as_ref().unwrap_or(&permit));
                if let Some(would) = part.as_ref().and_then(Permit::would).or(permit.would()) {
                    dry_run(&app, &caller.name, would);
                }
                let waited = permit.waited() + part.as_ref().map_or(Duration::ZERO, Permit::waited);
                outcome.lock().queue_wait = Some(waited);
                if !waited.is_zero() {
                    app.metrics
                        .queue_wait_seconds
                        .with_label_values(&[&caller.name])
                        .observe(waited.as_secs_f64());
                }
                let (mut ticket, mut req, mut attempt) = (ticket, Some(req), 0);
                let result = loop {
                    if let Err(until) = ticket.recheck(Instant::now()) {
                        // The breaker opened while this call waited: the
                        // unsent permit gives its slot back.
                        drop(permit);
                        return Err(ProxyError::Unavailable(
                            until.saturating_duration_since(Instant::now()),
                        ));
                    }
                    let sent = permit.sent();
                    // The client's own window's slot and its part's go with it.
                    let beside = [own.take(), part.take()].map(|p| p.map(Permit::sent));
                    let this = req.take().expect("a request for every attempt");
                    // After a wait in the queue: ready again first.
                    let result = match inner.ready().await {
                        Ok(ready) => ready.call(this).await,
                        Err(e) => Err(e),
                    };
                    match &result {
                        Ok(r) if crate::breaker::unavailable(r.status()) => {
                            ticket.failed(Instant::now())
                        }
                        Ok(r) if crate::breaker::available(r.status()) => ticket.succeeded(),
                        // A 500 (or 501, 505…) is about this request, not Dastra's health.
                        Ok(_) => drop(ticket),
                        // A connection closed with GOAWAY is Dastra at work, not failing.
                        Err(ProxyError::Upstream(CallError::Interrupted(_))) => drop(ticket),
                        Err(ProxyError::Upstream(_)) => ticket.failed(Instant::now()),
                        // The token endpoint or the caller failed: nothing learned.
                        Err(_) => drop(ticket),
                    }
                    match &result {
                        Ok(_) => {
                            app.spent.record(&caller.name);
                            sent.landed();
                            beside.into_iter().flatten().for_each(|s| s.landed());
                        }
                        // Nothing reached Dastra: the client's slot goes back too.
                        Err(
                            ProxyError::Upstream(CallError::NotConnected(_)) | ProxyError::Token(_),
                        ) => {
                            sent.refund();
                            beside.into_iter().flatten().for_each(|s| s.refund());
                        }
                        // Timed out or failed after sending: counted as landed now.
                        Err(_) => {
                            app.spent.record(&caller.name);
                            drop((sent, beside));
                        }
                    }
                    if let Ok(r) = &result {
                        // Before any retry: it waits for the time Dastra named.
                        super::signals::unavailable(&app, &admission, r);
                    }
                    let Some(head) = &replay else { break result };
                    attempt += 1;
                    if !super::replay::worth_retrying(&result) || !app.retry.spend(attempt) {
                        break result;
                    }
                    // Boxed here, these rare waits keep every call's future small.
                    Box::pin(tokio::time::sleep(crate::retry::backoff(attempt))).await;
                    // Another send: through the breaker and a quota slot of its own.
                    ticket = match app.breaker.enter(Instant::now()) {
                        Ok(t) => t,
                        Err(_) => break result,
                    };
                    let again = Instant::now();
                    // A retry is a send of its own: in the client's windows too.
                    if let Some(g) = &gate {
                        own = match Box::pin(g.acquire(&caller)).await {
                            Ok(p) => Some(p),
                            Err(_) => break result,
                        };
                    }
                    if let Some(s) = &shares {
                        part = match take_part(s, &mut caller, again).await {
                            Ok(p) => Some(p),
                            Err(_) => break result,
                        };
                    }
                    permit = match Box::pin(admission.acquire(&caller)).await {
                        Ok(p) => p,
                        Err(r) => {
                            refused(&trace, again, r);
                            break result;
                        }
                    };
                    admitted(&trace, again, &permit);
                    app.metrics.upstream_retries_total.inc();
                    req = Some(super::replay::again(head));
                };
                let mut resp = result?;
                let heard = super::signals::Heard {
                    credential: &credential,
                    pause,
                    passthrough,
                };
                super::signals::heed(&app, &admission, &resp, heard);
                add_ratelimit_fields(resp.headers_mut(), &admission);
                Ok(resp)
            }),
        }
    }
}

/// A slot in the call's part of a split credential (its reserve, or the
/// shared rest); what is left of its wait then bounds its wait for the
/// credential's own slot, so `max_wait` bounds the two together.
async fn take_part(
    shares: &crate::admission::Shares,
    caller: &mut Caller,
    from: Instant,
) -> Result<Permit, Refusal> {
    // Boxed: only calls of split credentials take this path.
    let (permit, _) = Box::pin(shares.acquire(caller)).await?;
    let max = caller
        .wait
        .map_or(shares.max_wait(), |w| w.min(shares.max_wait()));
    caller.wait = Some(max.saturating_sub(from.elapsed()));
    Ok(permit)
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
fn own_refused(outcome: &Outcome, gate: &Admission, r: Refusal, at: Instant) -> ProxyError {
    let r = match r {
        Refusal::QuotaExhausted { retry_at } => Refusal::ClientQuotaExhausted { retry_at },
        other => other,
    };
    outcome.lock().own_limit = Some(gate.ratelimit_fields());
    ProxyError::refused_at(r, at)
}

/// The trace's span of a wait that got its slot: the call's place in the
/// queue and how long it waited.
fn admitted(trace: &Option<Arc<CallTrace>>, from: Instant, permit: &Permit) {
    if let Some(t) = trace {
        t.quota_wait(from, permit.ahead(), "admitted");
    }
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

/// A refusal as the error it answers, and as the trace's span of the wait.
fn refused(trace: &Option<Arc<CallTrace>>, from: Instant, r: Refusal) -> ProxyError {
    let error = ProxyError::from(r);
    if let Some(t) = trace {
        t.quota_wait(from, 0, error.code());
    }
    error
}
