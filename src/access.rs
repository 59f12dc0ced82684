//! Who may use the proxy: the IP allow-list Dastra does not apply to its API,
//! and the apps' own keys.
//!
//! The client address is the peer, unless the peer is a trusted proxy: then it
//! is the rightmost `X-Forwarded-For` / `Forwarded` entry that is not itself
//! trusted. An untrusted peer's forwarding headers are never read, so they
//! cannot be used to spoof an allowed address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use http::{header, HeaderMap};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, ForwardedHeader, ANONYMOUS};

/// The connection a request came in on: the peer the allow-lists start from,
/// and whether it spoke TLS (for `X-Forwarded-Proto`).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Why a caller may not use the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("the client address is not in the allow-list")]
    IpNotAllowed,
    #[error("a valid client key is required (X-API-Key, Authorization: Bearer or Basic)")]
    Unauthenticated,
    #[error("malformed X-Forwarded-For or Forwarded header")]
    BadForwarded,
    #[error("this address may not use the admin listener (server.admin_allow)")]
    AdminNotAllowed,
}

/// Whether `ip` is in `nets`; IPv4-mapped IPv6 addresses match IPv4 rules.
pub fn in_nets(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// An authenticated (or anonymous) caller.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: Arc<str>,
    pub weight: u32,
    /// Index into `[[clients]]`; `None` when there are none.
    pub index: Option<usize>,
    /// The address the allow-lists were applied to.
    pub addr: IpAddr,
    /// The hops a trusted proxy reported from the client on (client first),
    /// as parsed; empty when the peer itself is the client. Forwarded on as
    /// `X-Forwarded-For`, never the raw header.
    pub forwarded: Vec<IpAddr>,
}

#[derive(Debug)]
struct ClientEntry {
    name: Arc<str>,
    digest: [u8; 32],
    allow: Option<Vec<IpNet>>,
    weight: u32,
}

/// The access rules of one config generation.
#[derive(Debug)]
pub struct Access {
    allow: Vec<IpNet>,
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    clients: Vec<ClientEntry>,
    anonymous: Arc<str>,
}

impl Access {
    pub fn new(cfg: &Config) -> Self {
        Self {
            allow: cfg.access.allow.clone(),
            trusted: cfg.access.trusted_proxies.clone(),
            header: cfg.access.forwarded_header,
            clients: cfg
                .clients
                .iter()
                .map(|c| ClientEntry {
                    name: c.name.as_str().into(),
                    digest: c.key_sha256,
                    allow: c.allow.clone(),
                    weight: c.weight,
                })
                .collect(),
            anonymous: ANONYMOUS.into(),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&canonical(ip)))
    }

    /// Whether forwarding headers from this peer are believed.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted(peer)
    }

    /// The address the allow-lists apply to, and the hops from it on; `None`
    /// when a trusted proxy says the client is `unknown` or obfuscated.
    pub fn client_addr(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Option<(IpAddr, Vec<IpAddr>)>, AccessError> {
        let peer = canonical(peer);
        if !self.trusted(peer) {
            return Ok(Some((peer, Vec::new())));
        }
        let chain = forwarded_chain(headers, self.header)?;
        // The rightmost hop no trusted proxy vouches for is the client; an
        // unknown hop cannot be vouched for, so the client is unknown.
        let mut hops = Vec::new();
        for node in chain.into_iter().rev() {
            match node {
                Some(ip) if self.trusted(ip) => hops.push(ip),
                Some(ip) => {
                    hops.push(ip);
                    hops.reverse();
                    return Ok(Some((ip, hops)));
                }
                None => return Ok(None),
            }
        }
        hops.reverse();
        Ok(Some((peer, hops)))
    }

    /// Applies the allow-list and the client keys; on success says who called.
    pub fn authorize(&self, peer: IpAddr, headers: &HeaderMap) -> Result<Identity, AccessError> {
        let (addr, forwarded) = self
            .client_addr(peer, headers)?
            .ok_or(AccessError::IpNotAllowed)?;
        let in_list = |list: &[IpNet]| list.iter().any(|n| n.contains(&addr));
        if !in_list(&self.allow) {
            return Err(AccessError::IpNotAllowed);
        }
        if self.clients.is_empty() {
            return Ok(Identity {
                name: self.anonymous.clone(),
                weight: 1,
                index: None,
                addr,
                forwarded,
            });
        }
        let key = presented_key(headers).ok_or(AccessError::Unauthenticated)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (i, c) in self.clients.iter().enumerate() {
            if bool::from(c.digest.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        let i = found.ok_or(AccessError::Unauthenticated)?;
        let c = &self.clients[i];
        if c.allow.as_deref().is_some_and(|list| !in_list(list)) {
            return Err(AccessError::IpNotAllowed);
        }
        Ok(Identity {
            name: c.name.clone(),
            weight: c.weight,
            index: Some(i),
            addr,
            forwarded,
        })
    }
}

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`) are matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The hops of the one header believed, in order: an address, or `None` for
/// an `unknown` or obfuscated node (RFC 7239 §6). Anything else is malformed.
pub(crate) fn forwarded_chain(
    headers: &HeaderMap,
    which: ForwardedHeader,
) -> Result<Vec<Option<IpAddr>>, AccessError> {
    let bad = || AccessError::BadForwarded;
    let mut out = Vec::new();
    match which {
        ForwardedHeader::XForwardedFor => {
            for v in headers.get_all("x-forwarded-for") {
                for item in v.to_str().map_err(|_| bad())?.split(',') {
                    out.push(parse_node(item.trim()).ok_or_else(bad)?);
                }
            }
        }
        ForwardedHeader::Forwarded => {
            for v in headers.get_all(header::FORWARDED) {
                for element in v.to_str().map_err(|_| bad())?.split(',') {
                    for pair in element.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=') {
                            if k.trim().eq_ignore_ascii_case("for") {
                                let node = val.trim().trim_matches('"');
                                out.push(parse_node(node).ok_or_else(bad)?);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`; `unknown` and
/// `_obfuscated` identifiers (with or without a port) are `Some(None)`.
pub(crate) fn parse_node(s: &str) -> Option<Option<IpAddr>> {
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok());
    if let Some(ip) = ip {
        return Some(Some(canonical(ip)));
    }
    let name = s.split_once(':').map_or(s, |(n, port)| {
        if port.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            n
        } else {
            s
        }
    });
    let obfuscated = name.len() > 1
        && name.starts_with('_')
        && name[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    (name.eq_ignore_ascii_case("unknown") || obfuscated).then_some(None)
}

/// The key a client sent: `X-API-Key`, `Authorization: Bearer`, or the
/// password of `Authorization: Basic` — what existing Dastra clients send.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-api-key") {
        return v
            .to_str()
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = auth.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned()).filter(|s| !s.is_empty());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned()).filter(|s| !s.is_empty());
    }
    None
}

