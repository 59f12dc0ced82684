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

use super::named::Named;
use super::{Admission, Caller, NamedQuota, Permit, Quotas, Refusal};
use crate::config::{AdmissionConfig, Split};
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
    /// in the shared rest. Refused, the call learns the sooner of the two
    /// instants a slot could free for it.
    pub async fn acquire(&self, caller: &Caller) -> Result<(Permit, Part), Refusal> {
        let mut reserve_at = None;
        if let Some(r) = &self.reserve {
            let got = match r.try_acquire() {
                Some(got) => got.map_err(|(refusal, _)| refusal),
                // Redis decides (a gate never queues: the answer is prompt).
                None => Box::pin(r.acquire(caller)).await,
            };
            match got {
                Ok(p) => return Ok((p, Part::Reserve)),
                Err(refusal) => reserve_at = refusal.retry_at(),
            }
        }
        // As the credential's own slot: answered without waiting when it can be.
        let got = match self.rest.try_acquire() {
            Some(got) => got.map_err(|(refusal, _)| refusal),
            None => self.rest.acquire(caller).await,
        };
        match got {
            Ok(p) => Ok((p, Part::Rest)),
            Err(Refusal::QuotaExhausted { retry_at }) => Err(Refusal::QuotaExhausted {
                retry_at: reserve_at.map_or(retry_at, |r| r.min(retry_at)),
            }),
            Err(other) => Err(other),
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
