//! The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-11), one
//! Structured-Field list item per configured window, named by the window.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use super::WindowState;
use crate::config::Limit;

/// Whole seconds, rounded up: a caller that waits this long is never early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `"1m";q=500;w=60, "10m";q=10000;w=600`, from the configured windows.
pub fn policy_header(limits: &[Limit]) -> String {
    limits
        .iter()
        .map(|l| format!("\"{}\";q={};w={}", l.name, l.requests, ceil_secs(l.per)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends one `RateLimit` item, `"1m";r=0;t=17`: the one place its shape is
/// written, for the local windows and the shared (Redis) ones alike.
/// Numbers go through `itoa`, not the formatting machinery: this runs on
/// every answer, 429s included.
pub fn push_ratelimit_item(out: &mut String, name: &str, remaining: u32, frees_in: Duration) {
    let mut num = itoa::Buffer::new();
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push('"');
    out.push_str(name);
    out.push_str("\";r=");
    out.push_str(num.format(remaining));
    out.push_str(";t=");
    out.push_str(num.format(ceil_secs(frees_in)));
}

/// The `RateLimit` value last written for one window set, and the numbers it
/// says. While they hold (a storm of 429s against a full window, a quiet
/// key) the same bytes are handed out again: no text, no allocation.
#[derive(Debug, Clone, Default)]
pub struct LastValue {
    said: Vec<(u32, u64)>,
    value: Option<HeaderValue>,
}

impl LastValue {
    /// The value for `items` (name, remaining, time to a free slot), in
    /// window order; written anew only when a number changed.
    pub fn get<'a, I>(&mut self, items: I) -> HeaderValue
    where
        I: Iterator<Item = (&'a str, u32, Duration)> + Clone,
    {
        let numbers = items.clone().map(|(_, r, t)| (r, ceil_secs(t)));
        if let Some(v) = self
            .value
            .as_ref()
            .filter(|_| numbers.eq(self.said.iter().copied()))
        {
            return v.clone();
        }
        let mut out = String::with_capacity(24 * items.size_hint().0);
        self.said.clear();
        for (name, r, t) in items {
            push_ratelimit_item(&mut out, name, r, t);
            self.said.push((r, ceil_secs(t)));
        }
        // The text becomes the value's bytes as they are (no copy).
        let v = HeaderValue::from_maybe_shared(Bytes::from(out.into_bytes()))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        self.value = Some(v.clone());
        v
    }
}

/// `"1m";r=0;t=17, "10m";r=9500;t=3`; `t` is until one slot frees, margin included.
pub fn ratelimit_header(windows: &[WindowState]) -> String {
    let mut out = String::new();
    for w in windows {
        push_ratelimit_item(
            &mut out,
            &w.name,
            w.limit.saturating_sub(w.used),
            w.frees_in,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, limit: u32, secs: u64, used: u32, frees_ms: u64) -> WindowState {
        WindowState {
            sends: Vec::new(),
            name: name.into(),
            limit,
            period: Duration::from_secs(secs),
            used,
            frees_in: Duration::from_millis(frees_ms),
        }
    }

    #[test]
    fn fields_follow_the_draft_shape() {
        let w = [
            state("1m", 500, 60, 500, 16_001),
            state("10m", 10_000, 600, 500, 0),
        ];
        assert_eq!(
            policy_header(&Limit::dastra()),
            "\"1m\";q=500;w=60, \"10m\";q=10000;w=600"
        );
        assert_eq!(ratelimit_header(&w), "\"1m\";r=0;t=17, \"10m\";r=9500;t=0");
    }

    #[test]
    fn rounding_is_up_never_down() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
