//! Quota savings: identical GETs in flight share one upstream call
//! ([`Cache::join`]), and answers to paths a `[[cache.rules]]` names are
//! stored as RFC 9111 allows, for at most its ttl ([`Cache::store`],
//! [`Cache::lookup`]; `freshness` says for how long each may be used).
//! Neither spends quota. Keys hold the quota key (the credential the call
//! goes out with), so two credentials never share.

pub mod directives;
pub mod freshness;
mod sharing;
mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::credential::QuotaKey;
use crate::error::ProxyError;
use crate::metrics::Metrics;
pub use freshness::{Freshness, Storable, Timing};
pub use sharing::{not_modified, scan, shareable, Request, Scan, NOT_MODIFIED_HEADERS, VARYING};
use store::Store;
pub use store::Stored;

/// What identifies an answer: HEAD reads GET's entry, so no method.
/// Made by [`Key::of`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub quota: QuotaKey,
    /// Path and query, byte for byte.
    pub target: Bytes,
    /// The request's value of each of [`VARYING`], in that order.
    pub varying: [Option<HeaderValue>; 3],
}

/// A whole answer, shared by reference between callers and the cache.
#[derive(Debug)]
pub struct Snapshot {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Snapshot {
    /// Bytes it holds, for `max_bytes`: the body, and what each header and
    /// the map itself cost besides their text (measured with
    /// scripts/bench-cache: RSS grew 2.9 KB per cached 1 KiB answer).
    pub fn size(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 96)
            .sum();
        (self.body.len() + headers + 512) as u64
    }
}

/// How a shared call ended, for the callers that waited on it.
#[derive(Debug, Clone)]
pub enum Landing {
    Answer(Arc<Snapshot>),
    /// The same call failed (502, 504, a refusal): they get the same error.
    Failed(Arc<ProxyError>),
    /// Not shareable (larger than `max_entry`, or the leader's answer broke
    /// off): each goes upstream on its own.
    Own,
}

/// The first caller of a key leads its flight; the others follow it.
#[derive(Debug)]
pub enum Join {
    Lead(Flight),
    Follow(Follower),
}

/// Where a flight's landing is left for its followers: a lock and one
/// `Notify` (a `watch` channel, with its eight-way notifier, made every
/// flight twice as large), and a count of who follows.
#[derive(Debug, Default)]
struct Board {
    landing: Mutex<Option<Landing>>,
    notify: Notify,
    followers: AtomicUsize,
}

/// A call in flight that others wait on. Dropped without [`Flight::land`]
/// (the task running it died), its followers go upstream on their own.
#[derive(Debug)]
pub struct Flight {
    cache: Arc<Cache>,
    key: Key,
    board: Arc<Board>,
    landed: bool,
}

/// How many callers follow a flight.
#[derive(Debug, Clone)]
pub struct Watchers(Arc<Board>);

impl Watchers {
    pub fn count(&self) -> usize {
        self.0.followers.load(Ordering::Acquire)
    }
}

/// One caller waiting for a flight's landing.
#[derive(Debug)]
pub struct Follower(Arc<Board>);

