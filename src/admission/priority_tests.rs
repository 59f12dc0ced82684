//! Priorities and aging (SPEC §9.3) on tokio's paused clock, judged on the
//! order and instants slots were granted in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::{AdmissionConfig, OnLimit, Upstream429};
use crate::quota::test_limits as limits;

fn cfg(max_wait_ms: u64, aging_ms: u64) -> AdmissionConfig {
    AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_queue: 10_000,
        max_wait: Duration::from_millis(max_wait_ms),
        margin: Duration::ZERO,
        upstream_429: Upstream429::Pause,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: Duration::from_millis(aging_ms),
    }
}

fn caller(name: &str, priority: u8) -> Caller {
    Caller {
        name: name.into(),
        weight: 1,
        wait: None,
        priority,
    }
}

/// Grants as (instant, client), in the order they happened.
type Log = Arc<Mutex<Vec<(Instant, &'static str)>>>;

/// `loops` clients named `name0`, `name1`…, each asking again as soon as
/// its call lands, until `until`: as many clients as loops, so fair
/// queuing alone would serve a newcomer no sooner than any of them.
fn flood(a: &Admission, name: &'static str, priority: u8, loops: usize, until: Instant, log: &Log) {
    for i in 0..loops {
        let (a, log) = (a.clone(), log.clone());
        tokio::spawn(async move {
            let c = caller(&format!("{name}{i}"), priority);
            while Instant::now() < until {
                match a.acquire(&c).await {
                    Ok(p) => {
                        log.lock().unwrap().push((Instant::now(), name));
                        p.sent().landed();
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(7)).await,
                }
            }
        });
    }
}

/// A high client calling twice a second beside a low client flooding with
/// 30 loops: every high call is the next one served when it arrives (no low
/// call is granted between its arrival and its grant), and the low client
/// gets the rest of the window: every slot is used while demand exceeds it.
#[tokio::test(start_paused = true)]
async fn a_high_client_goes_next_and_the_low_flood_gets_the_rest() {
    let a = Admission::new(&limits(&[(10, 1000)]), &cfg(60_000, 0));
    let log: Log = Arc::default();
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(10);
    flood(&a, "low", 2, 30, until, &log);
    let mut high = Vec::new();
    tokio::time::sleep(Duration::from_millis(1234)).await;
    for _ in 0..16 {
        let asked = Instant::now();
        let p = a.acquire(&caller("high", 0)).await.unwrap();
        log.lock().unwrap().push((Instant::now(), "high"));
        high.push((asked, Instant::now()));
        p.sent().landed();
        tokio::time::sleep_until(asked + Duration::from_millis(500)).await;
    }
    tokio::time::sleep_until(until + Duration::from_secs(2)).await;
    let log = log.lock().unwrap().clone();
    for (asked, granted) in &high {
        let lows_between = (log.iter())
            .filter(|(t, who)| *who == "low" && t > asked && t < granted)
            .count();
        assert_eq!(
            lows_between, 0,
            "a low call went first while high waited from {asked:?}"
        );
        // The window frees its slots as its sends age out: at most a whole
        // window away when the flood took all ten at once.
        assert!(
            *granted - *asked <= Duration::from_millis(1000),
            "one slot's wait at most"
        );
    }
    // No waste: in every whole second of the flood, all 10 slots were used.
    let granted = |from: Instant| {
        log.iter()
            .filter(|(t, _)| *t >= from && *t < from + Duration::from_secs(1))
            .count()
    };
    for s in 1..9 {
        assert_eq!(granted(t0 + Duration::from_secs(s)), 10, "second {s}");
    }
    assert!(
        log.iter().filter(|(_, w)| *w == "low").count() > 60,
        "the low client still got the rest"
    );
}

/// Without aging a low call under a high flood never goes; with `aging` it
/// moves up a priority per `aging` waited and goes once it competes by tag.
#[tokio::test(start_paused = true)]
async fn aging_serves_a_low_call_under_a_high_flood_within_max_wait() {
    for (aging_ms, served) in [(0, false), (1000, true)] {
        let a = Admission::new(&limits(&[(10, 1000)]), &cfg(5_000, aging_ms));
        // As `Quotas` makes every key's admission: the queue shared for
        // `max_queue` keeps its aging.
        a.share_queue(Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        let log: Log = Arc::default();
        let until = Instant::now() + Duration::from_secs(8);
        flood(&a, "high", 0, 20, until, &log);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let asked = Instant::now();
        let got = a.acquire(&caller("low", 2)).await;
        assert_eq!(got.is_ok(), served, "aging {aging_ms} ms");
        if let Ok(p) = got {
            let waited = Instant::now() - asked;
            // Two steps of aging make it high; then it competes by its tag.
            assert!(waited <= Duration::from_millis(3000), "waited {waited:?}");
            assert!(
                waited >= Duration::from_millis(2000),
                "before it was high: {waited:?}"
            );
            drop(p);
        }
        tokio::time::sleep_until(until + Duration::from_secs(2)).await;
    }
}

/// `ahead_of` never counts more calls than are then served first, whatever
/// the priorities, weights and backlog: `max_wait` never refuses a call
/// that could have started in time (a lower bound of its place).
#[test]
fn the_projected_place_is_never_behind_the_place_given() {
    let now = Instant::now();
    let names: [Arc<str>; 4] = ["a".into(), "b".into(), "c".into(), "d".into()];
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for aging in [Duration::ZERO, Duration::from_secs(10)] {
        for _ in 0..300 {
            let mut q = fair::FairQueue::default();
            q.set_aging(aging);
            let weights: Vec<u32> = (0..4).map(|_| 1 + next(9) as u32).collect();
            // Each client's priority; now and then a call asks for less.
            let prios: Vec<u8> = (0..4).map(|_| next(3) as u8).collect();
            let lowered = aging.is_zero() == (next(2) == 0);
            let call_prio = |c: usize, r: u64| match lowered && r == 0 {
                true => 2,
                false => prios[c],
            };
            for _ in 0..next(25) {
                let c = next(4) as usize;
                let p = call_prio(c, next(5));
                q.push(&names[c], weights[c], p, now, usize::MAX);
            }
            let who = next(4) as usize;
            let prio = call_prio(who, next(5));
            let ahead = q.ahead_of(&names[who], weights[who], prio);
            q.push(&names[who], weights[who], prio, now, 0);
            let mut place = 0;
            while let Some((v, _)) = q.pop(now) {
                if v == 0 {
                    break;
                }
                place += 1;
            }
            assert!(
                ahead <= place,
                "projected {ahead} ahead, served after {place}"
            );
            if aging.is_zero() && !lowered {
                assert_eq!(ahead, place, "exact: one priority per client, no aging");
            }
        }
    }
}
