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

pub(super) fn cfg() -> AdmissionConfig {
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
            let own_at = own[*client].map(|n| {
                room_at(
                    &log,
                    &[(n, Duration::from_millis(700))],
                    |g| g.client == *client,
                    now,
                )
            });
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
