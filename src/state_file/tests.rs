//! The state file on a real file system: round trips, the lock, and corrupt
//! or truncated files named with their offset.

use super::*;

fn path() -> (tempfile::TempDir, PathBuf) {
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
        for _ in 0..30 {
            let s = f.reserve(0).unwrap();
            f.land(s).unwrap();
        }
    }
    let size = std::fs::metadata(&p).unwrap().len();
    assert_eq!(size, HEADER + (3 + BATCH) * RECORD, "the file never grows");
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
