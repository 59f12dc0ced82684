//! Each client's own windows (`[[clients.limits]]`, SPEC §9.3): "the BI
//! export never takes more than 100 a minute", held as exactly as the
//! credential's windows, in front of them.
//!
//! A call takes a slot in its client's windows when it arrives, before it
//! queues for the credential's quota, and holds it as a send in flight until
//! its answer lands (or gives it back if nothing reached Dastra). So at any
//! instant the client's sends in a window plus its calls waiting are at most
//! N, and no window of the client ever holds more than N sends, whatever the
//! order the shared queue serves them in; a call over its client's limit is
//! refused at once (`429 client_quota_exhausted`) rather than queued behind
//! its own client, where it would hold a place in the fair order for
//! nothing. A client in `dry_run` is measured the same way and never refused.
//! With a state file, each client's sends are written there as a quota
//! key's are (under a key of its own), so a restart keeps its windows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::{policy_value, Persist};
use crate::config::ClientConfig;
use crate::metrics::Metrics;
use crate::quota::{WindowSet, WindowState};
use crate::state_file::{Restored, StateFile};

/// Every client's own windows; kept across reloads (a client's windows keep
/// their sends by name, as the credentials' do).
#[derive(Debug, Default)]
pub struct ClientQuotas {
    map: Arc<Mutex<HashMap<Arc<str>, Own>>>,
    /// The state file every limited client's sends are written to.
    file: Option<(Arc<StateFile>, Metrics)>,
    /// Whether any client has windows of its own: without, a call takes
    /// no lock here.
    any: AtomicBool,
}

#[derive(Debug)]
struct Own {
    windows: WindowSet,
    /// Where this client's sends are written (its own key in the file).
    persist: Option<Persist>,
    /// `RateLimit-Policy` of this client's windows.
    policy: HeaderValue,
    dry_run: bool,
}

/// A slot in the client's own windows, held from arrival until the answer
/// lands ([`OwnSlot::landed`]); dropped before that, it is given back.
#[derive(Debug)]
pub struct OwnSlot {
    map: Arc<Mutex<HashMap<Arc<str>, Own>>>,
    client: Arc<str>,
    /// A dry-run client over its limit: nothing was reserved.
    held: bool,
    landed: bool,
    /// Its record in the state file.
    record: Option<(Persist, u64)>,
}

/// The client's own window is full: when it frees, and the RateLimit fields
/// that say so.
#[derive(Debug, Clone)]
pub struct OwnRefusal {
    pub retry_at: Instant,
    pub policy: HeaderValue,
    pub state: HeaderValue,
}

/// What a call met in its client's own windows.
#[derive(Debug)]
pub enum OwnVerdict {
    /// The client has no windows of its own.
    Unlimited,
    /// A slot; `over` when a dry-run client was over its limit (it goes,
    /// and the operator sees what enforcing would have refused).
    Slot { slot: OwnSlot, over: bool },
}

impl ClientQuotas {
    pub fn new(clients: &[ClientConfig], margin: Duration) -> Self {
        let me = Self::default();
        me.reconfigure(clients, margin);
        me
    }

    /// With the state file: each client's sends the previous process made
    /// (taken from `restored`) count again, and every send is written.
    pub fn with_state(
        clients: &[ClientConfig],
        margin: Duration,
        file: Arc<StateFile>,
        metrics: Metrics,
        restored: &mut Restored,
    ) -> Self {
        let me = Self {
            file: Some((file, metrics)),
            ..Self::default()
        };
        me.reconfigure(clients, margin);
        let now = Instant::now();
        for (name, own) in me.lock().iter_mut() {
            for age in restored.take(file_key(name)) {
                // Older than this process's clock reaches back: out of every window.
                if let Some(t) = now.checked_sub(age) {
                    own.windows.record(t);
                }
            }
        }
        me
    }

    /// The clients' windows become those of `clients`: a client that stays
    /// keeps the sends it made (a changed N or W included).
    pub fn reconfigure(&self, clients: &[ClientConfig], margin: Duration) {
        let mut map = self.lock();
        let mut next = HashMap::new();
        for c in clients.iter().filter(|c| !c.limits.is_empty()) {
            let mut windows = WindowSet::new(&c.limits, margin);
            if let Some(old) = map.remove(c.name.as_str()) {
                old.windows.carry_into(&mut windows);
            }
            let persist = self.file.as_ref().map(|(file, metrics)| Persist {
                file: file.clone(),
                key: file_key(&c.name),
                metrics: metrics.clone(),
            });
            next.insert(
                Arc::from(c.name.as_str()),
                Own {
                    windows,
                    persist,
                    policy: policy_value(&c.limits),
                    dry_run: c.dry_run,
                },
            );
        }
        self.any.store(!next.is_empty(), Ordering::Relaxed);
        *map = next;
    }

    /// A slot for a call of `client` arriving at `now`, or why not.
    pub fn take(&self, client: &Arc<str>, now: Instant) -> Result<OwnVerdict, OwnRefusal> {
        if !self.any.load(Ordering::Relaxed) {
            return Ok(OwnVerdict::Unlimited);
        }
        let mut map = self.lock();
        let Some(own) = map.get_mut(client) else {
            return Ok(OwnVerdict::Unlimited);
        };
        let at = own.windows.next_admit(now);
        let over = at > now;
        if over && !own.dry_run {
            return Err(OwnRefusal {
                retry_at: at,
                policy: own.policy.clone(),
                state: own.windows.ratelimit_value(now),
            });
        }
        let mut record = None;
        if !over {
            own.windows.reserve(now);
            record = (own.persist.clone())
                .and_then(|p| p.write(p.file.reserve(p.key)).map(|seq| (p, seq)));
        }
        drop(map);
        Ok(OwnVerdict::Slot {
            slot: OwnSlot {
                map: self.map.clone(),
                client: client.clone(),
                held: !over,
                landed: false,
                record,
            },
            over,
        })
    }

