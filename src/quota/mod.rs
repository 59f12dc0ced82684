//! Dastra's quotas as exact sliding windows.
//!
//! A token bucket with burst b lets b + N requests into some window of length
//! W; only an exact log of the last N send times per window both lets the full
//! quota through and never exceeds it. [`WindowSet`] keeps that log as one ring
//! buffer per window: a decision looks at one entry per window, so it is O(1),
//! and the oldest entry + W is exactly when the next slot frees.
//!
//! This module is pure and clock-free: callers pass the instant, so tests and
//! property tests drive it with any timeline.

mod headers;
mod window;

pub use headers::{ceil_secs, policy_header, push_ratelimit_item, ratelimit_header, LastValue};

/// Windows of `n` per `ms` milliseconds, named `"<ms>ms"`, for unit tests.
#[cfg(test)]
pub(crate) fn test_limits(spec: &[(u32, u64)]) -> Vec<crate::config::Limit> {
    spec.iter()
        .map(|(n, ms)| crate::config::Limit {
            requests: *n,
            per: std::time::Duration::from_millis(*ms),
            name: format!("{ms}ms"),
        })
        .collect()
}
pub use window::{WindowSet, WindowState};
