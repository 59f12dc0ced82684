//! What one send of a call tells the breaker, and whether and how the call
//! is sent again: an idempotent call without a body (`upstream.retries`),
//! after a backoff, through the breaker and on slots of its own. The sends'
//! loop itself is admission's (`admit.rs`): inline there, a waiting call's
//! future holds one copy of the request, not two.

use std::sync::Arc;

use axum::body::Body;
use http::Response;
use tokio::time::Instant;

use super::slots::{CallQuotas, Slots};
use crate::admission::Caller;
use crate::app::App;
use crate::breaker::Ticket;
use crate::error::ProxyError;
use crate::trace::CallTrace;
use crate::upstream::CallError;

/// What a send's outcome says of Dastra's health, told to the breaker.
pub(super) fn verdict(ticket: Ticket, result: &Result<Response<Body>, ProxyError>) {
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

/// Whether a replayable call is sent again after this outcome: Dastra
/// failed it in a way worth another try, and the retry budget allows the
/// `attempt`-th retry.
pub(super) fn worth_another(
    app: &App,
    result: &Result<Response<Body>, ProxyError>,
    attempt: u32,
) -> bool {
    super::replay::worth_retrying(result) && app.retry.spend(attempt)
}

/// Where a retry takes its slots.
pub(super) struct Retry<'a> {
    pub(super) app: &'a App,
    pub(super) quotas: &'a CallQuotas,
    pub(super) trace: &'a Option<Arc<CallTrace>>,
}

impl Retry<'_> {
    /// After the backoff, the breaker's ticket and the slots of the retry;
    /// `None` when either says no (the earlier answer stands).
    pub(super) async fn slots(self, caller: &mut Caller, attempt: u32) -> Option<(Ticket, Slots)> {
        tokio::time::sleep(crate::retry::backoff(attempt)).await;
        let ticket = self.app.breaker.enter(Instant::now()).ok()?;
        let again = Instant::now();
        let slots = match self.quotas.again(caller).await {
            Ok(s) => s,
            Err(r) => {
                super::slots::refused(self.trace, again, r);
                return None;
            }
        };
        super::slots::admitted(self.trace, again, &slots.key);
        self.app.metrics.upstream_retries_total.inc();
        Some((ticket, slots))
    }
}
