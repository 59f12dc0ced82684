//! What a replica knows about the shared windows without asking Redis.
//!
//! When Redis answers "no slot before T" for the first call in line, nothing
//! can make a slot free earlier than T but a refund: a send still in flight
//! only lands later, a landed one leaves at its own instant, a new send or a
//! pause only pushes T out. So until T this replica answers refusals and
//! projections itself, and a flood against it costs Redis nothing. A refund
//! on another replica leaves this one conservative (never early) until it
//! next asks; its own refund, a reload, a pause it sets, a write-back or a
//! lost key make it forget and ask again.

use tokio::time::Instant;

/// How many projections (for calls `k` places back) are kept at most: a
/// flood meets the same few queue positions over and over.
const MAX_STARTS: usize = 64;

#[derive(Debug, Default)]
pub(super) struct Known {
    /// No slot frees before this, for the first call in line.
    until: Option<Instant>,
    /// When the call `k` places back could start, as Redis projected it
    /// while the window was known full (so no slot was taken since).
    starts: Vec<(usize, Instant)>,
}

impl Known {
    /// When the call `ahead` places back could start, if known at `now`.
    pub(super) fn start(&mut self, ahead: usize, now: Instant) -> Option<Instant> {
        let until = self.until?;
        if now >= until {
            // From T on, some replica may take the slot: ask again.
            self.forget();
            return None;
        }
        if ahead == 0 {
            return Some(until);
        }
        self.starts
            .iter()
            .find(|(k, _)| *k == ahead)
            .map(|&(_, at)| at)
    }

    /// Redis said the call `ahead` places back starts at `at` (measured from
    /// the answer's arrival, so later than Redis' own instant, never earlier).
    pub(super) fn learn(&mut self, ahead: usize, at: Instant, now: Instant) {
        if at <= now {
            // A slot is free now: whatever was known is out of date.
            self.forget();
            return;
        }
        if ahead == 0 {
            if self.until != Some(at) {
                // A newer view of the first slot: the projections behind it
                // were made on the older one.
                self.starts.clear();
            }
            self.until = Some(at);
            return;
        }
        if self.until.is_none_or(|u| now >= u) {
            return;
        }
        if let Some(entry) = self.starts.iter_mut().find(|(k, _)| *k == ahead) {
            entry.1 = at;
        } else if self.starts.len() < MAX_STARTS {
            self.starts.push((ahead, at));
        }
    }

    pub(super) fn forget(&mut self) {
        self.until = None;
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_until_the_first_slot_frees_then_asks_again() {
        let mut k = Known::default();
        let t0 = Instant::now();
        let t = t0 + Duration::from_secs(5);
        assert_eq!(k.start(0, t0), None, "nothing known before Redis answered");
        k.learn(2, t + Duration::from_secs(1), t0);
        assert_eq!(k.start(2, t0), None, "a projection counts only while full");
        k.learn(0, t, t0);
        k.learn(2, t + Duration::from_secs(1), t0);
        assert_eq!(k.start(0, t0), Some(t));
        assert_eq!(k.start(0, t - Duration::from_nanos(1)), Some(t));
        assert_eq!(k.start(2, t0), Some(t + Duration::from_secs(1)));
        assert_eq!(k.start(1, t0), None, "an unasked position is asked");
        assert_eq!(k.start(0, t), None, "at T some replica may take the slot");
        assert_eq!(
            k.start(2, t0),
            None,
            "and everything behind it is forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_first_slot_drops_projections_and_forget_drops_all() {
        let mut k = Known::default();
        let t0 = Instant::now();
        let t = t0 + Duration::from_secs(5);
        k.learn(0, t, t0);
        k.learn(3, t + Duration::from_secs(2), t0);
        k.learn(0, t, t0);
        assert!(k.start(3, t0).is_some(), "the same view keeps them");
        k.learn(0, t + Duration::from_secs(1), t0);
        assert_eq!(k.start(3, t0), None);
        assert_eq!(k.start(0, t0), Some(t + Duration::from_secs(1)));
        k.learn(0, t0, t0);
        assert_eq!(k.start(0, t0), None, "'free now' makes it forget");
        k.learn(0, t, t0);
        k.forget();
        assert_eq!(k.start(0, t0), None);
        for i in 1..=MAX_STARTS + 5 {
            k.learn(0, t, t0);
            k.learn(i, t + Duration::from_secs(1), t0);
        }
        assert!(k.starts.len() <= MAX_STARTS);
    }

    /// A newer projection for one position replaces that position's and no
    /// other's.
    #[tokio::test(start_paused = true)]
    async fn a_position_asked_again_keeps_the_newest_answer_and_only_its_own() {
        let mut k = Known::default();
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        k.learn(0, s(5), t0);
        k.learn(2, s(6), t0);
        k.learn(3, s(7), t0);
        k.learn(2, s(8), t0);
        assert_eq!((k.start(2, t0), k.start(3, t0)), (Some(s(8)), Some(s(7))));
        assert_eq!(k.starts.len(), 2, "updated in place");
    }
}
