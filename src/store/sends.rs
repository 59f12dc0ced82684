//! The sends one replica made for one quota key, kept for the longest window
//! so they can be written back to Redis when it lost them (restarted empty,
//! flushed) or never saw them (made locally during an outage).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{lock, RedisStore};

/// What the store does with this replica's own sends.
impl RedisStore {
    /// A send this replica made on its own share while Redis was unreachable.
    pub fn sent_locally(&self, id: u64) {
        let w = lock(&self.windows).clone();
        let mut s = lock(&self.sends);
        s.sent(id, Instant::now(), w.longest, self.flight);
        s.dirty = true;
    }

    /// A send made while Redis was unreachable landed or was given back.
    pub fn finished_locally(&self, id: u64, land: bool) {
        let mut s = lock(&self.sends);
        if land {
            s.landed(id, Instant::now());
        } else {
            s.released(id);
        }
    }

    /// Whether this replica has sends that may still count, which Redis
    /// should be asked about now and then (see [`super::HEARTBEAT`]).
    pub fn watch_due(&self, now: Instant) -> Option<Instant> {
        let w = lock(&self.windows).clone();
        if !lock(&self.sends).any_recent(now, w.longest, self.flight) {
            return None;
        }
        Some(lock(&self.heard).map_or(now, |h| h + self.heartbeat))
    }

    /// This replica's newest landed send that Redis must still hold: landed
    /// (a send in flight may be refunded at any moment) and well inside the
    /// longest window (one near its end may be trimmed by Redis' clock).
    pub(super) fn newest_landed(&self) -> Option<u64> {
        let w = lock(&self.windows).clone();
        lock(&self.sends).newest_landed(Instant::now(), w.longest / 2)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    sent: Instant,
    landed: Option<Instant>,
}

/// This replica's own sends, oldest first.
#[derive(Debug, Default)]
pub(super) struct Sends {
    log: VecDeque<Entry>,
    /// Some of them are missing from Redis: write them back before deciding.
    pub(super) dirty: bool,
}

impl Sends {
    pub(super) fn sent(&mut self, id: u64, now: Instant, keep: Duration, flight: Duration) {
        self.prune(now, keep, flight);
        self.log.push_back(Entry {
            id,
            sent: now,
            landed: None,
        });
    }

    pub(super) fn landed(&mut self, id: u64, now: Instant) {
        if let Some(e) = self.log.iter_mut().rev().find(|e| e.id == id) {
            e.landed = Some(now);
        }
    }

    pub(super) fn released(&mut self, id: u64) {
        if let Some(i) = self.log.iter().rposition(|e| e.id == id) {
            self.log.remove(i);
        }
    }

    /// The newest send that landed less than `young` ago.
    pub(super) fn newest_landed(&self, now: Instant, young: Duration) -> Option<u64> {
        self.log
            .iter()
            .rev()
            .find_map(|e| e.landed.map(|at| (e.id, at)))
            .filter(|(_, at)| *at + young > now)
            .map(|(id, _)| id)
    }

    /// Whether any send may still count in a window of `keep`.
    pub(super) fn any_recent(&mut self, now: Instant, keep: Duration, flight: Duration) -> bool {
        self.prune(now, keep, flight);
        !self.log.is_empty()
    }

    /// Each send as (id, µs before `now` it ages from); negative while in
    /// flight, so Redis keeps it as a reservation for the rest of its flight.
    pub(super) fn offsets(
        &mut self,
        now: Instant,
        keep: Duration,
        flight: Duration,
    ) -> Vec<(u64, i64)> {
        self.prune(now, keep, flight);
        self.log
            .iter()
            .map(|e| {
                let from = e.landed.unwrap_or(e.sent + flight);
                let off = if from <= now {
                    now.duration_since(from).as_micros() as i64
                } else {
                    -(from.duration_since(now).as_micros() as i64)
                };
                (e.id, off)
            })
            .collect()
    }

    fn prune(&mut self, now: Instant, keep: Duration, flight: Duration) {
        while let Some(e) = self.log.front() {
            let from = e.landed.unwrap_or(e.sent + flight);
            if from + keep > now {
                break;
            }
            self.log.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sends_are_kept_for_the_window_and_refunds_forgotten() {
        let (keep, flight) = (Duration::from_secs(10), Duration::from_secs(30));
        let mut s = Sends::default();
        let t0 = Instant::now();
        s.sent(1, t0, keep, flight);
        s.sent(2, t0, keep, flight);
        s.sent(3, t0, keep, flight);
        s.landed(1, t0 + Duration::from_secs(1));
        s.released(2);
        let now = t0 + Duration::from_secs(5);
        let offs = s.offsets(now, keep, flight);
        assert_eq!(offs, vec![(1, 4_000_000), (3, -25_000_000)]);
        // 1 landed at 1 s ages out at 11 s; 3 never landed: counted until 40 s.
        assert_eq!(
            s.offsets(t0 + Duration::from_secs(12), keep, flight).len(),
            1
        );
        assert!(!s.any_recent(t0 + Duration::from_secs(41), keep, flight));
    }
}
