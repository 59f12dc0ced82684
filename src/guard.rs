//! Each client's own rate guard (`clients.rate` / `burst`), so one noisy app
//! cannot take the whole Dastra quota before the others get a turn.
//!
//! This is governor's GCRA, the engine of tower-governor. tower-governor's
//! layer applies one quota to every key; here each client has its own rate,
//! so the guard keeps one governor limiter per client instead.

use std::num::NonZeroU32;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::access::Identity;
use crate::config::Config;
use crate::error::ProxyError;

/// One optional limiter per `[[clients]]` entry, by index.
#[derive(Debug)]
pub struct Guard {
    limiters: Vec<Option<DefaultDirectRateLimiter>>,
    clock: DefaultClock,
}

impl Guard {
    pub fn new(cfg: &Config) -> Self {
        let limiters = cfg
            .clients
            .iter()
            .map(|c| {
                c.rate.map(|r| {
                    let per_cell = r.period / r.count;
                    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
                    let quota = Quota::with_period(per_cell)
                        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                        .allow_burst(burst);
                    RateLimiter::direct(quota)
                })
            })
            .collect();
        Self {
            limiters,
            clock: DefaultClock::default(),
        }
    }

    /// Refuses with `client_rate` and the time until the guard lets one through.
    pub fn check(&self, id: &Identity) -> Result<(), ProxyError> {
        let Some(Some(limiter)) = id
            .index
            .map(|i| self.limiters.get(i).and_then(Option::as_ref))
        else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| ProxyError::ClientRate {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}
