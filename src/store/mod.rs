//! The shared quota store: the same sliding-window log as [`crate::quota`],
//! kept in Redis so that several replicas hold one quota together.
//!
//! Every decision is one atomic Lua script (all windows checked and recorded
//! together, or none) on Redis' own clock, over one sorted set of sends per
//! quota key. A refusal carries how long until a slot frees, so a replica
//! sleeps instead of polling. Queueing stays local to each replica; only
//! admission is global. Each replica keeps its own sends ([`sends`]) and
//! writes them back when Redis lost them (a new epoch) or missed them (an
//! outage), before it decides through Redis again.

mod known;
mod link;
mod script;
mod sends;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use known::Known;
pub use link::RedisLink;
use script::{random, Ask, Code, Reply};
use sends::Sends;
use tokio::time::Instant;

use crate::config::Limit;
use crate::quota::WindowState;

/// What the store said about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A slot is reserved for this call id.
    Admitted,
    /// No slot: one frees after this long (for the call `ahead` places back).
    Wait(Duration),
    /// Redis lost this key moments ago and every replica is writing its
    /// sends back: ask again after this long (not a quota refusal).
    Settling(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(String),
    /// A setting to fix, not an outage: wrong password, TLS, a bad URL.
    #[error("redis: {0}")]
    Config(String),
    #[error("redis did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("redis is unreachable; next attempt in {} ms", .0.as_millis())]
    Backoff(Duration),
}

/// After Redis lost a key, how long nobody is admitted so that every replica
/// writes its sends back first: more than a heartbeat plus an operation.
/// (The README's Redis section names this figure; `tests/layout.rs` checks it.)
pub const SETTLE: Duration = Duration::from_millis(600);
/// How often a replica with sends in a window asks whether Redis lost them.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// Per window, as a reply showed it: sends counted, µs until the oldest leaves.
type Counts = Vec<(u32, u64)>;

/// One quota key's windows in Redis, as this replica uses them.
#[derive(Debug)]
pub struct RedisStore {
    link: Arc<RedisLink>,
    script: redis::Script,
    keys: [String; 5],
    windows: Mutex<Arc<Windows>>,
    flight: Duration,
    next_id: AtomicU64,
    id_prefix: u64,
    /// The epoch of the key this replica's sends are in Redis under.
    epoch: Mutex<String>,
    sends: Mutex<Sends>,
    /// The windows as the latest reply showed them: (when, [(used, frees_us)]).
    last: Mutex<Option<(Instant, Counts)>>,
    /// The highest decision counter Redis answered in this epoch: a lower
    /// one later means Redis went back in time (see `window.lua`).
    seen: Mutex<u64>,
    /// The link's connection this key last decided over (0: none yet).
    generation: Mutex<u64>,
    /// When this replica last heard from Redis about this key.
    heard: Mutex<Option<Instant>>,
    /// Until when the window is known full, so refusals need no Redis.
    known: Mutex<Known>,
    /// Until when Redis holds every replica's sends (Dastra's 429), as the
    /// latest reply said: refusals then say `upstream_throttled`.
    paused: Mutex<Option<Instant>>,
    settle: Duration,
    heartbeat: Duration,
}

#[derive(Debug)]
struct Windows {
    limits: Vec<Limit>,
    /// (N, span in µs) per window, span including the margin.
    args: Vec<(u32, u64)>,
    longest: Duration,
}

impl Windows {
    fn new(limits: &[Limit], margin: Duration) -> Self {
        Self {
            limits: limits.to_vec(),
            args: limits
                .iter()
                .map(|l| (l.requests, (l.per + margin).as_micros() as u64))
                .collect(),
            longest: limits
                .iter()
                .map(|l| l.per + margin)
                .max()
                .unwrap_or_default(),
        }
    }
}

impl RedisStore {
    /// Does not connect yet: a replica starts (and falls back) while Redis is down.
    pub fn new(
        url: &str,
        key_prefix: &str,
        quota_key: &str,
        limits: &[Limit],
        margin: Duration,
        flight: Duration,
    ) -> Result<Self, StoreError> {
        let link = RedisLink::new(url, None)?;
        Ok(Self::with_link(
            link, key_prefix, quota_key, limits, margin, flight,
        ))
    }

