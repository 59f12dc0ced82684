//! Properties of the window log against an independent model: the test keeps
//! its own record of every landing and every reservation still in flight, and
//! each answer of the window set (counts, projections, "empty at", "frees in",
//! the next admission) is recomputed from that record by brute force. These
//! are the checks that kill the mutants `scripts/mutants` found surviving.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::quota::test_limits as limits;

const FLIGHT: Duration = Duration::from_millis(250);

/// The test's own record of what happened to the window set.
#[derive(Debug, Default)]
struct Model {
    /// Every landing, in order.
    landed: Vec<Instant>,
    /// Reservation instants of the sends in flight, oldest first. A landing
    /// or a refund takes out the oldest, as the window does: which one of
    /// several identical sends ended is not known to it either.
    flying: VecDeque<Instant>,
}

impl Model {
    fn held(&self, span: Duration, now: Instant) -> usize {
        self.landed.iter().filter(|t| **t + span > now).count() + self.flying.len()
    }

    /// The bound on when a send in flight has left a window of `span`.
    fn flight_bound(&self, span: Duration, now: Instant) -> Option<Instant> {
        self.flying.front().map(|t| (*t + FLIGHT).max(now) + span)
    }

    /// When a window of `n` per `span` next has room, stepping its sends.
    fn admit_at(&self, n: usize, span: Duration, now: Instant) -> Instant {
        let held = self.held(span, now);
        if held < n {
            return now;
        }
        if self.flying.len() >= n {
            return self.flight_bound(span, now).unwrap();
        }
        let mut live: Vec<Instant> = self
            .landed
            .iter()
            .copied()
            .filter(|t| *t + span > now)
            .collect();
        live.sort();
        live[held - n] + span
    }
}

/// Sends counted at `from` (landed ones as they are, the ones in flight as
/// landing at `from`), then each of `k + 1` new calls started one by one at
/// the first instant every window has room: the start of the last.
fn stepped_start(m: &Model, spec: &[(usize, Duration)], k: usize, from: Instant) -> Instant {
    let mut sends: Vec<Instant> = m.landed.clone();
    sends.extend(std::iter::repeat_n(from, m.flying.len()));
    let mut t = from;
    for _ in 0..=k {
        loop {
            let mut later = t;
            for (n, span) in spec {
                let mut live: Vec<Instant> =
                    sends.iter().copied().filter(|s| *s + *span > t).collect();
                if live.len() >= *n {
                    live.sort();
                    later = later.max(live[live.len() - n] + *span);
                }
            }
            if later == t {
                break;
            }
            t = later;
        }
        sends.push(t);
    }
    t
}

fn spec_strategy() -> impl Strategy<Value = Vec<(u32, u64)>> {
    prop::collection::vec((1u32..8, 1u64..300), 1..4)
}

fn ops_strategy() -> impl Strategy<Value = Vec<(u8, u64)>> {
    prop::collection::vec((0u8..5, 0u64..120), 1..120)
}

/// Runs `ops` against a window set and the model, checking after each one.
fn run(
    spec: &[(u32, u64)],
    margin: Duration,
    ops: &[(u8, u64)],
    mut check: impl FnMut(&mut WindowSet, &Model, Instant) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut ws = WindowSet::new(&limits(spec), margin).with_flight(FLIGHT);
    let mut m = Model::default();
    let mut now = Instant::now();
    for &(op, dt) in ops {
        now += Duration::from_millis(dt);
        match op {
            0 | 1 if ws.next_admit(now) <= now => {
                ws.reserve(now);
                m.flying.push_back(now);
            }
            2 if !m.flying.is_empty() => {
                ws.land(now);
                m.flying.pop_front();
                m.landed.push(now);
            }
            3 if !m.flying.is_empty() => {
                ws.release();
                m.flying.pop_front();
            }
            _ => {}
        }
        check(&mut ws, &m, now)?;
    }
    Ok(())
}

