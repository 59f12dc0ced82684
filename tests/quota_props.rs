//! Property tests of the sliding-window log, checked against a brute-force
//! recount of the admitted sends.

use std::time::Duration;

use dastra_proxy::config::Limit;
use dastra_proxy::quota::WindowSet;
use proptest::prelude::*;
use tokio::time::Instant;

fn windows() -> impl Strategy<Value = Vec<(u32, u64)>> {
    prop::collection::vec((1u32..12, 1u64..400), 1..4)
}

fn limits(spec: &[(u32, u64)]) -> Vec<Limit> {
    spec.iter()
        .enumerate()
        .map(|(i, (n, ms))| Limit {
            requests: *n,
            per: Duration::from_millis(*ms),
            name: format!("w{i}"),
        })
        .collect()
}

/// Sends in the half-open interval [from, from + span).
fn count_in(sent: &[Instant], from: Instant, span: Duration) -> usize {
    sent.iter()
        .filter(|t| **t >= from && **t < from + span)
        .count()
}

/// Sends in (at - span, at]: what a window of that span holds at `at`.
fn held_at(sent: &[Instant], at: Instant, span: Duration) -> usize {
    sent.iter().filter(|t| **t <= at && **t + span > at).count()
}

fn check_no_window_over(
    spec: &[(u32, u64)],
    margin: Duration,
    sent: &[Instant],
) -> Result<(), TestCaseError> {
    for (n, ms) in spec {
        let span = Duration::from_millis(*ms) + margin;
        for t in sent {
            let c = count_in(sent, *t, span);
            prop_assert!(
                c <= *n as usize,
                "{c} sends within {span:?} of {t:?}, limit {n}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Reject mode: (a) no interval of length W holds more than N admitted
    /// sends; (b) every refusal happens while some window really is full, and
    /// the instant it names is exactly when every window next has room.
    #[test]
    fn reject_mode_is_exact(spec in windows(), gaps in prop::collection::vec(0u64..120, 1..160), margin_ms in 0u64..30) {
        let margin = Duration::from_millis(margin_ms);
        let mut ws = WindowSet::new(&limits(&spec), margin);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = Vec::new();
        for g in gaps {
            now += Duration::from_millis(g);
            match ws.try_admit(now) {
                Ok(()) => sent.push(now),
                Err(at) => {
                    prop_assert!(at > now);
                    let full = spec.iter().any(|(n, ms)| held_at(&sent, now, Duration::from_millis(*ms) + margin) >= *n as usize);
                    prop_assert!(full, "refused at {:?} with room in every window", now - t0);
                    for (n, ms) in &spec {
                        let span = Duration::from_millis(*ms) + margin;
                        prop_assert!(held_at(&sent, at, span) < *n as usize, "no room at the named instant");
                    }
                    let just_before = at - Duration::from_nanos(1);
                    let full_before = spec.iter().any(|(n, ms)| held_at(&sent, just_before, Duration::from_millis(*ms) + margin) >= *n as usize);
                    prop_assert!(full_before, "the named instant is later than needed");
                }
            }
        }
        check_no_window_over(&spec, margin, &sent)?;
    }

    /// Queue mode (every call waits for its slot, FIFO): sends never exceed any
    /// window, and none waits while every window has room.
    #[test]
    fn queue_mode_wastes_nothing(spec in windows(), gaps in prop::collection::vec(0u64..60, 1..120)) {
        let mut ws = WindowSet::new(&limits(&spec), Duration::ZERO);
        let t0 = Instant::now();
        let mut arrival = t0;
        let mut last = t0;
        let mut sent = Vec::new();
        for g in gaps {
            arrival += Duration::from_millis(g);
            let ready = arrival.max(last);
            let at = ws.next_admit(ready);
            prop_assert!(ws.try_admit(at).is_ok());
            if at > ready {
                let just_before = at - Duration::from_nanos(1);
                let full = spec.iter().any(|(n, ms)| held_at(&sent, just_before, Duration::from_millis(*ms)) >= *n as usize);
                prop_assert!(full, "waited with room to spare");
            }
            sent.push(at);
            last = at;
        }
        check_no_window_over(&spec, Duration::ZERO, &sent)?;
    }

    /// With network latency (connect + transit up to 300 ms, answers later
    /// still) and margin zero, Dastra's own arrival log never holds more than
    /// N in any W: slots age from the response head, which comes after Dastra
    /// counted the call, so no connect time can compress a window.
    #[test]
    fn latency_never_compresses_a_window_at_the_upstream(
        spec in windows(),
        calls in prop::collection::vec((0u64..40, 0u64..300, 0u64..200), 1..120),
    ) {
        let mut ws = WindowSet::new(&limits(&spec), Duration::ZERO);
        let t0 = Instant::now();
        // (landing time, arrival time) of calls still in flight, and arrivals seen upstream.
        let mut in_flight: Vec<(Instant, Instant)> = Vec::new();
        let mut arrivals = Vec::new();
        let mut now = t0;
        for (gap, to_upstream, to_answer) in calls {
            now += Duration::from_millis(gap);
            // Queue mode: the call waits, while earlier answers land, until it may go.
            loop {
                in_flight.sort();
                while let Some(&(land, _)) = in_flight.first() {
                    if land > now { break; }
                    ws.land(land);
                    in_flight.remove(0);
                }
                let at = ws.next_admit(now);
                let next_land = in_flight.first().map(|(l, _)| *l);
                if at <= now {
                    break;
                }
                now = match next_land { Some(l) if l < at => l, _ => at };
            }
            ws.reserve(now);
            let arrival = now + Duration::from_millis(to_upstream);
            arrivals.push(arrival);
            in_flight.push((arrival + Duration::from_millis(to_answer), arrival));
        }
        arrivals.sort();
        check_no_window_over(&spec, Duration::ZERO, &arrivals)?;
    }

    /// A release gives back exactly one reserved send: the counts before the
    /// reservation, after it and after the refund are each the recount of
    /// the admitted sends (not only equal to one another).
    #[test]
    fn release_restores_the_previous_state(spec in windows(), k in 1usize..10) {
        let mut ws = WindowSet::new(&limits(&spec), Duration::ZERO);
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for i in 0..k {
            let at = t0 + Duration::from_millis(i as u64);
            if ws.try_admit(at).is_ok() {
                sent.push(at);
            }
        }
        let now = t0 + Duration::from_millis(k as u64);
        let recount = |extra: u32| -> Vec<u32> {
            spec.iter()
                .map(|(_, ms)| held_at(&sent, now, Duration::from_millis(*ms)) as u32 + extra)
                .collect()
        };
        prop_assert_eq!(ws.used(now), recount(0));
        if ws.next_admit(now) <= now {
            ws.reserve(now);
            prop_assert_eq!(ws.used(now), recount(1));
            ws.release();
            prop_assert_eq!(ws.used(now), recount(0));
        }
    }

    /// Sends, landings in any order, refunds and reloads (N and W changing,
    /// below the calls in flight too), mixed at random: at every send, each
    /// window as configured then holds at most its N sends that reached the
    /// upstream, counted from their arrival.
    #[test]
    fn no_window_exceeds_n_through_lands_releases_and_reloads(
        spec in windows(),
        ops in prop::collection::vec((0u8..5, 0u64..150, 0usize..8), 1..200),
        reloads in prop::collection::vec(windows(), 1..4),
    ) {
        let t0 = Instant::now();
        let mut current = spec.clone();
        let mut ws = WindowSet::new(&limits(&current), Duration::ZERO)
            .with_flight(Duration::from_millis(300));
        let mut now = t0;
        // Calls in flight: their arrival at the upstream.
        let mut flying: Vec<Instant> = Vec::new();
        // Every arrival that counts, and the limits in force at each send.
        let mut arrivals: Vec<Instant> = Vec::new();
        let mut reload = reloads.iter().cycle();
        for (op, dt, pick) in ops {
            now += Duration::from_millis(dt);
            match op {
                0 | 1 if ws.next_admit(now) <= now => {
                    ws.reserve(now);
                    flying.push(now);
                    arrivals.push(now);
                    for (n, ms) in &current {
                        let span = Duration::from_millis(*ms);
                        let held = held_at(&arrivals, now, span);
                        prop_assert!(held <= *n as usize, "{held} in {span:?} at {:?}, limit {n}", now - t0);
                    }
                }
                2 if !flying.is_empty() => {
                    // Any call's answer may come first.
                    flying.remove(pick % flying.len());
                    ws.land(now);
                }
                3 if !flying.is_empty() => {
                    // A call that never reached the upstream gives its slot back.
                    let a = flying.remove(pick % flying.len());
                    let i = arrivals.iter().rposition(|t| *t == a).unwrap();
                    arrivals.remove(i);
                    ws.release();
                }
                4 => {
                    current = reload.next().unwrap().clone();
                    let mut next = WindowSet::new(&limits(&current), Duration::ZERO)
                        .with_flight(Duration::from_millis(300));
                    ws.carry_into(&mut next);
                    ws = next;
                }
                _ => {}
            }
        }
    }
}
