//! The circuit breaker in front of Dastra: after `breaker_failures`
//! consecutive failures (unreachable, timed out, 502/503/504) calls are answered
//! `503 upstream_unavailable` at once for `breaker_open`, before admission,
//! so an outage costs callers neither their connect timeout nor quota. Then
//! one probe call goes out; its answer closes the breaker or opens it again.
//! Each replica keeps its own (an outage is seen from where one stands).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The probe is out; everyone else waits for its answer.
    Probing,
}

/// Whether an answer says Dastra itself is unavailable (502, 503, 504):
/// the only answers that count as failures. A 500 is about the request
/// that caused it — any caller could open the breaker for everyone by
/// sending a request Dastra fails on — so it counts neither way.
pub fn unavailable(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// Whether an answer says Dastra is up: anything below 500.
pub fn available(status: http::StatusCode) -> bool {
    !status.is_server_error()
}

/// The breaker's settings and state; `failures == 0` turns it off.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    open_for: Duration,
    state: Mutex<State>,
    /// Set while the state is anything but closed with no failure counted:
    /// a healthy Dastra's calls pass without taking the lock.
    unsettled: AtomicBool,
    gauge: IntGauge,
}

/// Leave to send one call; tells the breaker how it went. A probe dropped
/// without an answer (the caller left, admission refused it) hands the probe
/// to the next call.
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    told: bool,
}

/// How long callers are told to wait while a probe decides.
const PROBE_RETRY: Duration = Duration::from_secs(1);

impl Breaker {
    pub fn new(failures: u32, open_for: Duration, gauge: IntGauge) -> Arc<Self> {
        gauge.set(0);
        Arc::new(Self {
            failures,
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
            unsettled: AtomicBool::new(false),
            gauge,
        })
    }

    /// Leave to send, or until when not (the `Retry-After` of the 503).
    pub fn enter(self: &Arc<Self>, now: Instant) -> Result<Ticket, Instant> {
        if self.failures == 0 || !self.unsettled.load(Ordering::Acquire) {
            return Ok(self.ticket(false));
        }
        let mut st = self.lock();
        match *st {
            State::Closed { .. } => Ok(self.ticket(false)),
            State::Open { until } if now < until => Err(until),
            State::Open { .. } => {
                *st = State::Probing;
                Ok(self.ticket(true))
            }
            State::Probing => Err(now + PROBE_RETRY),
        }
    }

    /// Whether calls are being refused now (what the `breaker_open` gauge
    /// says; `/quota` does not show it yet).
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    fn ticket(self: &Arc<Self>, probe: bool) -> Ticket {
        Ticket {
            breaker: self.clone(),
            probe,
            told: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, st: &mut State, next: State) {
        if *st != next {
            let open = !matches!(next, State::Closed { .. });
            if open != !matches!(*st, State::Closed { .. }) {
                if open {
                    tracing::warn!(
                        open_ms = self.open_for.as_millis() as u64,
                        "Dastra keeps failing; answering 503 upstream_unavailable without sending"
                    );
                } else {
                    tracing::info!("Dastra answers again; breaker closed");
                }
            }
            self.gauge.set(i64::from(open));
        }
        *st = next;
        self.unsettled
            .store(next != State::Closed { failures: 0 }, Ordering::Release);
    }
}

impl Ticket {
    /// After a wait for quota: whether the breaker opened meanwhile (then
    /// until when), so a queued call does not go out into an outage.
    pub fn recheck(&self, now: Instant) -> Result<(), Instant> {
        if self.probe
            || self.breaker.failures == 0
            || !self.breaker.unsettled.load(Ordering::Acquire)
        {
            return Ok(());
        }
        match *self.breaker.lock() {
            State::Closed { .. } => Ok(()),
            State::Open { until } => Err(until.max(now)),
            State::Probing => Err(now + PROBE_RETRY),
        }
    }

