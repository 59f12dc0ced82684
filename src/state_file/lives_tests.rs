//! The state file across a process's lives: what one life wrote, the next
//! finds — numbering, pauses, records written ahead — and `check`'s read.

use super::*;
use tests::path;

#[test]
fn a_pause_survives_reopens_until_it_ends_and_is_not_a_send() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 4).unwrap();
        let a = f.reserve(5).unwrap();
        f.land(a).unwrap();
        f.pause(5, Duration::from_secs(30)).unwrap();
        f.pause(9, Duration::from_millis(1)).unwrap();
        // Two pauses restored at once each keep a slot of their own.
        f.pause(11, Duration::from_secs(30)).unwrap();
        // A send after the pause record: written ahead over no pause.
        let b = f.reserve(5).unwrap();
        f.land(b).unwrap();
    }
    std::thread::sleep(Duration::from_millis(5));
    let mut left = Duration::ZERO;
    for round in 0..2 {
        let (f, mut restored) = StateFile::open(&p, 4).unwrap();
        let pause = restored.take_pause(5).expect("the pause is restored");
        assert!(
            pause <= Duration::from_secs(30) && pause > Duration::from_secs(29),
            "{pause:?}"
        );
        if round == 1 {
            assert!(pause <= left, "it runs down across reopens");
        }
        left = pause;
        assert_eq!(restored.take_pause(9), None, "an ended pause is gone");
        assert!(restored.take_pause(11).is_some(), "the other pause is kept");
        assert_eq!(restored.take(5).len(), 2, "the pause is not a send");
        drop(f);
    }
    assert_eq!(StateFile::inspect(&p).unwrap().unwrap().sends, 2);
}

/// A pause the last thing written before a graceful stop: the records
/// written ahead for sends that never came are marked unused all the same,
/// so the next life finds the one send made, not a batch of phantom ones.
#[test]
fn a_pause_written_last_leaves_no_phantom_sends() {
    let (_dir, p) = path();
    {
        let (f, _) = StateFile::open(&p, 4).unwrap();
        let a = f.reserve(5).unwrap();
        f.land(a).unwrap();
        f.pause(5, Duration::from_secs(30)).unwrap();
    }
    // The pause took a slot written ahead: no room to make, no growth.
    assert_eq!(StateFile::inspect(&p).unwrap().unwrap().slots, 4 + BATCH);
    let (_f, mut restored) = StateFile::open(&p, 4).unwrap();
    assert_eq!(restored.take(5).len(), 1, "phantom sends restored");
    assert!(restored.take_pause(5).is_some());
}

/// Each life numbers its sends after every record of the last, a send's
/// included: a new send never takes the number, and so the slot, of one
/// it restored. Each life ends with a whole batch sent, so its newest
/// record is a send, not one written ahead.
#[test]
fn a_new_life_numbers_its_sends_after_every_restored_one() {
    let (_dir, p) = path();
    for life in 0..3 {
        let (f, mut restored) = StateFile::open(&p, 64).unwrap();
        assert_eq!(restored.take(0).len(), life * BATCH as usize, "life {life}");
        for _ in 0..BATCH {
            let s = f.reserve(0).unwrap();
            f.land(s).unwrap();
        }
    }
}

/// `check` reads the file: only a missing one is "no state yet"; one that
/// cannot be read is an error naming the path.
#[test]
fn a_file_that_cannot_be_read_is_an_error_for_check() {
    let (dir, _) = path();
    match StateFile::inspect(dir.path()) {
        Err(StateError::Io { path, .. }) => assert_eq!(path, dir.path()),
        other => panic!("{other:?}"),
    }
}

/// A life that ends by `kill -9` leaves what the background writer wrote:
/// a landing reaches the file within a second or so while the process
/// runs, not only at a graceful stop.
#[test]
fn landings_reach_the_file_while_the_process_runs() {
    let (_dir, p) = path();
    let (f, _) = StateFile::open(&p, 4).unwrap();
    let s = f.reserve(0).unwrap();
    f.land(s).unwrap();
    // The other records of its batch were written ahead, unanswered. The
    // writer is a thread on the real clock: up to 10 s of 50 ms looks.
    let landed = || StateFile::inspect(&p).unwrap().unwrap().unanswered == BATCH as usize - 1;
    let mut looks = 0;
    while !landed() {
        looks += 1;
        assert!(looks < 200, "the landing never reached the file");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(f);
}