    /// Each limited client's windows now (`/quota`, `client_window_used`).
    pub fn snapshot(&self) -> Vec<(Arc<str>, Vec<WindowState>)> {
        let now = Instant::now();
        let mut map = self.lock();
        let mut out: Vec<_> = (map.iter_mut())
            .map(|(name, own)| (name.clone(), own.windows.snapshot(now)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Own>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OwnSlot {
    /// The call's answer head arrived (or it failed after leaving): the
    /// send counts from now.
    pub fn landed(mut self) {
        self.finish(true);
    }

    fn finish(&mut self, land: bool) {
        if !self.held || self.landed {
            return;
        }
        self.landed = true;
        if let Some((p, seq)) = self.record.take() {
            p.write(match land {
                true => p.file.land(seq),
                false => p.file.release(seq),
            });
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // A reload that removed the client's limits took its windows along.
        if let Some(own) = map.get_mut(&self.client) {
            if land {
                own.windows.land(Instant::now());
            } else {
                own.windows.release();
            }
        }
    }
}

/// A client's key in the state file: a digest of its name, apart from the
/// credentials' keys (another prefix).
fn file_key(name: &str) -> u64 {
    use sha2::{Digest as _, Sha256};
    let d = Sha256::new()
        .chain_update(b"dastra-proxy client\0")
        .chain_update(name.as_bytes())
        .finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 of 32 bytes"))
}

impl Drop for OwnSlot {
    /// Nothing reached Dastra: the slot is given back.
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limit;

    fn client(name: &str, n: u32, dry_run: bool) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            key_sha256: [0; 32],
            allow: None,
            weight: 1,
            rate: None,
            credential: None,
            limits: vec![Limit {
                requests: n,
                per: Duration::from_secs(10),
                name: "10s".into(),
            }],
            dry_run,
            priority: 1,
        }
    }

    fn slot(q: &ClientQuotas, name: &Arc<str>, now: Instant) -> Result<OwnSlot, OwnRefusal> {
        match q.take(name, now)? {
            OwnVerdict::Slot { slot, over: false } => Ok(slot),
            other => panic!("{other:?}"),
        }
    }

    fn used(q: &ClientQuotas) -> Vec<u32> {
        q.snapshot().iter().map(|(_, w)| w[0].used).collect()
    }

    /// A slot is held from arrival: a call waiting counts against the
    /// client's N, a landed one stays for the window, a dropped one (nothing
    /// reached Dastra) is given back; the refusal names when the oldest
    /// send leaves the window.
    #[tokio::test(start_paused = true)]
    async fn a_slot_counts_from_arrival_lands_or_comes_back() {
        let bi: Arc<str> = "bi".into();
        let q = ClientQuotas::new(&[client("bi", 2, false)], Duration::ZERO);
        let t0 = Instant::now();
        let a = slot(&q, &bi, t0).unwrap();
        let b = slot(&q, &bi, t0).unwrap();
        assert_eq!(used(&q), [2]);
        assert!(q.take(&bi, t0).is_err(), "two held: the third is refused");
        drop(b);
        assert_eq!(used(&q), [1], "given back");
        tokio::time::advance(Duration::from_secs(3)).await;
        a.landed();
        let c = slot(&q, &bi, Instant::now()).unwrap();
        c.landed();
        let refusal = q.take(&bi, Instant::now()).unwrap_err();
        assert_eq!(
            refusal.retry_at,
            t0 + Duration::from_secs(13),
            "a landed at t0+3s"
        );
        assert_eq!(refusal.policy, "\"10s\";q=2;w=10");
        assert!(refusal
            .state
            .to_str()
            .unwrap()
            .starts_with("\"10s\";r=0;t=10"));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(q.take(&bi, Instant::now()).is_ok(), "a left the window");
        let other: Arc<str> = "other".into();
        assert!(matches!(
            q.take(&other, Instant::now()),
            Ok(OwnVerdict::Unlimited)
        ));
    }

    /// A dry-run client is never refused; what enforcing would have refused
    /// is not recorded, so the window measures what enforcing would leave.
    #[tokio::test(start_paused = true)]
    async fn a_dry_run_client_goes_over_and_the_window_stays_at_n() {
        let bi: Arc<str> = "bi".into();
        let q = ClientQuotas::new(&[client("bi", 1, true)], Duration::ZERO);
        let now = Instant::now();
        slot(&q, &bi, now).unwrap().landed();
        match q.take(&bi, now) {
            Ok(OwnVerdict::Slot { slot, over: true }) => slot.landed(),
            other => panic!("{other:?}"),
        }
        assert_eq!(used(&q), [1]);
    }

    /// A reload keeps a client's sends; one that drops its limits drops
    /// its windows, and a slot taken before it ends quietly.
    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_a_clients_window() {
        let bi: Arc<str> = "bi".into();
        let q = ClientQuotas::new(&[client("bi", 3, false)], Duration::ZERO);
        slot(&q, &bi, Instant::now()).unwrap().landed();
        let held = slot(&q, &bi, Instant::now()).unwrap();
        q.reconfigure(&[client("bi", 2, false)], Duration::ZERO);
        assert_eq!(
            used(&q),
            [2],
            "the send and the call in flight carried over"
        );
        assert!(q.take(&bi, Instant::now()).is_err());
        q.reconfigure(&[], Duration::ZERO);
        held.landed();
        assert!(matches!(
            q.take(&bi, Instant::now()),
            Ok(OwnVerdict::Unlimited)
        ));
    }
}
