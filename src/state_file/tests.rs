//! The state file on a real file system: round trips, the lock, and corrupt
//! or truncated files named with their offset.

use super::*;

pub(super) fn path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dastra-proxy.state");
    (dir, p)
}

#[test]
fn sends_survive_a_reopen_and_unanswered_ones_count_as_landed() {
    let (_dir, p) = path();
    {
        let (f, restored) = StateFile::open(&p, 4).unwrap();
        assert!(restored.sends.is_empty());
        let a = f.reserve(0).unwrap();
        f.land(a).unwrap();
        let b = f.reserve(0).unwrap();
        f.release(b).unwrap();
        let _unanswered = f.reserve(7).unwrap();
    }
    let (f, mut restored) = StateFile::open(&p, 4).unwrap();
    assert_eq!(
        restored.take(0).len(),
        1,
        "the released send does not count"
    );
    assert_eq!(restored.take(7).len(), 1, "the unanswered send counts");
    assert!(restored.sends.is_empty());
    // Numbering goes on after the old sends; the ring keeps the newest.
    let seq = f.reserve(0).unwrap();
    assert!(seq > 3, "numbering goes on after the old sends: {seq}");
    drop(f);
    let summary = StateFile::inspect(&p).unwrap().unwrap();
    assert_eq!(
        (summary.slots, summary.sends, summary.unanswered),
        (4 + BATCH, 3, 1)
    );
    assert_eq!(summary.pid, u64::from(std::process::id()));
}

#[test]
fn the_ring_keeps_at_least_the_newest_sends_and_can_be_resized() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 3).unwrap();
        // Sends that no window counts any more: their slots are reused.
        f.keep_for(Duration::ZERO);
        for _ in 0..30 {
            let s = f.reserve(0).unwrap();
            f.land(s).unwrap();
        }
    }
    let size = std::fs::metadata(&p).unwrap().len();
    assert_eq!(size, HEADER + (3 + BATCH) * RECORD, "the file did not grow");
    let (_, mut restored) = StateFile::open(&p, 8).unwrap();
    let kept = restored.take(0);
    assert!(
        (3..=3 + BATCH as usize).contains(&kept.len()),
        "{}",
        kept.len()
    );
    assert!(kept.windows(2).all(|w| w[0] >= w[1]), "oldest first");
    assert_eq!(StateFile::inspect(&p).unwrap().unwrap().slots, 8 + BATCH);
}

#[test]
fn a_second_opener_is_refused_with_the_holders_pid() {
    let (_dir, p) = path();
    let (_held, _) = StateFile::open(&p, 4).unwrap();
    let err = StateFile::open(&p, 4).unwrap_err();
    assert!(
        matches!(err, StateError::Locked { pid, .. } if pid == u64::from(std::process::id())),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains(&format!("pid {}", std::process::id())));
}

#[test]
fn corrupt_and_truncated_files_are_errors_naming_the_offset() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 4).unwrap();
        let s = f.reserve(0).unwrap();
        f.land(s).unwrap();
    }
    let good = std::fs::read(&p).unwrap();

    let mut flipped = good.clone();
    let at = (HEADER + RECORD + 20) as usize; // inside the record of seq 1
    flipped[at] ^= 0x40;
    std::fs::write(&p, &flipped).unwrap();
    let err = StateFile::open(&p, 4).unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { offset, .. } if *offset == HEADER + RECORD),
        "{err}"
    );
    assert!(err.to_string().contains(&p.display().to_string()));

    std::fs::write(&p, &good[..good.len() - 7]).unwrap();
    let err = StateFile::inspect(&p).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    std::fs::write(
        &p,
        b"hello, world: not a state file at all, but long enough to be read....",
    )
    .unwrap();
    let err = StateFile::open(&p, 4).unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { offset: 0, .. }),
        "{err}"
    );

    std::fs::write(&p, &good).unwrap();
    assert!(
        StateFile::open(&p, 4).is_ok(),
        "the intact file still opens"
    );
}

#[test]
fn a_missing_file_is_not_an_error_for_check() {
    let (_dir, p) = path();
    assert_eq!(StateFile::inspect(&p).unwrap(), None);
}

#[test]
fn a_crash_counts_at_most_a_batch_of_sends_that_never_happened() {
    let (_dir, p) = path();
    let (f, _) = StateFile::open(&p, 64).unwrap();
    for _ in 0..3 {
        let s = f.reserve(0).unwrap();
        f.land(s).unwrap();
    }
    f.flush();
    // What the disk holds if the process dies now (no graceful close).
    let at_crash = std::fs::read(&p).unwrap();
    drop(f);
    let (_, mut graceful) = StateFile::open(&p, 64).unwrap();
    assert_eq!(
        graceful.take(0).len(),
        3,
        "a graceful stop leaves exactly the sends"
    );
    std::fs::write(&p, &at_crash).unwrap();
    let (_, mut crashed) = StateFile::open(&p, 64).unwrap();
    let n = crashed.take(0).len();
    assert!(
        (3..=BATCH as usize).contains(&n),
        "after a crash: the 3 sends and at most a batch of unused records, saw {n}"
    );
}

