//! Prometheus metrics, exactly as SPEC §6 names them.
//!
//! One registry is made at start-up and passed down, so tests read their own
//! counters. Gauges that describe state (`window_used`, `queue_depth`) are set
//! from the admission state at scrape time, so they are exact when read.
//! Labels only ever hold bounded values: client names from the config, methods,
//! status codes, error codes, window names.

mod calls;
mod known;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub use calls::{method_label, CallMetrics};

/// Handles to every metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
pub struct Families {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub upstream_duration_seconds: HistogramVec,
    /// `upstream_duration_seconds` by method, resolved once each.
    upstream_by_method: [OnceLock<prometheus::Histogram>; calls::METHODS.len()],
    pub queue_wait_seconds: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub rejected_total: IntCounterVec,
    pub window_used: IntGaugeVec,
    pub window_limit: IntGaugeVec,
    pub upstream_429_total: IntCounterVec,
    /// 1 while the circuit breaker answers 503 without sending.
    pub breaker_open: IntGauge,
    /// Calls sent again after Dastra failed them.
    pub upstream_retries_total: IntCounter,
    /// In a dry run, calls that would have queued or been refused.
    pub dry_run_total: IntCounterVec,
    /// Each client's sends in each window of its credential and its own.
    pub client_window_used: IntGaugeVec,
    /// Each reserving client's part of each window (`reserve`), in calls.
    pub client_reserve: IntGaugeVec,
    /// What Dastra's own headers last said is left, by window name.
    pub upstream_limit_remaining: IntGaugeVec,
    pub state_write_errors_total: IntCounter,
    /// Calls answered without spending quota: `cached`, `coalesced`.
    pub quota_saved_total: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub connections_open: IntGauge,
    pub connections_refused_total: IntCounterVec,
    pub token_refresh_total: IntCounterVec,
    pub store_errors_total: IntCounterVec,
    pub build_info: IntGaugeVec,
    /// When this process started (Unix seconds): every counter is since then.
    pub process_start_time_seconds: prometheus::Gauge,
    pub config_reloads_total: IntCounterVec,
    /// When the inbound TLS certificate expires (Unix seconds); a series
    /// only while the proxy serves TLS, so no alert fires without it.
    pub tls_cert_expiry_timestamp_seconds: IntGaugeVec,
}

impl std::ops::Deref for Metrics {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.inner
    }
}

