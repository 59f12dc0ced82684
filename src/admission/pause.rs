//! Dastra's own 429: every send of the key is held for its `Retry-After`,
//! the pause is written where a restart finds it (the state file, Redis),
//! and refusals during it say `upstream_throttled`.

use tokio::time::Instant;

use super::{Admission, Refusal, State};

impl Admission {
    /// Holds every send until `until`, after Dastra itself answered 429;
    /// written to the state file or Redis, so a restart keeps it.
    pub fn pause_until(&self, until: Instant) {
        let left = until.saturating_duration_since(Instant::now());
        if let Some(p) = &self.inner.persist {
            p.write(p.file.pause(p.key, left));
        }
        if let Some(remote) = self.inner.remote.clone() {
            tokio::spawn(async move {
                if let Err(e) = remote.store.pause(left).await {
                    remote.failed("pause", &e);
                }
            });
        }
        self.hold_until(until);
    }

    /// Holds every send until `until` here, writing nothing (a pause the
    /// state file already holds).
    pub(crate) fn hold_until(&self, until: Instant) {
        let mut st = self.inner.lock();
        if st.paused_until.is_none_or(|p| p < until) {
            st.paused_until = Some(until);
        }
        drop(st);
        self.inner.wake.notify_one();
    }
}

impl Admission {
    /// Dastra's own headers said only `left` more sends fit before `until`
    /// (`upstream.adapt`): the windows admit no more than that. With Redis,
    /// "none left" becomes a pause every replica holds; a partial cap holds
    /// on this replica only (each replica decides through Redis, whose
    /// windows know nothing of it).
    pub fn adapt(&self, left: u32, until: Instant) {
        let now = Instant::now();
        if self.inner.remote.is_some() {
            if left == 0 {
                self.pause_until(until);
            }
            return;
        }
        self.inner.lock().windows.cap(left as usize, until, now);
        self.inner.wake.notify_one();
    }
}

impl State {
    /// A refusal for a call that could start at `retry_at`: the pause's when
    /// the pause is what holds it, else the quota's.
    pub(super) fn exhausted(&self, retry_at: Instant, now: Instant) -> Refusal {
        if self
            .paused_until
            .is_some_and(|p| p > now && p >= self.windows.next_admit(now))
        {
            Refusal::UpstreamThrottled { retry_at }
        } else {
            Refusal::QuotaExhausted { retry_at }
        }
    }
}
