use super::*;

use crate::quota::test_limits as limits;

#[test]
fn admits_n_then_refuses_until_oldest_plus_span() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(3, 1000)]), Duration::from_millis(100));
    for i in 0..3 {
        w.try_admit(t0 + Duration::from_millis(i * 10)).unwrap();
    }
    let at = w.try_admit(t0 + Duration::from_millis(50)).unwrap_err();
    assert_eq!(
        at,
        t0 + Duration::from_millis(1100),
        "oldest + per + margin"
    );
    assert!(w.try_admit(at - Duration::from_nanos(1)).is_err());
    assert!(w.try_admit(at).is_ok());
    assert_eq!(
        w.try_admit(at).unwrap_err(),
        t0 + Duration::from_millis(1110)
    );
}

#[test]
fn the_latest_blocking_window_decides() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(2, 100), (3, 1000)]), Duration::ZERO);
    w.try_admit(t0).unwrap();
    w.try_admit(t0).unwrap();
    assert_eq!(
        w.try_admit(t0).unwrap_err(),
        t0 + Duration::from_millis(100)
    );
    w.try_admit(t0 + Duration::from_millis(100)).unwrap();
    assert_eq!(
        w.try_admit(t0 + Duration::from_millis(200)).unwrap_err(),
        t0 + Duration::from_millis(1000),
        "the long window is full although the short one has room"
    );
}

#[test]
fn release_frees_a_reserved_slot() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(1, 1000)]), Duration::ZERO);
    w.reserve(t0);
    assert_eq!(
        w.next_admit(t0),
        t0 + Duration::from_millis(1000),
        "in flight counts"
    );
    w.release();
    assert!(w.try_admit(t0).is_ok());
}

#[test]
fn a_slot_ages_from_its_landing_not_its_reservation() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(1, 1000)]), Duration::ZERO);
    w.reserve(t0);
    w.land(t0 + Duration::from_millis(300));
    assert_eq!(
        w.next_admit(t0 + Duration::from_millis(300)),
        t0 + Duration::from_millis(1300)
    );
}

#[test]
fn ratelimit_value_matches_the_header_built_from_a_snapshot() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(5, 1000), (9, 3000)]), Duration::from_millis(250));
    w.try_admit(t0).unwrap();
    w.try_admit(t0 + Duration::from_millis(700)).unwrap();
    let at = t0 + Duration::from_millis(900);
    let fast = w.ratelimit_value(at);
    assert_eq!(fast, crate::quota::ratelimit_header(&w.snapshot(at)));
    assert_eq!(fast, "\"1000ms\";r=3;t=1, \"3000ms\";r=7;t=3");
    // Asked again with the same numbers: the same value. Once a send
    // left a window, and after a new one: written anew.
    assert_eq!(w.ratelimit_value(at + Duration::from_millis(50)), fast);
    let left = t0 + Duration::from_millis(1300);
    assert_eq!(
        w.ratelimit_value(left),
        "\"1000ms\";r=4;t=1, \"3000ms\";r=7;t=2"
    );
    w.try_admit(left).unwrap();
    assert_eq!(
        w.ratelimit_value(left),
        "\"1000ms\";r=3;t=1, \"3000ms\";r=6;t=2"
    );
}

#[test]
fn snapshot_reports_used_and_time_to_free() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(5, 1000)]), Duration::from_millis(250));
    w.try_admit(t0).unwrap();
    w.try_admit(t0 + Duration::from_millis(500)).unwrap();
    let s = w.snapshot(t0 + Duration::from_millis(1000));
    assert_eq!(s[0].used, 2);
    assert_eq!(s[0].frees_in, Duration::from_millis(250));
    let s = w.snapshot(t0 + Duration::from_millis(1250));
    assert_eq!(s[0].used, 1);
}

#[test]
fn the_status_pages_chart_bins_sends_oldest_first() {
    let t0 = Instant::now();
    let mut w = WindowSet::new(&limits(&[(10, 30_000)]), Duration::ZERO);
    for s in [0, 15, 29] {
        w.record(t0 + Duration::from_secs(s));
    }
    w.try_admit(t0 + Duration::from_secs(29)).unwrap();
    let sends = w
        .snapshot(t0 + Duration::from_millis(29_500))
        .remove(0)
        .sends;
    assert_eq!(sends.len(), 30);
    let mut want = vec![0u32; 30];
    (want[0], want[15], want[29]) = (1, 1, 2);
    assert_eq!(sends, want, "the one in flight counts in the last bin");
    let later = w
        .snapshot(t0 + Duration::from_millis(30_500))
        .remove(0)
        .sends;
    assert_eq!(
        later.iter().sum::<u32>(),
        3,
        "the first send left the period"
    );
}

#[test]
fn carry_keeps_recorded_sends_across_a_change_of_n_or_w() {
    let t0 = Instant::now();
    let mut old = WindowSet::new(&limits(&[(4, 1000)]), Duration::ZERO);
    for _ in 0..4 {
        old.try_admit(t0).unwrap();
    }
    let mut new = WindowSet::new(&limits(&[(2, 2000)]), Duration::ZERO);
    old.carry_into(&mut new);
    assert_eq!(
        new.try_admit(t0 + Duration::from_millis(1500)).unwrap_err(),
        t0 + Duration::from_millis(2000)
    );
}

#[test]
fn dastras_cap_only_tightens_and_ends_at_its_reset() {
    let t0 = Instant::now();
    let reset = t0 + Duration::from_secs(5);
    let mut w = WindowSet::new(&limits(&[(100, 60_000)]), Duration::ZERO);
    w.cap(2, reset, t0);
    w.cap(50, reset + Duration::from_secs(9), t0);
    assert_eq!(w.nth_start(1, t0), t0, "the second call fits the cap");
    assert_eq!(w.nth_start(2, t0), reset, "the third waits for the reset");
    w.try_admit(t0).unwrap();
    w.try_admit(t0).unwrap();
    assert_eq!(
        w.try_admit(t0).unwrap_err(),
        reset,
        "a looser cap was ignored"
    );
    assert_eq!(
        w.try_admit(reset - Duration::from_nanos(1)).unwrap_err(),
        reset
    );
    w.try_admit(reset).unwrap();
    w.try_admit(reset).unwrap();
    w.cap(0, reset + Duration::from_secs(1), reset);
    assert_eq!(w.next_admit(reset), reset + Duration::from_secs(1));
    let mut next = WindowSet::new(&limits(&[(100, 60_000)]), Duration::ZERO);
    w.carry_into(&mut next);
    assert_eq!(
        next.next_admit(reset),
        reset + Duration::from_secs(1),
        "a reload keeps it"
    );
    w.cap(1, reset + Duration::from_secs(30), reset);
    assert_eq!(
        w.next_admit(reset),
        reset + Duration::from_secs(1),
        "more left is looser, even for longer"
    );
}
