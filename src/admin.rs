//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/quota` and a
//! status page, on their own port so they are never exposed with the proxy.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::access::{in_nets, AccessError, ConnInfo};
use crate::app::App;
use crate::error::ProxyError;
use crate::quota::ceil_secs;

/// The admin router, answering only peers in `server.admin_allow`
/// (`403 admin_not_allowed` to anyone else).
pub fn guarded(app: Arc<App>) -> Router {
    let allow: Arc<[ipnet::IpNet]> = app.config.server.admin_allow.clone().into();
    router(app).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let allow = allow.clone();
            async move {
                let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.ip());
                if peer.is_some_and(|ip| in_nets(&allow, ip)) {
                    next.run(req).await
                } else {
                    ProxyError::from(AccessError::AdminNotAllowed).into_response()
                }
            }
        },
    ))
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/quota", get(quota))
        .with_state(app)
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let store_up = app.store_healthy.load(Ordering::Relaxed);
    if !app.ready.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    } else if !store_up && app.store_rejects {
        (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
    } else if !store_up {
        (
            StatusCode::OK,
            "ready (store unreachable: holding this replica's share)\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// Sets the state gauges from the admission state, so they are exact at scrape time.
async fn refresh_gauges(app: &App) {
    let mut used: Vec<([Arc<str>; 2], i64)> = Vec::new();
    let mut depth: Vec<(Arc<str>, i64)> = Vec::new();
    for (credential, a) in app.quotas.labelled() {
        let snap = a.shared_snapshot().await;
        for w in snap.windows {
            let labels = [credential.clone(), Arc::from(w.name)];
            // In passthrough every caller credential is `default`: its
            // busiest key is the one near a limit.
            match used.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, u)) => *u = (*u).max(i64::from(w.used)),
                None => used.push((labels, i64::from(w.used))),
            }
        }
        for (client, n) in snap.queue {
            match depth.iter_mut().find(|(c, _)| *c == client) {
                Some((_, d)) => *d += n as i64,
                None => depth.push((client, n as i64)),
            }
        }
    }
    // Calls of a credential split by reserves wait in its shared rest.
    for (_, rest) in app.quotas.rests() {
        for (client, n) in rest.shared_snapshot().await.queue {
            match depth.iter_mut().find(|(c, _)| *c == client) {
                Some((_, d)) => *d += n as i64,
                None => depth.push((client, n as i64)),
            }
        }
    }
    for ([c, w], u) in used {
        app.metrics.window_used.with_label_values(&[&c, &w]).set(u);
    }
    for (c, d) in depth {
        app.metrics.queue_depth.with_label_values(&[&c]).set(d);
    }
    for (client, windows) in &app.policy().spent_in {
        let spans: Vec<_> = windows.iter().map(|l| l.per).collect();
        for (l, n) in windows.iter().zip(app.spent.counts(client, &spans)) {
            (app.metrics.client_window_used)
                .with_label_values(&[&**client, l.name.as_str()])
                .set(i64::from(n));
        }
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    refresh_gauges(&app).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn quota(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let admissions = app.quotas.labelled();
    let mut snaps = Vec::with_capacity(admissions.len());
    for (_, a) in &admissions {
        snaps.push(a.shared_snapshot().await);
    }
    let keys: Vec<_> = snaps.iter().map(key_json).collect();
    // A credential split by reserves: its shared rest, where the calls of
    // everyone without reserve room wait.
    let rests = app.quotas.rests();
    let mut rest_snaps = Vec::with_capacity(rests.len());
    for (_, a) in &rests {
        rest_snaps.push(a.shared_snapshot().await);
    }
    let first = keys.first().cloned().unwrap_or_else(|| json!({}));
    let answered_429 = app.metrics.upstream_429_total.sum_by("credential");
    // Each Dastra credential's own quota (in passthrough, `default` is the
    // first caller credential tracked; `keys` says how many there are).
    let mut credentials = serde_json::Map::new();
    for ((name, _), key) in admissions.iter().zip(&keys) {
        if !credentials.contains_key(&**name) {
            let mut k = key.clone();
            k["responses_429"] = answered_429.get(&**name).cloned().unwrap_or(json!(0));
            credentials.insert(name.to_string(), k);
        }
    }
    for ((name, _), snap) in rests.iter().zip(&rest_snaps) {
        if let Some(c) = credentials.get_mut(&**name) {
            c["shared_rest"] = key_json(snap);
        }
    }
    // What an operator must know first: the modes in which the proxy is not
    // doing what its config says (the status page's header shows them).
    let mut degraded = Vec::new();
    if !app.ready.load(Ordering::SeqCst) {
        degraded.push("not ready: starting or draining");
    }
    if !app.store_healthy.load(Ordering::Relaxed) {
        degraded.push(if app.store_rejects {
            "store unreachable: refusing calls"
        } else {
            "store unreachable: holding this replica's share"
        });
    }
    let paused: Vec<&str> = (admissions.iter().zip(&snaps))
        .filter(|(_, s)| s.paused_for.is_some())
        .map(|((name, _), _)| &**name)
        .collect();
    let paused_line;
    if !paused.is_empty() {
        paused_line = match credentials.len() {
            1 => "paused by Dastra's 429".to_owned(),
            _ => format!("paused by Dastra's 429 ({})", paused.join(", ")),
        };
        degraded.push(&paused_line);
    }
    if app.policy().dry_run {
        degraded.push("dry run: nothing waits or is refused for quota");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let uptime = (now - app.metrics.process_start_time_seconds.get()).max(0.0);
    let rejected = app.metrics.rejected_total.sum_by("code");
    // Who used the gateway: calls answered and refused per client since
    // start, and who waits now.
    let calls = app.metrics.requests_total.sum_by("client");
    let refused = app.metrics.rejected_total.sum_by("client");
    let mut clients = serde_json::Map::new();
    for name in calls.keys().chain(refused.keys()) {
        let n = |m: &serde_json::Map<String, serde_json::Value>| {
            m.get(name).cloned().unwrap_or(json!(0))
        };
        let waiting: usize = (snaps.iter().chain(&rest_snaps))
            .flat_map(|s| s.queue.iter())
            .filter(|(c, _)| &**c == name.as_str())
            .map(|(_, n)| *n)
            .sum();
        clients.insert(
            name.clone(),
            json!({ "calls": n(&calls), "refused": n(&refused), "waiting": waiting }),
        );
    }
    // How each configured client is served: its weight and priority.
    for (name, weight, priority) in app.policy().access.tenants() {
        let entry = client_entry(&mut clients, name.to_string());
        entry["weight"] = json!(weight);
        entry["priority"] = json!(crate::config::priority_name(priority));
    }
    // Who spent the quota: each client's sends in each of its windows.
    for (name, windows) in &app.policy().spent_in {
        let spans: Vec<_> = windows.iter().map(|l| l.per).collect();
        let entry = client_entry(&mut clients, name.to_string());
        entry["windows"] = (windows.iter().zip(app.spent.counts(name, &spans)))
            .map(|(l, n)| json!({ "window": l.name, "used": n }))
            .collect();
    }
    // Each client's own windows: its sends in each, against its own limit.
    for (name, gate) in app.quotas.client_gates() {
        let windows = gate.shared_snapshot().await.windows;
        let entry = client_entry(&mut clients, name.to_string());
        entry["limits"] = windows
            .iter()
            .map(|w| json!({ "window": w.name, "used": w.used, "limit": w.limit,
                "seconds_until_free": if w.used >= w.limit { w.frees_in.as_secs_f64() } else { 0.0 } }))
            .collect();
    }
    // Each reserve: its owner's sends counted in it, against its part.
    for (name, reserve) in app.quotas.reserves() {
        let windows = reserve.shared_snapshot().await.windows;
        let entry = client_entry(&mut clients, name.to_string());
        entry["reserve"] = windows
            .iter()
            .map(|w| json!({ "window": w.name, "used": w.used, "limit": w.limit }))
            .collect();
    }
    Json(json!({
        "windows": first["windows"],
        "paused_seconds": first["paused_seconds"],
        "queue": first["queue"],
        "queue_total": admissions.iter().chain(&rests).map(|(_, a)| a.waiting()).sum::<usize>(),
        "keys": keys.len(),
        "credentials": credentials,
        "rejected": rejected,
        "clients": clients,
        "upstream": {
            "url": app.config.upstream.origin(),
            "responses_429": answered_429.values().filter_map(|v| v.as_u64()).sum::<u64>(),
        },
        "savings": {
            "sent": sent_upstream(&app.metrics.upstream_duration_seconds),
            "cached": app.metrics.quota_saved_total.with_label_values(&["cached"]).get(),
            "coalesced": app.metrics.quota_saved_total.with_label_values(&["coalesced"]).get(),
            "cache_bytes": app.metrics.cache_bytes.get(),
        },
        "ready": app.ready.load(Ordering::SeqCst),
        "store": {
            "kind": match app.config.store { crate::config::StoreConfig::Memory { .. } => "memory", crate::config::StoreConfig::Redis { .. } => "redis" },
            "reachable": app.store_healthy.load(Ordering::Relaxed),
        },
        "version": env!("CARGO_PKG_VERSION"),
        "degraded": degraded,
        "uptime_seconds": uptime.floor(),
    }))
}

/// A client's entry in `/quota`, made when it has none yet.
fn client_entry(
    clients: &mut serde_json::Map<String, serde_json::Value>,
    name: String,
) -> &mut serde_json::Value {
    clients
        .entry(name)
        .or_insert_with(|| json!({ "calls": 0, "refused": 0, "waiting": 0 }))
}

/// One quota key's windows, pause and queue, as `/quota` shows them.
fn key_json(s: &crate::admission::Snapshot) -> serde_json::Value {
    json!({
        "windows": s.windows.iter().map(|w| json!({
            "window": w.name,
            "used": w.used,
            "limit": w.limit,
            "remaining": w.limit.saturating_sub(w.used),
            "seconds_until_free": if w.used >= w.limit { w.frees_in.as_secs_f64() } else { 0.0 },
            "seconds_until_oldest_expires": w.frees_in.as_secs_f64(),
            "retry_after": if w.used >= w.limit { ceil_secs(w.frees_in) } else { 0 },
            "period_seconds": w.period.as_secs_f64(),
            "sends": w.sends,
        })).collect::<Vec<_>>(),
        "paused_seconds": s.paused_for.map(|d| d.as_secs_f64()),
        "queue": s.queue.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
    })
}

async fn status_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status.html"),
    )
}

/// Calls that went to Dastra: every observation of the upstream histogram.
fn sent_upstream(h: &prometheus::HistogramVec) -> u64 {
    use prometheus::core::Collector as _;
    h.collect()
        .iter()
        .flat_map(|mf| mf.get_metric())
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

/// Sums a counter's series by one label (`rejected_total` by code, calls
/// by client), for the status page.
trait SumBy {
    fn sum_by(&self, label: &str) -> serde_json::Map<String, serde_json::Value>;
}

impl SumBy for prometheus::IntCounterVec {
    fn sum_by(&self, label: &str) -> serde_json::Map<String, serde_json::Value> {
        use prometheus::core::Collector as _;
        let mut out = serde_json::Map::new();
        for mf in self.collect() {
            for m in mf.get_metric() {
                let code = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == label)
                    .map(|l| l.value().to_owned());
                if let Some(code) = code {
                    let v = m.get_counter().get_value() as u64;
                    let e = out.entry(code).or_insert(json!(0));
                    *e = json!(e.as_u64().unwrap_or(0) + v);
                }
            }
        }
        out
    }
}
