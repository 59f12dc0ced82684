//! Reserves (`[[clients]] reserve`, SPEC §9.3): which part of its
//! credential's windows a call counts in, when clients hold reserves.
//!
//! The windows are split (`config::reserve`): each reserving client's part,
//! and the shared rest. Each part is a quota key of its own, made like any
//! other (memory, state file, Redis), so a reserve holds across replicas and
//! restarts. A call of a reserving client takes a slot of its reserve while
//! that has room — at once, never queued, however many others wait in the
//! rest — and otherwise waits in the shared rest in weighted-fair order like
//! everyone else. The credential's own key still counts every send after
//! that: it is what holds Dastra's N, and what a pause after Dastra's 429
//! holds back.

use std::sync::Arc;

use tokio::time::Instant;

use super::named::Named;
use super::{Admission, Caller, NamedQuota, Permit, Quotas, Refusal};
use crate::config::{AdmissionConfig, OnLimit, Split};
use crate::credential::QuotaKey;
use crate::store::StoreError;

/// The parts of every split credential, kept by name across reloads.
#[derive(Debug, Default)]
pub(super) struct Parts {
    /// Each split credential's shared rest, by credential name.
    rests: Named,
    /// Each reserving client's part, by client name.
    reserves: Named,
}

/// Where one call of a split credential may count.
#[derive(Debug, Clone)]
pub struct Shares {
    reserve: Option<Admission>,
    rest: Admission,
}

/// Which part a slot was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Reserve,
    Rest,
}

impl Shares {
    /// A slot in the caller's reserve while it has room; otherwise a wait
    /// in the shared rest — and should the reserve free first (within the
    /// call's `max_wait`), the reserve's slot, the place in the rest given
    /// up. Refused, the call learns the sooner of the two instants a slot
    /// could free for it.
    pub async fn acquire(&self, caller: &Caller) -> Result<(Permit, Part), Refusal> {
        let Some(reserve) = &self.reserve else {
            return slot(&self.rest, caller).await.map(|p| (p, Part::Rest));
        };
        let mut at = match slot(reserve, caller).await {
            Ok(p) => return Ok((p, Part::Reserve)),
            Err(r) => r.retry_at(),
        };
        let deadline = Instant::now() + caller.max_wait(self.rest.max_wait());
        let queueing = self.rest.inner.lock().on_limit == OnLimit::Queue;
        let mut rest = std::pin::pin!(slot(&self.rest, caller));
        loop {
            let Some(when) = at.filter(|a| queueing && *a <= deadline) else {
                // The reserve cannot free in time: the rest alone decides.
                return rest
                    .await
                    .map(|p| (p, Part::Rest))
                    .map_err(|e| sooner(e, at));
            };
            tokio::select! {
                got = &mut rest => return match got {
                    Ok(p) => Ok((p, Part::Rest)),
                    // The rest cannot serve it in time, its reserve can.
                    Err(Refusal::QuotaExhausted { retry_at }) => {
                        reserve_alone(reserve, caller, when, deadline, retry_at).await
                    }
                    Err(e) => Err(sooner(e, at)),
                },
                _ = tokio::time::sleep_until(when) => match slot(reserve, caller).await {
                    Ok(p) => return Ok((p, Part::Reserve)),
                    Err(r) => at = r.retry_at().map(|a| after(a, when)),
                },
            }
        }
    }

    /// The shared rest's RateLimit fields: what a refused caller may use.
    pub fn ratelimit_fields(&self) -> (http::HeaderValue, http::HeaderValue) {
        self.rest.ratelimit_fields()
    }

    /// The shared rest's `max_wait` (a reload may change it).
    pub fn max_wait(&self) -> std::time::Duration {
        self.rest.max_wait()
    }
}

/// When to ask a reserve again that said "later, at `at`" when asked at
/// `when`: at `at`, and never at `when` again (no busy loop).
fn after(at: Instant, when: Instant) -> Instant {
    at.max(when + std::time::Duration::from_millis(1))
}

/// A part's slot: answered without waiting when it can be, as the
/// credential's own is (a reserve never queues: its answer is prompt, one
/// Redis round trip at most).
async fn slot(part: &Admission, caller: &Caller) -> Result<Permit, Refusal> {
    match part.try_acquire() {
        Some(got) => got.map_err(|(refusal, _)| refusal),
        None => part.acquire(caller).await,
    }
}

/// Waits for the reserve alone, until `deadline`; `rest_at`: when the rest
/// said it frees.
async fn reserve_alone(
    reserve: &Admission,
    caller: &Caller,
    mut when: Instant,
    deadline: Instant,
    rest_at: Instant,
) -> Result<(Permit, Part), Refusal> {
    loop {
        tokio::time::sleep_until(when).await;
        match slot(reserve, caller).await {
            Ok(p) => return Ok((p, Part::Reserve)),
            Err(r) => match r.retry_at() {
                Some(a) if a <= deadline => when = after(a, when),
                a => return Err(sooner(Refusal::QuotaExhausted { retry_at: rest_at }, a)),
            },
        }
    }
}

/// A refusal by quota tells the sooner of its instant and `reserve_at`.
fn sooner(e: Refusal, reserve_at: Option<Instant>) -> Refusal {
    match (e, reserve_at) {
        (Refusal::QuotaExhausted { retry_at }, Some(r)) => Refusal::QuotaExhausted {
            retry_at: retry_at.min(r),
        },
        (e, _) => e,
    }
}

impl Quotas {
    /// The split credentials' parts become `splits` (start-up and reload):
    /// a part that stays keeps its sends, one removed is closed.
    pub fn set_splits(&self, splits: &[Split], cfg: &AdmissionConfig) -> Result<(), StoreError> {
        let rests: Vec<NamedQuota> = (splits.iter())
            .map(|s| NamedQuota {
                name: s.credential.as_str().into(),
                key: QuotaKey::rest(&s.credential),
                limits: s.rest.clone(),
                gate: None,
            })
            .collect();
        let reserves: Vec<NamedQuota> = (splits.iter())
            .flat_map(|s| &s.reserves)
            .map(|(client, limits)| NamedQuota {
                name: client.as_str().into(),
                key: QuotaKey::reserve(client),
                limits: limits.clone(),
                // Refused rather than queued: a full reserve sends its
                // owner to the rest. Never a dry run: the rest measures.
                gate: Some(false),
            })
            .collect();
        let make = |key, limits: &[_], cfg: &_| self.make(key, limits, cfg);
        self.parts.rests.set(&rests, cfg, make)?;
        self.parts.reserves.set(&reserves, cfg, make)
    }

    /// Where a call of `client` through `credential` counts; `None` (a load,
    /// nothing more) when no client of that credential holds a reserve.
    pub fn shares(&self, client: &str, credential: &str) -> Option<Shares> {
        if self.parts.rests.is_empty() {
            return None;
        }
        let rest = self.parts.rests.by_name(credential)?;
        Some(Shares {
            reserve: self.parts.reserves.by_name(client),
            rest,
        })
    }

    /// Each reserving client's part, by client name.
    pub fn reserves(&self) -> Vec<(Arc<str>, Admission)> {
        self.parts.reserves.all()
    }

    /// Each split credential's shared rest, by credential name.
    pub fn rests(&self) -> Vec<(Arc<str>, Admission)> {
        self.parts.rests.all()
    }

    pub(super) fn close_parts(&self) {
        for (_, a) in self.reserves().into_iter().chain(self.rests()) {
            a.close();
        }
    }
}