/// Latency from a millisecond to a minute (the upstream timeout's range).
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Queue waits up to minutes: a full 1-minute window makes calls wait ~60 s.
const WAITS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("dastra_proxy".into()), None)
            .expect("static prefix is valid");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("static metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("each metric is registered once");
                m
            }};
        }
        let families = Families {
            requests_total: reg!(IntCounterVec::new(
                Opts::new(
                    "requests_total",
                    "Calls answered, by client, method and status."
                ),
                &["client", "method", "status"]
            )),
            request_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "Time from request to response head, queueing included."
                )
                .buckets(LATENCY.to_vec()),
                &["client", "method"]
            )),
            upstream_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "upstream_duration_seconds",
                    "Time Dastra took to send the response head."
                )
                .buckets(LATENCY.to_vec()),
                &["method"]
            )),
            upstream_by_method: Default::default(),
            queue_wait_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "queue_wait_seconds",
                    "Time admitted calls waited for a quota slot."
                )
                .buckets(WAITS.to_vec()),
                &["client"]
            )),
            queue_depth: reg!(IntGaugeVec::new(
                Opts::new("queue_depth", "Calls waiting for a quota slot now."),
                &["client"]
            )),
            rejected_total: reg!(IntCounterVec::new(
                Opts::new(
                    "rejected_total",
                    "Calls the proxy refused itself, by error code."
                ),
                &["client", "code"]
            )),
            window_used: reg!(IntGaugeVec::new(
                Opts::new(
                    "window_used",
                    "Sends counted in each quota window of each Dastra credential now."
                ),
                &["credential", "window"]
            )),
            window_limit: reg!(IntGaugeVec::new(
                Opts::new(
                    "window_limit",
                    "Sends allowed in each quota window of each Dastra credential."
                ),
                &["credential", "window"]
            )),
            upstream_429_total: reg!(IntCounterVec::new(
                Opts::new(
                    "upstream_429_total",
                    "429 answers received from Dastra, by the credential it answered."
                ),
                &["credential"]
            )),
            breaker_open: reg!(IntGauge::new(
                "breaker_open",
                "1 while the circuit breaker answers 503 upstream_unavailable without sending."
            )),
            upstream_retries_total: reg!(IntCounter::new(
                "upstream_retries_total",
                "Idempotent calls sent again after Dastra answered 502/503/504 or was not reached."
            )),
            dry_run_total: reg!(IntCounterVec::new(
                Opts::new(
                    "dry_run_total",
                    "Dry runs (admission.dry_run, a client's dry_run): calls sent at once that would have queued or been refused."
                ),
                &["client", "would"]
            )),
            client_reserve: reg!(IntGaugeVec::new(
                Opts::new(
                    "client_reserve",
                    "Calls of each window held for a client alone ([[clients]] reserve): the others are admitted only while the window keeps room for it."
                ),
                &["client", "window"]
            )),
            client_window_used: reg!(IntGaugeVec::new(
                Opts::new(
                    "client_window_used",
                    "A client's sends that reached Dastra within each window (its credential's and its own [[clients.limits]]) now, counted by this instance."
                ),
                &["client", "window"]
            )),
            upstream_limit_remaining: reg!(IntGaugeVec::new(
                Opts::new(
                    "upstream_limit_remaining",
                    "What Dastra's own rate-limit headers last said is left, by window."
                ),
                &["window"]
            )),
            connections_open: reg!(IntGauge::new(
                "connections_open",
                "Client connections open now (proxy and admin listeners)."
            )),
            connections_refused_total: reg!(IntCounterVec::new(
                Opts::new(
                    "connections_refused_total",
                    "Connections turned away or closed by the proxy, by reason."
                ),
                &["reason"]
            )),
            quota_saved_total: reg!(IntCounterVec::new(
                Opts::new(
                    "quota_saved_total",
                    "Calls answered without spending quota: from the cache, or sharing a call in flight."
                ),
                &["how"]
            )),
            cache_bytes: reg!(IntGauge::new(
                "cache_bytes",
                "Bytes held by cached answers now."
            )),
            state_write_errors_total: reg!(IntCounter::new(
                "state_write_errors_total",
                "Sends the state file could not record (restarts may forget them)."
            )),
            token_refresh_total: reg!(IntCounterVec::new(
                Opts::new("token_refresh_total", "OAuth2 token requests, by result."),
                &["result"]
            )),
            store_errors_total: reg!(IntCounterVec::new(
                Opts::new(
                    "store_errors_total",
                    "Failed quota-store operations, by operation."
                ),
                &["op"]
            )),
            process_start_time_seconds: reg!(prometheus::Gauge::new(
                "process_start_time_seconds",
                "When this process started, in Unix seconds: every counter counts from then."
            )),
            build_info: reg!(IntGaugeVec::new(
                Opts::new("build_info", "Always 1; the version is the label."),
                &["version"]
            )),
            config_reloads_total: reg!(IntCounterVec::new(
                Opts::new(
                    "config_reloads_total",
                    "Configuration reloads on SIGHUP, by result."
                ),
                &["result"]
            )),
            tls_cert_expiry_timestamp_seconds: reg!(IntGaugeVec::new(
                Opts::new(
                    "tls_cert_expiry_timestamp_seconds",
                    "When the inbound TLS certificate (server.tls.cert_file) expires, in Unix seconds."
                ),
                &["listener"]
            )),
            registry,
        };
        families
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["ok", "error"] {
            families.token_refresh_total.with_label_values(&[result]);
            families.config_reloads_total.with_label_values(&[result]);
        }
        families.store_errors_total.with_label_values(&["decide"]);
        families.process_start_time_seconds.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        for how in ["cached", "coalesced", "stale"] {
            families.quota_saved_total.with_label_values(&[how]);
        }
        Self {
            inner: Arc::new(families),
        }
    }

    /// How long Dastra took to send a call's answer head.
    pub fn upstream_took(&self, method: &http::Method, took: Duration) {
        self.upstream_by_method[calls::method_index(method)]
            .get_or_init(|| {
                self.upstream_duration_seconds
                    .with_label_values(&[method_label(method)])
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
