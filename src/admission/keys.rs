//! One [`Admission`] per quota key: a single key for a held credential, one
//! per caller credential in passthrough, made on first use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{AdmissionConfig, Limit, StoreOnError};
use crate::credential::QuotaKey;
use crate::metrics::Metrics;
use crate::store::{RedisLink, RedisStore, StoreError};

use tokio::time::Instant;

use super::named::{Named, NamedQuota};
use super::{Admission, Persist, Refusal, Remote};
use crate::state_file::{Restored, StateFile};

/// What a Redis-backed key needs besides its limits.
#[derive(Debug, Clone)]
pub struct SharedStore {
    /// The one connection every key's store shares.
    pub link: Arc<RedisLink>,
    pub key_prefix: String,
    pub on_error: StoreOnError,
    pub replicas: u32,
    /// How long a reservation may stay in flight before Redis forgets it.
    pub flight: Duration,
    pub metrics: Metrics,
    /// Whether Redis answered the last time it was asked.
    pub healthy: Arc<AtomicBool>,
}

impl SharedStore {
    fn admission(
        &self,
        key: QuotaKey,
        limits: &[Limit],
        cfg: &AdmissionConfig,
    ) -> Result<Admission, StoreError> {
        let store = RedisStore::with_link(
            self.link.clone(),
            &self.key_prefix,
            &hex::encode(&key.0[..8]),
            limits,
            cfg.margin,
            self.flight,
        );
        let remote = Remote::new(
            Arc::new(store),
            self.on_error,
            self.metrics.clone(),
            self.healthy.clone(),
            self.replicas,
        );
        // While Redis is unreachable each replica holds only its share.
        Ok(Admission::with_remote(limits, cfg, Some(remote)))
    }
}

/// The state file and what the previous process left in it, handed out key
/// by key as each key's admission is made.
#[derive(Debug)]
pub struct LocalState {
    pub file: Arc<StateFile>,
    pub restored: Mutex<Restored>,
    pub metrics: Metrics,
}

impl LocalState {
    fn admission(&self, key: QuotaKey, limits: &[Limit], cfg: &AdmissionConfig) -> Admission {
        let key = key.file_id();
        let (restored, paused) = {
            let mut r = self.restored.lock().unwrap_or_else(|e| e.into_inner());
            (r.take(key), r.take_pause(key))
        };
        let persist = Persist {
            file: self.file.clone(),
            key,
            metrics: self.metrics.clone(),
        };
        let admission = Admission::with_state(limits, cfg, persist, &restored);
        if let Some(left) = paused {
            tracing::info!(
                pause_ms = left.as_millis() as u64,
                "the pause Dastra ordered before the restart still holds"
            );
            admission.hold_until(tokio::time::Instant::now() + left);
        }
        admission
    }
}

/// The admission state of every quota key: one for the default credential
/// (or one per caller credential in passthrough, created on first use), one
/// per named credential.
#[derive(Debug)]
pub struct Quotas {
    single: Admission,
    /// Whether there is a default credential (`[credential]`) at all.
    default: bool,
    named: Named,
    /// Each client's own windows (`[[clients.limits]]`), by client name.
    clients: Named,
    /// Reserves and the shared rest of every split credential.
    pub(super) parts: super::reserve::Parts,
    per_key: Option<Mutex<KeyState>>,
    shared: Option<SharedStore>,
    local: Option<LocalState>,
    /// Calls waiting over every key: `max_queue` bounds them together.
    waiting: Arc<AtomicUsize>,
}

/// Passthrough's bounds on the credentials tracked.
#[derive(Debug, Clone, Copy)]
pub struct KeyBounds {
    /// At most this many credentials tracked at once.
    pub max_keys: usize,
    /// At most this many of them first used by one client address, so one
    /// client churning keys cannot fill the map for everyone.
    pub max_keys_per_ip: usize,
}

