//! The memory store's window log on disk, so a restart — graceful or
//! `kill -9` — does not hand Dastra a second quota.
//!
//! The file is a fixed-size ring of send records: a 64-byte header, then
//! `slots` records of 40 bytes. Every send has its record in the file before
//! the call leaves. Records are written [`BATCH`] at a time, ahead of the
//! sends that will use them (one `pwrite` per batch): a crash then leaves at
//! most `BATCH - 1` records of sends that never happened, which the next
//! process counts — quota wasted for one window, never exceeded. A graceful
//! stop marks them unused. Record `seq` lives at slot `seq % slots`, so the
//! file needs no compaction: a slot is reused once its send has left every
//! window, and the ring starts with room for each credential's largest
//! window; when a slot's send still counts (the sends of many keys together
//! outgrew it) the ring doubles instead ([`grow`]).
//!
//! The landing (answer head arrived) and refunds are written by a background
//! thread at most a second later, and on close: one `pwrite` per send on the
//! hot path instead of two. A landing that a crash loses is harmless: the
//! next process counts that send as landed when it finds it, later than it
//! was, which only over-counts. Writes go to the page cache, which survives
//! the process; `fsync` runs at most once a second from the same thread, so a
//! power loss may forget up to the last second of sends. An exclusive `flock`
//! keeps a second process off the file, and a lock on its path ([`pathlock`])
//! off the path even once the file was moved or deleted. Times are on the
//! boot's clock ([`clock`]): within one boot a wall-clock step cannot make
//! old sends look older; only across a reboot do they fall back to the wall
//! clock, the one clock two boots share.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use format::{header, parse, read_pid, Header, Rec, HEADER, RECORD, RELEASED, UNANSWERED};
use restored::OldClock;
pub use restored::{Restored, Summary};

mod clock;
mod format;
mod grow;
#[cfg(test)]
mod lives_tests;
mod pathlock;
mod restored;
mod sync;
#[cfg(test)]
mod tests;

/// Records written ahead per `pwrite` on the send path.
pub const BATCH: u64 = 8;
/// How long a landed send counts until [`StateFile::keep_for`] says:
/// Dastra's longest window.
const DEFAULT_KEEP: Duration = Duration::from_secs(600);
/// How often dirty pages are forced to disk.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Why the state file cannot be used; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("store.state_file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store.state_file {}: in use by another dastra-proxy (pid {pid}); one file per process", path.display())]
    Locked { path: PathBuf, pid: u64 },
    /// Another process holds the path, though the file there is not its own
    /// (it was moved or deleted under it).
    #[error("store.state_file {}: the path is in use by another dastra-proxy (its file was moved or deleted); one file per process", path.display())]
    PathLocked { path: PathBuf },
    #[error("store.state_file {}: corrupt at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl Ring {
    /// The next record's number: sends and pauses share one sequence.
    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }
}

#[derive(Debug)]
struct Ring {
    slots: u64,
    next_seq: u64,
    /// Sends numbered below this already have a record in the file.
    prepared_until: u64,
    /// The key those records were written for (passthrough may differ).
    prepared_key: u64,
    mirror: Vec<Rec>,
    /// Slots whose landing or refund is not yet in the file.
    pending: Vec<u64>,
    /// Nanoseconds a landed send still counts (see `grow`).
    keep: u64,
}

/// The open, locked state file.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    file: File,
    _path_lock: Option<pathlock::PathLock>,
    /// Times are on the boot clock (the kernel names its boot).
    boot_clock: bool,
    /// The header as this process wrote it (a grown ring rewrites it).
    header: Header,
    ring: Mutex<Ring>,
    dirty: AtomicBool,
}

