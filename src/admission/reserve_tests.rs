//! Reserves in queue mode on tokio's paused clock: an owner's call waiting
//! in the shared rest takes its reserve the moment that frees, `max_wait`
//! counts either instant, owners racing for one freed slot, and the drain.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::reserve_props::cfg;
use super::*;
use crate::config::{OnLimit, Split};
use crate::quota::test_limits;

/// Who, what (a part, or a refusal's Retry-After from the start), when.
type Grants = Vec<(&'static str, Result<Part, Option<Duration>>, Duration)>;

/// Quotas of 10 per second in queue mode (`max_wait` 30 s), split into the
/// owner's reserve of 3 and a rest of 7, and the log of what each call got.
struct Scene {
    q: Quotas,
    t0: Instant,
    grants: Arc<Mutex<Grants>>,
}

/// Quotas of `rest + reserve` per second in queue mode (`max_wait` 30 s),
/// split into the owner's `reserve` and the `rest`.
fn split_quotas(rest: u32, reserve: u32) -> Quotas {
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_wait: Duration::from_secs(30),
        ..cfg()
    };
    let q = Quotas::new(
        &test_limits(&[(rest + reserve, 1000)]),
        &cfg,
        None,
        None,
        None,
    )
    .unwrap();
    let split = Split {
        credential: "default".into(),
        rest: test_limits(&[(rest, 1000)]),
        reserves: vec![("owner".into(), test_limits(&[(reserve, 1000)]))],
    };
    q.set_splits(&[split], &cfg).unwrap();
    q
}

impl Scene {
    fn new() -> Self {
        let q = split_quotas(7, 3);
        Self {
            q,
            t0: Instant::now(),
            grants: Arc::default(),
        }
    }

    /// A call of `name` waiting at most `wait` (its own cap, as `Prefer:
    /// wait` sets it), its permit landed at once when granted.
    fn call(&self, name: &'static str, wait: Option<Duration>) -> tokio::task::JoinHandle<()> {
        let (shares, grants, t0) = (
            self.q.shares(name, "default").unwrap(),
            self.grants.clone(),
            self.t0,
        );
        tokio::spawn(async move {
            let c = Caller {
                name: name.into(),
                weight: 1,
                wait,
                priority: NORMAL,
            };
            let got = shares.acquire(&c).await;
            let now = Instant::now();
            let got = got.map(|(p, part)| {
                p.sent().landed();
                part
            });
            let got = got.map_err(|r| r.retry_at().map(|a| a - t0));
            grants.lock().unwrap().push((name, got, now - t0));
        })
    }

    /// 20 calls of 10 other clients, which keep the rest busy.
    fn flood(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let others = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        (0..20).map(|i| self.call(others[i % 10], None)).collect()
    }

