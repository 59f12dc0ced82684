//! The sliding-window log of one quota key: one ring of send times per
//! window, so "may I send now?" and "when does a slot free?" are O(1).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Limit;

/// One window: at most `limit` sends in any interval of length `span`.
///
/// A send is first *reserved* (in flight), and written to the log when its
/// response head arrives: by then Dastra has surely counted it, so every log
/// entry is at or after the moment Dastra saw the call, however long the
/// connection took to open. Reserved and logged sends both count.
#[derive(Debug, Clone)]
struct Window {
    limit: usize,
    /// The configured period plus the admission margin.
    span: Duration,
    name: String,
    period: Duration,
    /// Landing times, oldest first. Normally `log.len() + in_flight <= limit`;
    /// after a reload that lowered the limit, more until they age out.
    log: VecDeque<Instant>,
    /// Reservation instants of the sends in flight, oldest first. Which one
    /// lands is not known, so a landing takes out the oldest: what is left
    /// is then the newest reservations, whose oldest is never older than the
    /// oldest send truly in flight — a safe base for the bound below.
    in_flight: VecDeque<Instant>,
    /// The longest a send may stay in flight: the bound on when an unanswered
    /// send lands, used when every slot is taken by one.
    flight: Duration,
}

impl Window {
    /// When this window next has room at `now`: `None` if it has room now.
    fn blocked_until(&self, now: Instant) -> Option<Instant> {
        let used = self.log.len() + self.in_flight.len();
        if used < self.limit {
            return None;
        }
        if self.in_flight.len() >= self.limit {
            return Some(self.in_flight_bound(now));
        }
        // Room comes once this many of the oldest landings have aged out.
        let t = self.log[used - self.limit];
        (t + self.span > now).then_some(t + self.span)
    }

    /// When a slot frees while every slot is in flight: one must land first,
    /// at the latest `flight` after it was reserved, then age out. Never
    /// earlier than the truth; at least one span from now.
    fn in_flight_bound(&self, now: Instant) -> Instant {
        let oldest = self.in_flight.front().copied().unwrap_or(now);
        (oldest + self.flight).max(now) + self.span
    }

    /// Takes a slot; the caller has checked `blocked_until(now)` is `None`,
    /// so the entries dropped here have aged out.
    fn reserve(&mut self, now: Instant) {
        while !self.log.is_empty() && self.log.len() + self.in_flight.len() >= self.limit {
            self.log.pop_front();
        }
        self.in_flight.push_back(now);
    }

    fn land(&mut self, now: Instant) {
        self.in_flight.pop_front();
        while self.log.len() >= self.limit.max(1) {
            self.log.pop_front();
        }
        self.log.push_back(now);
    }

    /// The earliest instant the `k`-th call from now (0-based) could go through
    /// this window alone, counting calls in flight as landing at `from` (the
    /// earliest they can). Closed form, no simulation: the first N future
    /// sends each wait for one logged entry to age out, and every send after
    /// that goes exactly one span after the send N before it.
    fn nth_start(&self, k: usize, from: Instant) -> Instant {
        let n = self.limit.max(1);
        let held = self.log.len() + self.in_flight.len();
        let (rounds, r) = (k / n, k % n);
        let first = match (r + held).checked_sub(n) {
            None => from,
            Some(i) if i < self.log.len() => (self.log[i] + self.span).max(from),
            Some(_) => from + self.span,
        };
        first + self.span * u32::try_from(rounds).unwrap_or(u32::MAX)
    }

    fn release(&mut self) {
        self.in_flight.pop_front();
    }

    fn prune(&mut self, now: Instant) {
        while self.log.front().is_some_and(|t| *t + self.span <= now) {
            self.log.pop_front();
        }
    }

    /// Sends landed in the last `period` by bin, oldest first.
    fn binned(&self, now: Instant) -> Vec<u32> {
        let mut bins = vec![0u32; BINS];
        let period = self.period.as_nanos().max(1);
        for t in &self.log {
            let age = now.saturating_duration_since(*t).as_nanos();
            if age < period {
                let from_end = (age * BINS as u128 / period) as usize;
                bins[BINS - 1 - from_end] += 1;
            }
        }
        bins[BINS - 1] += self.in_flight.len() as u32;
        bins
    }

    fn used(&self) -> usize {
        self.log.len() + self.in_flight.len()
    }

