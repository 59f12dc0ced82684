//! Retries of calls Dastra failed (`upstream.retries`, `retry_budget`): how
//! many may go, and when. Which calls may go again is `proxy::replay`'s.
//!
//! Only idempotent methods without a body (GET, HEAD, OPTIONS, DELETE; a PUT
//! with an empty body) are tried again, and only when Dastra answered 502,
//! 503 or 504 or was never reached: sending them twice changes nothing.
//! POST and PATCH never are, and a body is never kept to be sent again (a
//! PUT with one is tried once). Each retry is a send like any other: it
//! waits for a quota slot of its own, so a retry never breaks a window. The
//! budget is the Envoy model: every call earns `retry_budget` of a retry,
//! so a Dastra failing every call sees at most that share more calls, not a
//! storm of `retries` times the traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Retries a quiet proxy may make before calls have earned any.
const FLOOR: f64 = 3.0;
/// The first retry waits about this long; each next one twice as long.
const BACKOFF: Duration = Duration::from_millis(100);

/// Retries are counted in thousandths, so the budget is one atomic.
const MILLI: f64 = 1000.0;

/// The retries left to spend, earned by calls.
#[derive(Debug)]
pub struct RetryBudget {
    retries: u32,
    /// A call's share of a retry, and the most saved up, in thousandths.
    share: u64,
    most: u64,
    tokens: AtomicU64,
}

impl RetryBudget {
    pub fn new(retries: u32, share: f64) -> Self {
        Self {
            retries,
            share: (share * MILLI) as u64,
            // Never more saved up than a burst of `FLOOR` plus the share of 100 calls.
            most: ((FLOOR + share * 100.0) * MILLI) as u64,
            tokens: AtomicU64::new((FLOOR * MILLI) as u64),
        }
    }

    /// A new call: it earns its share of a retry (one atomic add while the
    /// budget is not full; a healthy proxy keeps it full).
    pub fn earn(&self) {
        if self.retries == 0 || self.tokens.load(Ordering::Relaxed) >= self.most {
            return;
        }
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.share).min(self.most))
            });
    }

    /// Whether the `attempt`-th retry (1-based) of a call may go; spends it.
    pub fn spend(&self, attempt: u32) -> bool {
        if attempt > self.retries {
            return false;
        }
        let one = MILLI as u64;
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(one))
            .is_ok()
    }
}

/// How long before the `attempt`-th retry: exponential, with full jitter
/// between half and all of it, so retries of many calls do not align.
pub fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1)).min(64);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
    full.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_share_of_calls_and_the_attempts_are_capped() {
        let b = RetryBudget::new(2, 0.1);
        assert!(!b.spend(3), "past `retries`");
        let mut spent = 0;
        for _ in 0..1000 {
            b.earn();
            if b.spend(1) {
                spent += 1;
            }
        }
        assert!(
            (100..=103).contains(&spent),
            "{spent} retries for 1000 calls"
        );
        let off = RetryBudget::new(0, 0.1);
        off.earn();
        assert!(!off.spend(1));
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        for attempt in 1..=3 {
            let full = BACKOFF * 2u32.pow(attempt - 1);
            let d = backoff(attempt);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
}