/// SHA-256 hex of a client key, as `clients.key_sha256` holds it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn access(allow: &[&str], trusted: &[&str]) -> Access {
        access_with(allow, trusted, ForwardedHeader::XForwardedFor)
    }

    fn access_with(allow: &[&str], trusted: &[&str], header: ForwardedHeader) -> Access {
        Access {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            trusted: trusted.iter().map(|s| s.parse().unwrap()).collect(),
            header,
            clients: vec![],
            anonymous: ANONYMOUS.into(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_of_an_untrusted_peer_are_ignored() {
        let a = access(&["10.0.0.0/8"], &[]);
        let h = headers(&[("x-forwarded-for", "10.1.1.1")]);
        let peer = ip("192.0.2.7");
        assert_eq!(a.client_addr(peer, &h).unwrap(), Some((peer, vec![])));
        assert!(matches!(
            a.authorize(peer, &h),
            Err(AccessError::IpNotAllowed)
        ));
    }

    #[test]
    fn rightmost_untrusted_hop_through_trusted_proxies() {
        let a = access(&["10.0.0.0/8"], &["192.0.2.0/24"]);
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 203.0.113.5, 192.0.2.9")]);
        let peer = ip("192.0.2.1");
        assert_eq!(
            a.client_addr(peer, &h).unwrap(),
            Some((ip("203.0.113.5"), vec![ip("203.0.113.5"), ip("192.0.2.9")])),
            "the client and the trusted hops after it; the spoofable left part is dropped"
        );
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert!(matches!(
            a.client_addr(peer, &h),
            Err(AccessError::BadForwarded)
        ));
    }

    #[test]
    fn only_the_configured_header_is_believed() {
        let peer = ip("192.0.2.1");
        let h = headers(&[
            ("x-forwarded-for", "10.6.6.6"),
            (
                "forwarded",
                "for=203.0.113.9;proto=https, for=\"[2001:db8::1]:443\"",
            ),
        ]);
        let xff = access_with(
            &["10.0.0.0/8"],
            &["192.0.2.0/24"],
            ForwardedHeader::XForwardedFor,
        );
        assert_eq!(
            xff.client_addr(peer, &h).unwrap().unwrap().0,
            ip("10.6.6.6")
        );
        let fwd = access_with(
            &["10.0.0.0/8"],
            &["192.0.2.0/24"],
            ForwardedHeader::Forwarded,
        );
        assert_eq!(
            fwd.client_addr(peer, &h).unwrap().unwrap().0,
            ip("2001:db8::1")
        );
        // Behind a proxy that writes only `Forwarded`, an XFF the client sent
        // is never read.
        let only_xff = headers(&[("x-forwarded-for", "10.6.6.6")]);
        assert_eq!(fwd.client_addr(peer, &only_xff).unwrap().unwrap().0, peer);
    }

    #[test]
    fn unknown_and_obfuscated_clients_are_refused_not_malformed() {
        let a = access_with(
            &["0.0.0.0/0"],
            &["192.0.2.0/24"],
            ForwardedHeader::Forwarded,
        );
        let peer = ip("192.0.2.1");
        for v in [
            "for=unknown",
            "for=_hidden",
            "for=\"_gazonk:_a1\"",
            "for=UNKNOWN;proto=http",
        ] {
            let h = headers(&[("forwarded", v)]);
            assert_eq!(a.client_addr(peer, &h).unwrap(), None, "{v}");
            assert!(
                matches!(a.authorize(peer, &h), Err(AccessError::IpNotAllowed)),
                "{v}"
            );
        }
        // Unknown left of a known client is the client's own claim: ignored.
        let h = headers(&[("forwarded", "for=unknown, for=10.1.2.3")]);
        assert_eq!(a.client_addr(peer, &h).unwrap().unwrap().0, ip("10.1.2.3"));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_rules() {
        let a = access(&["127.0.0.0/8"], &[]);
        let peer: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(a.authorize(peer, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn keys_from_each_header() {
        let basic = base64::engine::general_purpose::STANDARD.encode("anything:k3y");
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "k3y")])).as_deref(),
            Some("k3y")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer k3y")])).as_deref(),
            Some("k3y")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", &format!("Basic {basic}"))])).as_deref(),
            Some("k3y")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Digest x")])),
            None
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    /// Tokens a forwarding header may hold, valid or not.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]:443")),
            any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
            (any::<std::net::Ipv4Addr>(), any::<u16>()).prop_map(|(ip, p)| format!("{ip}:{p}")),
            Just("unknown".to_owned()),
            "_[a-zA-Z0-9._-]{1,8}",
            "[ -~]{0,12}",
        ]
    }

    /// Every address a header can produce, parsed independently with std.
    fn addresses_in(text: &str) -> Vec<IpAddr> {
        text.split(|c: char| ",;=\" \t".contains(c))
            .filter_map(|t| {
                let t = t.trim_matches(|c| c == '[' || c == ']');
                t.parse::<IpAddr>()
                    .ok()
                    .or_else(|| t.parse::<SocketAddr>().ok().map(|a| a.ip()))
                    .or_else(|| {
                        t.rsplit_once(':').and_then(|(h, _)| {
                            h.trim_matches(|c| c == '[' || c == ']').parse().ok()
                        })
                    })
            })
            .map(canonical)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn forwarding_parsers_never_panic_nor_invent_addresses(
            tokens in prop::collection::vec(token(), 0..6),
            forwarded in any::<bool>(),
        ) {
            let text = if forwarded {
                tokens.iter().map(|t| format!("for=\"{t}\";proto=https")).collect::<Vec<_>>().join(", ")
            } else {
                tokens.join(", ")
            };
            let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
            let mut h = HeaderMap::new();
            let which = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
            h.insert(if forwarded { "forwarded" } else { "x-forwarded-for" }, value);
            let known = addresses_in(&text);
            if let Ok(chain) = forwarded_chain(&h, which) {
                for ip in chain.into_iter().flatten() {
                    prop_assert!(known.contains(&ip), "{ip} is not in {text:?}");
                }
            }
            let a = Access {
                allow: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                trusted: vec!["127.0.0.0/8".parse().unwrap()],
                header: which,
                clients: vec![],
                anonymous: ANONYMOUS.into(),
            };
            let peer: IpAddr = "127.0.0.1".parse().unwrap();
            if let Ok(Some((ip, hops))) = a.client_addr(peer, &h) {
                prop_assert!(ip == peer || known.contains(&ip));
                for hop in hops {
                    prop_assert!(known.contains(&hop));
                }
            }
        }

        #[test]
        fn key_extraction_never_panics_and_only_returns_what_was_sent(
            header in prop_oneof![Just("x-api-key"), Just("authorization")],
            scheme in prop_oneof![Just("Bearer "), Just("Basic "), Just("bearer  "), Just("")],
            raw in "[ -~]{0,40}",
            basic_user in "[a-z]{0,5}",
            basic in any::<bool>(),
        ) {
            let value = if basic && scheme.trim().eq_ignore_ascii_case("basic") {
                format!("{scheme}{}", base64::engine::general_purpose::STANDARD.encode(format!("{basic_user}:{raw}")))
            } else {
                format!("{scheme}{raw}")
            };
            let Ok(v) = HeaderValue::from_str(&value) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(header, v);
            if let Some(k) = presented_key(&h) {
                prop_assert!(!k.is_empty());
                prop_assert!(value.contains(&k) || raw.contains(&k), "{k:?} from {value:?}");
            }
        }
    }
}
