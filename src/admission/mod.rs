//! Admission: whether a call may go to Dastra now, later, or not at all.
//!
//! One [`Admission`] per quota key holds the [`WindowSet`] and a bounded queue.
//! A call that finds the queue empty and a slot free goes at once (one lock,
//! O(1)). Otherwise it waits in its client's FIFO; one releaser task per key
//! sleeps until the exact instant the next slot frees and hands slots out in
//! weighted-fair order, so there is no polling loop and no thundering herd.
//!
//! A slot is a [`Permit`]: dropped before the call was sent (the caller went
//! away) or refunded after a connect failure, it is given back to the window.

mod dry;
mod fair;
mod keys;
mod named;
mod pause;
mod permit;
mod refusal;
mod releaser;
mod remote;
mod report;
mod reserve;
mod wait;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::config::{AdmissionConfig, Limit, OnLimit};
use crate::metrics::Metrics;
use crate::quota::{policy_header, WindowSet, WindowState};
use crate::state_file::{StateError, StateFile};
pub use dry::Would;
use fair::FairQueue;
pub use keys::{KeyBounds, LocalState, Quotas, SharedStore};
pub use named::NamedQuota;
pub use permit::{Permit, SentPermit};
pub use refusal::Refusal;
use releaser::release_loop;
pub use remote::Remote;
pub use reserve::{Part, Shares};

/// Who is asking, for fairness between clients and per-client queue depth.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub weight: u32,
    /// The caller's own cap on its wait (`Prefer: wait=N`): it can only
    /// shorten `max_wait`.
    pub wait: Option<Duration>,
    /// 0 high, 1 normal, 2 low: the client's, or lower if the call asks
    /// (`Priority: u=5..7`); never higher.
    pub priority: u8,
}

/// [`Caller::priority`] of a client with none configured.
pub const NORMAL: u8 = 1;

impl Caller {
    /// How long this call may wait for its slot.
    fn max_wait(&self, configured: Duration) -> Duration {
        self.wait.map_or(configured, |w| w.min(configured))
    }
}

/// The state of one quota key as `/quota`, metrics and headers show it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub windows: Vec<WindowState>,
    /// Time left of a pause ordered by an upstream 429.
    pub paused_for: Option<Duration>,
    /// Waiting calls per client that has ever queued.
    pub queue: Vec<(Arc<str>, usize)>,
}

/// One quota key's windows and queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the releaser: a call queued, a slot came back, a pause changed.
    wake: Notify,
    /// The shared store, when replicas share the quota; `state.windows` is
    /// then this replica's fallback share.
    remote: Option<Arc<Remote>>,
    /// The memory store's state file, when restarts must keep the window.
    persist: Option<Persist>,
    /// Passthrough: Dastra answered this credential's last call 401.
    rejected: std::sync::atomic::AtomicBool,
}

/// Where one key's sends are written so a restart keeps them.
#[derive(Debug, Clone)]
pub struct Persist {
    pub file: Arc<StateFile>,
    /// The quota key as the file names it.
    pub key: u64,
    pub metrics: Metrics,
}

impl Persist {
    /// Runs one write; a failure is counted and logged, the call goes on
    /// (refusing every call because a disk filled would cost more than it saves).
    fn write<T>(&self, r: Result<T, StateError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.metrics.state_write_errors_total.inc();
                tracing::warn!(error = %e, "state file write failed");
                None
            }
        }
    }
}

#[derive(Debug)]
struct State {
    on_limit: OnLimit,
    max_queue: usize,
    max_wait: Duration,
    /// `admission.dry_run`: nothing waits or is refused.
    dry_run: bool,
    windows: WindowSet,
    /// `RateLimit-Policy`, fixed until the limits change.
    policy: http::HeaderValue,
    queue: FairQueue<oneshot::Sender<Result<Permit, Refusal>>>,
    paused_until: Option<Instant>,
    closed: bool,
}

impl State {
    /// When the next call could start, considering a pause: `now` if at once.
    fn blocked_until(&self, now: Instant) -> Instant {
        let at = self.windows.next_admit(now);
        match self.paused_until {
            Some(p) if p > at => p,
            _ => at,
        }
    }

    /// The earliest a call from `caller` queued now could start: behind the
    /// calls the weighted-fair order serves first (not behind every queued
    /// call), after any pause, with calls in flight landing at the earliest.
    /// O(clients + windows): no copy of the logs, no simulation.
    /// Also says how many calls are served first (a trace's queue position).
    fn project_for(&self, caller: &Caller, now: Instant) -> (Instant, usize) {
        let from = self.paused_until.map_or(now, |p| p.max(now));
        let ahead = (self.queue).ahead_of(&caller.name, caller.weight, caller.priority);
        (self.windows.nth_start(ahead, from), ahead)
    }
}

