//! Priorities first, weighted-fair order between clients of one priority,
//! FIFO within each client and priority (SPEC §9.3): a call a client
//! lowered (`Priority: u=7`) never holds back its later high calls.
//!
//! Start-time fair queuing: each call gets a virtual finish tag
//! `max(now_virtual, client's last tag) + 1/weight`; among the calls of the
//! highest priority waiting, the smallest tag goes next. A client that was
//! idle cannot claim credit for the time it was away. A waiting call moves up
//! one priority for each `aging` it has waited, so a low call under a flood
//! of high ones still goes: after `2 × aging` it competes with them by tag.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Virtual time units per call at weight 1; weights divide it evenly up to 1000.
const SCALE: u64 = 1_000_000;

#[derive(Debug)]
pub(super) struct FairQueue<T> {
    clients: Vec<ClientQueue<T>>,
    vtime: u64,
    next_id: u64,
    len: usize,
    /// Calls waiting in every queue that shares this counter (all quota
    /// keys of one proxy): `max_queue` bounds them together.
    all: Arc<AtomicUsize>,
    /// `admission.aging`; zero: a call keeps its priority however long it waits.
    aging: Duration,
}

/// `admission.aging` unless configured.
pub(super) const AGING: Duration = Duration::from_secs(10);

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            vtime: 0,
            next_id: 0,
            len: 0,
            all: Arc::default(),
            aging: AGING,
        }
    }
}

/// One client's calls of one priority (as queued, before aging).
#[derive(Debug)]
struct ClientQueue<T> {
    name: Arc<str>,
    prio: u8,
    last_finish: u64,
    items: VecDeque<Item<T>>,
}

#[derive(Debug)]
struct Item<T> {
    id: u64,
    start: u64,
    finish: u64,
    /// 0 high, 1 normal, 2 low, before aging.
    prio: u8,
    enqueued: Instant,
    value: T,
}

impl<T> Item<T> {
    /// Its priority at `now`, after aging.
    fn effective(&self, now: Instant, aging: Duration) -> u8 {
        if aging.is_zero() {
            return self.prio;
        }
        let steps = now.saturating_duration_since(self.enqueued).as_nanos() / aging.as_nanos();
        self.prio
            .saturating_sub(u8::try_from(steps).unwrap_or(u8::MAX))
    }
}