#[derive(Debug)]
struct KeyState {
    limits: Vec<Limit>,
    cfg: AdmissionConfig,
    bounds: KeyBounds,
    map: HashMap<QuotaKey, Tracked>,
    /// Keys tracked per client address that first used them.
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Tracked {
    admission: Admission,
    owner: Option<IpAddr>,
}

impl KeyState {
    /// A key that may make room, among those `mine` accepts: one Dastra
    /// rejected (401: no quota of its own there) with nobody waiting,
    /// else an idle one. Otherwise when the first may be idle.
    fn victim(&self, now: Instant, mine: impl Fn(&Tracked) -> bool) -> Result<QuotaKey, Instant> {
        let mut soonest = None::<Instant>;
        let mut idle = None;
        for (k, t) in self.map.iter().filter(|(_, t)| mine(t)) {
            if t.admission.rejected() && t.admission.waiting() == 0 {
                return Ok(*k);
            }
            match t.admission.idle_at(now) {
                None => idle = idle.or(Some(*k)),
                Some(at) => soonest = Some(soonest.map_or(at, |s| s.min(at))),
            }
        }
        idle.ok_or(soonest.unwrap_or(now))
    }

    fn forget(&mut self, key: &QuotaKey) {
        let Some(t) = self.map.remove(key) else {
            return;
        };
        if let Some(ip) = t.owner {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        // Its releaser task ends; nothing of it is left.
        t.admission.close();
    }
}

impl Admission {
    /// Marks whether Dastra rejected this credential's last answered call.
    pub fn set_rejected(&self, yes: bool) {
        if self.inner.rejected.load(Ordering::Relaxed) != yes {
            self.inner.rejected.store(yes, Ordering::Relaxed);
        }
    }

    fn rejected(&self) -> bool {
        self.inner.rejected.load(Ordering::Relaxed)
    }
}

impl Quotas {
    /// `bounds`: `Some` in passthrough (one admission per caller credential).
    pub fn new(
        limits: &[Limit],
        cfg: &AdmissionConfig,
        bounds: Option<KeyBounds>,
        shared: Option<SharedStore>,
        local: Option<LocalState>,
    ) -> Result<Self, StoreError> {
        let single = match (&shared, &local) {
            (Some(s), _) => s.admission(QuotaKey([0; 32]), limits, cfg)?,
            (None, Some(l)) => l.admission(QuotaKey([0; 32]), limits, cfg),
            (None, None) => Admission::new(limits, cfg),
        };
        let waiting = Arc::new(AtomicUsize::new(0));
        single.share_queue(waiting.clone());
        Ok(Self {
            single,
            default: true,
            named: Named::default(),
            clients: Named::default(),
            parts: Default::default(),
            per_key: bounds.map(|bounds| {
                Mutex::new(KeyState {
                    limits: limits.to_vec(),
                    cfg: cfg.clone(),
                    bounds,
                    map: HashMap::new(),
                    per_ip: HashMap::new(),
                })
            }),
            shared,
            local,
            waiting,
        })
    }

    /// With the named credentials' quotas; `default`: whether a
    /// `[credential]` is held besides them.
    pub fn with_named(
        mut self,
        default: bool,
        named: &[NamedQuota],
        cfg: &AdmissionConfig,
    ) -> Result<Self, StoreError> {
        self.default = default;
        self.set_named(named, cfg)?;
        Ok(self)
    }

    /// The named credentials' quotas become `want` (start-up and reload).
    pub fn set_named(&self, want: &[NamedQuota], cfg: &AdmissionConfig) -> Result<(), StoreError> {
        self.named
            .set(want, cfg, |key, limits, cfg| self.make(key, limits, cfg))
    }

    /// The clients' own windows become `want` (start-up and reload).
    pub fn set_clients(
        &self,
        want: &[NamedQuota],
        cfg: &AdmissionConfig,
    ) -> Result<(), StoreError> {
        self.clients
            .set(want, cfg, |key, limits, cfg| self.make(key, limits, cfg))
    }

    /// The admission of a client's own windows, if it has any. Without any
    /// client windows, a load and nothing more.
    pub fn client_gate(&self, client: &str) -> Option<Admission> {
        match self.clients.is_empty() {
            true => None,
            false => self.clients.by_name(client),
        }
    }

    /// Every client's own windows.
    pub fn client_gates(&self) -> Vec<(Arc<str>, Admission)> {
        self.clients.all()
    }

    /// A key's admission as the store asks: through Redis, with the state
    /// file, or in memory alone.
    pub(super) fn make(
        &self,
        key: QuotaKey,
        limits: &[Limit],
        cfg: &AdmissionConfig,
    ) -> Result<Admission, StoreError> {
        let a = match (&self.shared, &self.local) {
            (Some(s), _) => s.admission(key, limits, cfg)?,
            (None, Some(l)) => l.admission(key, limits, cfg),
            (None, None) => Admission::new(limits, cfg),
        };
        a.share_queue(self.waiting.clone());
        Ok(a)
    }

