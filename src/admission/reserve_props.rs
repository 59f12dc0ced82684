//! Reserves against an independent model, on tokio's paused clock: random
//! clients (reserves, own windows), windows and arrival patterns, every
//! call decided as the admission stage decides it (its own window, its
//! part, then the credential's slot) in reject mode, and every decision
//! recomputed by brute force from the test's own log of grants. The
//! properties: no window of Dastra's ever holds more than N; no reserve and
//! no shared rest more than its part, no client more than its own window; a
//! call is refused only when it has no room (nothing that could go is
//! turned away), and then told the exact instant room frees.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::config::{OnLimit, Split, Upstream429};
use crate::quota::test_limits;

fn cfg() -> AdmissionConfig {
    AdmissionConfig {
        on_limit: OnLimit::Reject,
        max_queue: 100,
        max_wait: Duration::ZERO,
        margin: Duration::ZERO,
        upstream_429: Upstream429::Pause,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: Duration::from_secs(10),
    }
}

/// One grant, as the model keeps it.
struct Grant {
    at: Instant,
    client: usize,
    part: Part,
}

/// The model: sends counted in a window of `span` at `now`, and the instant
/// the `over`-th oldest of them leaves (`over` ≥ 1).
fn counted<'a>(log: impl Iterator<Item = &'a Grant>, span: Duration, now: Instant) -> Vec<Instant> {
    let mut live: Vec<Instant> = log.filter(|g| g.at + span > now).map(|g| g.at).collect();
    live.sort();
    live
}

/// When a part of `limits` (per window: N, span) next has room for one
/// more, judged on the grants that count in it; `now` if it has room now.
fn room_at<'a, F>(log: &'a [Grant], limits: &[(u32, Duration)], mine: F, now: Instant) -> Instant
where
    F: Fn(&Grant) -> bool + Copy + 'a,
{
    let mut at = now;
    for (n, span) in limits {
        let live = counted(log.iter().filter(|g| mine(g)), *span, now);
        if live.len() >= *n as usize {
            // The window holds `len` and may hold n - 1 before one more fits.
            let frees = if *n == 0 {
                now + Duration::from_secs(3600)
            } else {
                live[live.len() - *n as usize] + *span
            };
            at = at.max(frees);
        }
    }
    at
}

