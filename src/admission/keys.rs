//! One [`Admission`] per quota key: a single key for a held credential, one
//! per caller credential in passthrough, made on first use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{AdmissionConfig, Limit, StoreOnError};
use crate::credential::QuotaKey;
use crate::metrics::Metrics;
use crate::store::{RedisLink, RedisStore, StoreError};

use tokio::time::Instant;

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
        let restored = self
            .restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(key);
        let persist = Persist {
            file: self.file.clone(),
            key,
            metrics: self.metrics.clone(),
        };
        Admission::with_state(limits, cfg, persist, &restored)
    }
}

/// The admission state of every quota key: one for a held credential, one per
/// caller credential in passthrough (created on first use).
#[derive(Debug)]
pub struct Quotas {
    single: Admission,
    per_key: Option<Mutex<KeyState>>,
    shared: Option<SharedStore>,
    local: Option<LocalState>,
    /// Calls waiting over every key: `max_queue` bounds them together.
    waiting: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct KeyState {
    limits: Vec<Limit>,
    cfg: AdmissionConfig,
    /// Passthrough: at most this many credentials tracked at once.
    max_keys: usize,
    map: HashMap<QuotaKey, Admission>,
}

impl Quotas {
    /// `max_keys`: `Some` in passthrough (one admission per caller credential).
    pub fn new(
        limits: &[Limit],
        cfg: &AdmissionConfig,
        max_keys: Option<usize>,
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
            per_key: max_keys.map(|max_keys| {
                Mutex::new(KeyState {
                    limits: limits.to_vec(),
                    cfg: cfg.clone(),
                    max_keys,
                    map: HashMap::new(),
                })
            }),
            shared,
            local,
            waiting,
        })
    }

    /// The admission of `key`. In passthrough a new credential takes the
    /// place of one that is idle (nothing waiting, in flight or in any
    /// window); when all `max_keys` are busy, the call is refused.
    pub fn get(&self, key: QuotaKey) -> Result<Admission, Refusal> {
        let Some(m) = &self.per_key else {
            return Ok(self.single.clone());
        };
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = st.map.get(&key) {
            return Ok(a.clone());
        }
        if st.map.len() >= st.max_keys {
            let now = Instant::now();
            let mut soonest = None::<Instant>;
            let mut idle = None;
            for (k, a) in &st.map {
                match a.idle_at(now) {
                    None => {
                        idle = Some(*k);
                        break;
                    }
                    Some(t) => soonest = Some(soonest.map_or(t, |s| s.min(t))),
                }
            }
            match idle.and_then(|k| st.map.remove(&k)) {
                // Its releaser task ends; nothing of it is left.
                Some(evicted) => evicted.close(),
                None => {
                    return Err(Refusal::TooManyKeys {
                        retry_at: soonest.unwrap_or(now),
                    })
                }
            }
        }
        let KeyState {
            limits, cfg, map, ..
        } = &mut *st;
        let a = match (&self.shared, &self.local) {
            (Some(s), _) => s
                .admission(key, limits, cfg)
                .unwrap_or_else(|_| Admission::new(limits, cfg)),
            (None, Some(l)) => l.admission(key, limits, cfg),
            (None, None) => Admission::new(limits, cfg),
        };
        a.share_queue(self.waiting.clone());
        map.insert(key, a.clone());
        Ok(a)
    }

    /// Every key's admission (just one unless passthrough).
    pub fn all(&self) -> Vec<Admission> {
        match &self.per_key {
            None => vec![self.single.clone()],
            Some(m) => {
                let st = m.lock().unwrap_or_else(|e| e.into_inner());
                if st.map.is_empty() {
                    vec![self.single.clone()]
                } else {
                    st.map.values().cloned().collect()
                }
            }
        }
    }

    pub fn reconfigure(&self, limits: &[Limit], cfg: &AdmissionConfig) {
        self.single.reconfigure(limits, cfg);
        if let Some(m) = &self.per_key {
            let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
            st.limits = limits.to_vec();
            st.cfg = cfg.clone();
            for a in st.map.values() {
                a.reconfigure(limits, cfg);
            }
        }
    }

    pub fn close(&self) {
        for a in self.all() {
            a.close();
        }
        self.single.close();
    }
}
