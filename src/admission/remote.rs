//! Admission through the shared Redis store, and what to do when it does not
//! answer: count the error, mark the store unhealthy, fall back or refuse.
//!
//! One decision at a time per key on this replica (`asking`): a call learns
//! how many of this replica's calls wait before it, then Redis says when a
//! call that many places back can start, pause included; that projection is
//! what `max_wait` and `Retry-After` use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Admission, Caller, Inner, Permit, Refusal};
use crate::config::{Limit, OnLimit, StoreOnError};
use crate::metrics::Metrics;
use crate::store::{lock, Decision, RedisStore, StoreError};

/// Admission through Redis, and what to do when it does not answer.
#[derive(Debug)]
pub struct Remote {
    pub store: Arc<RedisStore>,
    pub on_error: StoreOnError,
    pub metrics: Metrics,
    pub healthy: Arc<AtomicBool>,
    pub replicas: u32,
    /// Held while this replica asks Redis about this key.
    pub(super) asking: tokio::sync::Mutex<()>,
    /// When the heartbeat last asked, answered or not: paces it.
    checked: std::sync::Mutex<Option<Instant>>,
}

/// What Redis said about a call: a slot (its id), a start later, or nothing.
pub(super) enum Answer {
    Slot(u64),
    StartsAt(Instant),
    /// Redis is settling after it lost the key: ask again then.
    Settling(Instant),
    Failed,
}

impl Answer {
    fn after(wait: Duration) -> Self {
        // Measured from the answer: later than Redis' own now, never earlier.
        Answer::StartsAt(Instant::now() + wait)
    }
}

impl Remote {
    pub fn new(
        store: Arc<RedisStore>,
        on_error: StoreOnError,
        metrics: Metrics,
        healthy: Arc<AtomicBool>,
        replicas: u32,
    ) -> Self {
        Self {
            store,
            on_error,
            metrics,
            healthy,
            replicas,
            asking: tokio::sync::Mutex::new(()),
            checked: std::sync::Mutex::new(None),
        }
    }

    /// Reserves a slot when `ahead` is 0 and nothing holds this replica
    /// (`project` false); otherwise learns when the call could start.
    pub(super) async fn ask(&self, ahead: usize, project: bool) -> Answer {
        let id = self.store.next_id();
        // Refusing while the last contact failed: what this replica knew of
        // the window (full until T) is no answer, Redis is asked (the link's
        // backoff keeps that cheap), so the first reply ends the refusals.
        if self.refusing() {
            self.store.forget();
        }
        let heard = self.store.heard();
        let r = if project {
            self.store.project(ahead).await
        } else {
            self.store.reserve(id, ahead, None).await
        };
        let r = r.map(|d| match d {
            Decision::Admitted => Answer::Slot(id),
            Decision::Wait(w) => Answer::after(w),
            Decision::Settling(w) => Answer::Settling(Instant::now() + w),
        });
        match r {
            // Only a reply from Redis says it is reachable, not an answer
            // from what this replica knew.
            Ok(a) => {
                if self.store.heard() != heard {
                    self.up();
                }
                a
            }
            Err(e) => {
                self.failed("decide", &e);
                Answer::Failed
            }
        }
    }

