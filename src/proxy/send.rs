//! A call's sends once admission gave it its slots: the breaker's say before
//! each and its verdict after, the slots settled by the outcome, Dastra's
//! 503 pause heeded before anything else leaves, and a retry of an
//! idempotent call without a body (`upstream.retries`) on slots of its own.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, Response};
use tokio::time::Instant;
use tower::{Service, ServiceExt as _};

use super::slots::{CallQuotas, Slots};
use crate::admission::Caller;
use crate::app::App;
use crate::breaker::Ticket;
use crate::error::ProxyError;
use crate::trace::CallTrace;
use crate::upstream::CallError;

/// What the sends of one call are made with.
pub(super) struct Sends<'a> {
    pub(super) app: &'a App,
    pub(super) quotas: &'a CallQuotas,
    pub(super) caller: &'a mut Caller,
    pub(super) trace: &'a Option<Arc<CallTrace>>,
    /// The head to send again, for a call that may be retried.
    pub(super) replay: Option<Request<()>>,
}

impl Sends<'_> {
    /// The call's answer: its first send's, or its last retry's.
    pub(super) async fn run<S>(
        self,
        inner: &mut S,
        req: Request<Body>,
        slots: Slots,
        ticket: Ticket,
    ) -> Result<Response<Body>, ProxyError>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    {
        let Sends {
            app,
            quotas,
            caller,
            trace,
            replay,
        } = self;
        let (mut ticket, mut slots, mut req, mut attempt) = (ticket, slots, Some(req), 0);
        loop {
            if let Err(until) = ticket.recheck(Instant::now()) {
                // The breaker opened while this call waited: the unsent
                // slots go back.
                drop(slots);
                return Err(ProxyError::Unavailable(
                    until.saturating_duration_since(Instant::now()),
                ));
            }
            let sending = slots.send();
            let this = req.take().expect("a request for every attempt");
            // After a wait in the queue: ready again first.
            let result = match inner.ready().await {
                Ok(ready) => ready.call(this).await,
                Err(e) => Err(e),
            };
            verdict(ticket, &result);
            sending.settle(&result, &app.spent, &caller.name);
            if let Ok(r) = &result {
                // Before any retry: it waits for the time Dastra named.
                super::signals::unavailable(app, &quotas.key, r);
            }
            let Some(head) = &replay else { return result };
            attempt += 1;
            if !super::replay::worth_retrying(&result) || !app.retry.spend(attempt) {
                return result;
            }
            // Boxed here, these rare waits keep every call's future small.
            Box::pin(tokio::time::sleep(crate::retry::backoff(attempt))).await;
            // Another send: through the breaker and slots of its own.
            ticket = match app.breaker.enter(Instant::now()) {
                Ok(t) => t,
                Err(_) => return result,
            };
            let again = Instant::now();
            slots = match quotas.again(caller).await {
                Ok(s) => s,
                Err(r) => {
                    super::slots::refused(trace, again, r);
                    return result;
                }
            };
            super::slots::admitted(trace, again, &slots.key);
            app.metrics.upstream_retries_total.inc();
            req = Some(super::replay::again(head));
        }
    }
}

/// What a send's outcome says of Dastra's health, told to the breaker.
fn verdict(ticket: Ticket, result: &Result<Response<Body>, ProxyError>) {
    match result {
        Ok(r) if crate::breaker::unavailable(r.status()) => ticket.failed(Instant::now()),
        Ok(r) if crate::breaker::available(r.status()) => ticket.succeeded(),
        // A 500 (or 501, 505…) is about this request, not Dastra's health.
        Ok(_) => drop(ticket),
        // A connection closed with GOAWAY is Dastra at work, not failing.
        Err(ProxyError::Upstream(CallError::Interrupted(_))) => drop(ticket),
        Err(ProxyError::Upstream(_)) => ticket.failed(Instant::now()),
        // The token endpoint or the caller failed: nothing learned.
        Err(_) => drop(ticket),
    }
}