/// `own[i]`: client i's own window (`[[clients.limits]]`), calls per 700 ms.
fn run(windows: &[(u32, u64)], reserves: &[f64], own: &[Option<u32>], arrivals: &[(u64, usize)]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let limits = test_limits(windows);
        let part = |r: f64| -> Vec<crate::config::Limit> {
            (limits.iter())
                .map(|l| crate::config::Limit {
                    requests: (f64::from(l.requests) * r).floor() as u32,
                    ..l.clone()
                })
                .collect()
        };
        let names: Vec<String> = (0..reserves.len()).map(|i| format!("c{i}")).collect();
        let held: Vec<Vec<crate::config::Limit>> = reserves.iter().map(|r| part(*r)).collect();
        let mut rest = limits.clone();
        for h in &held {
            for (r, l) in rest.iter_mut().zip(h) {
                r.requests -= l.requests;
            }
        }
        let q = Quotas::new(&limits, &cfg(), None, None, None).unwrap();
        let split = Split {
            credential: "default".into(),
            rest: rest.clone(),
            reserves: (0..reserves.len())
                .filter(|i| reserves[*i] > 0.0)
                .map(|i| (names[i].clone(), held[i].clone()))
                .collect(),
        };
        q.set_splits(&[split], &cfg()).unwrap();
        let gates: Vec<NamedQuota> = (0..reserves.len())
            .filter_map(|i| {
                own[i].map(|n| NamedQuota {
                    name: names[i].as_str().into(),
                    key: crate::credential::QuotaKey::client(&names[i]),
                    limits: test_limits(&[(n, 700)]),
                    gate: Some(false),
                })
            })
            .collect();
        q.set_clients(&gates, &cfg()).unwrap();
        let credential = q.get(crate::credential::QuotaKey([0; 32]), None).unwrap();
        let spans = |ls: &[crate::config::Limit]| -> Vec<(u32, Duration)> {
            ls.iter().map(|l| (l.requests, l.per)).collect()
        };
        let (all, rest_l) = (spans(&limits), spans(&rest));
        let mut log: Vec<Grant> = Vec::new();
        for (delay, client) in arrivals {
            tokio::time::advance(Duration::from_millis(*delay)).await;
            let now = Instant::now();
            let c = Caller {
                name: names[*client].as_str().into(),
                weight: 1,
                wait: None,
                priority: NORMAL,
            };
            // The client's own window first, as the admission stage asks it.
            let own_at =
                own[*client].map(|n| room_at(&log, &[(n, ms(700))], |g| g.client == *client, now));
            let gate = q.client_gate(&c.name).map(|g| g.try_acquire());
            let own_slot = match (gate, own_at) {
                (None, None) => None,
                (Some(Some(Ok(p))), Some(at)) => {
                    assert!(
                        at <= now,
                        "c{client}'s own window admitted a call it had no room for"
                    );
                    Some(p)
                }
                (Some(Some(Err((Refusal::QuotaExhausted { retry_at }, _)))), Some(at)) => {
                    assert!(
                        at > now,
                        "c{client}'s own window refused a call it had room for"
                    );
                    assert_eq!(retry_at, at, "when c{client}'s own window frees");
                    continue;
                }
                (got, want) => {
                    panic!("c{client}'s own window: got {got:?}, the model says {want:?}")
                }
            };
            let shares = q.shares(&c.name, "default").expect("a split credential");
            let mine = (reserves[*client] > 0.0).then(|| spans(&held[*client]));
            let reserve_at = mine.as_ref().map(|l| {
                room_at(
                    &log,
                    l,
                    |g| g.client == *client && g.part == Part::Reserve,
                    now,
                )
            });
            let rest_at = room_at(&log, &rest_l, |g| g.part == Part::Rest, now);
            let expected = match reserve_at {
                Some(at) if at <= now => Ok(Part::Reserve),
                _ if rest_at <= now => Ok(Part::Rest),
                _ => Err(reserve_at.map_or(rest_at, |r| r.min(rest_at))),
            };
            match (shares.acquire(&c).await, expected) {
                (Ok((p, part)), Ok(want)) => {
                    assert_eq!(part, want, "call of c{client} at {:?}", now);
                    let slot = credential.try_acquire();
                    let Some(Ok(slot)) = slot else {
                        panic!("Dastra's window refused a call its parts admitted: {slot:?}")
                    };
                    slot.sent().landed();
                    p.sent().landed();
                    if let Some(own) = own_slot {
                        own.sent().landed();
                    }
                    log.push(Grant {
                        at: now,
                        client: *client,
                        part,
                    });
                }
                (Err(Refusal::QuotaExhausted { retry_at }), Err(want)) => {
                    assert_eq!(retry_at, want, "the instant a slot frees for c{client}");
                }
                (got, want) => panic!("c{client}: got {got:?}, the model says {want:?}"),
            }
            // Dastra's windows never hold more than N.
            let total = room_at(&log, &all, |_| true, now);
            let over =
                (all.iter()).any(|(n, span)| counted(log.iter(), *span, now).len() > *n as usize);
            assert!(
                !over,
                "a window of Dastra's was exceeded (room at {total:?})"
            );
        }
        q.close();
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn reserves_hold_and_nothing_that_could_go_is_refused(
        short in 4u32..30,
        long_factor in 1u32..4,
        with_long in any::<bool>(),
        reserves in prop::collection::vec(prop::sample::select(vec![0.0, 0.1, 0.2, 0.3, 0.45]), 1..5),
        arrivals in prop::collection::vec((0u64..300, 0usize..4), 1..120),
        own in prop::collection::vec(prop::option::of(1u32..6), 4),
    ) {
        // Sums over 0.9 are refused by `check`; and the reserves must hold
        // at least one call each (also `check`'s rule).
        prop_assume!(reserves.iter().sum::<f64>() <= 0.9 + 1e-9);
        let mut windows = vec![(short, 1000)];
        if with_long {
            windows.push((short * long_factor + 3, 3000));
        }
        prop_assume!(reserves.iter().all(|r| *r == 0.0 || windows.iter().all(|(n, _)| (f64::from(*n) * r).floor() >= 1.0)));
        let arrivals: Vec<(u64, usize)> = arrivals.into_iter().map(|(d, c)| (d, c % reserves.len())).collect();
        run(&windows, &reserves, &own, &arrivals);
    }
}

