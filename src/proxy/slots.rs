//! The quotas one call counts in — its quota key's, the client's own
//! windows, its part of a split credential — and the slots one send takes
//! from them, with what the send's outcome means for each: landed (Dastra
//! counted it), refunded (nothing reached Dastra), or counted as landed now
//! (it timed out or failed after leaving).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Response;
use tokio::time::Instant;

use crate::admission::{Admission, Caller, Permit, Refusal, SentPermit, Shares};
use crate::error::ProxyError;
use crate::spent::Spent;
use crate::trace::CallTrace;
use crate::upstream::CallError;

/// The call's quotas, as admission found them for its key and client.
pub(super) struct CallQuotas {
    /// The quota key's (the credential's, or passthrough's key).
    pub(super) key: Admission,
    /// The client's own windows, if it has any.
    pub(super) own: Option<Admission>,
    /// The credential's parts, if reserves split it.
    pub(super) shares: Option<Shares>,
}

/// The slots one send holds.
pub(super) struct Slots {
    pub(super) key: Permit,
    pub(super) own: Option<Permit>,
    pub(super) part: Option<Permit>,
}

impl CallQuotas {
    /// A retry's slots, each asked again: a send of its own. The refusal
    /// of the first that says no (the retry is not sent; the earlier
    /// answer stands).
    pub(super) async fn again(&self, caller: &mut Caller) -> Result<Slots, Refusal> {
        let now = Instant::now();
        let own = match &self.own {
            Some(g) => Some(Box::pin(g.acquire(caller)).await?),
            None => None,
        };
        let part = match &self.shares {
            Some(s) => Some(take_part(s, caller, now).await?),
            None => None,
        };
        let key = Box::pin(self.key.acquire(caller)).await?;
        Ok(Slots { key, own, part })
    }
}

/// A slot in the call's part of a split credential (its reserve, or the
/// shared rest); what is left of its wait then bounds its wait for the
/// credential's own slot, so `max_wait` bounds the two together.
pub(super) async fn take_part(
    shares: &Shares,
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

impl Slots {
    /// How long the call queued for these slots.
    pub(super) fn waited(&self) -> Duration {
        self.key.waited() + self.part.as_ref().map_or(Duration::ZERO, Permit::waited)
    }

    /// Spent as the send leaves.
    pub(super) fn send(self) -> Sending {
        Sending {
            key: self.key.sent(),
            beside: [self.own, self.part].map(|p| p.map(Permit::sent)),
        }
    }
}

/// The slots of a send that left.
pub(super) struct Sending {
    key: SentPermit,
    beside: [Option<SentPermit>; 2],
}

impl Sending {
    /// Settled by what became of the send; one that reached Dastra (or may
    /// have) is the client's spend.
    pub(super) fn settle(
        self,
        result: &Result<Response<Body>, ProxyError>,
        spent: &Spent,
        client: &Arc<str>,
    ) {
        let Sending { key, beside } = self;
        match result {
            Ok(_) => {
                spent.record(client);
                key.landed();
                beside.into_iter().flatten().for_each(SentPermit::landed);
            }
            // Nothing reached Dastra: the client's slot goes back too.
            Err(ProxyError::Upstream(CallError::NotConnected(_)) | ProxyError::Token(_)) => {
                key.refund();
                beside.into_iter().flatten().for_each(SentPermit::refund);
            }
            // Timed out or failed after sending: counted as landed now.
            Err(_) => {
                spent.record(client);
                drop((key, beside));
            }
        }
    }
}

/// The trace's span of a wait that got its slot: the call's place in the
/// queue and how long it waited.
pub(super) fn admitted(trace: &Option<Arc<CallTrace>>, from: Instant, permit: &Permit) {
    if let Some(t) = trace {
        t.quota_wait(from, permit.ahead(), "admitted");
    }
}

/// A refusal as the error it answers, and as the trace's span of the wait.
pub(super) fn refused(trace: &Option<Arc<CallTrace>>, from: Instant, r: Refusal) -> ProxyError {
    let error = ProxyError::from(r);
    if let Some(t) = trace {
        t.quota_wait(from, 0, error.code());
    }
    error
}
