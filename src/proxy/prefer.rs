//! What a caller may ask for itself (SPEC §9.3): `Prefer: wait=N` (RFC 7240)
//! caps its own wait for quota. It can only shorten what the config allows.
//! Read only for a call that may wait (a call answered at once, admitted or
//! refused, is not told: the preference changed nothing for it).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The `wait` preference in seconds: the first one named (RFC 7240 §2: a
/// repeated preference counts once), across every `Prefer` header. A value
/// that is not delta-seconds is ignored, as an unknown preference is.
pub(crate) fn wait(headers: &HeaderMap) -> Option<u64> {
    let mut all = headers
        .get_all(http::header::HeaderName::from_static("prefer"))
        .iter();
    all.find_map(|v| {
        let v = v.to_str().ok()?;
        v.split(',').find_map(|pref| {
            let token = pref.split(';').next()?.trim();
            let (name, value) = token.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let value = value.trim().trim_matches('"');
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Some(None);
            }
            Some(Some(value.parse::<u64>().unwrap_or(u64::MAX)))
        })
    })
    .flatten()
}

/// The wait a call is held to: the caller's, capped by `max_wait`.
pub(crate) fn capped(asked: u64, max_wait: Duration) -> Duration {
    Duration::from_secs(asked).min(max_wait)
}

/// `Preference-Applied: wait=N`, N the whole seconds actually applied.
pub(crate) fn applied(wait: Duration) -> HeaderValue {
    let mut b = itoa::Buffer::new();
    let n = b.format(wait.as_secs());
    HeaderValue::from_str(&format!("wait={n}")).expect("digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn the_first_wait_named_counts() {
        assert_eq!(wait(&h(&["wait=5"])), Some(5));
        assert_eq!(wait(&h(&["respond-async, Wait=10"])), Some(10));
        assert_eq!(wait(&h(&["return=minimal; x=1", "wait = \"7\""])), Some(7));
        assert_eq!(wait(&h(&["wait=3", "wait=9"])), Some(3));
        assert_eq!(wait(&h(&["wait=3, wait=9"])), Some(3));
        assert_eq!(wait(&h(&["handling=lenient"])), None);
        assert_eq!(wait(&h(&[])), None);
    }

    #[test]
    fn a_wait_that_is_not_seconds_is_ignored() {
        for bad in ["wait=-1", "wait=1.5", "wait=", "wait=soon"] {
            assert_eq!(wait(&h(&[bad])), None, "{bad}");
        }
        assert_eq!(
            wait(&h(&["wait=99999999999999999999999"])),
            Some(u64::MAX),
            "huge: capped by max_wait later"
        );
    }

    #[test]
    fn the_wait_applied_never_exceeds_max_wait() {
        let max = Duration::from_secs(30);
        assert_eq!(capped(5, max), Duration::from_secs(5));
        assert_eq!(capped(120, max), max);
        assert_eq!(capped(u64::MAX, max), max);
        assert_eq!(applied(Duration::from_millis(30_500)), "wait=30");
    }
}