    /// What the owner's calls got, after closing and stopping the rest.
    fn owner(self, tasks: Vec<tokio::task::JoinHandle<()>>) -> Grants {
        self.q.close();
        for t in tasks {
            t.abort();
        }
        let g = self.grants.lock().unwrap().clone();
        g.into_iter().filter(|(n, ..)| *n == "owner").collect()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The owner's burst of 3 and the flood at 0 ms, the owner's 4th call at
/// 100 ms (its reserve full, 13 others waiting in the rest) waiting at most
/// `wait`; what the owner got after 1.6 s.
async fn owner_behind_a_queue(wait: Duration) -> Grants {
    let s = Scene::new();
    let mut tasks: Vec<_> = (0..3).map(|_| s.call("owner", Some(wait))).collect();
    tasks.extend(s.flood());
    tokio::time::sleep(ms(100)).await;
    tasks.push(s.call("owner", Some(wait)));
    tokio::time::sleep(ms(1500)).await;
    let g = s.owner(tasks);
    assert_eq!(g.len(), 4, "{g:?}");
    g
}

/// The owner's waiting call takes its reserve's slot the moment it frees
/// (one span after its burst), not its turn in the rest, and the place it
/// gave up in the rest goes to the next caller.
#[tokio::test(start_paused = true)]
async fn a_waiting_owner_takes_its_reserve_the_moment_it_frees() {
    let s = Scene::new();
    let mut tasks: Vec<_> = (0..3).map(|_| s.call("owner", None)).collect();
    tasks.extend(s.flood());
    tokio::time::sleep(ms(100)).await;
    tasks.push(s.call("owner", None));
    tokio::time::sleep(ms(1500)).await;
    let all = s.grants.lock().unwrap().clone();
    let rest_at = |at| {
        (all.iter())
            .filter(|(n, p, t)| *n != "owner" && *p == Ok(Part::Rest) && *t == ms(at))
            .count()
    };
    assert_eq!(
        (rest_at(0), rest_at(1000)),
        (7, 7),
        "the rest lost no slot: {all:?}"
    );
    let g = s.owner(tasks);
    assert!(g[..3]
        .iter()
        .all(|(_, p, t)| *p == Ok(Part::Reserve) && *t == ms(0)));
    assert_eq!((g[3].1, g[3].2), (Ok(Part::Reserve), ms(1000)), "{g:?}");
}

/// Its turn in the rest is past `max_wait` (2 s away, 1.5 s allowed) but its
/// reserve frees in time: it waits for the reserve rather than being
/// refused; with 0.5 s allowed it is refused at once, told the sooner of
/// the two instants (the reserve's, at 1 s).
#[tokio::test(start_paused = true)]
async fn max_wait_counts_the_reserve_freeing_as_well_as_the_rest() {
    let g = owner_behind_a_queue(ms(1500)).await;
    assert_eq!((g[3].1, g[3].2), (Ok(Part::Reserve), ms(1000)), "{g:?}");
    let g = owner_behind_a_queue(ms(500)).await;
    assert_eq!((g[3].1, g[3].2), (Err(Some(ms(1000))), ms(100)), "{g:?}");
}

/// Two calls of the owner wait for its reserve alone (the rest cannot serve
/// them within their wait): its burst's sends leave the reserve at 1000 ms
/// (one) and 1300 ms (two). At 1000 ms one of them takes the freed slot;
/// the other is told "1300 ms" and waits for it when that is within its
/// wait, and is refused then, told 1300 ms, when it is not.
async fn two_owners_racing_for_one_slot(wait: Duration) -> Grants {
    let s = Scene::new();
    let mut tasks = s.flood();
    tasks.push(s.call("owner", Some(wait)));
    tokio::time::sleep(ms(300)).await;
    tasks.extend((0..2).map(|_| s.call("owner", Some(wait))));
    tokio::time::sleep(ms(100)).await;
    tasks.extend((0..2).map(|_| s.call("owner", Some(wait))));
    tokio::time::sleep(ms(1500)).await;
    s.owner(tasks)
}

#[tokio::test(start_paused = true)]
async fn an_owner_that_lost_the_race_waits_again_within_max_wait() {
    let late = |g: &Grants| -> Vec<_> { g.iter().skip(3).map(|(_, got, t)| (*got, *t)).collect() };
    let g = two_owners_racing_for_one_slot(ms(1000)).await;
    let want = [(Ok(Part::Reserve), ms(1000)), (Ok(Part::Reserve), ms(1300))];
    assert_eq!(late(&g), want, "{g:?}");
    let g = two_owners_racing_for_one_slot(ms(800)).await;
    let want = [
        (Ok(Part::Reserve), ms(1000)),
        (Err(Some(ms(1300))), ms(1000)),
    ];
    assert_eq!(late(&g), want, "{g:?}");
}

/// Closing the quotas (the drain at shutdown) answers the calls waiting in
/// a shared rest too, and refuses new calls of every part.
#[tokio::test(start_paused = true)]
async fn closing_answers_the_calls_waiting_in_the_rest() {
    let q = split_quotas(1, 1);
    let c = Caller {
        name: "other".into(),
        weight: 1,
        wait: None,
        priority: NORMAL,
    };
    let shares = q.shares("other", "default").unwrap();
    let (p, _) = shares.acquire(&c).await.unwrap();
    p.sent().landed();
    let waiting = tokio::spawn({
        let (shares, c) = (shares.clone(), c.clone());
        async move { shares.acquire(&c).await.map(|(_, part)| part) }
    });
    tokio::time::sleep(ms(10)).await;
    q.close();
    assert_eq!(waiting.await.unwrap(), Err(Refusal::ShuttingDown));
    let owner = q.shares("owner", "default").unwrap();
    let got = owner
        .acquire(&Caller {
            name: "owner".into(),
            ..c
        })
        .await;
    assert_eq!(got.map(|(_, part)| part), Err(Refusal::ShuttingDown));
}