    /// A key's windows over a shared connection.
    pub fn with_link(
        link: Arc<RedisLink>,
        key_prefix: &str,
        quota_key: &str,
        limits: &[Limit],
        margin: Duration,
        flight: Duration,
    ) -> Self {
        // One hash tag for all of a key's keys, so Redis Cluster keeps them on one slot.
        let tag = format!("{{{key_prefix}:{quota_key}}}");
        Self {
            link,
            script: redis::Script::new(include_str!("window.lua")),
            keys: ["sends", "pause", "epoch", "settle", "counter"].map(|k| format!("{tag}:{k}")),
            windows: Mutex::new(Arc::new(Windows::new(limits, margin))),
            flight,
            next_id: AtomicU64::new(0),
            id_prefix: random() as u64,
            epoch: Mutex::new(String::new()),
            sends: Mutex::new(Sends::default()),
            last: Mutex::new(None),
            seen: Mutex::new(0),
            generation: Mutex::new(0),
            heard: Mutex::new(None),
            known: Mutex::new(Known::default()),
            paused: Mutex::new(None),
            settle: SETTLE,
            heartbeat: HEARTBEAT,
        }
    }

    /// Another settle after a new epoch than [`SETTLE`] (tests: zero, with
    /// one replica and Redis' clock overridden).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Another heartbeat than [`HEARTBEAT`] (tests: one longer than the
    /// test, so what happens at once is told from what the heartbeat does
    /// later). Keep it below the settle, as [`SETTLE`]'s doc says.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// How often this replica asks Redis whether it lost its sends, and
    /// whether it is back while unreachable.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Applies reloaded limits; the set keeps what it holds.
    pub fn reconfigure(&self, limits: &[Limit], margin: Duration) {
        *lock(&self.windows) = Arc::new(Windows::new(limits, margin));
        self.forget();
    }