#[test]
fn other_keys_get_records_of_their_own() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 64).unwrap();
        let a = f.reserve(1).unwrap();
        let b = f.reserve(2).unwrap();
        f.land(a).unwrap();
        f.land(b).unwrap();
    }
    let (_, mut r) = StateFile::open(&p, 64).unwrap();
    assert_eq!((r.take(1).len(), r.take(2).len()), (1, 1));
}

#[test]
fn a_second_opener_is_refused_after_the_file_was_moved_or_deleted() {
    let (dir, p) = path();
    let (_held, _) = StateFile::open(&p, 4).unwrap();
    std::fs::rename(&p, dir.path().join("moved.state")).unwrap();
    let err = StateFile::open(&p, 4).unwrap_err();
    assert!(matches!(err, StateError::PathLocked { .. }), "{err}");
    assert!(err.to_string().contains(&p.display().to_string()));
    std::fs::remove_file(dir.path().join("moved.state")).unwrap();
    assert!(matches!(
        StateFile::open(&p, 4).unwrap_err(),
        StateError::PathLocked { .. }
    ));
    // Another path in the same directory is free.
    assert!(StateFile::open(&dir.path().join("other.state"), 4).is_ok());
}

/// A file written with times on this boot's clock, whose wall-clock offset
/// says the wall clock then was a day ahead: a wall clock that stepped back
/// since. Within one boot the boot clock decides, so a send that landed a
/// moment ago is restored as a moment ago, not a day ago.
#[test]
fn within_one_boot_restored_ages_ignore_wall_clock_steps() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 4).unwrap();
        let s = f.reserve(0).unwrap();
        f.land(s).unwrap();
    }
    let mut bytes = std::fs::read(&p).unwrap();
    let (mut h, _) = format::parse(&p, &bytes).unwrap();
    assert_eq!(h.boot, clock::boot_id(), "the file names this boot");
    h.offset += 86_400 * 1_000_000_000;
    bytes[..HEADER as usize].copy_from_slice(&format::header(&h));
    std::fs::write(&p, &bytes).unwrap();
    let (_, mut restored) = StateFile::open(&p, 4).unwrap();
    let ages = restored.take(0);
    assert_eq!(ages.len(), 1);
    assert!(
        ages[0] < Duration::from_secs(5),
        "restored as {:?} old",
        ages[0]
    );
}

/// Another boot: the times go back to the wall clock through the offset
/// the file recorded, so a send a minute old on the wall clock is a minute old.
#[test]
fn after_a_reboot_restored_ages_come_from_the_wall_clock() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 4).unwrap();
        let s = f.reserve(0).unwrap();
        f.land(s).unwrap();
    }
    let mut bytes = std::fs::read(&p).unwrap();
    let (mut h, _) = format::parse(&p, &bytes).unwrap();
    h.boot = [7; 16];
    h.offset -= 60 * 1_000_000_000;
    bytes[..HEADER as usize].copy_from_slice(&format::header(&h));
    std::fs::write(&p, &bytes).unwrap();
    let (_, mut restored) = StateFile::open(&p, 4).unwrap();
    let age = restored.take(0)[0];
    assert!(
        age >= Duration::from_secs(60) && age < Duration::from_secs(65),
        "{age:?}"
    );
}

/// A 0.2 file (no boot in its header, wall-clock times) still opens.
#[test]
fn a_file_of_the_previous_release_still_opens() {
    let (_dir, p) = path();
    let now = clock::wall_nanos();
    let h = Header {
        slots: 2,
        pid: 1,
        ..Header::default()
    };
    let mut bytes = format::header(&h).to_vec();
    assert!(bytes[32..].iter().all(|b| *b == 0));
    let rec = Rec {
        key: 0,
        seq: 1,
        reserved: now - 3_000_000_000,
        landed: now - 2_000_000_000,
    };
    bytes.extend_from_slice(&rec.encode());
    bytes.extend_from_slice(&[0; RECORD as usize]);
    std::fs::write(&p, &bytes).unwrap();
    let (_, mut restored) = StateFile::open(&p, 2).unwrap();
    let age = restored.take(0)[0];
    assert!(
        age >= Duration::from_secs(2) && age < Duration::from_secs(4),
        "{age:?}"
    );
}