/// Who, what (a part, or a refusal's Retry-After from the start), when.
type Grants = Vec<(&'static str, Result<Part, Option<Duration>>, Duration)>;

/// Queue mode, 10 per second split 3 (the owner's reserve) and 7: the
/// owner's burst of 3 and 20 calls of 10 others at 0 ms, the owner's 4th
/// call at 100 ms (its reserve full, 13 others waiting in the rest), each
/// call with `max_wait`; who got what, when, after 1.6 s.
async fn owner_behind_a_queue(max_wait: Duration) -> Grants {
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_wait,
        ..cfg()
    };
    let limits = test_limits(&[(10, 1000)]);
    let q = Quotas::new(&limits, &cfg, None, None, None).unwrap();
    let split = Split {
        credential: "default".into(),
        rest: test_limits(&[(7, 1000)]),
        reserves: vec![("owner".into(), test_limits(&[(3, 1000)]))],
    };
    q.set_splits(&[split], &cfg).unwrap();
    let t0 = Instant::now();
    let grants = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let call = |name: &'static str| {
        let (shares, grants) = (q.shares(name, "default").unwrap(), grants.clone());
        tokio::spawn(async move {
            let c = Caller {
                name: name.into(),
                weight: 1,
                wait: None,
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
    };
    let mut tasks: Vec<_> = (0..3).map(|_| call("owner")).collect();
    let others = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    tasks.extend((0..20).map(|i| call(others[i % 10])));
    tokio::time::sleep(Duration::from_millis(100)).await;
    tasks.push(call("owner"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    q.close();
    for t in tasks {
        t.abort();
    }
    let g = grants.lock().unwrap().clone();
    let owner = g.iter().filter(|(n, ..)| *n == "owner").count();
    assert_eq!(owner, 4, "{g:?}");
    g
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The owner's waiting call takes its reserve's slot the moment it frees
/// (one span after its burst), not its turn in the rest, and the place it
/// gave up in the rest goes to the next caller.
#[tokio::test(start_paused = true)]
async fn a_waiting_owner_takes_its_reserve_the_moment_it_frees() {
    let g = owner_behind_a_queue(Duration::from_secs(30)).await;
    let owner: Vec<_> = g.iter().filter(|(n, ..)| *n == "owner").collect();
    assert!(owner[..3]
        .iter()
        .all(|(_, p, t)| *p == Ok(Part::Reserve) && *t == ms(0)));
    assert_eq!(
        (owner[3].1, owner[3].2),
        (Ok(Part::Reserve), ms(1000)),
        "{g:?}"
    );
    let rest_at = |at| {
        (g.iter())
            .filter(|(n, p, t)| *n != "owner" && *p == Ok(Part::Rest) && *t == ms(at))
            .count()
    };
    assert_eq!(
        (rest_at(0), rest_at(1000)),
        (7, 7),
        "the rest lost no slot: {g:?}"
    );
}

/// Its turn in the rest is past `max_wait` (2 s away, 1.5 s allowed) but its
/// reserve frees in time: it waits for the reserve rather than being
/// refused; with 0.5 s allowed it is refused at once, told the sooner of
/// the two instants (the reserve's, at 1 s).
#[tokio::test(start_paused = true)]
async fn max_wait_counts_the_reserve_freeing_as_well_as_the_rest() {
    let g = owner_behind_a_queue(ms(1500)).await;
    let last = g.iter().rfind(|(n, ..)| *n == "owner").unwrap();
    assert_eq!((last.1, last.2), (Ok(Part::Reserve), ms(1000)), "{g:?}");
    let g = owner_behind_a_queue(ms(500)).await;
    let last = g.iter().rfind(|(n, ..)| *n == "owner").unwrap();
    assert_eq!((last.1, last.2), (Err(Some(ms(1000))), ms(100)), "{g:?}");
}

/// Two calls of the owner wait for its reserve alone (the rest cannot serve
/// them within `max_wait`): its burst's sends leave the reserve at 1000 ms
/// (one) and 1300 ms (two). At 1000 ms one of them takes the freed slot;
/// the other is told "1300 ms" and waits for it when that is within its
/// wait (`max_wait`, here the caller's own cap), and is refused then, told
/// 1300 ms, when it is not.
async fn two_owners_racing_for_one_slot(max_wait: Duration) -> Grants {
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_wait: Duration::from_secs(30),
        ..cfg()
    };
    let q = Quotas::new(&test_limits(&[(10, 1000)]), &cfg, None, None, None).unwrap();
    let split = Split {
        credential: "default".into(),
        rest: test_limits(&[(7, 1000)]),
        reserves: vec![("owner".into(), test_limits(&[(3, 1000)]))],
    };
    q.set_splits(&[split], &cfg).unwrap();
    let t0 = Instant::now();
    let grants = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let call = |name: &'static str| {
        let (shares, grants) = (q.shares(name, "default").unwrap(), grants.clone());
        tokio::spawn(async move {
            // The owner's own cap on its wait (`Prefer: wait`); the others
            // wait up to 30 s, so the rest stays busy.
            let c = Caller {
                name: name.into(),
                weight: 1,
                wait: (name == "owner").then_some(max_wait),
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
    };
    let others = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let mut tasks: Vec<_> = (0..20).map(|i| call(others[i % 10])).collect();
    tasks.push(call("owner"));
    tokio::time::sleep(ms(300)).await;
    tasks.extend((0..2).map(|_| call("owner")));
    tokio::time::sleep(ms(100)).await;
    tasks.extend((0..2).map(|_| call("owner")));
    tokio::time::sleep(ms(1500)).await;
    q.close();
    for t in tasks {
        t.abort();
    }
    let g = grants.lock().unwrap().clone();
    g.into_iter().filter(|(n, ..)| *n == "owner").collect()
}

#[tokio::test(start_paused = true)]
async fn an_owner_that_lost_the_race_waits_again_within_max_wait() {
    let g = two_owners_racing_for_one_slot(ms(1000)).await;
    let late: Vec<_> = g.iter().skip(3).map(|(_, got, t)| (*got, *t)).collect();
    assert_eq!(
        late,
        [(Ok(Part::Reserve), ms(1000)), (Ok(Part::Reserve), ms(1300))],
        "{g:?}"
    );
    let g = two_owners_racing_for_one_slot(ms(800)).await;
    let late: Vec<_> = g.iter().skip(3).map(|(_, got, t)| (*got, *t)).collect();
    assert_eq!(
        late,
        [
            (Ok(Part::Reserve), ms(1000)),
            (Err(Some(ms(1300))), ms(1000))
        ],
        "{g:?}"
    );
}

/// Closing the quotas (the drain at shutdown) answers the calls waiting in
/// a shared rest too, and refuses new calls of every part.
#[tokio::test(start_paused = true)]
async fn closing_answers_the_calls_waiting_in_the_rest() {
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_wait: Duration::from_secs(30),
        ..cfg()
    };
    let q = Quotas::new(&test_limits(&[(2, 1000)]), &cfg, None, None, None).unwrap();
    let split = Split {
        credential: "default".into(),
        rest: test_limits(&[(1, 1000)]),
        reserves: vec![("owner".into(), test_limits(&[(1, 1000)]))],
    };
    q.set_splits(&[split], &cfg).unwrap();
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
