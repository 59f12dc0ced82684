//! What Dastra's own rate-limit headers say about its quota (`upstream.adapt`).
//!
//! Dastra counts per key, and nothing stops the same key from being used
//! outside this proxy; then only Dastra's headers tell. They can only make
//! the proxy more careful: "R left until T" caps the sends before T at R (or
//! holds them all until T when R is 0); they never loosen a window. Dastra's
//! exact headers are not documented, so the common conventions are read:
//! IETF `RateLimit` (`"name";r=R;t=T`, draft 10 and later), the older
//! `RateLimit-Remaining` / `RateLimit-Reset`, and `X-RateLimit-Remaining` /
//! `X-RateLimit-Reset` (seconds, or a Unix time).

use std::time::Duration;

use http::{HeaderMap, HeaderName};

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// (family, remaining, reset) of the two header pairs.
const PAIRS: [(&str, HeaderName, HeaderName); 2] = [
    (
        "ratelimit",
        HeaderName::from_static("ratelimit-remaining"),
        HeaderName::from_static("ratelimit-reset"),
    ),
    (
        "x-ratelimit",
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderName::from_static("x-ratelimit-reset"),
    ),
];

/// The tightest "R left for T" one answer names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    /// The window's name (the IETF item's, or the header family's).
    pub window: String,
    pub remaining: u32,
    pub reset: Duration,
}

/// A reset above this is a Unix time, not a number of seconds (2001-09-09).
const UNIX_TIME: u64 = 1_000_000_000;

/// The tightest advice in `h`; `now_unix` turns a Unix-time reset into a
/// duration (read only when one is).
pub fn read(h: &HeaderMap, now_unix: impl Fn() -> u64) -> Option<Advice> {
    // Most answers carry none: one pass over the few names, no hashing.
    let named = |k: &HeaderName| {
        let k = k.as_str().as_bytes();
        k.starts_with(b"ratelimit") || k.starts_with(b"x-ratelimit")
    };
    if !h.keys().any(named) {
        return None;
    }
    let mut best: Option<Advice> = None;
    let mut offer = |a: Advice| {
        if best.as_ref().is_none_or(|b| {
            (a.remaining, std::cmp::Reverse(a.reset)) < (b.remaining, std::cmp::Reverse(b.reset))
        }) {
            best = Some(a);
        }
    };
    for v in h.get_all(RATELIMIT) {
        let Ok(text) = v.to_str() else { continue };
        for item in text.split(',') {
            if let Some(a) = ietf_item(item) {
                offer(a);
            }
        }
    }
    for (family, remaining, reset) in &PAIRS {
        let number =
            |name: &HeaderName| -> Option<u64> { h.get(name)?.to_str().ok()?.trim().parse().ok() };
        let (Some(r), Some(t)) = (number(remaining), number(reset)) else {
            continue;
        };
        let reset = if t > UNIX_TIME {
            t.saturating_sub(now_unix())
        } else {
            t
        };
        offer(Advice {
            window: (*family).to_owned(),
            remaining: u32::try_from(r).unwrap_or(u32::MAX),
            reset: Duration::from_secs(reset),
        });
    }
    best
}

/// One `"name";r=R;t=T` item; `None` without both numbers.
fn ietf_item(item: &str) -> Option<Advice> {
    let mut parts = item.trim().split(';');
    let name = parts.next()?.trim().trim_matches('"').to_owned();
    let (mut r, mut t) = (None, None);
    for p in parts {
        match p.trim().split_once('=') {
            Some(("r", v)) => r = v.trim().parse::<u64>().ok(),
            Some(("t", v)) => t = v.trim().parse::<u64>().ok(),
            _ => {}
        }
    }
    Some(Advice {
        window: if name.is_empty() {
            "ratelimit".into()
        } else {
            name
        },
        remaining: u32::try_from(r?).unwrap_or(u32::MAX),
        reset: Duration::from_secs(t?),
    })
}

/// Logs, once per process, the rate-limit headers of the first answer,
/// and of the first that carried any: what Dastra actually sends is not
/// documented, and operators can tell us. `advised`: `read` found advice in
/// this answer. (Hot path: two loads once both are logged.)
pub fn log_once(h: &HeaderMap, advised: bool) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    static FIRST: AtomicBool = AtomicBool::new(false);
    static FIRST_ADVISED: AtomicBool = AtomicBool::new(false);
    if !FIRST.load(Relaxed) && !FIRST.swap(true, Relaxed) {
        tracing::info!(headers = %describe(h), "rate-limit headers of Dastra's first answer");
    }
    if advised && !FIRST_ADVISED.load(Relaxed) && !FIRST_ADVISED.swap(true, Relaxed) {
        tracing::info!(headers = %describe(h), "rate-limit headers of Dastra's first answer that carried any");
    }
}

/// The rate-limit headers an answer carried, as one line for the log that
/// tells operators what Dastra sends.
pub fn describe(h: &HeaderMap) -> String {
    let mut out: Vec<String> = h
        .iter()
        .filter(|(k, _)| k.as_str().contains("ratelimit") || k.as_str() == "retry-after")
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("<binary>")))
        .collect();
    out.sort();
    if out.is_empty() {
        "none".into()
    } else {
        out.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn advice(window: &str, remaining: u32, reset: u64) -> Option<Advice> {
        Some(Advice {
            window: window.into(),
            remaining,
            reset: Duration::from_secs(reset),
        })
    }

    #[test]
    fn each_convention_is_read_and_the_tightest_wins() {
        let now = 1_800_000_000;
        assert_eq!(read(&headers(&[]), || now), None);
        assert_eq!(
            read(
                &headers(&[("ratelimit", "\"1m\";r=40;t=12, \"10m\";r=3;t=300")]),
                || now
            ),
            advice("10m", 3, 300)
        );
        assert_eq!(
            read(
                &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]),
                || now
            ),
            advice("x-ratelimit", 0, 5)
        );
        assert_eq!(
            read(
                &headers(&[
                    ("x-ratelimit-remaining", "7"),
                    ("x-ratelimit-reset", "1800000042")
                ]),
                || now
            ),
            advice("x-ratelimit", 7, 42),
            "a reset above 10^9 is a Unix time"
        );
        assert_eq!(
            read(
                &headers(&[("ratelimit-remaining", "9"), ("ratelimit-reset", "30")]),
                || now
            ),
            advice("ratelimit", 9, 30)
        );
        assert_eq!(
            read(
                &headers(&[
                    ("ratelimit", "\"1m\";r=5;t=10"),
                    ("x-ratelimit-remaining", "5"),
                    ("x-ratelimit-reset", "60"),
                ]),
                || now
            ),
            advice("x-ratelimit", 5, 60),
            "of two with as much left, the longer reset is tighter"
        );
    }

    #[test]
    fn half_said_or_malformed_headers_teach_nothing() {
        let now = 1_800_000_000;
        for h in [
            headers(&[("x-ratelimit-remaining", "3")]),
            headers(&[("x-ratelimit-remaining", "-1"), ("x-ratelimit-reset", "5")]),
            headers(&[("ratelimit", "\"1m\";r=4")]),
            headers(&[("ratelimit", "garbage")]),
        ] {
            assert_eq!(read(&h, || now), None, "{h:?}");
        }
        assert_eq!(describe(&headers(&[("content-type", "x")])), "none");
        assert_eq!(
            describe(&headers(&[
                ("x-ratelimit-remaining", "3"),
                ("retry-after", "2")
            ])),
            "retry-after: 2; x-ratelimit-remaining: 3"
        );
    }
}