/// Busy keys never push a quieter key's sends out while they still count
/// (passthrough's many keys, a credential a reload added): the ring grows
/// instead, and a restart finds every one of them.
#[test]
fn the_ring_grows_rather_than_forget_a_send_still_in_a_window() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 3).unwrap();
        f.keep_for(Duration::from_secs(3600));
        let quiet = f.reserve(9).unwrap();
        f.land(quiet).unwrap();
        f.pause(9, Duration::from_secs(600)).unwrap();
        for i in 0..100 {
            let s = f.reserve(i % 3).unwrap();
            f.land(s).unwrap();
        }
        let unanswered = f.reserve(5).unwrap();
        assert!(unanswered > 100);
    }
    let slots = StateFile::inspect(&p).unwrap().unwrap().slots;
    assert!((104..=2 * (104 + BATCH)).contains(&slots), "{slots} slots");
    let (_, mut restored) = StateFile::open(&p, 3).unwrap();
    assert_eq!(restored.take(9).len(), 1, "the quiet key's send");
    assert!(restored.take_pause(9).is_some(), "its pause");
    for (k, n) in [(0, 34), (1, 33), (2, 33)] {
        assert_eq!(restored.take(k).len(), n, "key {k}");
    }
    assert_eq!(restored.take(5).len(), 1, "the unanswered send");
    assert_eq!(
        StateFile::inspect(&p).unwrap().unwrap().slots,
        slots,
        "it keeps its size"
    );
}

/// A record counts while it is in a window; a pause, while it lasts.
#[test]
fn what_counts_is_what_is_still_in_a_window() {
    use format::{PAUSE, RELEASED, UNANSWERED};
    let keep = 1_000;
    let rec = |reserved, landed| Rec {
        key: 1,
        seq: 5,
        reserved,
        landed,
    };
    let counts = |r: &Rec| grow::counts(r, 10_000, keep);
    assert!(counts(&rec(8_000, 9_500)), "landed 500 ago");
    assert!(!counts(&rec(8_000, 9_000)), "landed exactly keep ago");
    assert!(counts(&rec(8_000, UNANSWERED)), "no answer yet");
    assert!(!counts(&rec(8_000, RELEASED)), "given back");
    assert!(counts(&rec(PAUSE, 10_001)), "a pause not over");
    assert!(!counts(&rec(PAUSE, 10_000)), "a pause over");
    assert!(!counts(&Rec::default()), "an empty slot");
}

/// Only the slot a send is about to reuse decides whether the ring grows:
/// a live send among given-back ones is kept, and the ring does not grow
/// for the given-back ones around it.
#[test]
fn the_ring_grows_for_the_live_slot_it_would_reuse_and_no_other() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 3).unwrap();
        f.keep_for(Duration::from_secs(3600));
        for _ in 0..9 {
            let s = f.reserve(0).unwrap();
            f.release(s).unwrap();
        }
        let quiet = f.reserve(9).unwrap();
        f.land(quiet).unwrap();
        for _ in 0..30 {
            let s = f.reserve(0).unwrap();
            f.release(s).unwrap();
        }
    }
    let (_, mut restored) = StateFile::open(&p, 3).unwrap();
    assert_eq!(
        restored.take(9).len(),
        1,
        "the live send among released ones"
    );
    assert_eq!(restored.take(0).len(), 0, "released sends never count");
    let slots = StateFile::inspect(&p).unwrap().unwrap().slots;
    // 40 sends into 11 slots: the live one's slot came round at send 21
    // (11 → 22 slots) and again at send 32 (22 → 44), never for the others.
    assert_eq!(
        slots,
        4 * (3 + BATCH),
        "grown each time the live slot came round"
    );
}

/// The ring stops growing at its cap (here the unit tests' 256 slots): past
/// it, the oldest records are overwritten as a fixed ring's would be, the
/// newest kept.
#[test]
fn the_ring_stops_growing_at_its_cap() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 3).unwrap();
        f.keep_for(Duration::from_secs(3600));
        for _ in 0..600 {
            let s = f.reserve(0).unwrap();
            f.land(s).unwrap();
        }
    }
    let slots = StateFile::inspect(&p).unwrap().unwrap().slots;
    assert!(slots <= grow::MAX_SLOTS, "{slots} slots past the cap");
    assert!(
        slots * 2 > grow::MAX_SLOTS,
        "{slots}: it grew up to the cap"
    );
    let (_, mut restored) = StateFile::open(&p, 3).unwrap();
    let kept = restored.take(0).len() as u64;
    assert!(
        kept >= slots - BATCH && kept <= slots,
        "{kept} of {slots} slots"
    );
    // A running proxy's cap, as the README gives it.
    assert_eq!(grow::GROWN_MAX * RECORD, 640 << 20);
}
