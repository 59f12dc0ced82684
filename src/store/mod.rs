//! The shared quota store: the same sliding-window log as [`crate::quota`],
//! kept in Redis so that several replicas hold one quota together.
//!
//! Every decision is one atomic Lua script (all windows checked and recorded
//! together, or none) on Redis' own clock. A refusal carries how long until a
//! slot frees, so a replica sleeps instead of polling. Queueing stays local to
//! each replica; only admission is global.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::config::Limit;
use crate::quota::WindowState;

/// What the store said about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A slot is reserved for this call id.
    Admitted,
    /// No slot: one frees after this long.
    Wait(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("redis is unreachable; next attempt in {} ms", .0.as_millis())]
    Backoff(Duration),
}

/// The one (multiplexed) connection to Redis that every quota key's store
/// shares, so passthrough's many credentials do not each open their own.
#[derive(Debug)]
pub struct RedisLink {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    retry_at: Mutex<Option<Instant>>,
    op_timeout: Duration,
}

impl RedisLink {
    /// Does not connect yet: a replica starts (and falls back) while Redis is down.
    pub fn new(url: &str) -> Result<Arc<Self>, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Redis(e.to_string()))?;
        Ok(Arc::new(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            retry_at: Mutex::new(None),
            op_timeout: Duration::from_millis(500),
        }))
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let now = Instant::now();
        if let Some(at) = *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) {
            if now < at {
                return Err(StoreError::Backoff(at - now));
            }
        }
        match tokio::time::timeout(
            self.op_timeout,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(now + RECONNECT_BACKOFF);
                Err(StoreError::Redis(e.to_string()))
            }
            Err(_) => {
                *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(now + RECONNECT_BACKOFF);
                Err(StoreError::Timeout(self.op_timeout))
            }
        }
    }

    /// Forgets a connection that failed; the next call reconnects.
    async fn reset(&self) {
        *self.conn.lock().await = None;
    }
}

/// One quota key's windows in Redis.
#[derive(Debug)]
pub struct RedisStore {
    link: Arc<RedisLink>,
    script: redis::Script,
    tag: String,
    layout: Mutex<Arc<Layout>>,
    flight_us: u64,
    op_timeout: Duration,
    next_id: AtomicU64,
    id_prefix: u64,
    /// The windows as the last decision saw them: (when, [used, frees_us]*).
    last: Mutex<Option<(Instant, Vec<i64>)>>,
}

/// The windows as Redis sees them: keys by position, so a reload that changes
/// a window's N or W keeps the sends its set already holds.
#[derive(Debug)]
struct Layout {
    keys: Vec<String>,
    windows: Vec<(u32, u64)>,
    limits: Vec<Limit>,
}

impl Layout {
    fn new(tag: &str, limits: &[Limit], margin: Duration) -> Self {
        let mut keys: Vec<String> = (0..limits.len()).map(|i| format!("{tag}:w{i}")).collect();
        keys.push(format!("{tag}:pause"));
        Self {
            keys,
            limits: limits.to_vec(),
            windows: limits
                .iter()
                .map(|l| (l.requests, (l.per + margin).as_micros() as u64))
                .collect(),
        }
    }
}

