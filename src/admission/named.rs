//! The admissions of the named `[[credentials]]` (SPEC §9.3b): one per
//! Dastra key, made at start-up and kept across reloads by name, so a reload
//! that adds, removes or changes one credential leaves the others' windows,
//! queues and pauses as they were.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Admission;
use crate::config::{AdmissionConfig, Limit};
use crate::credential::QuotaKey;
use crate::store::StoreError;

/// One named credential's quota, as the config asks for it.
#[derive(Debug, Clone)]
pub struct NamedQuota {
    pub name: Arc<str>,
    /// Its own `[[credentials.limits]]`, or the top-level `[[limits]]`.
    pub limits: Vec<Limit>,
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    key: QuotaKey,
    admission: Admission,
}

/// Read on every call of a named credential (a load, no lock); written on
/// start-up and reload only.
#[derive(Debug, Default)]
pub(super) struct Named {
    entries: ArcSwap<Vec<Arc<Entry>>>,
}

impl Named {
    pub(super) fn get(&self, key: &QuotaKey) -> Option<Admission> {
        let entries = self.entries.load();
        entries
            .iter()
            .find(|e| e.key == *key)
            .map(|e| e.admission.clone())
    }

    pub(super) fn all(&self) -> Vec<(Arc<str>, Admission)> {
        let entries = self.entries.load();
        (entries.iter())
            .map(|e| (e.name.clone(), e.admission.clone()))
            .collect()
    }

    /// Makes the set `want`: a credential that stays keeps its admission
    /// (new limits applied in place), a new one gets one from `make`, a
    /// removed one is closed (its queued calls are answered, its releaser
    /// ends). Nothing changes when `make` fails.
    pub(super) fn set(
        &self,
        want: &[NamedQuota],
        cfg: &AdmissionConfig,
        make: impl Fn(QuotaKey, &[Limit]) -> Result<Admission, StoreError>,
    ) -> Result<(), StoreError> {
        let old = self.entries.load_full();
        let mut next = Vec::with_capacity(want.len());
        for q in want {
            let key = QuotaKey::named(&q.name);
            let entry = match old.iter().find(|e| e.key == key) {
                Some(e) => {
                    e.admission.reconfigure(&q.limits, cfg);
                    e.clone()
                }
                None => Arc::new(Entry {
                    name: q.name.clone(),
                    key,
                    admission: make(key, &q.limits)?,
                }),
            };
            next.push(entry);
        }
        for gone in old.iter().filter(|e| next.iter().all(|n| n.key != e.key)) {
            gone.admission.close();
        }
        self.entries.store(Arc::new(next));
        Ok(())
    }
}