    /// Dastra answered and was well (anything but a 5xx).
    pub fn succeeded(mut self) {
        self.told = true;
        if self.breaker.failures == 0 || !self.breaker.unsettled.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.breaker.lock();
        // A call sent before the breaker opened says nothing of now.
        if self.probe || matches!(*st, State::Closed { .. }) {
            self.breaker.set(&mut st, State::Closed { failures: 0 });
        }
    }

    /// Dastra could not be reached, timed out, or answered 5xx.
    pub fn failed(mut self, now: Instant) {
        self.told = true;
        let b = &self.breaker;
        if b.failures == 0 {
            return;
        }
        let mut st = b.lock();
        let open = State::Open {
            until: now + b.open_for,
        };
        match *st {
            _ if self.probe => b.set(&mut st, open),
            State::Closed { failures } if failures + 1 >= b.failures => b.set(&mut st, open),
            State::Closed { failures } => b.set(
                &mut st,
                State::Closed {
                    failures: failures + 1,
                },
            ),
            State::Open { .. } | State::Probing => {}
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.told {
            let mut st = self.breaker.lock();
            if *st == State::Probing {
                // Nothing learned: the next call probes.
                let next = State::Open {
                    until: Instant::now(),
                };
                self.breaker.set(&mut st, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(n: u32) -> Arc<Breaker> {
        Breaker::new(n, Duration::from_secs(10), IntGauge::new("b", "b").unwrap())
    }

    #[test]
    fn only_502_503_504_are_failures_and_only_below_500_is_health() {
        let s = |n| http::StatusCode::from_u16(n).unwrap();
        let failures: Vec<u16> = (100..600).filter(|&n| unavailable(s(n))).collect();
        assert_eq!(failures, [502, 503, 504]);
        assert!(available(s(499)) && available(s(429)) && available(s(200)));
        assert!(!available(s(500)) && !available(s(501)) && !available(s(502)));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker(3);
        let t0 = Instant::now();
        for _ in 0..2 {
            b.enter(t0).unwrap().failed(t0);
        }
        b.enter(t0).unwrap().succeeded();
        for _ in 0..2 {
            b.enter(t0).unwrap().failed(t0);
        }
        assert!(
            !b.is_open(),
            "2 failures after a success are not 3 in a row"
        );
        b.enter(t0).unwrap().failed(t0);
        assert!(b.is_open());
        assert_eq!(b.gauge.get(), 1);
        assert_eq!(b.enter(t0).unwrap_err(), t0 + Duration::from_secs(10));
        let almost = t0 + Duration::from_secs(10) - Duration::from_nanos(1);
        assert!(b.enter(almost).is_err(), "still open just before the end");
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_decides_and_others_wait_for_it() {
        let b = breaker(1);
        let t0 = Instant::now();
        b.enter(t0).unwrap().failed(t0);
        let later = t0 + Duration::from_secs(10);
        let probe = b.enter(later).unwrap();
        assert_eq!(b.enter(later).unwrap_err(), later + PROBE_RETRY);
        probe.failed(later);
        assert_eq!(b.enter(later).unwrap_err(), later + Duration::from_secs(10));
        let again = later + Duration::from_secs(10);
        let probe = b.enter(again).unwrap();
        probe.succeeded();
        assert!(!b.is_open());
        assert_eq!(b.gauge.get(), 0);
        assert!(b.enter(again).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_hands_over_and_old_calls_do_not_close_it() {
        let b = breaker(2);
        let t0 = Instant::now();
        let old = b.enter(t0).unwrap();
        b.enter(t0).unwrap().failed(t0);
        b.enter(t0).unwrap().failed(t0);
        old.succeeded();
        assert!(
            b.is_open(),
            "a call sent before it opened does not close it"
        );
        let later = t0 + Duration::from_secs(10);
        drop(b.enter(later).unwrap());
        assert!(b.enter(later).is_ok(), "the next call probes");
        let off = breaker(0);
        for _ in 0..10 {
            off.enter(t0).unwrap().failed(t0);
        }
        assert!(!off.is_open());
    }
}
