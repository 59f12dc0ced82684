//! Landings and refunds reach the file at most a second after they happen,
//! and the file reaches the disk at most once a second: one background
//! thread, so the send path writes once per batch and never waits on `fsync`.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use super::format::{RECORD, RELEASED};
use super::{StateFile, SYNC_EVERY};

impl StateFile {
    /// Writes the pending landings and refunds, then forces the file to disk
    /// if anything changed since the last time.
    pub fn flush(&self) {
        // Pending slots are mostly consecutive (sends land in about the
        // order they left): one `pwrite` per run of them, not per record.
        let runs: Vec<(u64, Vec<u8>)> = {
            let mut ring = self.lock();
            let mut slots = std::mem::take(&mut ring.pending);
            slots.sort_unstable();
            slots.dedup();
            let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
            for slot in slots {
                let rec = ring.mirror[slot as usize].encode();
                match runs.last_mut() {
                    Some((start, buf)) if *start + (buf.len() as u64 / RECORD) == slot => {
                        buf.extend_from_slice(&rec)
                    }
                    _ => runs.push((slot, rec.to_vec())),
                }
            }
            runs
        };
        for (slot, bytes) in runs {
            if let Err(e) = self.write_at(&bytes, slot) {
                tracing::warn!(error = %e, "state file write failed");
            }
        }
        self.sync();
    }

    fn sync(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.sync_data() {
                tracing::warn!(path = %self.path.display(), error = %e, "state file fsync failed");
            }
        }
    }
}

impl Drop for StateFile {
    /// A graceful stop leaves every landing in the file, and marks the
    /// records written ahead for sends that never came as unused.
    fn drop(&mut self) {
        {
            let mut ring = self.lock();
            for seq in ring.next_seq..ring.prepared_until {
                let slot = seq % ring.slots;
                if ring.mirror[slot as usize].seq == seq {
                    ring.mirror[slot as usize].landed = RELEASED;
                    ring.pending.push(slot);
                }
            }
        }
        self.flush();
    }
}

/// Writes landings and forces dirty pages to disk at most once a second,
/// while the file is open.
pub(super) fn spawn_syncer(file: Weak<StateFile>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("state-file-sync".into())
        .spawn(move || loop {
            std::thread::sleep(SYNC_EVERY);
            match file.upgrade() {
                Some(f) => f.flush(),
                None => return,
            }
        })
        .map(drop)
}