/// How long a reconnect waits after a failed one.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

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
        let link = RedisLink::new(url)?;
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
        // One hash tag for all of a key's sets, so Redis Cluster keeps them on one slot.
        let tag = format!("{{{key_prefix}:{quota_key}}}");
        let mut prefix = [0u8; 8];
        let _ = getrandom::fill(&mut prefix);
        Self {
            link,
            script: redis::Script::new(include_str!("window.lua")),
            layout: Mutex::new(Arc::new(Layout::new(&tag, limits, margin))),
            tag,
            flight_us: flight.as_micros() as u64,
            op_timeout: Duration::from_millis(500),
            next_id: AtomicU64::new(0),
            id_prefix: u64::from_le_bytes(prefix),
            last: Mutex::new(None),
        }
    }

    /// Applies reloaded limits; the sets keep what they hold.
    pub fn reconfigure(&self, limits: &[Limit], margin: Duration) {
        *self.layout.lock().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Layout::new(&self.tag, limits, margin));
    }

    /// A call id unique across replicas.
    pub fn member(&self) -> String {
        format!(
            "{:016x}{:x}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The `RateLimit` field from the last decision, aged to `now`; `None`
    /// before the first one.
    pub fn ratelimit_value(&self, now: Instant) -> Option<String> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let layout = self
            .layout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let elapsed = now.saturating_duration_since(last.0).as_micros() as i64;
        let mut out = String::new();
        for (i, l) in layout.limits.iter().enumerate() {
            let used = last.1.get(2 * i).copied().unwrap_or(0).max(0) as u32;
            let frees = (last.1.get(2 * i + 1).copied().unwrap_or(0) - elapsed).max(0) as u64;
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
        let v = self.run_raw("peek", "", None, None).await?;
        let layout = self
            .layout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(layout
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| WindowState {
                name: l.name.clone(),
                limit: l.requests,
                period: l.per,
                used: v.get(2 * i).copied().unwrap_or(0).max(0) as u32,
                frees_in: Duration::from_micros(
                    v.get(2 * i + 1).copied().unwrap_or(0).max(0) as u64
                ),
            })
            .collect())
    }

    /// Runs the script; `now_us` overrides Redis TIME (tests only).
    pub async fn run(
        &self,
        op: &str,
        member: &str,
        now_us: Option<u64>,
        extra: Option<u64>,
    ) -> Result<(i64, i64), StoreError> {
        let v = self.run_raw(op, member, now_us, extra).await?;
        Ok((
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
        ))
    }

    async fn run_raw(
        &self,
        op: &str,
        member: &str,
        now_us: Option<u64>,
        extra: Option<u64>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.link.connection().await?;
        let layout = self
            .layout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut inv = self.script.prepare_invoke();
        for k in &layout.keys {
            inv.key(k);
        }
        inv.arg(op)
            .arg(member)
            .arg(self.flight_us)
            .arg(now_us.map(|n| n.to_string()).unwrap_or_default());
        match extra {
            Some(x) => {
                inv.arg(x);
            }
            None => {
                for (limit, span) in &layout.windows {
                    inv.arg(*limit).arg(*span);
                }
            }
        }
        let result =
            tokio::time::timeout(self.op_timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.link.reset().await;
                }
                Err(StoreError::Redis(e.to_string()))
            }
            Err(_) => {
                self.link.reset().await;
                Err(StoreError::Timeout(self.op_timeout))
            }
        }
    }

    pub async fn reserve(&self, member: &str) -> Result<Decision, StoreError> {
        self.reserve_at(member, None).await
    }

    pub async fn reserve_at(
        &self,
        member: &str,
        now_us: Option<u64>,
    ) -> Result<Decision, StoreError> {
        let v = self.run_raw("reserve", member, now_us, None).await?;
        let (ok, wait) = (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
        );
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), v.into_iter().skip(2).collect()));
        Ok(if ok == 1 {
            Decision::Admitted
        } else {
            Decision::Wait(Duration::from_micros(wait.max(1) as u64))
        })
    }

    pub async fn land(&self, member: &str, now_us: Option<u64>) -> Result<(), StoreError> {
        self.run("land", member, now_us, None).await.map(drop)
    }

    pub async fn release(&self, member: &str) -> Result<(), StoreError> {
        self.run("release", member, None, None).await.map(drop)
    }

    /// Holds every replica's sends for `d` (an upstream 429).
    pub async fn pause(&self, d: Duration) -> Result<(), StoreError> {
        self.run("pause", "", None, Some(d.as_millis().max(1) as u64))
            .await
            .map(drop)
    }
}