fn spans(spec: &[(u32, u64)], margin: Duration) -> Vec<(usize, Duration)> {
    spec.iter()
        .map(|(n, ms)| (*n as usize, Duration::from_millis(*ms) + margin))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// One window: the closed form is exactly the stepped model, for every
    /// k (several rounds of the window), with sends logged and in flight.
    #[test]
    fn nth_start_of_one_window_is_the_stepped_model(
        spec in prop::collection::vec((1u32..8, 1u64..300), 1..2),
        ops in ops_strategy(),
        margin_ms in 0u64..20,
        ks in prop::collection::vec(0usize..30, 1..6),
    ) {
        let margin = Duration::from_millis(margin_ms);
        let sp = spans(&spec, margin);
        run(&spec, margin, &ops, |ws, m, now| {
            for &k in &ks {
                let want = stepped_start(m, &sp, k, now);
                prop_assert_eq!(ws.nth_start(k, now), want, "k = {}", k);
            }
            Ok(())
        })?;
    }

    /// Several windows: the closed form (the latest window's own answer) is
    /// a lower bound of the stepped model — it is used to refuse at once only
    /// what surely cannot start in time — and exact for k = 0.
    #[test]
    fn nth_start_of_several_windows_never_exceeds_the_stepped_model(
        spec in spec_strategy(),
        ops in ops_strategy(),
        ks in prop::collection::vec(0usize..30, 1..6),
    ) {
        let sp = spans(&spec, Duration::ZERO);
        run(&spec, Duration::ZERO, &ops, |ws, m, now| {
            for &k in &ks {
                prop_assert!(ws.nth_start(k, now) <= stepped_start(m, &sp, k, now));
            }
            if m.flying.is_empty() {
                prop_assert_eq!(ws.nth_start(0, now), stepped_start(m, &sp, 0, now));
            }
            Ok(())
        })?;
    }

    /// Whatever the sequence of reserve, land, refund and prune, no window
    /// ever keeps more entries than its limit (no growth with every send),
    /// and every count, "frees in", "empty at" and next admission is the
    /// model's.
    #[test]
    fn every_answer_is_the_models(
        spec in spec_strategy(),
        ops in ops_strategy(),
        margin_ms in 0u64..20,
    ) {
        let margin = Duration::from_millis(margin_ms);
        let sp = spans(&spec, margin);
        run(&spec, margin, &ops, |ws, m, now| {
            for w in &ws.windows {
                prop_assert!(w.log.len() + w.in_flight.len() <= w.limit, "{} kept", w.log.len());
            }
            let want: Vec<u32> = sp.iter().map(|(_, s)| m.held(*s, now) as u32).collect();
            prop_assert_eq!(ws.used(now), want);
            let next = sp.iter().map(|(n, s)| m.admit_at(*n, *s, now)).max().unwrap();
            prop_assert_eq!(ws.next_admit(now), next);
            let mut empty = now;
            for (_, span) in &sp {
                if let Some(last) = m.landed.last() {
                    empty = empty.max(*last + *span);
                }
                if let Some(b) = m.flight_bound(*span, now) {
                    empty = empty.max(b);
                }
            }
            prop_assert_eq!(ws.empty_at(now), Some(empty));
            for (state, (_, span)) in ws.snapshot(now).iter().zip(&sp) {
                let oldest = m.landed.iter().find(|t| **t + *span > now);
                let frees = match (oldest, m.flight_bound(*span, now)) {
                    (Some(t), _) => *t + *span - now,
                    (None, Some(b)) => b - now,
                    (None, None) => Duration::ZERO,
                };
                prop_assert_eq!(state.frees_in, frees);
            }
            Ok(())
        })?;
    }
}

#[test]
fn an_empty_window_frees_now_and_is_empty_now() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(3, 1000)]), Duration::from_millis(100));
    assert_eq!(w.snapshot(t0)[0].frees_in, Duration::ZERO);
    assert_eq!(w.empty_at(t0), Some(t0));
    w.record(t0);
    let later = t0 + Duration::from_millis(1100);
    assert_eq!(w.snapshot(later)[0].frees_in, Duration::ZERO);
    assert_eq!(w.empty_at(later), Some(later));
}

#[test]
fn a_send_in_flight_holds_the_longest_window() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(5, 100), (9, 1000)]), Duration::ZERO)
        .with_flight(Duration::from_millis(50));
    w.reserve(t0);
    assert_eq!(
        w.empty_at(t0),
        Some(t0 + Duration::from_millis(1050)),
        "the 1 s window holds it until its bound"
    );
}
