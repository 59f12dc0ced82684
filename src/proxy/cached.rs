//! Answers made from stored entries (RFC 9111 §4): a stored answer for one
//! caller with its `Age`, a `304` for a caller holding the validator, the
//! stored answer refreshed by Dastra's `304` (§4.3.4), the conditional
//! request that asks for one, and `Cache-Status` (RFC 9211) on each.

use std::sync::Arc;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use tokio::time::Instant;

use crate::cache::{Snapshot, Stored, NOT_MODIFIED_HEADERS};

pub(super) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a call went upstream, as `Cache-Status` says it (static strings:
/// no formatting per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fwd {
    /// Not in the cache (or no rule for it).
    Miss,
    /// The caller asked for a validated answer (`no-cache`, `max-age`…).
    Request,
    /// The stored answer was stale (or stored with `no-cache`).
    Stale,
}

impl Fwd {
    pub(super) fn status(self, stored: bool) -> HeaderValue {
        HeaderValue::from_static(match (self, stored) {
            (Fwd::Miss, false) => "dastra-proxy; fwd=uri-miss",
            (Fwd::Miss, true) => "dastra-proxy; fwd=uri-miss; stored",
            (Fwd::Request, false) => "dastra-proxy; fwd=request",
            (Fwd::Request, true) => "dastra-proxy; fwd=request; stored",
            (Fwd::Stale, false) => "dastra-proxy; fwd=stale",
            (Fwd::Stale, true) => "dastra-proxy; fwd=stale; stored",
        })
    }

    /// After Dastra answered a revalidation with `304`.
    pub(super) fn revalidated(self, stored: bool) -> HeaderValue {
        HeaderValue::from_static(match (self, stored) {
            (Fwd::Request, true) => "dastra-proxy; fwd=request; fwd-status=304; stored",
            (Fwd::Request, false) => "dastra-proxy; fwd=request; fwd-status=304",
            (_, true) => "dastra-proxy; fwd=stale; fwd-status=304; stored",
            (_, false) => "dastra-proxy; fwd=stale; fwd-status=304",
        })
    }
}

/// A stored answer for one caller: its RateLimit fields dropped (they
/// describe the window when it was stored), its `Age` as it is now.
pub(super) fn respond(
    stored: &Stored,
    head: bool,
    status: HeaderValue,
    now: Instant,
) -> Response<Body> {
    let mut resp = respond_with(&stored.snap, head, status, false);
    set_age(&mut resp, stored, now);
    resp
}

/// `own`: the answer of this caller's own call, whose RateLimit fields are current.
pub(super) fn respond_with(
    snap: &Snapshot,
    head: bool,
    status: HeaderValue,
    own: bool,
) -> Response<Body> {
    let body = if head {
        Body::empty()
    } else {
        Body::from(snap.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = snap.status;
    let h = resp.headers_mut();
    for (k, v) in &snap.headers {
        if own || !super::ratelimit::is_field(k) {
            h.append(k, v.clone());
        }
    }
    set_status(&mut resp, status);
    resp
}

/// `304 Not Modified` from a stored 200 whose validator the caller holds.
pub(super) fn respond_not_modified(
    stored: &Stored,
    status: HeaderValue,
    now: Instant,
) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = http::StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    for name in &NOT_MODIFIED_HEADERS {
        for v in stored.snap.headers.get_all(name) {
            h.append(name, v.clone());
        }
    }
    set_status(&mut resp, status);
    set_age(&mut resp, stored, now);
    resp
}

/// A fixed `Cache-Status`.
pub(super) fn fixed(status: &'static str) -> HeaderValue {
    HeaderValue::from_static(status)
}

/// `Cache-Status` (RFC 9211). A value, not text: the fixed ones are
/// `HeaderValue::from_static`, with no copy per call.
pub(super) fn set_status(resp: &mut Response<Body>, status: HeaderValue) {
    resp.headers_mut().insert(CACHE_STATUS, status);
}

pub(super) fn set_age(resp: &mut Response<Body>, stored: &Stored, now: Instant) {
    let secs = stored.freshness.age(now).as_secs();
    resp.headers_mut().insert(header::AGE, age_value(secs));
}

/// `0`…`99` as digits, ten then two by two.
static DIGITS: &[u8] = b"0123456789\
    10111213141516171819202122232425262728293031323334353637383940414243444546474849\
    50515253545556575859606162636465666768697071727374757677787980818283848586878889\
    90919293949596979899";

/// An `Age` value: a slice of a static string for the usual ages (no
/// allocation on the hit path), formatted above 99 s.
fn age_value(secs: u64) -> HeaderValue {
    let digits = match secs {
        0..=9 => &DIGITS[secs as usize..secs as usize + 1],
        10..=99 => &DIGITS[10 + 2 * (secs as usize - 10)..12 + 2 * (secs as usize - 10)],
        _ => return HeaderValue::from(secs),
    };
    HeaderValue::from_maybe_shared(bytes::Bytes::from_static(digits))
        .unwrap_or_else(|_| HeaderValue::from(secs))
}

/// Asks Dastra whether `stored` still holds: its `ETag` as `If-None-Match`,
/// its `Last-Modified` as `If-Modified-Since` (§4.3.1).
pub(super) fn ask_if_changed<B>(req: &mut Request<B>, stored: &Snapshot) {
    let h = req.headers_mut();
    if let Some(etag) = stored.headers.get(header::ETAG) {
        h.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.headers.get(header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Headers a `304` never replaces in the stored answer (§3.2): its length,
/// and the hop-by-hop ones.
const KEPT: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
    header::TRAILER,
];

/// The stored answer with the headers of Dastra's `304` in place of its own.
pub(super) fn refreshed(stored: &Snapshot, fresh: &HeaderMap) -> Arc<Snapshot> {
    let mut headers = stored.headers.clone();
    for name in fresh.keys() {
        if KEPT.contains(name) {
            continue;
        }
        headers.remove(name);
        for v in fresh.get_all(name) {
            headers.append(name, v.clone());
        }
    }
    Arc::new(Snapshot {
        status: stored.status,
        headers,
        body: stored.body.clone(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_are_their_digits() {
        for n in [0u64, 7, 9, 10, 11, 42, 99, 100, 12345] {
            assert_eq!(super::age_value(n).to_str().unwrap(), n.to_string());
        }
    }
}