    /// Until when Redis holds sends after Dastra's 429, as last heard (one
    /// ordered before this process started included).
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        lock(&self.paused).filter(|p| *p > now)
    }

    /// When this replica last heard from Redis about this key: a decision
    /// that leaves it unchanged was answered from what the replica knew.
    pub fn heard(&self) -> Option<Instant> {
        *lock(&self.heard)
    }

    /// Drops what this replica knew about the window without asking: the
    /// next decision goes to Redis.
    pub fn forget(&self) {
        lock(&self.known).forget();
    }

    /// A new call id, unique across replicas.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The call id as Redis stores it.
    pub fn member(&self, id: u64) -> String {
        format!("{:016x}{:x}", self.id_prefix, id)
    }

    /// The `RateLimit` field from the latest reply about this key, aged to
    /// `now`; `None` before the first one.
    pub fn ratelimit_value(&self, now: Instant) -> Option<String> {
        let (at, v) = lock(&self.last).clone()?;
        let windows = lock(&self.windows).clone();
        let elapsed = now.saturating_duration_since(at).as_micros() as u64;
        let paused = self
            .paused_until(now)
            .map(|p| p.saturating_duration_since(now).as_micros() as u64);
        let mut out = String::new();
        for (i, l) in windows.limits.iter().enumerate() {
            let (used, frees) = v.get(i).copied().unwrap_or_default();
            // While Dastra's pause holds every send: nothing left until it ends.
            let (used, frees) = match paused {
                Some(left) => (l.requests, left),
                None => (used, frees.saturating_sub(elapsed)),
            };
            let remaining = l.requests.saturating_sub(used);
            crate::quota::push_ratelimit_item(
                &mut out,
                &l.name,
                remaining,
                Duration::from_micros(frees),
            );
        }
        Some(out)
    }

    /// The shared windows as they stand now, for `/quota` and the gauges.
    pub async fn peek(&self) -> Result<Vec<WindowState>, StoreError> {
        let v = self.run(Ask::new("peek", "", None)).await?;
        let windows = lock(&self.windows).clone();
        Ok(windows
            .limits
            .iter()
            .zip(&v.windows)
            .map(|(l, (used, frees))| WindowState {
                name: l.name.clone(),
                limit: l.requests,
                period: l.per,
                used: *used,
                frees_in: Duration::from_micros(*frees),
                // Redis keeps the count, not who sent: filled in from this
                // replica's own log by the caller.
                sends: Vec::new(),
            })
            .collect())
    }

    /// Reserves a slot for call `id` with `ahead` calls queued before it on
    /// this replica (then nothing is reserved: the answer is when this call
    /// could start). `now_us` overrides Redis TIME (tests only).
    pub async fn reserve(
        &self,
        id: u64,
        ahead: usize,
        now_us: Option<u64>,
    ) -> Result<Decision, StoreError> {
        self.decide("reserve", id, ahead, now_us).await
    }

    /// When the call `ahead` places back could start, reserving nothing
    /// (this replica is paused, or others wait before it).
    pub async fn project(&self, ahead: usize) -> Result<Decision, StoreError> {
        self.decide("project", 0, ahead, None).await
    }

    async fn decide(
        &self,
        op: &'static str,
        id: u64,
        ahead: usize,
        now_us: Option<u64>,
    ) -> Result<Decision, StoreError> {
        let now = Instant::now();
        if now_us.is_none() && !lock(&self.sends).dirty {
            if let Some(at) = lock(&self.known).start(ahead, now) {
                return Ok(Decision::Wait(at - now));
            }
        }
        let member = self.member(id);
        let v = self
            .current(Ask {
                ahead,
                ..Ask::new(op, &member, now_us)
            })
            .await?;
        let now = Instant::now();
        match v.code {
            Code::Wait(us) => lock(&self.known).learn(ahead, now + Duration::from_micros(us), now),
            _ => lock(&self.known).forget(),
        }
        Ok(match v.code {
            Code::Lost { .. } => {
                return Err(StoreError::Redis(
                    "the quota key's epoch changed twice".into(),
                ))
            }
            Code::Done => {
                let w = lock(&self.windows).clone();
                lock(&self.sends).sent(id, Instant::now(), w.longest, self.flight);
                Decision::Admitted
            }
            Code::Settling(us) => Decision::Settling(Duration::from_micros(us)),
            Code::Wait(us) => Decision::Wait(Duration::from_micros(us)),
        })
    }

    /// Asks whether Redis still holds this replica's sends, writing them back
    /// if not; cheap when nothing changed. Returns the pause left.
    pub async fn check(&self) -> Result<Duration, StoreError> {
        let v = self.current(Ask::new("check", "", None)).await?;
        Ok(Duration::from_micros(v.pause_us))
    }

    /// Runs `ask` after writing back what Redis is missing: on a new epoch,
    /// or after sends it did not see (an outage), then once more.
    async fn current(&self, ask: Ask<'_>) -> Result<Reply, StoreError> {
        if lock(&self.sends).dirty {
            self.write_back().await?;
        }
        let v = self.run(ask.clone()).await?;
        let Code::Lost { epoch } = v.code else {
            return Ok(v);
        };
        tracing::info!(key = %self.keys[0], "redis lost this quota key's sends; writing this replica's back");
        self.write_back().await?;
        self.forget();
        *lock(&self.epoch) = epoch.to_string();
        *lock(&self.seen) = 0;
        let v = self.run(ask).await?;
        if matches!(v.code, Code::Lost { .. }) {
            // Lost again in between: the next call starts over.
            return Err(StoreError::Redis(
                "the quota key's epoch changed twice".into(),
            ));
        }
        Ok(v)
    }

    async fn write_back(&self) -> Result<(), StoreError> {
        let w = lock(&self.windows).clone();
        let offsets = lock(&self.sends).offsets(Instant::now(), w.longest, self.flight);
        let mut extra = Vec::with_capacity(offsets.len() * 2);
        for (id, off) in offsets {
            extra.push(self.member(id));
            extra.push(off.to_string());
        }
        self.run(Ask {
            extra,
            ..Ask::new("restore", "", None)
        })
        .await?;
        lock(&self.sends).dirty = false;
        self.forget();
        Ok(())
    }

    /// The answer of call `id` arrived: it ages from now.
    pub async fn land(&self, id: u64, now_us: Option<u64>) -> Result<(), StoreError> {
        lock(&self.sends).landed(id, Instant::now());
        let r = self
            .run(Ask::new("land", &self.member(id), now_us))
            .await
            .map(drop);
        self.missed(r)
    }

    /// Call `id` never reached Dastra: its slot is free again.
    pub async fn release(&self, id: u64, now_us: Option<u64>) -> Result<(), StoreError> {
        lock(&self.sends).released(id);
        // Its slot is free again: what this replica knew is now late.
        self.forget();
        // A release Redis missed only over-counts until the reservation expires.
        let r = self
            .run(Ask::new("release", &self.member(id), now_us))
            .await;
        // A decision made while the release was on its way is late too.
        self.forget();
        r.map(drop)
    }

    /// Holds every replica's sends for `d` (an upstream 429).
    pub async fn pause(&self, d: Duration) -> Result<(), StoreError> {
        self.forget();
        let ms = d.as_millis().max(1).to_string();
        self.run(Ask {
            extra: vec![ms],
            ..Ask::new("pause", "", None)
        })
        .await
        .map(drop)
    }

    fn missed<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_err() {
            lock(&self.sends).dirty = true;
        }
        r
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind the lock: still usable after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
