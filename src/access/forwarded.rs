//! Forwarding headers as a trusted proxy writes them: `X-Forwarded-For` or
//! RFC 7239 `Forwarded`, parsed into hops that are addresses or unknown.

use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderMap};

use super::AccessError;
use crate::config::ForwardedHeader;

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`) are matched as IPv4.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
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
