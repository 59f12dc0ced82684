//! `cache.stale_if_error`: when the call for a cached GET fails — Dastra
//! answers 5xx or cannot be reached, the breaker is open, the quota is used
//! up — an entry past its freshness (but within `stale_if_error` of it) answers
//! instead, marked `Cache-Status: dastra-proxy; hit; stale`. Stale data
//! rather than an error, and no quota spent for it. An entry Dastra marked
//! `must-revalidate` or `proxy-revalidate` is never kept for this.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use http::{HeaderMap, Response};
use tokio::time::Instant;

use super::ratelimit::add_quota_fields;
use crate::app::App;
use crate::cache::{Cache, Key};
use crate::error::ProxyError;

/// The codes of failures a stale entry may stand in for.
const STANDS_IN_FOR: [&str; 7] = [
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_unavailable",
    "quota_exhausted",
    "queue_full",
    "upstream_throttled",
    "store_unavailable",
];

/// `call`'s answer, or the stale entry for `key` when `call` failed.
pub(super) async fn or_stale(
    call: impl Future<Output = Result<Response<Body>, ProxyError>>,
    cache: Arc<Cache>,
    key: Key,
    req: Arc<HeaderMap>,
    app: Arc<App>,
) -> Result<Response<Body>, ProxyError> {
    let result = call.await;
    let failed = match &result {
        Ok(r) => r.status().is_server_error(),
        Err(e) => STANDS_IN_FOR.contains(&e.code()),
    };
    if !failed {
        return result;
    }
    let Some(snap) = cache.get_stale(&key, &req, Instant::now()) else {
        return result;
    };
    if let Err(e) = &result {
        tracing::info!(error = %e, "answered from a stale cache entry");
    }
    cache.saved("stale");
    let stale = super::cached::fixed("dastra-proxy; hit; stale");
    let mut resp = super::cached::respond_with(&snap, false, stale, false);
    if let Some(a) = app.quotas.existing(&key.quota) {
        add_quota_fields(resp.headers_mut(), &a);
    }
    Ok(resp)
}
