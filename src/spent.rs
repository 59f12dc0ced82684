//! Who spent the quota (SPEC §9.3): each client's sends that reached
//! Dastra, counted in every window that concerns it — its credential's and
//! its own — for `/quota`, the status page and `client_window_used`.
//!
//! A send is counted when its answer arrives (or it failed after sending),
//! the instant the quota windows count it at; a call that never reached
//! Dastra is not. Kept per process: with Redis, each replica counts the
//! sends it made (Prometheus sums the replicas). Memory is bounded: a
//! client's log keeps no send older than the longest window, and at most
//! `cap` sends (only a dry run, which refuses nothing, could reach it; the
//! oldest go first, so a count is then a lower bound).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Each client's recent sends.
#[derive(Debug)]
pub struct Spent {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    keep: Duration,
    cap: usize,
    /// Landing instants per client, oldest first (taken under the lock, so
    /// in order). A list, not a map: a gateway has tens of clients, and a
    /// call's name is the very `Arc` its client's entry holds, so finding it
    /// is a pointer comparison per entry, no hashing (this is on every
    /// call's path).
    by_client: Vec<(Arc<str>, VecDeque<Instant>)>,
}

impl Inner {
    fn prune(log: &mut VecDeque<Instant>, keep: Duration, now: Instant) {
        while log.front().is_some_and(|t| *t + keep <= now) {
            log.pop_front();
        }
    }
}

impl Spent {
    /// `keep`: the longest window any client's sends count in; `cap`: the
    /// most sends kept per client.
    pub fn new(keep: Duration, cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                keep,
                cap: cap.max(1),
                by_client: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reload's windows; the sends counted so far stay.
    pub fn reconfigure(&self, keep: Duration, cap: usize) {
        let mut st = self.lock();
        st.keep = keep;
        st.cap = cap.max(1);
    }

    /// A send of `client` reached Dastra.
    pub fn record(&self, client: &Arc<str>) {
        let mut st = self.lock();
        let now = Instant::now();
        let (keep, cap) = (st.keep, st.cap);
        let i = match (st.by_client.iter()).position(|(c, _)| Arc::ptr_eq(c, client)) {
            Some(i) => i,
            // A reload's new name `Arc`s: the entry takes the new one.
            None => match st.by_client.iter().position(|(c, _)| c == client) {
                Some(i) => {
                    st.by_client[i].0 = client.clone();
                    i
                }
                None => {
                    st.by_client.push((client.clone(), VecDeque::new()));
                    st.by_client.len() - 1
                }
            },
        };
        let log = &mut st.by_client[i].1;
        Inner::prune(log, keep, now);
        if log.len() >= cap {
            log.pop_front();
        }
        log.push_back(now);
    }

    /// The sends of `client` in the last `span` of each window, now.
    pub fn counts(&self, client: &str, spans: &[Duration]) -> Vec<u32> {
        let mut st = self.lock();
        let now = Instant::now();
        let keep = st.keep;
        // Clients gone quiet (or removed by a reload) leave nothing behind.
        st.by_client.retain_mut(|(_, log)| {
            Inner::prune(log, keep, now);
            !log.is_empty()
        });
        let Some((_, log)) = st.by_client.iter().find(|(c, _)| &**c == client) else {
            return vec![0; spans.len()];
        };
        (spans.iter())
            .map(|span| {
                let from = log.partition_point(|t| *t + *span <= now);
                u32::try_from(log.len() - from).unwrap_or(u32::MAX)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counted per window at its own span, boundaries exact (a send leaves
    /// a window of `span` exactly `span` after it), forgotten after the
    /// longest, and bounded by `cap`.
    #[tokio::test(start_paused = true)]
    async fn sends_count_in_each_window_until_they_leave_it() {
        let s = Spent::new(Duration::from_secs(10), 5);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let spans = [Duration::from_secs(1), Duration::from_secs(10)];
        s.record(&a);
        tokio::time::advance(Duration::from_millis(500)).await;
        s.record(&a);
        s.record(&b);
        assert_eq!(s.counts("a", &spans), [2, 2]);
        assert_eq!(s.counts("b", &spans), [1, 1]);
        assert_eq!(s.counts("nobody", &spans), [0, 0]);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            s.counts("a", &spans),
            [1, 2],
            "the first left the 1 s window"
        );
        tokio::time::advance(Duration::from_millis(9_499)).await;
        assert_eq!(s.counts("a", &spans), [0, 1]);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(s.counts("a", &spans), [0, 0]);
        assert!(
            s.lock().by_client.is_empty(),
            "nothing kept for quiet clients"
        );
        for _ in 0..7 {
            s.record(&a);
        }
        assert_eq!(s.counts("a", &spans), [5, 5], "at most cap per client");
    }

    /// A reload's windows apply from then on: a shorter longest window
    /// forgets what is older, a smaller cap keeps fewer.
    #[tokio::test(start_paused = true)]
    async fn a_reload_changes_what_is_kept() {
        let s = Spent::new(Duration::from_secs(10), 100);
        let a: Arc<str> = "a".into();
        let ten = [Duration::from_secs(10)];
        s.record(&a);
        tokio::time::advance(Duration::from_secs(2)).await;
        s.reconfigure(Duration::from_secs(1), 3);
        assert_eq!(
            s.counts("a", &ten),
            [0],
            "older than the new longest window"
        );
        for _ in 0..5 {
            s.record(&a);
        }
        assert_eq!(s.counts("a", &ten), [3], "the new cap");
    }
}
