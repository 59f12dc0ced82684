//! What a caller may ask for itself (SPEC §9.3): `Prefer: wait=N` (RFC 7240)
//! caps its own wait for quota, `Priority: u=5..7` (RFC 9218) lowers its
//! call to the low priority. It can only ask for less than the config allows.
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

/// The priority a call waits at: its client's (0 high, 1 normal, 2 low),
/// lowered to low when the caller's `Priority` urgency is 5, 6 or 7 (RFC
/// 9218 §4.1: 0 most urgent, 3 the default, 7 background). A more urgent
/// one is ignored: nothing a caller sends raises its priority. The last
/// `u` of the last `Priority` header counts (a Dictionary's last value
/// wins, RFC 8941 §3.2).
pub(crate) fn priority(headers: &HeaderMap, client: u8) -> u8 {
    let urgency = (headers.get_all(HeaderName::from_static("priority")).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|member| {
            let (key, value) = member.split(';').next()?.trim().split_once('=')?;
            (key.trim() == "u").then(|| value.trim().parse::<u8>().ok())?
        })
        .next_back();
    match urgency {
        Some(5..=7) => client.max(2),
        _ => client,
    }
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

    fn prio(values: &[&str], client: u8) -> u8 {
        let mut m = HeaderMap::new();
        for v in values {
            m.append("priority", HeaderValue::from_str(v).unwrap());
        }
        priority(&m, client)
    }

    /// Urgency 5 to 7 lowers a call to low; nothing raises one; the last
    /// `u` counts; anything malformed changes nothing.
    #[test]
    fn priority_urgency_only_lowers() {
        assert_eq!(prio(&[], 1), 1);
        assert_eq!(prio(&["u=5"], 1), 2);
        assert_eq!(prio(&["u=7, i"], 0), 2);
        assert_eq!(prio(&["i, u=6"], 1), 2);
        assert_eq!(prio(&["u=0"], 2), 2, "never raised");
        assert_eq!(prio(&["u=4"], 1), 1);
        assert_eq!(prio(&["u=3"], 0), 0);
        assert_eq!(prio(&["u=6", "u=1"], 1), 1, "the last one counts");
        assert_eq!(prio(&["u=1, u=7"], 1), 2);
        assert_eq!(prio(&["u=x", "u", "u=-1", "u=99"], 1), 1);
        assert_eq!(prio(&["urgency=7"], 1), 1);
    }
}