    /// Lands or releases a slot Redis reserved, in the background (from
    /// `Drop`); after a release, wakes the releaser once Redis has it back.
    pub(super) fn finish(self: &Arc<Self>, id: u64, land: bool, wake: Arc<Inner>) {
        // A permit may be dropped while the runtime shuts down: then there is
        // nobody left to tell, and Redis expires the reservation by itself.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let r = if land {
                me.store.land(id, None).await
            } else {
                me.store.release(id, None).await
            };
            if let Err(e) = r {
                me.failed(if land { "land" } else { "release" }, &e);
            }
            if !land {
                wake.wake.notify_one();
            }
        });
    }

    /// Asks Redis whether it still holds this replica's sends (writing them
    /// back if not); the releaser calls it while the key has recent sends.
    pub(super) async fn heartbeat(&self) {
        let _one = self.asking.lock().await;
        self.check().await;
    }

    /// The pause holding this key: `here` (this replica heard the 429) or
    /// Redis' (another did, or one before this process started), the later.
    pub(super) fn pause_with(&self, here: Option<Instant>, now: Instant) -> Option<Instant> {
        here.max(self.store.paused_until(now))
    }

    /// When the heartbeat is next due, if at all: while this replica has
    /// sends Redis may have lost, and while Redis is unreachable (to learn
    /// it is back, with no call needed). Paced from the last heartbeat, not
    /// the last reply: during an outage every refused call wakes the
    /// releaser, and Redis is still asked once a heartbeat, not per call.
    pub(super) fn heartbeat_due(&self, now: Instant) -> Option<Instant> {
        let due = self
            .store
            .watch_due(now)
            .or((!self.reachable()).then_some(now))?;
        Some(match *lock(&self.checked) {
            Some(last) => due.max(last + self.store.heartbeat()),
            None => due,
        })
    }

    /// The heartbeat's question, for a caller that holds `asking`.
    pub(super) async fn check(&self) {
        *lock(&self.checked) = Some(Instant::now());
        match self.store.check().await {
            Ok(_) => self.up(),
            Err(e) => self.failed("check", &e),
        }
    }

    /// This replica's share of `limits`, held while Redis is unreachable.
    pub fn share(&self, limits: &[Limit]) -> Vec<Limit> {
        limits
            .iter()
            .map(|l| Limit {
                requests: (l.requests / self.replicas).max(1),
                ..l.clone()
            })
            .collect()
    }

    /// Whether Redis answered the last time it was asked.
    pub(super) fn reachable(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// `on_error = "reject"` while Redis is unreachable: every call is refused.
    fn refusing(&self) -> bool {
        self.on_error == StoreOnError::Reject && !self.reachable()
    }

    fn up(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("quota store reachable again; deciding through Redis");
        }
    }

    pub(super) fn failed(&self, op: &str, e: &StoreError) {
        self.metrics
            .store_errors_total
            .with_label_values(&[op])
            .inc();
        if !matches!(e, StoreError::Backoff(_)) && self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, on_error = ?self.on_error, "quota store unreachable");
        }
    }
}