    fn frees_in(&self, now: Instant) -> Duration {
        match self.log.front() {
            Some(t) => (*t + self.span).saturating_duration_since(now),
            // Only calls in flight: the bound, never an early answer.
            None if !self.in_flight.is_empty() => self.in_flight_bound(now) - now,
            None => Duration::ZERO,
        }
    }
}

/// What one window looks like at an instant, for headers, `/quota` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    pub name: String,
    pub limit: u32,
    pub period: Duration,
    /// Sends in the last `period + margin`, calls still in flight included
    /// (they count at Dastra already, as they do in the `RateLimit` field).
    pub used: u32,
    /// Until the oldest counted send leaves the window (zero when empty).
    pub frees_in: Duration,
    /// This process's sends over the last `period` in 30 equal bins,
    /// oldest first (calls in flight in the last): the status page's chart.
    pub sends: Vec<u32>,
}

/// Bins of [`WindowState::sends`].
const BINS: usize = 30;

/// The windows of one quota key, decided and recorded together.
#[derive(Debug, Clone)]
pub struct WindowSet {
    windows: Vec<Window>,
    /// The newest landings, at least [`HISTORY`] of them: a window keeps only
    /// its own N, so after a reload that shrank one and one that grew it
    /// again, the older sends come from here.
    history: VecDeque<Instant>,
    /// The `RateLimit` value last written.
    last: super::LastValue,
    /// Dastra's own word (`upstream.adapt`): at most `.0` more sends before `.1`.
    cap: Option<(usize, Instant)>,
}

/// Landings every window set keeps for reloads (Dastra's larger quota);
/// more when a window's N is larger. Grows as sends happen, not preallocated.
const HISTORY: usize = 10_000;

impl WindowSet {
    /// Each window is held as `per + margin`, so jitter between this proxy and
    /// Dastra cannot make Dastra count N + 1 in its own window.
    pub fn new(limits: &[Limit], margin: Duration) -> Self {
        let windows = limits
            .iter()
            .map(|l| Window {
                limit: l.requests as usize,
                span: l.per + margin,
                name: l.name.clone(),
                period: l.per,
                log: VecDeque::new(),
                in_flight: VecDeque::new(),
                flight: Duration::ZERO,
            })
            .collect();
        Self {
            windows,
            history: VecDeque::new(),
            last: Default::default(),
            cap: None,
        }
    }

    /// Dastra said only `left` more sends fit before `until`: from now on
    /// the windows admit no more than that before then. Only tightens: a
    /// looser cap than the one in force is ignored.
    pub fn cap(&mut self, left: usize, until: Instant, now: Instant) {
        let current = self.cap.filter(|(_, u)| *u > now);
        if current.is_none_or(|(l, u)| left < l || (left == l && until > u)) {
            self.cap = Some((left, until));
        }
    }

    /// The cap while it holds at `now`.
    fn cap_at(&self, now: Instant) -> Option<(usize, Instant)> {
        self.cap.filter(|(_, until)| *until > now)
    }

    fn history_len(&self) -> usize {
        self.windows
            .iter()
            .map(|w| w.limit)
            .max()
            .unwrap_or(0)
            .max(HISTORY)
    }

    /// Sets the bound on how long a send stays in flight (see
    /// `blocked_until`); zero treats a send in flight as landing now.
    pub fn with_flight(mut self, flight: Duration) -> Self {
        for w in &mut self.windows {
            w.flight = flight;
        }
        self
    }

    /// The earliest the `k`-th call from now (0-based) can start, by the
    /// windows alone: each window's closed form, the latest of them. A lower
    /// bound when several windows bind in turn; exact when one does.
    pub fn nth_start(&self, k: usize, from: Instant) -> Instant {
        let from = match self.cap_at(from) {
            Some((left, until)) if k >= left => until,
            _ => from,
        };
        self.windows
            .iter()
            .map(|w| w.nth_start(k, from))
            .max()
            .unwrap_or(from)
    }

    /// The earliest instant at or after `now` at which every window has room;
    /// `now` itself when a send may go now. Looks at one entry per window.
    pub fn next_admit(&self, now: Instant) -> Instant {
        let at = self
            .windows
            .iter()
            .filter_map(|w| w.blocked_until(now))
            .max()
            .unwrap_or(now);
        match self.cap_at(now) {
            Some((0, until)) => at.max(until),
            _ => at,
        }
    }

