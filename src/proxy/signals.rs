//! What Dastra's answer tells admission, read in one place: its 429 (a pause
//! of every send for this key), a 503's `Retry-After` and its own rate-limit
//! headers (`upstream.adapt`: they can only tighten), and in passthrough a
//! 401 (a credential Dastra did not take keeps no quota).

use axum::body::Body;
use http::{HeaderMap, Response, StatusCode};
use tokio::time::Instant;

use std::time::Duration;

use crate::admission::Admission;
use crate::app::App;
use http::header;

/// How long to hold sending after an upstream 429 that names no `Retry-After`.
const DEFAULT_UPSTREAM_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a call's answer is read with.
pub(crate) struct Heard<'a> {
    /// The credential's name, the label of `upstream_429_total`.
    pub(crate) credential: &'a str,
    /// `admission.upstream_429 = "pause"`.
    pub(crate) pause: bool,
    pub(crate) passthrough: bool,
}

/// The final answer of a call (after any retries).
pub(crate) fn heed(app: &App, admission: &Admission, resp: &Response<Body>, heard: Heard<'_>) {
    let Heard {
        credential,
        pause,
        passthrough,
    } = heard;
    if passthrough {
        // 401 only: Dastra did not take the credential, so it keeps no quota
        // for it. A 403 comes from a real key without the right to a
        // resource: its sends count.
        admission.set_rejected(resp.status() == StatusCode::UNAUTHORIZED);
    }
    if app.config.upstream.adapt {
        adapt(app, admission, resp.headers());
    }
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        app.metrics
            .upstream_429_total
            .with_label_values(&[credential])
            .inc();
        if pause {
            let d = retry_after(resp.headers()).unwrap_or(DEFAULT_UPSTREAM_PAUSE);
            tracing::warn!(
                credential,
                pause_ms = d.as_millis() as u64,
                "Dastra answered 429; holding every send with this credential"
            );
            admission.pause_until(Instant::now() + d);
        }
    }
}

/// Each attempt's answer, before any retry: a 503 with `Retry-After` means
/// Dastra asked for nothing until then, so nothing is sent (retries
/// included) — as `upstream.adapt` reads R=0.
pub(crate) fn unavailable(app: &App, admission: &Admission, resp: &Response<Body>) {
    if resp.status() != StatusCode::SERVICE_UNAVAILABLE || !app.config.upstream.adapt {
        return;
    }
    if let Some(d) = retry_after(resp.headers()) {
        app.metrics
            .upstream_limit_remaining
            .with_label_values(&["retry-after"])
            .set(0);
        admission.adapt(0, Instant::now() + d);
    }
}

/// Dastra's own rate-limit headers, if it sent any: they can only tighten.
fn adapt(app: &App, admission: &Admission, h: &HeaderMap) {
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let advice = crate::adapt::read(h, unix);
    crate::adapt::log_once(h, advice.is_some());
    if let Some(a) = advice {
        app.metrics
            .upstream_limit_remaining
            .with_label_values(&[&a.window])
            .set(i64::from(a.remaining));
        admission.adapt(a.remaining, Instant::now() + a.reset);
    }
}

/// `Retry-After` as seconds or an HTTP date, at most an hour.
pub(crate) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(3600)),
    )
}
