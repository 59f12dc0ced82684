//! What a state file left by a previous process holds, read on this
//! process's clock: its sends' ages and what is left of its pauses.

use std::time::Duration;

use super::format::Header;

/// Sends the previous process made, by quota key: how long ago each landed;
/// and the pauses Dastra ordered (its 429) that are not over yet.
#[derive(Debug, Default)]
pub struct Restored {
    pub sends: Vec<(u64, Duration)>,
    pub pauses: Vec<(u64, Duration)>,
}

impl Restored {
    /// How much is left of the pause the previous process held for `key`.
    pub fn take_pause(&mut self, key: u64) -> Option<Duration> {
        let left = self
            .pauses
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, d)| *d)
            .max();
        self.pauses.retain(|(k, _)| *k != key);
        left
    }

    /// The ages of one key's sends, oldest first.
    pub fn take(&mut self, key: u64) -> Vec<Duration> {
        let mut ages: Vec<Duration> = Vec::new();
        self.sends.retain(|(k, age)| {
            if *k == key {
                ages.push(*age);
            }
            *k != key
        });
        ages.sort_unstable_by(|a, b| b.cmp(a));
        ages
    }
}

/// What `check` reports about an existing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub slots: u64,
    pub sends: usize,
    pub unanswered: usize,
    /// Pid of the process that last opened it (it may still be running).
    pub pid: u64,
}

/// The clocks a previous file's times are read against: its boot's clock
/// within the same boot, else the wall clock (the one two boots share).
pub(super) struct OldClock<'a> {
    pub(super) old: &'a Header,
    pub(super) boot: [u8; 16],
    pub(super) boot_clock: bool,
    pub(super) now_boot: u64,
    pub(super) now_wall: u64,
}

impl OldClock<'_> {
    /// The old time `t` on this process's wall or boot clock: nanoseconds,
    /// and which clock `now` is on.
    fn on_now(&self, t: u64) -> (u64, u64) {
        if self.boot_clock && self.old.boot == self.boot {
            (t, self.now_boot)
        } else if self.old.boot != [0; 16] {
            (t.saturating_add_signed(self.old.offset), self.now_wall)
        } else {
            (t, self.now_wall)
        }
    }

    /// How long ago `t` was.
    pub(super) fn ago(&self, t: u64) -> Duration {
        let (t, now) = self.on_now(t);
        Duration::from_nanos(now.saturating_sub(t))
    }

    /// How long until `t` (zero once past).
    pub(super) fn left(&self, t: u64) -> Duration {
        let (t, now) = self.on_now(t);
        Duration::from_nanos(t.saturating_sub(now))
    }
}