    /// Admits a send that lands at once (no latency), or says when one could go.
    pub fn try_admit(&mut self, now: Instant) -> Result<(), Instant> {
        let at = self.next_admit(now);
        if at > now {
            return Err(at);
        }
        self.record(now);
        Ok(())
    }

    /// Reserves a slot in every window at `now`; the caller has checked
    /// [`Self::next_admit`] is `now`.
    pub fn reserve(&mut self, now: Instant) {
        for w in &mut self.windows {
            w.reserve(now);
        }
        if let Some((left, until)) = self.cap_at(now) {
            self.cap = Some((left.saturating_sub(1), until));
        }
    }

    /// A reserved send's response head arrived (or it failed after leaving):
    /// it is logged at `now`, which must not be earlier than the last landing.
    pub fn land(&mut self, now: Instant) {
        for w in &mut self.windows {
            w.land(now);
        }
        if self.history.len() >= self.history_len() {
            self.history.pop_front();
        }
        self.history.push_back(now);
    }

    /// Gives back a reserved send that never reached upstream.
    pub fn release(&mut self) {
        for w in &mut self.windows {
            w.release();
        }
    }

    /// Reserves and lands at `now` (a send without latency; projections).
    pub fn record(&mut self, now: Instant) {
        self.reserve(now);
        self.land(now);
    }

    /// Each window's state at `now`.
    pub fn snapshot(&mut self, now: Instant) -> Vec<WindowState> {
        self.windows
            .iter_mut()
            .map(|w| {
                w.prune(now);
                WindowState {
                    name: w.name.clone(),
                    limit: w.limit as u32,
                    period: w.period,
                    used: w.used() as u32,
                    frees_in: w.frees_in(now),
                    sends: w.binned(now),
                }
            })
            .collect()
    }

    /// The `RateLimit` field at `now`, written without a snapshot: this runs
    /// on every response.
    pub fn ratelimit_value(&mut self, now: Instant) -> http::HeaderValue {
        for w in &mut self.windows {
            w.prune(now);
        }
        self.last.get(self.windows.iter().map(|w| {
            let r = w.limit.saturating_sub(w.used()) as u32;
            (w.name.as_str(), r, w.frees_in(now))
        }))
    }

    /// The `RateLimit` value while Dastra's pause holds every send until
    /// `until`: nothing left in any window until then (SPEC §9.5).
    pub fn ratelimit_paused(&mut self, now: Instant, until: Instant) -> http::HeaderValue {
        let left = until.saturating_duration_since(now);
        self.last
            .get(self.windows.iter().map(|w| (w.name.as_str(), 0, left)))
    }

    /// When every window will hold nothing: `now` if already, otherwise the
    /// latest instant any window still holds a send (a send in flight counts
    /// until its bound: its landing is not known yet). Never `None`: the
    /// `Option` lets callers filter with `> now` in one step.
    pub fn empty_at(&mut self, now: Instant) -> Option<Instant> {
        let mut at = now;
        for w in &mut self.windows {
            if !w.in_flight.is_empty() {
                at = at.max(w.in_flight_bound(now));
            }
            w.prune(now);
            if let Some(last) = w.log.back() {
                at = at.max(*last + w.span);
            }
        }
        Some(at)
    }

    /// Sends counted in each window at `now`, in configured order.
    pub fn used(&mut self, now: Instant) -> Vec<u32> {
        self.windows
            .iter_mut()
            .map(|w| {
                w.prune(now);
                w.used() as u32
            })
            .collect()
    }

    /// Carries recorded sends into a new window set (after a reload), so a
    /// window whose N or W changed keeps the sends it already counted.
    pub fn carry_into(&self, next: &mut WindowSet) {
        next.cap = self.cap;
        // Every log is the newest part of one send sequence, which the
        // history holds at its longest.
        let all = &self.history;
        next.history.clone_from(all);
        let in_flight = self
            .windows
            .first()
            .map(|w| w.in_flight.clone())
            .unwrap_or_default();
        for w in &mut next.windows {
            // The newest N landings decide every later admission of this
            // window, however many are in flight (see `blocked_until`).
            let keep = all.len().saturating_sub(w.limit.max(1));
            w.log.clear();
            w.log.extend(all.iter().skip(keep).copied());
            w.in_flight.clone_from(&in_flight);
        }
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
