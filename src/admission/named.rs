//! Admissions kept by name: one per named `[[credentials]]` (SPEC §9.3b),
//! one per client with windows of its own (`[[clients.limits]]`, §9.3),
//! made at start-up and kept across reloads by name, so a reload that adds,
//! removes or changes one leaves the others' windows, queues and pauses as
//! they were. Each is a full [`Admission`] of its own quota key: memory,
//! state file or Redis alike.

use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;

use arc_swap::ArcSwap;

use super::Admission;
use crate::config::{AdmissionConfig, Limit};
use crate::credential::QuotaKey;
use crate::store::StoreError;

/// One named quota, as the config asks for it.
#[derive(Debug, Clone)]
pub struct NamedQuota {
    pub name: Arc<str>,
    /// Its quota key (state file record, Redis keys).
    pub key: QuotaKey,
    /// A credential's own `[[credentials.limits]]` or the top-level
    /// `[[limits]]`; a client's `[[clients.limits]]`.
    pub limits: Vec<Limit>,
    /// `Some` for a client's windows: they refuse rather than queue, and
    /// `Some(true)` (its `dry_run`) only measures.
    pub gate: Option<bool>,
}

impl NamedQuota {
    /// The admission settings this quota runs with.
    pub(super) fn cfg(&self, cfg: &AdmissionConfig) -> AdmissionConfig {
        match self.gate {
            None => cfg.clone(),
            Some(dry_run) => AdmissionConfig {
                on_limit: crate::config::OnLimit::Reject,
                dry_run,
                ..cfg.clone()
            },
        }
    }
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
    /// Whether there is none (then a call looks no further).
    pub(super) fn is_empty(&self) -> bool {
        self.entries.load().is_empty()
    }

    pub(super) fn by_name(&self, name: &str) -> Option<Admission> {
        let entries = self.entries.load();
        (entries.iter())
            .find(|e| &*e.name == name)
            .map(|e| e.admission.clone())
    }

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
        make: impl Fn(QuotaKey, &[Limit], &AdmissionConfig) -> Result<Admission, StoreError>,
    ) -> Result<(), StoreError> {
        let old = self.entries.load_full();
        let mut next = Vec::with_capacity(want.len());
        for q in want {
            let (key, cfg) = (q.key, q.cfg(cfg));
            let entry = match old.iter().find(|e| e.key == key) {
                Some(e) => {
                    e.admission.reconfigure(&q.limits, &cfg);
                    e.clone()
                }
                None => Arc::new(Entry {
                    name: q.name.clone(),
                    key,
                    admission: make(key, &q.limits, &cfg)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnLimit;

    /// A client's windows refuse rather than queue, and its `dry_run` is
    /// its own; a credential's quota runs with the admission settings.
    #[test]
    fn a_client_gate_refuses_and_has_its_own_dry_run() {
        let cfg = AdmissionConfig {
            on_limit: OnLimit::Queue,
            max_queue: 10,
            max_wait: Duration::from_secs(30),
            margin: Duration::ZERO,
            upstream_429: crate::config::Upstream429::Pause,
            flight: Duration::ZERO,
            dry_run: false,
            aging: Duration::from_secs(10),
        };
        let q = |gate| NamedQuota {
            name: "x".into(),
            key: QuotaKey([7; 32]),
            limits: Vec::new(),
            gate,
        };
        assert_eq!(q(None).cfg(&cfg), cfg);
        let gate = q(Some(true)).cfg(&cfg);
        assert_eq!((gate.on_limit, gate.dry_run), (OnLimit::Reject, true));
        assert!(!q(Some(false)).cfg(&cfg).dry_run);
    }

    /// A named credential's key is held by its own windows, not the default
    /// ones; a reload changes them and keeps the sends they hold.
    #[tokio::test]
    async fn a_named_credentials_key_is_held_by_its_own_windows() {
        let cfg = super::super::reserve_props::cfg();
        let key = QuotaKey([9; 32]);
        let named = |n| NamedQuota {
            name: "crm".into(),
            key,
            limits: crate::quota::test_limits(&[(n, 10_000)]),
            gate: None,
        };
        let q = super::super::Quotas::new(
            &crate::quota::test_limits(&[(5, 1000)]),
            &cfg,
            None,
            None,
            None,
        )
        .unwrap()
        .with_named(true, &[named(2)], &cfg)
        .unwrap();
        let send = |q: &super::super::Quotas| match q.get(key, None).unwrap().try_acquire() {
            Some(Ok(p)) => {
                p.sent().landed();
                true
            }
            _ => false,
        };
        assert_eq!([send(&q), send(&q), send(&q)], [true, true, false]);
        q.set_named(&[named(3)], &cfg).unwrap();
        assert_eq!(
            [send(&q), send(&q)],
            [true, false],
            "one more, the two kept"
        );
    }

    /// Every client's own windows are listed (`/quota` reads them), each the
    /// gate its calls go through; a client without windows has none.
    #[tokio::test]
    async fn the_client_gates_listed_are_the_ones_calls_go_through() {
        let cfg = super::super::reserve_props::cfg();
        let limits = crate::quota::test_limits(&[(5, 1000)]);
        let q = super::super::Quotas::new(&limits, &cfg, None, None, None).unwrap();
        assert!(q.client_gates().is_empty() && q.client_gate("crm").is_none());
        let own = NamedQuota {
            name: "crm".into(),
            key: QuotaKey([3; 32]),
            limits: crate::quota::test_limits(&[(2, 10_000)]),
            gate: Some(false),
        };
        q.set_clients(&[own], &cfg).unwrap();
        let gate = q.client_gate("crm").expect("crm's windows");
        gate.try_acquire().unwrap().unwrap().sent().landed();
        assert!(q.client_gate("web").is_none());
        let listed = q.client_gates();
        assert_eq!(listed.len(), 1);
        assert_eq!(&*listed[0].0, "crm");
        let windows = listed[0].1.shared_snapshot().await.windows;
        assert_eq!((windows[0].used, windows[0].limit), (1, 2), "the same gate");
    }
}
