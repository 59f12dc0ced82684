//! What may share an answer (SPEC §9.1): which request headers an answer can
//! vary by (they are in the key), which requests never share a call, which
//! answers are never handed to another caller, and a conditional GET's
//! validator evaluated against a stored 200 (RFC 9110 §13).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::{directives, has_directive, Key, Snapshot};
use crate::credential::QuotaKey;

/// The request headers an answer may vary by and that are in every key:
/// two requests that differ in one never share an answer.
pub const VARYING: [HeaderName; 3] = [
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
];

/// Headers that make a request's answer its own: a cookie, a range, or a
/// precondition the others did not send.
const OWN: [HeaderName; 2] = [header::COOKIE, header::RANGE];
/// Preconditions a stored 200 can answer; the others always go upstream.
const VALIDATORS: [HeaderName; 2] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];
const PRECONDITIONS: [HeaderName; 3] = [
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// How a GET may share with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// May lead or join a shared call and be answered from the cache.
    Plain,
    /// Carries `If-None-Match` / `If-Modified-Since` only: never leads or
    /// joins, may be answered from a fresh stored 200 by its validator.
    Conditional,
    /// Carries a cookie, a range or another precondition: its own call.
    Own,
}

impl Request {
    pub fn of(headers: &HeaderMap) -> Self {
        scan(headers).kind
    }
}

/// What one pass over a request's headers says about sharing it: one walk
/// over the few headers a call has, comparing names (cheap for standard
/// ones), instead of a hashed lookup per header asked about.
#[derive(Debug)]
pub struct Scan<'a> {
    pub kind: Request,
    /// What the caller's `Cache-Control` (or `Pragma`) asks of the cache.
    pub directives: directives::Request,
    varying: [Option<&'a HeaderValue>; 3],
    /// A varying header came more than once (then the key joins its lines).
    repeated: bool,
}

pub fn scan(headers: &HeaderMap) -> Scan<'_> {
    let mut out = Scan {
        kind: Request::Plain,
        directives: directives::Request::default(),
        varying: [None; 3],
        repeated: false,
    };
    let mut asks = false;
    for (name, value) in headers {
        if OWN.contains(name) || PRECONDITIONS.contains(name) {
            out.kind = Request::Own;
        } else if VALIDATORS.contains(name) {
            if out.kind == Request::Plain {
                out.kind = Request::Conditional;
            }
        } else if name == header::CACHE_CONTROL || name == header::PRAGMA {
            asks = true;
        } else if let Some(i) = VARYING.iter().position(|v| v == name) {
            out.repeated |= out.varying[i].is_some();
            out.varying[i] = Some(value);
        }
    }
    if asks {
        out.directives = directives::Request::of(headers);
    }
    out
}

impl Key {
    /// The key of a GET: credential, path and query, and its varying
    /// headers, copied (the request's values borrow hyper's read buffer).
    pub fn of(quota: QuotaKey, target: &[u8], headers: &HeaderMap) -> Self {
        Self::from_scan(quota, target, &scan(headers), headers)
    }

    /// [`Key::of`] from a scan already made of `headers`.
    pub fn from_scan(quota: QuotaKey, target: &[u8], scan: &Scan<'_>, headers: &HeaderMap) -> Self {
        if !scan.repeated {
            let copy = |v: Option<&HeaderValue>| {
                v.and_then(|v| {
                    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(v.as_bytes())).ok()
                })
            };
            let mut varying = scan.varying.map(copy);
            varying[2] = varying[2].take().map(language);
            return Key {
                quota,
                target: Bytes::copy_from_slice(target),
                varying,
            };
        }
        let copy = |h: &HeaderName| {
            let mut all = headers.get_all(h).iter();
            let first = all.next()?;
            // Several lines of one header are one list (RFC 9110 §5.3).
            let mut joined = first.as_bytes().to_vec();
            for v in all {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(v.as_bytes());
            }
            HeaderValue::from_maybe_shared(Bytes::from(joined)).ok()
        };
        let mut varying = VARYING.each_ref().map(copy);
        varying[2] = varying[2].take().map(language);
        Key {
            quota,
            target: Bytes::copy_from_slice(target),
            varying,
        }
    }

    /// Bytes the key itself holds, counted in an entry's size.
    pub fn size(&self) -> u64 {
        let varying: usize = self.varying.iter().flatten().map(HeaderValue::len).sum();
        (self.quota.0.len() + self.target.len() + varying) as u64
    }
}

/// `Accept-Language` as language ranges compare (RFC 4647: in any case,
/// spaces around commas meaningless), so `en-US, fr` and `en-us,fr` are one
/// key. Most values need no change and are kept as they are.
fn language(v: HeaderValue) -> HeaderValue {
    let b = v.as_bytes();
    if !b
        .iter()
        .any(|c| c.is_ascii_uppercase() || *c == b' ' || *c == b'\t')
    {
        return v;
    }
    let fixed: Vec<u8> = b
        .iter()
        .filter(|c| **c != b' ' && **c != b'\t')
        .map(u8::to_ascii_lowercase)
        .collect();
    HeaderValue::from_bytes(&fixed).unwrap_or(v)
}

/// Whether an answer may go to a caller other than the one who asked:
/// no `Set-Cookie`, not `private`, `no-store` or `no-cache`, and a `Vary`
/// that names only headers of the key.
pub fn shareable(snap: &Snapshot) -> bool {
    // One pass over the answer's headers (see `scan`).
    snap.headers.iter().all(|(name, value)| {
        if name == header::SET_COOKIE {
            false
        } else if name == header::CACHE_CONTROL {
            !["private", "no-store", "no-cache"]
                .iter()
                .any(|d| has_directive(value, d))
        } else if name == header::VARY {
            value.to_str().is_ok_and(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .all(|n| VARYING.iter().any(|k| n.eq_ignore_ascii_case(k.as_str())))
            })
        } else {
            true
        }
    })
}

/// A conditional GET against a stored answer: `true` when the answer to it
/// is `304 Not Modified` (RFC 9110 §13.1.2: `If-None-Match` by weak
/// comparison; `If-Modified-Since` only without it, on a `Last-Modified`).
pub fn not_modified(request: &HeaderMap, stored: &Snapshot) -> bool {
    if stored.status != StatusCode::OK {
        return false;
    }
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let ours = opaque(etag);
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .any(|t| t == "*" || opaque(t) == ours);
    }
    let date = |h: &HeaderMap, n: HeaderName| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .and_then(super::freshness::parse_date)
    };
    // Without a Last-Modified, the stored answer's Date (RFC 9111 §4.3.2).
    let modified = date(&stored.headers, header::LAST_MODIFIED)
        .or_else(|| date(&stored.headers, header::DATE));
    match (date(request, header::IF_MODIFIED_SINCE), modified) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// An entity tag without its weakness marker.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// The headers a 304 carries from the stored answer (RFC 9110 §15.4.5).
pub const NOT_MODIFIED_HEADERS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];
