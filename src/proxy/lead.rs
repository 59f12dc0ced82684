//! The call of a GET that others may share or the cache may keep: made
//! once, read whole when it fits `max_entry`, handed to the followers,
//! stored as RFC 9111 says it may be; a revalidation's `304` turned back
//! into the stored answer with Dastra's fresh headers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use super::cached::{refreshed, respond_with, set_age, set_status, Fwd};
use crate::cache::{
    directives, freshness, shareable, Cache, Flight, Key, Landing, Snapshot, Stored, Timing,
};
use crate::error::ProxyError;

/// What storing the answer needs besides the answer.
#[derive(Debug)]
pub(super) struct Keep {
    /// The rule's ttl: the longest it is kept, and its heuristic freshness.
    pub ttl: Duration,
    /// The request's headers, for the ones the answer's `Vary` names.
    pub req: Arc<HeaderMap>,
    pub asks: directives::Request,
    pub sent: SystemTime,
    /// The stored answer this call revalidates.
    pub base: Option<Stored>,
}

/// A plain function of the flight, not a closure that would hold it twice.
fn land(flight: &mut Option<Flight>, l: Landing) {
    if let Some(f) = flight.take() {
        f.land(l);
    }
}

/// Makes the call, reads its answer whole when it fits `max_entry`, hands it
/// to the followers and keeps it as `keep` says; a larger answer streams to
/// this caller alone and the followers make their own calls.
/// Takes the call already made (not the service and the request): an async
/// fn keeps every argument for its whole life, and the request is large.
pub(super) async fn lead<F>(
    call: F,
    cache: Arc<Cache>,
    key: Key,
    keep: Option<Box<Keep>>,
    mut flight: Option<Flight>,
    max_entry: u64,
    fwd: Fwd,
) -> Result<Response<Body>, ProxyError>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    let resp = match call.await {
        Ok(r) => r,
        Err(e) => {
            let e = Arc::new(e);
            land(&mut flight, Landing::Failed(e.clone()));
            return Err(ProxyError::Shared(e));
        }
    };
    if resp.status() == StatusCode::NOT_MODIFIED {
        if let Some(base) = keep.as_ref().and_then(|k| k.base.as_ref()) {
            // Dastra says the stored answer still holds (§4.3.4).
            let snap = refreshed(&base.snap, resp.headers());
            return Ok(finish(&cache, key, keep, &mut flight, snap, fwd, true));
        }
    }
    let miss = fwd.status(false);
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_entry) {
        land(&mut flight, Landing::Own);
        let mut resp = resp;
        set_status(&mut resp, miss.clone());
        return Ok(resp);
    }
    let (mut parts, mut body) = resp.into_parts();
    // The leader's own facts of its call (a fresh token, say): they stay on
    // the leader's answer, never on a follower's.
    let own = std::mem::take(&mut parts.extensions);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                len += data.len() as u64;
                chunks.push(data);
                if len > max_entry {
                    land(&mut flight, Landing::Own);
                    let rest =
                        futures_util::stream::iter(chunks.into_iter().map(Ok::<_, axum::Error>))
                            .chain(body.into_data_stream());
                    let mut resp = Response::from_parts(parts, Body::from_stream(rest));
                    resp.extensions_mut().extend(own);
                    set_status(&mut resp, miss);
                    return Ok(resp);
                }
            }
            Some(Err(e)) => {
                // The answer broke off: this caller sees what came, then the error.
                land(&mut flight, Landing::Own);
                let got = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, axum::Error>))
                    .chain(futures_util::stream::iter([Err(e)]));
                let mut resp = Response::from_parts(parts, Body::from_stream(got));
                resp.extensions_mut().extend(own);
                return Ok(resp);
            }
        }
    }
    // Copied out: hyper's chunks and header values are slices of its read
    // buffers, which a kept slice would hold whole (7.6 KB per cached 1 KiB
    // answer before this copy, scripts/bench-cache).
    let body = Bytes::from(chunks.concat());
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (k, v) in &parts.headers {
        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
            headers.append(k.clone(), v);
        }
    }
    let snap = Arc::new(Snapshot {
        status: parts.status,
        headers,
        body,
    });
    let mut resp = finish(&cache, key, keep, &mut flight, snap, fwd, false);
    resp.extensions_mut().extend(own);
    Ok(resp)
}

/// Stores `snap` when it may be, lands the flight (followers share it only
/// when it may go to another caller at all), and answers this caller.
fn finish(
    cache: &Cache,
    key: Key,
    keep: Option<Box<Keep>>,
    flight: &mut Option<Flight>,
    snap: Arc<Snapshot>,
    fwd: Fwd,
    revalidated: bool,
) -> Response<Body> {
    let mut kept = None;
    if let Some(k) = keep {
        let timing = Timing {
            sent: k.sent,
            received: SystemTime::now(),
            now: Instant::now(),
        };
        if let Some(s) = freshness::storable(snap.status, &snap.headers, &k.asks, timing, k.ttl) {
            let f = s.freshness;
            kept = cache
                .store(key, &k.req, snap.clone(), s, k.ttl)
                .map(|snap| Stored { snap, freshness: f });
        }
    }
    // A cookie, `private`, `no-cache`, or a `Vary` outside the key: this
    // caller's alone; whoever followed makes a call of its own.
    land(
        flight,
        match shareable(&snap) {
            true => Landing::Answer(snap.clone()),
            false => Landing::Own,
        },
    );
    let status = match revalidated {
        true => fwd.revalidated(kept.is_some()),
        false => fwd.status(kept.is_some()),
    };
    let mut resp = respond_with(&snap, false, status, true);
    if let (Some(stored), true) = (&kept, revalidated) {
        // Served from the cache after Dastra's 304: its age as stored now.
        set_age(&mut resp, stored, Instant::now());
    }
    resp
}
