use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::{AdmissionConfig, Limit};
use crate::credential::QuotaKey;

use super::Admission;

/// The admission state of every quota key: one for a held credential, one per
/// caller credential in passthrough (created on first use).
#[derive(Debug)]
pub struct Quotas {
    single: Admission,
    per_key: Option<Mutex<KeyState>>,
}

#[derive(Debug)]
struct KeyState {
    limits: Vec<Limit>,
    cfg: AdmissionConfig,
    map: HashMap<QuotaKey, Admission>,
}

impl Quotas {
    pub fn new(limits: &[Limit], cfg: &AdmissionConfig, per_key: bool) -> Self {
        Self {
            single: Admission::new(limits, cfg),
            per_key: per_key.then(|| {
                Mutex::new(KeyState {
                    limits: limits.to_vec(),
                    cfg: cfg.clone(),
                    map: HashMap::new(),
                })
            }),
        }
    }

    pub fn get(&self, key: QuotaKey) -> Admission {
        match &self.per_key {
            None => self.single.clone(),
            Some(m) => {
                let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
                let KeyState { limits, cfg, map } = &mut *st;
                map.entry(key)
                    .or_insert_with(|| Admission::new(limits, cfg))
                    .clone()
            }
        }
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
