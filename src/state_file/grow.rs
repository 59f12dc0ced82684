//! A ring that grows rather than forget a send that still counts.
//!
//! The ring is sized at start-up for every credential's largest window, but
//! the sends of all keys share it: in passthrough (one key per caller
//! credential, as many as `max_keys`) or after a reload adds a credential,
//! busy keys would push a quieter key's sends out, and a restart would then
//! re-admit them early. So a slot is reused only once its send has left
//! every window ([`StateFile::keep_for`]); when the next one still counts,
//! the ring doubles, rewritten in one `pwrite` (all or nothing for a
//! process that dies, as every other write here).

use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::format::{header, Header, Rec, HEADER, RECORD, RELEASED, UNANSWERED};
use super::{Ring, StateError, StateFile};

/// The most slots a ring grows to: past it, the oldest record is
/// overwritten as a fixed ring would, and that is logged. Unit tests reach
/// a smaller cap.
pub(super) const MAX_SLOTS: u64 = if cfg!(test) { 1 << 8 } else { GROWN_MAX };
/// A running proxy's cap: 640 MiB of records.
pub(super) const GROWN_MAX: u64 = 1 << 24;

/// Logged once per process: the ring hit [`MAX_SLOTS`].
static FULL: AtomicBool = AtomicBool::new(false);

/// Whether `r` still counts at `now`: a send not answered yet or landed
/// less than `keep` ago, or a pause not over.
pub(super) fn counts(r: &Rec, now: u64, keep: u64) -> bool {
    if r.seq == 0 || r.landed == RELEASED {
        return false;
    }
    if r.is_pause() {
        return r.landed > now;
    }
    r.landed == UNANSWERED || now.saturating_sub(r.landed) < keep
}

impl StateFile {
    /// How long a landed send still counts: the longest window of any
    /// credential, set at start-up and on reload.
    pub fn keep_for(&self, longest: Duration) {
        self.lock().keep = u64::try_from(longest.as_nanos()).unwrap_or(u64::MAX);
    }

    /// The slots of sends `from..from + n` hold nothing that still counts;
    /// the ring grows until they do.
    pub(super) fn make_room(&self, ring: &mut Ring, from: u64, n: u64) -> Result<(), StateError> {
        let now = self.now();
        let busy = |ring: &Ring| {
            (from..from + n).any(|seq| {
                let r = &ring.mirror[(seq % ring.slots) as usize];
                r.seq < seq && counts(r, now, ring.keep)
            })
        };
        while busy(ring) {
            if ring.slots * 2 > MAX_SLOTS {
                if !FULL.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        path = %self.path.display(),
                        slots = ring.slots,
                        "state file full: sends still in a window are overwritten; a restart may re-admit them early"
                    );
                }
                return Ok(());
            }
            self.grow(ring)?;
        }
        Ok(())
    }

    /// Twice the slots: every record moves to its place in the larger ring
    /// (`seq % slots` cannot collide: two records apart by a multiple of
    /// the new size were apart by one of the old), written with the header
    /// in one go, landings included.
    fn grow(&self, ring: &mut Ring) -> Result<(), StateError> {
        let slots = ring.slots * 2;
        let mut mirror = vec![Rec::default(); slots as usize];
        for r in ring.mirror.iter().filter(|r| r.seq != 0) {
            mirror[(r.seq % slots) as usize] = *r;
        }
        let mut out = Vec::with_capacity((HEADER + slots * RECORD) as usize);
        out.extend_from_slice(&header(&Header {
            slots,
            ..self.header
        }));
        for r in &mirror {
            out.extend_from_slice(&r.encode());
        }
        self.file
            .write_all_at(&out, 0)
            .map_err(|source| StateError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.dirty.store(true, Ordering::Release);
        tracing::info!(path = %self.path.display(), slots, "state file grown: its sends still count");
        ring.slots = slots;
        ring.mirror = mirror;
        // Every landing is in what was just written.
        ring.pending.clear();
        Ok(())
    }
}