impl Admission {
    /// Starts the releaser task: must be called inside a tokio runtime.
    pub fn new(limits: &[Limit], cfg: &AdmissionConfig) -> Self {
        Self::with_remote(limits, cfg, None)
    }

    /// With a shared store, `limits` are this replica's fallback share.
    pub fn with_remote(limits: &[Limit], cfg: &AdmissionConfig, remote: Option<Remote>) -> Self {
        Self::build(limits, cfg, remote, None, &[])
    }

    /// Every send of this key is written to the state file; `restored` are the
    /// ages of the sends the previous process made, oldest first.
    pub fn with_state(
        limits: &[Limit],
        cfg: &AdmissionConfig,
        persist: Persist,
        restored: &[Duration],
    ) -> Self {
        Self::build(limits, cfg, None, Some(persist), restored)
    }

    fn build(
        limits: &[Limit],
        cfg: &AdmissionConfig,
        remote: Option<Remote>,
        persist: Option<Persist>,
        restored: &[Duration],
    ) -> Self {
        let policy = policy_value(limits);
        let local = remote
            .as_ref()
            .map_or_else(|| limits.to_vec(), |r| r.share(limits));
        let limits = &local;
        let mut windows = WindowSet::new(limits, cfg.margin).with_flight(cfg.flight);
        let now = Instant::now();
        for age in restored {
            // Older than this process's clock reaches back: long out of every window.
            if let Some(t) = now.checked_sub(*age) {
                windows.record(t);
            }
        }
        let inner = Arc::new(Inner {
            remote: remote.map(Arc::new),
            persist,
            rejected: Default::default(),
            state: Mutex::new(State {
                on_limit: cfg.on_limit,
                max_queue: cfg.max_queue,
                max_wait: cfg.max_wait,
                dry_run: cfg.dry_run,
                windows,
                policy,
                queue: {
                    let mut q = FairQueue::default();
                    q.set_aging(cfg.aging);
                    q
                },
                paused_until: None,
                closed: false,
            }),
            wake: Notify::new(),
        });
        tokio::spawn(release_loop(inner.clone()));
        Self { inner }
    }

    /// The answer when no waiting is involved: a slot now, or (reject mode,
    /// draining) a refusal now. `None` when the call must go through
    /// [`Self::acquire`]: it would queue, or the shared store must be asked.
    /// The refusal path stays synchronous, which keeps 429s cheap; a refusal
    /// comes with the instant it was decided at, so its `Retry-After` needs
    /// no second clock read.
    pub fn try_acquire(&self) -> Option<Result<Permit, (Refusal, Instant)>> {
        if self.inner.remote.is_some() {
            return None;
        }
        let mut st = self.inner.lock();
        let now = Instant::now();
        if st.closed {
            return Some(Err((Refusal::ShuttingDown, now)));
        }
        if st.dry_run {
            let would = st.dry_admit(now);
            return Some(Ok(
                Permit::new(self.inner.clone(), Duration::ZERO).dry(would)
            ));
        }
        let blocked = st.blocked_until(now);
        if blocked <= now && st.queue.is_empty() {
            st.windows.reserve(now);
            st.paused_until = None;
            return Some(Ok(Permit::new(self.inner.clone(), Duration::ZERO)));
        }
        (st.on_limit == OnLimit::Reject).then_some(Err((st.exhausted(blocked.max(now), now), now)))
    }

    /// The configured `max_wait` now (a reload may change it).
    pub fn max_wait(&self) -> Duration {
        self.inner.lock().max_wait
    }