impl<T> FairQueue<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counts this queue's calls in `all` (shared with other queues).
    pub(super) fn sharing(mut self, all: Arc<AtomicUsize>) -> Self {
        self.all = all;
        self
    }

    /// Sets `admission.aging` (a reload may change it).
    pub(super) fn set_aging(&mut self, aging: Duration) {
        self.aging = aging;
    }

    pub(super) fn aging(&self) -> Duration {
        self.aging
    }

    /// Calls waiting in every queue sharing the counter.
    pub(super) fn all_waiting(&self) -> usize {
        self.all.load(Ordering::Relaxed)
    }

    /// Queues `value` for client `name` at priority `prio` (0 high, 1
    /// normal, 2 low); returns an id to remove it by.
    pub(super) fn push(
        &mut self,
        name: &Arc<str>,
        weight: u32,
        prio: u8,
        now: Instant,
        value: T,
    ) -> u64 {
        let idx = match (self.clients.iter()).position(|c| c.name == *name && c.prio == prio) {
            Some(i) => i,
            None => {
                self.clients.push(ClientQueue {
                    name: name.clone(),
                    prio,
                    last_finish: 0,
                    items: VecDeque::new(),
                });
                self.clients.len() - 1
            }
        };
        // One tag sequence per client, whatever the priority of its calls.
        let start = self.last_finish(name).max(self.vtime);
        let c = &mut self.clients[idx];
        let finish = start + SCALE / u64::from(weight.max(1));
        c.last_finish = finish;
        let id = self.next_id;
        self.next_id += 1;
        c.items.push_back(Item {
            id,
            start,
            finish,
            prio,
            enqueued: now,
            value,
        });
        self.len += 1;
        self.all.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// The last finish tag given to any call of client `name`.
    fn last_finish(&self, name: &str) -> u64 {
        (self.clients.iter())
            .filter(|c| &*c.name == name)
            .map(|c| c.last_finish)
            .max()
            .unwrap_or(0)
    }

    /// How many queued calls will surely be served before a call that
    /// client `name` queues now at priority `prio`: its own earlier calls of
    /// that priority;
    /// others' calls of a higher or the same priority with a smaller finish
    /// tag (every call waiting now was queued earlier, so it ages no later
    /// than this one and stays at least as high); and, without aging, every
    /// call of a higher priority. A lower bound of its place, exact with one
    /// priority: `max_wait` refuses at once only a call that surely cannot
    /// start in time. A client with a deep queue only delays itself.
    pub(super) fn ahead_of(&self, name: &str, weight: u32, prio: u8) -> usize {
        let finish = self.last_finish(name).max(self.vtime) + SCALE / u64::from(weight.max(1));
        let ages = !self.aging.is_zero();
        // Within a client FIFO: behind a call served after this one, every
        // later call of that client is served after it too.
        self.clients
            .iter()
            .map(|c| match &*c.name == name && c.prio == prio {
                true => c.items.len(),
                false => (c.items.iter())
                    .take_while(|it| {
                        (it.prio <= prio && it.finish <= finish) || (!ages && it.prio < prio)
                    })
                    .count(),
            })
            .sum()
    }

    /// The next call: of the highest priority (after aging) waiting at
    /// `now`, the smallest finish tag; with when it was queued.
    pub(super) fn pop(&mut self, now: Instant) -> Option<(T, Instant)> {
        let aging = self.aging;
        let idx = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                (c.items.front()).map(|it| ((it.effective(now, aging), it.finish, it.id), i))
            })
            .min()?
            .1;
        let item = self.clients[idx].items.pop_front()?;
        self.vtime = self.vtime.max(item.start);
        self.len -= 1;
        self.all.fetch_sub(1, Ordering::Relaxed);
        Some((item.value, item.enqueued))
    }

    /// Takes out a call whose caller went away, and gives its client back
    /// the virtual time it had claimed: the calls behind it move up, and the
    /// client's next call is tagged as if the departed one never queued.
    pub(super) fn remove(&mut self, name: &str, id: u64) -> Option<T> {
        let (c, i) = (self.clients.iter_mut())
            .filter(|c| &*c.name == name)
            .find_map(|c| {
                let i = c.items.iter().position(|it| it.id == id)?;
                Some((c, i))
            })?;
        let item = c.items.remove(i)?;
        let cost = item.finish - item.start;
        // Every later call of this client started at or after the departed
        // one's finish, so shifting them by its cost keeps the chain intact.
        for later in c.items.iter_mut().skip(i) {
            later.start -= cost;
            later.finish -= cost;
        }
        c.last_finish -= cost;
        self.len -= 1;
        self.all.fetch_sub(1, Ordering::Relaxed);
        Some(item.value)
    }

    pub(super) fn drain(&mut self) -> Vec<T> {
        self.all.fetch_sub(self.len, Ordering::Relaxed);
        self.len = 0;
        self.clients
            .iter_mut()
            .flat_map(|c| c.items.drain(..).map(|it| it.value))
            .collect()
    }

    /// Waiting calls per client (every priority together).
    pub(super) fn depths(&self) -> Vec<(Arc<str>, usize)> {
        let mut out: Vec<(Arc<str>, usize)> = Vec::new();
        for c in &self.clients {
            match out.iter_mut().find(|(n, _)| *n == c.name) {
                Some((_, d)) => *d += c.items.len(),
                None => out.push((c.name.clone(), c.items.len())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_whose_calls_left_is_not_pushed_to_the_back() {
        let now = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = FairQueue::default();
        for i in 0..100 {
            q.push(&a, 1, 1, now, format!("a{i}"));
        }
        let gone: Vec<u64> = (0..100)
            .map(|_| q.push(&b, 1, 1, now, "gone".into()))
            .collect();
        let kept = q.push(&b, 1, 1, now, "b-kept".into());
        // All but the last of b's calls leave; the one behind them moves up.
        for id in gone {
            assert_eq!(q.remove("b", id).as_deref(), Some("gone"));
        }
        assert_eq!(q.pop(now).unwrap().0, "a0");
        assert_eq!(q.pop(now).unwrap().0, "b-kept");
        assert_eq!(q.remove("b", kept), None, "already served");
        // And b's next call is tagged from where it stands now, not 100 calls on.
        q.push(&b, 1, 1, now, "b-next".into());
        assert_eq!(q.pop(now).unwrap().0, "a1");
        assert_eq!(q.pop(now).unwrap().0, "b-next");
        assert_eq!(q.len(), 98);
    }

    #[test]
    fn fifo_within_a_client_and_weighted_between() {
        let now = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = FairQueue::default();
        for i in 0..6 {
            q.push(&a, 2, 1, now, format!("a{i}"));
            q.push(&b, 1, 1, now, format!("b{i}"));
        }
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|(v, _)| v))
            .take(9)
            .collect();
        assert_eq!(
            order,
            ["a0", "b0", "a1", "a2", "b1", "a3", "a4", "b2", "a5"]
        );
    }

    /// A call its client lowered waits behind the others' normal calls, and
    /// the client's later high call does not wait behind it; its tags stay
    /// one sequence, so lowering one call buys no share.
    #[test]
    fn a_lowered_call_holds_back_only_itself() {
        let now = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = FairQueue::default();
        q.push(&a, 1, 2, now, "a-lowered");
        q.push(&b, 1, 1, now, "b-normal");
        assert_eq!(q.ahead_of("a", 1, 0), 0, "nothing of its own ahead at high");
        q.push(&a, 1, 0, now, "a-high");
        assert_eq!(q.depths(), [(a.clone(), 2), (b.clone(), 1)]);
        let order: Vec<&str> = std::iter::from_fn(|| q.pop(now).map(|(v, _)| v)).collect();
        assert_eq!(order, ["a-high", "b-normal", "a-lowered"]);
        // a's next call is tagged after both of a's earlier ones.
        q.push(&a, 1, 1, now, "a-next");
        q.push(&b, 1, 1, now, "b-next");
        let order: Vec<&str> = std::iter::from_fn(|| q.pop(now).map(|(v, _)| v)).collect();
        assert_eq!(order, ["b-next", "a-next"]);
    }

    #[test]
    fn remove_takes_out_exactly_one() {
        let now = Instant::now();
        let a: Arc<str> = "a".into();
        let mut q = FairQueue::default();
        let id0 = q.push(&a, 1, 1, now, 0);
        q.push(&a, 1, 1, now, 1);
        assert_eq!(q.remove("a", id0), Some(0));
        assert_eq!(q.remove("a", id0), None);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(now).map(|(v, _)| v), Some(1));
    }

    #[test]
    fn an_idle_client_gets_no_credit_for_its_absence() {
        let now = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = FairQueue::default();
        for i in 0..4 {
            q.push(&a, 1, 1, now, format!("a{i}"));
        }
        q.pop(now);
        q.pop(now);
        for i in 0..2 {
            q.push(&b, 1, 1, now, format!("b{i}"));
        }
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|(v, _)| v)).collect();
        assert_eq!(order, ["b0", "a2", "b1", "a3"]);
    }

    /// `ahead_of` is exactly the place the fair order then gives the call:
    /// the projection `max_wait` and Retry-After stand on.
    #[test]
    fn ahead_of_is_the_place_pop_gives() {
        let now = Instant::now();
        let names: [Arc<str>; 3] = ["a".into(), "b".into(), "c".into()];
        let weights = [1u32, 3, 7];
        // Several queue shapes: each client's backlog.
        for backlog in [[3usize, 3, 0], [5, 1, 2], [0, 4, 4], [2, 0, 6]] {
            for (who, weight) in weights.iter().enumerate() {
                let mut q = FairQueue::default();
                for (c, n) in backlog.iter().enumerate() {
                    // One call of each client that leaves the queue again
                    // (its caller went away) in the middle of its backlog.
                    let mut leaving = None;
                    for k in 0..*n + 1 {
                        let id = q.push(&names[c], weights[c], 1, now, usize::MAX);
                        if k == n / 2 {
                            leaving = Some(id);
                        }
                    }
                    assert!(q.remove(&names[c], leaving.unwrap()).is_some());
                }
                let ahead = q.ahead_of(&names[who], *weight, 1);
                q.push(&names[who], *weight, 1, now, 0);
                let mut place = 0;
                while let Some((v, _)) = q.pop(now) {
                    if v == 0 {
                        break;
                    }
                    place += 1;
                }
                assert_eq!(ahead, place, "backlog {backlog:?}, client {who}");
            }
        }
    }
}
