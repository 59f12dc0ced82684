//! Header helpers of the request path: what Dastra is told about the caller,
//! and upstream URLs turned into ours. Pure functions, so each is tested on
//! its own. (The call's `X-Request-Id` is `request_id`'s, the quota's fields
//! `ratelimit`'s, Dastra's `Retry-After` `signals`'.)

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::access::ConnInfo;
use crate::config::Config;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers in which a client could claim where it is: believed only from a
/// trusted proxy, dropped from anyone else so they never reach Dastra.
static CLAIMS: [HeaderName; 3] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
];

/// `X-Forwarded-For` and `-Proto` for Dastra: the hops the access stage
/// parsed and believed (client first), then the peer. The raw headers the
/// caller sent are never passed on.
pub(crate) fn add_forwarding(
    h: &mut HeaderMap,
    hops: &[IpAddr],
    conn: &ConnInfo,
    trusted_peer: bool,
) {
    // One pass finds what is there: a caller almost never sends any of
    // these, and each removal by a custom name is a hash.
    let (mut forwarded, mut claims) = (false, false);
    for k in h.keys() {
        forwarded |= k == header::FORWARDED;
        claims |= !trusted_peer && CLAIMS.contains(k);
    }
    if forwarded {
        h.remove(header::FORWARDED);
    }
    if claims {
        for name in &CLAIMS {
            h.remove(name);
        }
    }
    h.insert(X_FORWARDED_FOR.clone(), forwarded_for(hops, conn));
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
}

/// The hops, then the peer: nearly always the peer alone, whose text the
/// connection made once.
fn forwarded_for(hops: &[IpAddr], conn: &ConnInfo) -> HeaderValue {
    if hops.is_empty() {
        return conn.peer_ip().clone();
    }
    let mut xff = String::with_capacity(16 * (hops.len() + 1));
    for hop in hops {
        push_ip(&mut xff, *hop);
        xff.push_str(", ");
    }
    push_ip(&mut xff, conn.peer.ip());
    HeaderValue::from_maybe_shared(bytes::Bytes::from(xff))
        .expect("addresses are valid header text")
}

/// An address as text; IPv4 (nearly every caller) without the formatting
/// machinery, which was a visible share of `add_forwarding`.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// `https://api.dastra.eu/v1/x` → `<public_url>/v1/x`; other hosts untouched.
/// The base path is only removed at a path boundary.
pub(crate) fn rewrite_location(cfg: &Config, v: &str) -> Option<HeaderValue> {
    let u = &cfg.upstream;
    let origin = u.origin();
    let head = v.get(..origin.len())?;
    if !head.eq_ignore_ascii_case(&origin) {
        return None;
    }
    let at_boundary = |r: &str| r.is_empty() || r.starts_with(['/', '?', '#']);
    let rest = &v[origin.len()..];
    if !at_boundary(rest) {
        return None;
    }
    let rest = rest
        .strip_prefix(u.base_path.as_str())
        .filter(|r| at_boundary(r))
        .unwrap_or(rest);
    HeaderValue::from_str(&format!("{}{}", cfg.server.public_url, rest)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretEnv;

    fn config(url: &str) -> Config {
        let text = format!(
            "[server]\npublic_url = \"https://proxy.example.com\"\n[upstream]\nurl = \"{url}\"\n\
             [credential]\napi_key_env = \"K\"\n"
        );
        Config::parse_with(
            &text,
            std::path::Path::new("t.toml"),
            &SecretEnv::fixed([("K", "k")]),
        )
        .unwrap()
    }

    #[test]
    fn location_rewrite_only_at_a_path_boundary() {
        let c = config("https://api.dastra.eu/api");
        let r = |v: &str| rewrite_location(&c, v).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(
            r("https://api.dastra.eu/api/v1/x").as_deref(),
            Some("https://proxy.example.com/v1/x")
        );
        assert_eq!(
            r("https://api.dastra.eu/api").as_deref(),
            Some("https://proxy.example.com")
        );
        // `/api.evil.com/x` does not start with the base path `/api` + boundary.
        assert_eq!(
            r("https://api.dastra.eu/api.evil.com/x").as_deref(),
            Some("https://proxy.example.com/api.evil.com/x")
        );
        assert_eq!(r("https://api.dastra.eu.evil.com/x"), None);
        assert_eq!(r("https://other.example/x"), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::secret::SecretEnv;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The hand-written address text is std's, for every address.
        #[test]
        fn ip_text_matches_display(v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>()) {
            for ip in [IpAddr::from(v4), IpAddr::from(v6)] {
                let mut out = String::new();
                push_ip(&mut out, ip);
                prop_assert_eq!(out, ip.to_string());
            }
        }

        /// Whatever Dastra puts in `Location`, the rewrite either leaves it
        /// alone or points at the public URL followed by a path boundary:
        /// never at a host the public URL is only a prefix of.
        #[test]
        fn location_rewrite_never_leaves_the_public_origin(
            base in prop_oneof![Just(""), Just("/api"), Just("/api/v2")],
            tail in "[ -~]{0,30}",
            after_base in any::<bool>(),
            prefix in prop_oneof![Just("https://api.dastra.eu"), Just("HTTPS://API.DASTRA.EU"), Just("https://api.dastra.eu.evil"), Just("")],
        ) {
            let text = format!(
                "[server]\npublic_url = \"https://proxy.example.com\"\n[upstream]\nurl = \"https://api.dastra.eu{base}\"\n\
                 [credential]\napi_key_env = \"K\"\n"
            );
            let cfg = Config::parse_with(&text, std::path::Path::new("t.toml"), &SecretEnv::fixed([("K", "k")])).unwrap();
            // Dastra's own paths start with the base path; make sure those come up.
            let v = if after_base { format!("{prefix}{base}{tail}") } else { format!("{prefix}{tail}") };
            if let Some(out) = rewrite_location(&cfg, &v) {
                let out = out.to_str().unwrap().to_owned();
                let rest = out.strip_prefix("https://proxy.example.com");
                prop_assert!(rest.is_some(), "{out}");
                let rest = rest.unwrap();
                prop_assert!(rest.is_empty() || rest.starts_with(['/', '?', '#']), "{v:?} -> {out:?}");
            }
        }
    }
}