impl Follower {
    /// The landing, once the flight has one.
    pub async fn landing(&self) -> Landing {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a landing between the two wakes it.
            notified.as_mut().enable();
            if let Some(l) = lock(&self.0.landing).clone() {
                return l;
            }
            notified.await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Flight {
    pub fn watchers(&self) -> Watchers {
        Watchers(self.board.clone())
    }

    /// Ends the flight: later callers start a new one (or find the cache).
    pub fn land(mut self, landing: Landing) {
        self.finish(landing);
    }

    fn finish(&mut self, landing: Landing) {
        self.landed = true;
        self.cache.flights().remove(&self.key);
        *lock(&self.board.landing) = Some(landing);
        self.board.notify.notify_waiters();
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if !self.landed {
            self.finish(Landing::Own);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cache and the flights, one per process.
pub struct Cache {
    cfg: ArcSwap<CacheConfig>,
    store: Mutex<Store>,
    flights: Mutex<HashMap<Key, Arc<Board>>>,
    metrics: Metrics,
    saved_cached: prometheus::IntCounter,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

impl Cache {
    pub fn new(cfg: &CacheConfig, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            cfg: ArcSwap::from_pointee(cfg.clone()),
            store: Mutex::new(Store::default()),
            flights: Mutex::new(HashMap::new()),
            saved_cached: metrics.quota_saved_total.with_label_values(&["cached"]),
            metrics,
        })
    }

    pub fn config(&self) -> Arc<CacheConfig> {
        self.cfg.load_full()
    }

    /// Applies reloaded settings; entries stay (shrunk to a smaller `max_bytes`).
    pub fn reconfigure(&self, cfg: &CacheConfig) {
        self.cfg.store(Arc::new(cfg.clone()));
        let mut st = self.lock();
        st.shrink(cfg.max_bytes);
        self.metrics.cache_bytes.set(st.bytes() as i64);
    }

    /// The ttl of the rule naming `path`, if any.
    pub fn ttl_for(&self, path: &str) -> Option<Duration> {
        let cfg = self.cfg.load();
        cfg.rules.iter().find(|r| r.matches(path)).map(|r| r.ttl)
    }

    /// The stored answer for `key` that `req` selects (by the headers its
    /// `Vary` names), fresh or not: the caller decides (`Freshness::usable`).
    pub fn lookup(&self, key: &Key, req: &HeaderMap, now: Instant) -> Option<Stored> {
        let mut st = self.lock();
        let hit = st.find(key, req, now);
        self.metrics.cache_bytes.set(st.bytes() as i64);
        hit
    }

    /// A stored answer for when Dastra cannot answer: within
    /// `stale_if_error` past its freshness, and not one Dastra said must be
    /// revalidated.
    pub fn get_stale(&self, key: &Key, req: &HeaderMap, now: Instant) -> Option<Arc<Snapshot>> {
        let window = self.cfg.load().stale_if_error;
        let hit = self.lookup(key, req, now)?;
        let f = hit.freshness;
        (!f.strict && now < f.fresh_until() + window).then_some(hit.snap)
    }

    /// Keeps `snap` (the answer to `req`) as `storable` says, for at most
    /// `ttl` (and `stale_if_error` past it); says what was kept, if anything:
    /// the answer less the headers its `no-cache="…"`/`private="…"` name.
    pub fn store(
        &self,
        key: Key,
        req: &HeaderMap,
        snap: Arc<Snapshot>,
        storable: Storable,
        ttl: Duration,
    ) -> Option<Arc<Snapshot>> {
        let cfg = self.cfg.load();
        let f = storable.freshness;
        let stale = match f.strict {
            true => Duration::ZERO,
            false => cfg
                .stale_if_error
                .max(cfg.stale_while_revalidate)
                .max(f.behind),
        };
        let never_usable = f.no_cache || f.lifetime <= f.initial_age;
        if never_usable && !f.validators && stale.is_zero() {
            return None;
        }
        let snap = if storable.omit.is_empty() {
            snap
        } else {
            let mut headers = snap.headers.clone();
            for name in &storable.omit {
                headers.remove(name.as_str());
            }
            Arc::new(Snapshot {
                status: snap.status,
                headers,
                body: snap.body.clone(),
            })
        };
        let names = vary_names(&snap.headers);
        let values = store::values(&names, req);
        let stored = Stored {
            snap: snap.clone(),
            freshness: f,
        };
        let mut st = self.lock();
        st.purge(f.stored_at);
        let kept = st.put(
            key,
            names,
            values,
            stored,
            f.stored_at + ttl + stale,
            cfg.max_bytes,
        );
        self.metrics.cache_bytes.set(st.bytes() as i64);
        kept.then_some(snap)
    }

    /// A 2xx write to `path` under `quota`: every entry of that key whose path
    /// shares the write's first four segments goes (all of them when the
    /// write's path is shorter).
    pub fn evict(&self, quota: &QuotaKey, path: &str) {
        let prefix = resource(path);
        let mut st = self.lock();
        st.evict(|k| {
            &k.quota == quota
                && prefix
                    .as_ref()
                    .is_none_or(|p| resource(target_path(&k.target)).as_deref() == Some(p.as_str()))
        });
        self.metrics.cache_bytes.set(st.bytes() as i64);
    }

    /// Leads the flight for `key`, or follows the one already in flight.
    pub fn join(self: &Arc<Self>, key: Key) -> Join {
        let mut flights = self.flights();
        if let Some(board) = flights.get(&key) {
            board.followers.fetch_add(1, Ordering::AcqRel);
            return Join::Follow(Follower(board.clone()));
        }
        let board = Arc::new(Board::default());
        flights.insert(key.clone(), board.clone());
        Join::Lead(Flight {
            cache: self.clone(),
            key,
            board,
            landed: false,
        })
    }

    /// Counts a call that spent no quota.
    pub fn saved(&self, how: &'static str) {
        match how {
            // Resolved once: a label lookup per hit cost ~300 instructions.
            "cached" => self.saved_cached.inc(),
            _ => self
                .metrics
                .quota_saved_total
                .with_label_values(&[how])
                .inc(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Board>>> {
        lock(&self.flights)
    }
}

/// The request headers an answer's `Vary` names beyond the key's own.
fn vary_names(headers: &HeaderMap) -> Vec<http::HeaderName> {
    let mut names: Vec<http::HeaderName> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !VARYING.contains(n))
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// Whether a `Cache-Control` value holds `directive` (case-insensitive).
pub fn has_directive(v: &HeaderValue, directive: &str) -> bool {
    v.to_str().is_ok_and(|s| {
        s.split(',').any(|d| {
            d.trim()
                .split('=')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(directive))
        })
    })
}

fn target_path(target: &[u8]) -> &str {
    let s = std::str::from_utf8(target).unwrap_or("");
    s.split('?').next().unwrap_or("")
}

/// `/v1/ws/<id>/<Resource>`: the first four segments, or `None` when shorter.
fn resource(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    (segs.len() >= 4).then(|| segs[..4].join("/"))
}

#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod variant_tests;
