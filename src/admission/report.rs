//! What an admission shows of itself: the snapshot behind `/quota` and the
//! gauges, the `RateLimit` fields on every answer, and whether a key is idle
//! enough to forget (passthrough's `max_keys`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Admission, Snapshot};

impl Admission {
    /// The windows, pause and queue as they are now.
    pub fn snapshot(&self) -> Snapshot {
        let mut st = self.inner.lock();
        let now = Instant::now();
        Snapshot {
            windows: st.windows.snapshot(now),
            paused_for: st
                .paused_until
                .and_then(|p| p.checked_duration_since(now))
                .filter(|d| !d.is_zero()),
            queue: st.queue.depths(),
        }
    }

    /// `RateLimit-Policy` and `RateLimit` as they stand now (hot path: no snapshot).
    pub fn ratelimit_fields(&self) -> (http::HeaderValue, http::HeaderValue) {
        let now = Instant::now();
        let shared = self
            .inner
            .remote
            .as_ref()
            .and_then(|r| r.store.ratelimit_value(now));
        let mut st = self.inner.lock();
        let state = match shared {
            // The text becomes the value's bytes as they are (no copy).
            Some(text) => {
                http::HeaderValue::from_maybe_shared(bytes::Bytes::from(text.into_bytes()))
                    .unwrap_or_else(|_| http::HeaderValue::from_static(""))
            }
            None => match st.paused_until.filter(|p| *p > now) {
                Some(until) => st.windows.ratelimit_paused(now, until),
                None => st.windows.ratelimit_value(now),
            },
        };
        (st.policy.clone(), state)
    }

    /// The windows as all replicas share them (Redis), or this process's own.
    pub async fn shared_snapshot(&self) -> Snapshot {
        let mut snap = self.snapshot();
        if let Some(remote) = &self.inner.remote {
            match remote.store.peek().await {
                Ok(mut windows) => {
                    // The chart: this replica's own sends (Redis counts, it does not log).
                    for (shared, own) in windows.iter_mut().zip(&mut snap.windows) {
                        shared.sends = std::mem::take(&mut own.sends);
                    }
                    snap.windows = windows;
                }
                Err(e) => remote.failed("peek", &e),
            }
        }
        snap
    }

    /// `None` when nothing waits, nothing is in flight and every send has
    /// left every window: forgetting this key then loses nothing. Otherwise
    /// the earliest instant that may be true (for a Retry-After).
    pub fn idle_at(&self, now: Instant) -> Option<Instant> {
        // Held by a caller between choosing this key and asking it for a
        // slot (the map and the releaser hold one each): not idle.
        if Arc::strong_count(&self.inner) > 2 {
            return Some(now + Duration::from_secs(1));
        }
        let mut st = self.inner.lock();
        if !st.queue.is_empty() || st.paused_until.is_some_and(|p| p > now) {
            return Some(now + Duration::from_secs(1));
        }
        st.windows.empty_at(now).filter(|t| *t > now)
    }

    /// Whether a call would be refused right now without waiting (reject
    /// mode with no slot, or draining): the savings stage then skips
    /// coalescing, which would only share a 429 that costs less alone.
    pub fn refuses_now(&self) -> bool {
        if self.inner.remote.is_some() {
            return false;
        }
        let st = self.inner.lock();
        let now = Instant::now();
        st.closed
            || (st.on_limit == crate::config::OnLimit::Reject
                && (st.blocked_until(now) > now || !st.queue.is_empty()))
    }

    /// Calls waiting now, over all clients.
    pub fn waiting(&self) -> usize {
        self.inner.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller holds the key between choosing it and asking it for a
    /// slot: the key map must not forget it then, or that call would start
    /// a fresh key with a whole window of its own.
    #[tokio::test(start_paused = true)]
    async fn a_key_a_caller_holds_is_not_idle() {
        let limits = crate::quota::test_limits(&[(3, 1000)]);
        let a = Admission::new(&limits, &super::super::reserve_props::cfg());
        let now = Instant::now();
        assert_eq!(
            a.idle_at(now),
            None,
            "held by the map and its releaser only"
        );
        let held = a.clone();
        assert!(a.idle_at(now).is_some(), "held by a caller too");
        drop(held);
        assert_eq!(a.idle_at(now), None);
    }
}
