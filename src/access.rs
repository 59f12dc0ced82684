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

use crate::config::{Config, ANONYMOUS};

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
    clients: Vec<ClientEntry>,
    anonymous: Arc<str>,
}

impl Access {
    pub fn new(cfg: &Config) -> Self {
        Self {
            allow: cfg.access.allow.clone(),
            trusted: cfg.access.trusted_proxies.clone(),
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

    /// The address the allow-lists apply to.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, AccessError> {
        let peer = canonical(peer);
        if !self.trusted(peer) {
            return Ok(peer);
        }
        let chain = forwarded_chain(headers)?;
        Ok(chain
            .into_iter()
            .rev()
            .find(|ip| !self.trusted(*ip))
            .unwrap_or(peer))
    }

    /// Applies the allow-list and the client keys; on success says who called.
    pub fn authorize(&self, peer: IpAddr, headers: &HeaderMap) -> Result<Identity, AccessError> {
        let addr = self.client_addr(peer, headers)?;
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

/// The addresses of `X-Forwarded-For`, or else of `Forwarded`'s `for=`, in order.
fn forwarded_chain(headers: &HeaderMap) -> Result<Vec<IpAddr>, AccessError> {
    let bad = || AccessError::BadForwarded;
    let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    let mut out = Vec::new();
    if !xff.is_empty() {
        for v in xff {
            for item in v.to_str().map_err(|_| bad())?.split(',') {
                out.push(parse_node(item.trim()).ok_or_else(bad)?);
            }
        }
        return Ok(out);
    }
    for v in headers.get_all(header::FORWARDED) {
        for element in v.to_str().map_err(|_| bad())?.split(',') {
            for pair in element.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=') {
                    if k.trim().eq_ignore_ascii_case("for") {
                        out.push(parse_node(val.trim().trim_matches('"')).ok_or_else(bad)?);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(canonical)
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
        Access {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            trusted: trusted.iter().map(|s| s.parse().unwrap()).collect(),
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

    #[test]
    fn forwarded_headers_of_an_untrusted_peer_are_ignored() {
        let a = access(&["10.0.0.0/8"], &[]);
        let h = headers(&[("x-forwarded-for", "10.1.1.1")]);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(a.client_addr(peer, &h).unwrap(), peer);
        assert!(matches!(
            a.authorize(peer, &h),
            Err(AccessError::IpNotAllowed)
        ));
    }

    #[test]
    fn rightmost_untrusted_hop_through_trusted_proxies() {
        let a = access(&["10.0.0.0/8"], &["192.0.2.0/24"]);
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 203.0.113.5, 192.0.2.9")]);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            a.client_addr(peer, &h).unwrap(),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[(
            "forwarded",
            "for=10.2.3.4;proto=https, for=\"[2001:db8::1]:443\"",
        )]);
        assert_eq!(
            a.client_addr(peer, &h).unwrap(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert!(matches!(
            a.client_addr(peer, &h),
            Err(AccessError::BadForwarded)
        ));
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