    /// Waits for a slot, or says at once why there will be none in time.
    pub async fn acquire(&self, caller: &Caller) -> Result<Permit, Refusal> {
        if let Some(remote) = &self.inner.remote {
            // Boxed: inline, the Redis round trip's state would make every
            // waiting call's future 3 KB larger, memory store or not.
            return Box::pin(self.acquire_remote(remote, caller)).await;
        }
        let (id, rx, ahead, now) = {
            let mut st = self.inner.lock();
            if st.closed {
                return Err(Refusal::ShuttingDown);
            }
            let now = Instant::now();
            if st.dry_run {
                let would = st.dry_admit(now);
                return Ok(Permit::new(self.inner.clone(), Duration::ZERO).dry(would));
            }
            let blocked = st.blocked_until(now);
            if blocked <= now && st.queue.is_empty() {
                st.windows.reserve(now);
                st.paused_until = None;
                return Ok(Permit::new(self.inner.clone(), Duration::ZERO));
            }
            if st.on_limit == OnLimit::Reject {
                return Err(st.exhausted(blocked.max(now), now));
            }
            if st.queue.all_waiting() >= st.max_queue {
                return Err(Refusal::QueueFull {
                    retry_at: blocked.max(now),
                });
            }
            let (start, ahead) = st.project_for(caller, now);
            if start.duration_since(now) > caller.max_wait(st.max_wait) {
                return Err(st.exhausted(start, now));
            }
            let (tx, rx) = oneshot::channel();
            let id = (st.queue).push(&caller.name, caller.weight, caller.priority, now, tx);
            drop(st);
            queued(id);
            self.inner.wake.notify_one();
            (id, rx, ahead, now)
        };
        let permit = self.wait_in_queue(caller, id, rx, now).await?;
        Ok(permit.placed(ahead))
    }

    /// Applies reloaded limits and admission settings; recorded sends carry over.
    pub fn reconfigure(&self, limits: &[Limit], cfg: &AdmissionConfig) {
        if let Some(remote) = &self.inner.remote {
            remote.store.reconfigure(limits, cfg.margin);
        }
        let policy = policy_value(limits);
        let limits = &self
            .inner
            .remote
            .as_ref()
            .map_or_else(|| limits.to_vec(), |r| r.share(limits));
        let mut st = self.inner.lock();
        let mut next = WindowSet::new(limits, cfg.margin).with_flight(cfg.flight);
        st.windows.carry_into(&mut next);
        st.windows = next;
        st.policy = policy;
        st.on_limit = cfg.on_limit;
        st.queue.set_aging(cfg.aging);
        st.max_queue = cfg.max_queue;
        st.max_wait = cfg.max_wait;
        st.dry_run = cfg.dry_run;
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Refuses new calls and every queued one with `shutting_down`.
    pub fn close(&self) {
        let mut st = self.inner.lock();
        st.closed = true;
        for tx in st.queue.drain() {
            let _ = tx.send(Err(Refusal::ShuttingDown));
        }
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Counts this key's waiting calls in `all`, shared with the other keys,
    /// so that `max_queue` bounds them together. Call before first use.
    pub fn share_queue(&self, all: Arc<std::sync::atomic::AtomicUsize>) {
        let mut st = self.inner.lock();
        debug_assert!(st.queue.is_empty());
        let aging = st.queue.aging();
        st.queue = FairQueue::default().sharing(all);
        st.queue.set_aging(aging);
    }
}

pub(super) fn policy_value(limits: &[Limit]) -> http::HeaderValue {
    http::HeaderValue::from_str(&policy_header(limits))
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends a slot: lands it (its answer arrived) or releases it (never
    /// sent). A slot Redis reserved is ended there too; the releaser is
    /// woken only once Redis has a released slot back.
    fn finish(self: &Arc<Self>, remote: Option<(u64, bool)>, land: bool) {
        let Some((id, via_redis)) = remote else {
            return if land { self.land() } else { self.release() };
        };
        let mut st = self.lock();
        if land {
            st.windows.land(Instant::now());
        } else {
            st.windows.release();
        }
        drop(st);
        let Some(r) = &self.remote else { return };
        if via_redis {
            r.finish(id, land, self.clone());
        } else {
            r.store.finished_locally(id, land);
            self.wake.notify_one();
        }
    }

    fn release(&self) {
        let mut st = self.lock();
        st.windows.release();
        drop(st);
        self.wake.notify_one();
    }

    fn land(&self) {
        let mut st = self.lock();
        st.windows.land(Instant::now());
        // A landing is what frees a window whose every slot was in flight:
        // the releaser may be sleeping on the bound, so tell it.
        let waiting = !st.queue.is_empty();
        drop(st);
        if waiting {
            self.wake.notify_one();
        }
    }
}

/// Each call's place in its queue, in the order calls joined it (debug level,
/// target `dastra_proxy::queue`; written after the lock is let go): the
/// request ids are taken earlier, and on the multi-thread runtime a call can
/// be overtaken between the two, so order checks (`scripts/bench-queue`)
/// judge by this instead.
fn queued(position: u64) {
    tracing::debug!(target: "dastra_proxy::queue", position, "queued");
}

#[cfg(test)]
mod edges;
#[cfg(test)]
mod priority_tests;
#[cfg(test)]
mod reserve_props;
#[cfg(test)]
mod reserve_tests;
#[cfg(test)]
mod tests;
