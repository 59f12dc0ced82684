//! Allow-lists, trusted proxies and client keys, and the parsers under them.

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

/// The admin listener's allow-list test (`server.admin_allow`): inside a
/// network, an IPv4-mapped IPv6 peer against an IPv4 rule, and nothing else.
#[test]
fn in_nets_is_membership_with_mapped_v4_as_v4() {
    let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(in_nets(&nets, ip("10.1.2.3")));
    assert!(in_nets(&nets, ip("::ffff:10.1.2.3")));
    assert!(in_nets(&nets, ip("::1")));
    assert!(!in_nets(&nets, ip("11.0.0.1")));
    assert!(!in_nets(&nets, ip("::2")));
    assert!(!in_nets(&[], ip("10.0.0.1")));
}

/// RFC 7239 §6: an obfuscated node is `_` and at least one more character.
#[test]
fn an_obfuscated_node_needs_a_name_after_its_underscore() {
    use super::forwarded::parse_node;
    assert_eq!(parse_node("_hidden"), Some(None));
    assert_eq!(parse_node("_a:_port"), Some(None));
    assert_eq!(parse_node("unknown"), Some(None));
    assert_eq!(parse_node("_"), None);
    assert_eq!(parse_node("_:80"), None);
}

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