impl StateFile {
    /// Opens (or creates) and locks the file, loads the previous process's
    /// sends, and rewrites it as a ring that keeps the `slots` newest sends. A send whose answer
    /// never came is counted as landed now, and written so.
    pub fn open(path: &Path, slots: u64) -> Result<(Arc<Self>, Restored), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        if let Err(e) = file.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => StateError::Locked {
                    path: path.to_owned(),
                    pid: read_pid(&mut file),
                },
                std::fs::TryLockError::Error(e) => io(e),
            });
        }
        // After the `flock`: a holder of this very file is named by its pid.
        let path_lock = pathlock::PathLock::acquire(path).map_err(|_| StateError::PathLocked {
            path: path.to_owned(),
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (old, records) = parse(path, &bytes)?;
        let boot = clock::boot_id();
        let boot_clock = boot != [0; 16];
        let (now_boot, now_wall) = (clock::boot_nanos(), clock::wall_nanos());
        let now = if boot_clock { now_boot } else { now_wall };
        let then = OldClock {
            old: &old,
            boot,
            boot_clock,
            now_boot,
            now_wall,
        };
        // Records written ahead take up to a batch of slots beyond the
        // `slots` newest sends the ring must keep.
        // A ring that grew (see `grow`) keeps its size.
        let slots = (slots.max(1) + BATCH).max(old.slots);
        let mut mirror = vec![Rec::default(); slots as usize];
        let mut restored = Restored::default();
        let mut next_seq = 1;
        for mut r in records {
            next_seq = next_seq.max(r.seq + 1);
            if r.landed == RELEASED {
                continue;
            }
            if r.is_pause() {
                // How much of it is left, on the clock it was written on.
                let left = then.left(r.landed);
                if left.is_zero() {
                    continue;
                }
                restored.pauses.push((r.key, left));
                r.landed = now + left.as_nanos() as u64;
                let slot = &mut mirror[(r.seq % slots) as usize];
                if r.seq > slot.seq {
                    *slot = r;
                }
                continue;
            }
            // On this process's clock from here on; unanswered: landed now.
            let ago = if r.landed == UNANSWERED {
                Duration::ZERO
            } else {
                then.ago(r.landed)
            };
            r.landed = now.saturating_sub(ago.as_nanos() as u64).max(1);
            r.reserved = r.landed;
            let slot = &mut mirror[(r.seq % slots) as usize];
            if r.seq > slot.seq {
                *slot = r;
            }
        }
        for r in mirror.iter().filter(|r| r.seq != 0 && !r.is_pause()) {
            let age = Duration::from_nanos(now.saturating_sub(r.landed));
            restored.sends.push((r.key, age));
        }
        let mut out = vec![0u8; (HEADER + slots * RECORD) as usize];
        let head = Header {
            slots,
            pid: u64::from(std::process::id()),
            boot: if boot_clock { boot } else { [0; 16] },
            offset: now_wall.wrapping_sub(now_boot) as i64,
        };
        out[..HEADER as usize].copy_from_slice(&header(&head));
        for (i, r) in mirror.iter().enumerate() {
            let at = (HEADER + i as u64 * RECORD) as usize;
            out[at..at + RECORD as usize].copy_from_slice(&r.encode());
        }
        file.set_len(out.len() as u64).map_err(io)?;
        file.write_all_at(&out, 0).map_err(io)?;
        file.sync_data().map_err(io)?;
        let me = Arc::new(Self {
            path: path.to_owned(),
            file,
            _path_lock: path_lock,
            boot_clock,
            header: head,
            ring: Mutex::new(Ring {
                slots,
                next_seq,
                prepared_until: next_seq,
                prepared_key: 0,
                mirror,
                pending: Vec::new(),
                keep: DEFAULT_KEEP.as_nanos() as u64,
            }),
            dirty: AtomicBool::new(false),
        });
        sync::spawn_syncer(Arc::downgrade(&me)).map_err(io)?;
        Ok((me, restored))
    }

    /// Reads and validates a file without locking or changing it (`check`).
    pub fn inspect(path: &Path) -> Result<Option<Summary>, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let (Header { slots, pid, .. }, records) = parse(path, &bytes)?;
        Ok(Some(Summary {
            slots,
            pid,
            sends: records
                .iter()
                .filter(|r| r.landed != RELEASED && !r.is_pause())
                .count(),
            unanswered: records.iter().filter(|r| r.landed == UNANSWERED).count(),
        }))
    }

    /// Records a send before it leaves; returns its number for [`Self::land`].
    pub fn reserve(&self, key: u64) -> Result<u64, StateError> {
        let mut ring = self.lock();
        let seq = ring.take_seq();
        let rec = Rec {
            key,
            seq,
            reserved: self.now(),
            landed: UNANSWERED,
        };
        let slot = seq % ring.slots;
        if seq < ring.prepared_until && key == ring.prepared_key {
            // Its record is in the file already (written ahead, no older
            // than now): only the copy in memory learns the exact time.
            ring.mirror[slot as usize] = rec;
            return Ok(seq);
        }
        if seq < ring.prepared_until {
            ring.mirror[slot as usize] = rec;
            self.write_slot(slot, &rec)?;
            return Ok(seq);
        }
        self.prepare(&mut ring, rec)?;
        Ok(seq)
    }

    /// Writes `first` and the records of the next `BATCH - 1` sends in one go.
    fn prepare(&self, ring: &mut Ring, first: Rec) -> Result<(), StateError> {
        // The batch ends at the ring's end; a grown ring may fit more of it.
        loop {
            let slots = ring.slots;
            self.make_room(ring, first.seq, BATCH.min(slots - first.seq % slots))?;
            if ring.slots == slots {
                break;
            }
        }
        let start = first.seq % ring.slots;
        let n = BATCH.min(ring.slots - start);
        let mut buf = Vec::with_capacity((n * RECORD) as usize);
        for i in 0..n {
            let rec = Rec {
                seq: first.seq + i,
                ..first
            };
            ring.mirror[(start + i) as usize] = rec;
            buf.extend_from_slice(&rec.encode());
        }
        ring.prepared_until = first.seq + n;
        ring.prepared_key = first.key;
        self.write_at(&buf, start)
    }

    /// Dastra ordered a pause of `left` for `key` (its 429): written now, so
    /// that a restart during it sends nothing early.
    pub fn pause(&self, key: u64, left: Duration) -> Result<(), StateError> {
        let mut ring = self.lock();
        let seq = ring.take_seq();
        let rec = Rec {
            key,
            seq,
            reserved: format::PAUSE,
            landed: self.now().saturating_add(left.as_nanos() as u64).max(1),
        };
        self.make_room(&mut ring, seq, 1)?;
        let slot = seq % ring.slots;
        // Its slot may have been written ahead for a send; the sends after
        // it still are, and a graceful stop marks those unused if none came.
        ring.mirror[slot as usize] = rec;
        self.write_slot(slot, &rec)
    }

    /// The answer's head arrived: the send ages from now.
    pub fn land(&self, seq: u64) -> Result<(), StateError> {
        self.finish(seq, self.now())
    }

    /// The send never reached Dastra: it no longer counts.
    pub fn release(&self, seq: u64) -> Result<(), StateError> {
        self.finish(seq, RELEASED)
    }

    /// Notes the landing or refund in memory; [`Self::flush`] writes it.
    fn finish(&self, seq: u64, landed: u64) -> Result<(), StateError> {
        let mut ring = self.lock();
        let slot = seq % ring.slots;
        let rec = &mut ring.mirror[slot as usize];
        if rec.seq != seq {
            // Overwritten by a send `slots` later: it has left every window.
            return Ok(());
        }
        rec.landed = landed.max(rec.reserved);
        ring.pending.push(slot);
        Ok(())
    }

    fn write_slot(&self, slot: u64, rec: &Rec) -> Result<(), StateError> {
        self.write_at(&rec.encode(), slot)
    }

    /// Writes encoded records starting at `slot`.
    fn write_at(&self, bytes: &[u8], slot: u64) -> Result<(), StateError> {
        self.file
            .write_all_at(bytes, HEADER + slot * RECORD)
            .map_err(|source| StateError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// A send's time on the file's clock.
    fn now(&self) -> u64 {
        if self.boot_clock {
            clock::boot_nanos()
        } else {
            clock::wall_nanos()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}
