//! Which requests the proxy takes at all: origin-form targets, or HTTP/1
//! absolute-form naming this proxy or Dastra — never `CONNECT` or another
//! host, because this is not an open proxy — and what of a request may cross
//! the hop (RFC 9110 §7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};

/// A request target the proxy will not forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("CONNECT is not supported: this is not an open proxy")]
    Connect,
    /// TRACE would echo the request back, the injected credential with it.
    #[error("TRACE is not allowed: the answer would echo the Dastra credential")]
    Trace,
    #[error("absolute-form request to another host ({0}) refused: this is not an open proxy")]
    OtherHost(String),
    #[error("the request target must start with /")]
    NotOriginForm,
    #[error("malformed request target: {0}")]
    Malformed(String),
}

/// The authorities an absolute-form target may name.
#[derive(Debug, Clone)]
pub struct Target {
    ours: Vec<String>,
}

impl Target {
    /// `public` is `server.public_url`'s authority, `upstream` Dastra's.
    pub fn new(public: Option<&str>, upstream: &str) -> Self {
        Self {
            ours: public
                .into_iter()
                .chain([upstream])
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Accepts the request's target or says why not.
    pub fn check<B>(&self, req: &Request<B>) -> Result<(), TargetError> {
        if req.method() == Method::CONNECT {
            return Err(TargetError::Connect);
        }
        if req.method() == Method::TRACE {
            return Err(TargetError::Trace);
        }
        let uri = req.uri();
        // HTTP/2 always carries `:authority`; only HTTP/1 absolute-form is a
        // forward-proxy request.
        if let Some(authority) = uri.authority().filter(|_| req.version() < Version::HTTP_2) {
            if !self
                .ours
                .iter()
                .any(|a| a.eq_ignore_ascii_case(authority.as_str()))
            {
                return Err(TargetError::OtherHost(authority.to_string()));
            }
        }
        match uri.path_and_query() {
            Some(pq) if !pq.as_str().starts_with('/') => Err(TargetError::NotOriginForm),
            _ => Ok(()),
        }
    }
}

/// The hop-by-hop headers of RFC 9110 §7.6.1 (and the legacy
/// `Proxy-Connection` / `Keep-Alive`), parsed once.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers and those `Connection` names. One pass
/// over the headers finds which are there: a request almost never carries
/// any, an answer mostly `Connection: keep-alive`, and this runs on every
/// call; removing only what is there spares a hash per absent name.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    strip(h, false);
}

/// [`strip_hop_by_hop`] for a caller's request, which in the same pass marks
/// the caller's credentials (`Authorization`, `X-API-Key`) sensitive: never
/// HPACK-indexed upstream (passthrough), never printed by a Debug of the
/// headers. One pass instead of a lookup per name (tower-http's
/// `SetSensitiveRequestHeaders` did two hashed lookups per call).
pub fn strip_request_hop_by_hop(h: &mut HeaderMap) {
    strip(h, true);
}

fn strip(h: &mut HeaderMap, mark_credentials: bool) {
    let mut present = [false; HOP_BY_HOP.len()];
    for (k, v) in h.iter_mut() {
        if mark_credentials && matches!(k.as_str(), "authorization" | "x-api-key") {
            v.set_sensitive(true);
        } else if let Some(i) = hop_by_hop_index(k) {
            present[i] = true;
        }
    }
    remove_present(h, present);
}

fn remove_present(h: &mut HeaderMap, present: [bool; HOP_BY_HOP.len()]) {
    if !present.contains(&true) {
        return;
    }
    // `Connection` is HOP_BY_HOP[0]. The names it lists that are hop-by-hop
    // anyway (`keep-alive`) need no lookup of their own, and when it lists
    // nothing else (an answer's usual `keep-alive`) nothing is copied; the
    // others are removed by name, with no `HeaderName` made for them.
    if present[0]
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| listed_others(v).next().is_some())
    {
        let listed: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
        for v in &listed {
            for n in listed_others(v) {
                h.remove(n);
            }
        }
    }
    for (n, there) in HOP_BY_HOP.iter().zip(present) {
        if there {
            h.remove(n);
        }
    }
}

/// Where `name` is in [`HOP_BY_HOP`]. One `match` on the name's text (its
/// length first, then its bytes) instead of nine `HeaderName` comparisons:
/// this runs for every header of every request and answer.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let i = match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[i], *name);
    Some(i)
}

/// The names a `Connection` value lists that are not hop-by-hop anyway
/// (`close` is one: a header literally named so goes too).
fn listed_others(v: &HeaderValue) -> impl Iterator<Item = &str> {
    // An answer's usual value, matched whole: splitting it was most of the
    // cost of removing its `Connection`.
    v.to_str()
        .ok()
        .filter(|v| !v.eq_ignore_ascii_case("keep-alive"))
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !n.is_empty()
                && !HOP_BY_HOP
                    .iter()
                    .any(|hop| n.eq_ignore_ascii_case(hop.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requests_pass_marks_the_callers_credentials_sensitive_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.append("x-api-key", HeaderValue::from_static("k1"));
        h.append("x-api-key", HeaderValue::from_static("k2"));
        h.insert("x-other", HeaderValue::from_static("o"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_request_hop_by_hop(&mut h);
        assert!(h[header::AUTHORIZATION].is_sensitive());
        assert!(h.get_all("x-api-key").iter().all(HeaderValue::is_sensitive));
        assert_eq!(h.get_all("x-api-key").iter().count(), 2);
        assert!(!h["x-other"].is_sensitive());
        assert!(!h.contains_key(header::TE));
        // An answer's pass marks nothing.
        let mut a = HeaderMap::new();
        a.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        strip_hop_by_hop(&mut a);
        assert!(!a[header::AUTHORIZATION].is_sensitive());
    }

    #[test]
    fn the_hop_by_hop_match_finds_each_listed_name_and_nothing_else() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(n), Some(i), "{n}");
        }
        for other in ["host", "x-api-key", "tes", "t", "upgrades", "keep-alive2"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(other)), None);
        }
    }

    fn req(method: Method, uri: &str, version: Version) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .version(version)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_origin_form_or_our_own_authorities() {
        let t = Target::new(Some("proxy.test"), "api.dastra.eu");
        let ok = |u, v| t.check(&req(Method::GET, u, v));
        assert_eq!(ok("/v1/x?a=1", Version::HTTP_11), Ok(()));
        assert_eq!(ok("http://proxy.test/v1/x", Version::HTTP_11), Ok(()));
        assert_eq!(ok("https://API.dastra.eu/v1/x", Version::HTTP_11), Ok(()));
        assert_eq!(
            ok("http://evil.test/v1/x", Version::HTTP_11),
            Err(TargetError::OtherHost("evil.test".into()))
        );
        // HTTP/2 always has an authority: it is not a proxy request.
        assert_eq!(ok("http://evil.test/v1/x", Version::HTTP_2), Ok(()));
        assert_eq!(
            t.check(&req(Method::CONNECT, "evil.test:443", Version::HTTP_11)),
            Err(TargetError::Connect)
        );
    }

    #[test]
    fn connection_is_the_first_hop_by_hop_name() {
        // strip_hop_by_hop reads `Connection`'s presence at index 0.
        assert_eq!(HOP_BY_HOP[0], header::CONNECTION);
    }

    #[test]
    fn connection_named_headers_go_too() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // An answer's usual `Connection: keep-alive`, a name in any case,
        // one listed twice, and a header literally named by `close`.
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive".parse().unwrap());
        h.append("connection", "X-Other, close".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("close", "1".parse().unwrap());
        h.insert("content-length", "2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["content-length"]);
    }
}