    /// The admission of `key`. In passthrough a new credential takes the
    /// place of one Dastra rejected or one that is idle (nothing waiting, in
    /// flight or in any window); when all `max_keys` are busy, or `owner`
    /// (the client address) already made `max_keys_per_ip` of them, the
    /// call is refused.
    pub fn get(&self, key: QuotaKey, owner: Option<IpAddr>) -> Result<Admission, Refusal> {
        if key != QuotaKey([0; 32]) {
            if let Some(a) = self.named.get(&key) {
                return Ok(a);
            }
        }
        let Some(m) = &self.per_key else {
            return Ok(self.single.clone());
        };
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = st.map.get(&key) {
            return Ok(t.admission.clone());
        }
        let now = Instant::now();
        let owned = owner.map_or(0, |ip| st.per_ip.get(&ip).copied().unwrap_or(0));
        let room = if owned >= st.bounds.max_keys_per_ip {
            Some(st.victim(now, |t| t.owner == owner))
        } else if st.map.len() >= st.bounds.max_keys {
            Some(st.victim(now, |_| true))
        } else {
            None
        };
        match room {
            Some(Ok(victim)) => st.forget(&victim),
            Some(Err(retry_at)) => return Err(Refusal::TooManyKeys { retry_at }),
            None => {}
        }
        let (limits, cfg) = (&st.limits, &st.cfg);
        let a = match (&self.shared, &self.local) {
            // Never a full local quota in place of the shared one.
            (Some(s), _) => s
                .admission(key, limits, cfg)
                .map_err(|_| Refusal::StoreUnavailable)?,
            (None, Some(l)) => l.admission(key, limits, cfg),
            (None, None) => Admission::new(limits, cfg),
        };
        a.share_queue(self.waiting.clone());
        st.map.insert(
            key,
            Tracked {
                admission: a.clone(),
                owner,
            },
        );
        if let Some(ip) = owner {
            *st.per_ip.entry(ip).or_default() += 1;
        }
        Ok(a)
    }

    /// The admission of `key` if it is tracked already; never makes one.
    pub fn existing(&self, key: &QuotaKey) -> Option<Admission> {
        if let Some(a) = self.named.get(key) {
            return Some(a);
        }
        match &self.per_key {
            None => Some(self.single.clone()),
            Some(m) => {
                let st = m.lock().unwrap_or_else(|e| e.into_inner());
                st.map.get(key).map(|t| t.admission.clone())
            }
        }
    }

    /// Every key's admission.
    pub fn all(&self) -> Vec<Admission> {
        self.labelled().into_iter().map(|(_, a)| a).collect()
    }

    /// Every key's admission with its credential's name (`default` for the
    /// single `[credential]` and for every caller credential in passthrough).
    pub fn labelled(&self) -> Vec<(Arc<str>, Admission)> {
        let default: Arc<str> = crate::config::DEFAULT_CREDENTIAL.into();
        let mut out = match (&self.per_key, self.default) {
            (_, false) => Vec::new(),
            (None, true) => vec![(default, self.single.clone())],
            (Some(m), true) => {
                let st = m.lock().unwrap_or_else(|e| e.into_inner());
                if st.map.is_empty() {
                    vec![(default, self.single.clone())]
                } else {
                    (st.map.values())
                        .map(|t| (default.clone(), t.admission.clone()))
                        .collect()
                }
            }
        };
        out.extend(self.named.all());
        out
    }

    /// How long a send counts in the longest window of any key: the state
    /// file reuses no record younger (see `state_file::grow`).
    pub fn keep_for(&self, longest: Duration) {
        if let Some(l) = &self.local {
            l.file.keep_for(longest);
        }
    }

    /// The default key(s) take `limits`; named ones are set by [`Self::set_named`].
    pub fn reconfigure(&self, limits: &[Limit], cfg: &AdmissionConfig) {
        self.single.reconfigure(limits, cfg);
        if let Some(m) = &self.per_key {
            let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
            st.limits = limits.to_vec();
            st.cfg = cfg.clone();
            for t in st.map.values() {
                t.admission.reconfigure(limits, cfg);
            }
        }
    }

    pub fn close(&self) {
        for (_, a) in self.labelled().into_iter().chain(self.clients.all()) {
            a.close();
        }
        self.close_parts();
        self.single.close();
    }
}
