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
use http::{header, HeaderMap, HeaderValue};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, ForwardedHeader, ANONYMOUS};
use forwarded::{canonical, forwarded_chain};

mod forwarded;
#[cfg(test)]
mod tests;

/// The connection a request came in on: the peer the allow-lists start from,
/// and whether it spoke TLS (for `X-Forwarded-Proto`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as a header value, made once per connection: it is
    /// the whole `X-Forwarded-For` of nearly every call.
    peer_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { peer, tls, peer_ip }
    }

    /// The peer's address as text, shared (a clone is a count, not a copy).
    pub fn peer_ip(&self) -> &HeaderValue {
        &self.peer_ip
    }
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
    /// The client's priority (0 high, 1 normal, 2 low).
    pub priority: u8,
    /// Index into `[[clients]]`; `None` when there are none.
    pub index: Option<usize>,
    /// The address the allow-lists were applied to.
    pub addr: IpAddr,
    /// The hops a trusted proxy reported from the client on (client first),
    /// as parsed; empty when the peer itself is the client. Forwarded on as
    /// `X-Forwarded-For`, never the raw header.
    pub forwarded: Vec<IpAddr>,
    /// The peer is a trusted proxy: its forwarding claims may go on to Dastra.
    pub via_trusted_proxy: bool,
}

#[derive(Debug)]
struct ClientEntry {
    name: Arc<str>,
    digest: [u8; 32],
    allow: Option<Vec<IpNet>>,
    weight: u32,
    priority: u8,
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
                    priority: c.priority,
                })
                .collect(),
            anonymous: ANONYMOUS.into(),
        }
    }

    /// Each client's name, weight and priority (0 high, 1 normal, 2 low),
    /// for `/quota`.
    pub fn tenants(&self) -> Vec<(Arc<str>, u32, u8)> {
        (self.clients.iter())
            .map(|c| (c.name.clone(), c.weight, c.priority))
            .collect()
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&canonical(ip)))
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
    /// Whether the client address (through trusted proxies) is on the
    /// allow-list, key or no key: what a browser's preflight, which carries
    /// none, is held to.
    pub fn admits_address(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> Result<(IpAddr, Vec<IpAddr>), AccessError> {
        let (addr, forwarded) = self
            .client_addr(peer, headers)?
            .ok_or(AccessError::IpNotAllowed)?;
        if !self.allow.iter().any(|n| n.contains(&addr)) {
            return Err(AccessError::IpNotAllowed);
        }
        Ok((addr, forwarded))
    }

    pub fn authorize(&self, peer: IpAddr, headers: &HeaderMap) -> Result<Identity, AccessError> {
        let (addr, forwarded) = self.admits_address(peer, headers)?;
        let via_trusted_proxy = self.trusted(peer);
        let in_list = |list: &[IpNet]| list.iter().any(|n| n.contains(&addr));
        if self.clients.is_empty() {
            return Ok(Identity {
                name: self.anonymous.clone(),
                weight: 1,
                priority: crate::admission::NORMAL,
                index: None,
                addr,
                forwarded,
                via_trusted_proxy,
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
            priority: c.priority,
            index: Some(i),
            addr,
            forwarded,
            via_trusted_proxy,
        })
    }
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