impl Admission {
    /// [`Admission::acquire`] when replicas share the quota through Redis.
    pub(super) async fn acquire_remote(
        &self,
        remote: &Arc<Remote>,
        caller: &Caller,
    ) -> Result<Permit, Refusal> {
        let one = remote.asking.lock().await;
        if self.inner.lock().dry_run {
            let answer = remote.ask(0, false).await;
            drop(one);
            return Ok(self.dry_remote(answer));
        }
        let (ahead, paused, full) = {
            let st = self.inner.lock();
            if st.closed {
                return Err(Refusal::ShuttingDown);
            }
            let now = Instant::now();
            // Paused here (this replica saw the 429), or in Redis (another
            // did, or one before this process started).
            let paused = remote.pause_with(st.paused_until, now).filter(|p| *p > now);
            (
                st.queue
                    .ahead_of(&caller.name, caller.weight, caller.priority),
                paused,
                st.on_limit == OnLimit::Queue && st.queue.all_waiting() >= st.max_queue,
            )
        };
        // A full queue refuses with when the first slot frees, as memory mode
        // does: the same question for every caller, answered locally while
        // the window is known full.
        let (ahead, project) = match full {
            true => (0, true),
            false => (ahead, paused.is_some()),
        };
        let mut answer = remote.ask(ahead, project).await;
        for _ in 0..3 {
            let Answer::Settling(at) = answer else { break };
            tokio::time::sleep_until(at).await;
            answer = remote.ask(ahead, project).await;
        }
        let (id, rx, queued_at) = {
            let mut st = self.inner.lock();
            let now = Instant::now();
            let start = match answer {
                Answer::Slot(id) => {
                    // Own sends count in this replica's fallback share too.
                    st.windows.reserve(now);
                    drop(st);
                    // The releaser starts watching for a Redis that loses this send.
                    self.inner.wake.notify_one();
                    return Ok(Permit::remote(self.inner.clone(), id, true, Duration::ZERO));
                }
                Answer::Failed if remote.on_error == StoreOnError::Reject => {
                    // The releaser's heartbeat asks whether Redis is back.
                    self.inner.wake.notify_one();
                    return Err(Refusal::StoreUnavailable);
                }
                Answer::Failed => {
                    let blocked = st.blocked_until(now);
                    if blocked <= now && st.queue.is_empty() {
                        st.windows.reserve(now);
                        st.paused_until = None;
                        return Ok(self.inner.fallback_permit(Duration::ZERO));
                    }
                    st.project_for(caller, now).0
                }
                Answer::StartsAt(at) | Answer::Settling(at) => at.max(paused.unwrap_or(now)),
            };
            let paused = remote.pause_with(paused, now);
            let exhausted = |retry_at| held_by(paused, retry_at);
            if st.on_limit == OnLimit::Reject {
                return Err(exhausted(start));
            }
            if st.queue.all_waiting() >= st.max_queue {
                return Err(Refusal::QueueFull { retry_at: start });
            }
            if start.saturating_duration_since(now) > caller.max_wait(st.max_wait) {
                return Err(exhausted(start));
            }
            let (tx, rx) = oneshot::channel();
            (
                st.queue
                    .push(&caller.name, caller.weight, caller.priority, now, tx),
                rx,
                now,
            )
        };
        super::queued(id);
        // Queued before the next caller asks, so it counts this call ahead.
        drop(one);
        self.inner.wake.notify_one();
        let permit = self.wait_in_queue(caller, id, rx, queued_at).await?;
        Ok(permit.placed(ahead))
    }
}

impl Admission {
    /// A dry run's call with a shared store: it goes now. A slot Redis
    /// granted is recorded in the shared log; without one the call goes
    /// unrecorded there (the shared log never holds more than N), counted
    /// as what it would have met.
    fn dry_remote(&self, answer: Answer) -> Permit {
        let mut st = self.inner.lock();
        let now = Instant::now();
        match answer {
            Answer::Slot(id) => {
                st.windows.reserve(now);
                drop(st);
                self.inner.wake.notify_one();
                Permit::remote(self.inner.clone(), id, true, Duration::ZERO)
            }
            Answer::StartsAt(at) | Answer::Settling(at) => {
                let would = super::Would::of(at, now, &st);
                st.windows.reserve(now);
                Permit::new(self.inner.clone(), Duration::ZERO).dry(would)
            }
            Answer::Failed => {
                let would = st.dry_admit(now);
                drop(st);
                self.inner.fallback_permit(Duration::ZERO).dry(would)
            }
        }
    }
}

impl Inner {
    /// A send on this replica's own share while Redis is unreachable: it gets
    /// an id so it can be written back once Redis answers again.
    pub(super) fn fallback_permit(self: &Arc<Self>, waited: Duration) -> Permit {
        match &self.remote {
            Some(r) => {
                let id = r.store.next_id();
                r.store.sent_locally(id);
                Permit::remote(self.clone(), id, false, waited)
            }
            None => Permit::new(self.clone(), waited),
        }
    }
}

/// The refusal of a call through Redis that could start at `retry_at`: the
/// pause's when a pause holds it that long, else the quota's. Within 5 ms:
/// Redis' copy of a pause ends a little after this replica's (it was
/// written a moment later), and a start read off the same reply as the
/// pause may round to either side of it.
pub(super) fn held_by(paused: Option<Instant>, retry_at: Instant) -> Refusal {
    match paused {
        Some(p) if p + Duration::from_millis(5) >= retry_at => {
            Refusal::UpstreamThrottled { retry_at }
        }
        _ => Refusal::QuotaExhausted { retry_at },
    }
}
