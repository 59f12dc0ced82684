//! Each client's own rate guard (`clients.rate` / `burst`), so one noisy app
//! cannot take the whole Dastra quota before the others get a turn.
//!
//! This is governor's GCRA, the engine of tower-governor. tower-governor's
//! layer applies one quota to every key; here each client has its own rate,
//! so the guard keeps one governor limiter per client instead. The clock is a
//! parameter so the unit tests run on governor's `FakeRelativeClock`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::access::Identity;
use crate::config::{ClientConfig, ClientRate};

/// The client's own `rate`/`burst` is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this client's own rate limit is exceeded; retry after {} s", crate::quota::ceil_secs(*retry_after))]
pub struct GuardError {
    /// Until the guard lets the next call through.
    pub retry_after: Duration,
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One optional limiter per `[[clients]]` entry, by index.
#[derive(Debug)]
pub struct Guard<C: Clock = DefaultClock> {
    limiters: Vec<Option<Limiter<C>>>,
    clock: C,
}

impl Guard {
    pub fn new(clients: &[ClientConfig]) -> Self {
        Self::with_clock(clients, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Guard<C> {
    /// The guard on `clock`; every limiter reads the same one.
    pub fn with_clock(clients: &[ClientConfig], clock: C) -> Self {
        let limiters = clients
            .iter()
            .map(|c| {
                c.rate
                    .map(|r| RateLimiter::direct_with_clock(quota(r), clock.clone()))
            })
            .collect();
        Self { limiters, clock }
    }

    /// Refuses with the time until the guard lets one through.
    pub fn check(&self, id: &Identity) -> Result<(), GuardError> {
        let Some(Some(limiter)) = id
            .index
            .map(|i| self.limiters.get(i).and_then(Option::as_ref))
        else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| GuardError {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}

fn quota(r: ClientRate) -> Quota {
    let per_cell = r.period / r.count;
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(per_cell)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn client(rate: Option<ClientRate>) -> ClientConfig {
        ClientConfig {
            name: "c".into(),
            key_sha256: [0; 32],
            allow: None,
            weight: 1,
            rate,
            credential: None,
            limits: Vec::new(),
            dry_run: false,
            priority: 1,
            reserve: 0.0,
        }
    }

    fn id(index: Option<usize>) -> Identity {
        Identity {
            name: "c".into(),
            weight: 1,
            priority: 1,
            index,
            addr: "127.0.0.1".parse().unwrap(),
            forwarded: Vec::new(),
            via_trusted_proxy: false,
        }
    }

    #[test]
    fn burst_then_one_per_period_with_exact_waits() {
        let clock = FakeRelativeClock::default();
        let rate = ClientRate {
            count: 2,
            period: Duration::from_secs(1),
            burst: 3,
        };
        let g = Guard::with_clock(&[client(Some(rate)), client(None)], clock.clone());
        for _ in 0..3 {
            g.check(&id(Some(0))).unwrap();
        }
        let e = g.check(&id(Some(0))).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_millis(500));
        clock.advance(Duration::from_millis(499));
        assert!(g.check(&id(Some(0))).is_err());
        clock.advance(Duration::from_millis(1));
        g.check(&id(Some(0))).unwrap();
        assert!(g.check(&id(Some(0))).is_err());
        // A client without a rate, and the anonymous caller, are never limited.
        for _ in 0..100 {
            g.check(&id(Some(1))).unwrap();
            g.check(&id(None)).unwrap();
        }
    }
}
