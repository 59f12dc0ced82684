//! Handles to the per-call series, resolved once per (client, method) and
//! kept: prometheus' `with_label_values` hashes every label and takes a lock
//! on each call, three times for every answered call, which was a visible
//! share of the 429 path.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{Histogram, IntCounter};

use super::Metrics;

/// The `method` labels: the seven verbs of SPEC §1 and `other`, so a client
/// inventing methods cannot grow `/metrics`.
pub(super) const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

pub(super) fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// A method's `method` label.
pub fn method_label(m: &Method) -> &'static str {
    METHODS[method_index(m)]
}

/// The series one client's calls land in, for one config generation: built
/// with the policy, so a reload that renames clients starts afresh.
#[derive(Debug)]
pub struct CallMetrics {
    metrics: Metrics,
    /// By `[[clients]]` index; the last is the anonymous caller's.
    clients: Box<[ClientSeries]>,
}

#[derive(Debug)]
struct ClientSeries {
    name: Arc<str>,
    methods: [OnceLock<MethodSeries>; METHODS.len()],
    /// By error code; the few codes SPEC §4 has, so a scan is cheapest.
    rejected: Mutex<Vec<(&'static str, IntCounter)>>,
}

#[derive(Debug)]
struct MethodSeries {
    duration: Histogram,
    /// By status: the handful a client sees, scanned.
    answered: Mutex<Vec<(StatusCode, IntCounter)>>,
}

impl CallMetrics {
    /// `names` are the `[[clients]]` names in order; `anonymous` is who calls
    /// when there are none (or before the caller is known).
    pub fn new(
        metrics: &Metrics,
        names: impl Iterator<Item = Arc<str>>,
        anonymous: Arc<str>,
    ) -> Self {
        let series = |name| ClientSeries {
            name,
            methods: Default::default(),
            rejected: Mutex::new(Vec::new()),
        };
        Self {
            metrics: metrics.clone(),
            clients: names.chain([anonymous]).map(series).collect(),
        }
    }

    fn client(&self, index: Option<usize>) -> &ClientSeries {
        let anonymous = self.clients.len() - 1;
        &self.clients[index.unwrap_or(anonymous).min(anonymous)]
    }

    /// An answered call: `requests_total` and `request_duration_seconds`,
    /// and `rejected_total` when the proxy refused it with `code`.
    pub fn answered(
        &self,
        client: Option<usize>,
        method: &Method,
        status: StatusCode,
        code: Option<&'static str>,
        elapsed: Duration,
    ) {
        let c = self.client(client);
        let m = self.method(c, method);
        if let Some(code) = code {
            count(&c.rejected, code, || {
                self.metrics
                    .rejected_total
                    .with_label_values(&[&c.name, code])
            });
        }
        count(&m.answered, status, || {
            self.metrics.requests_total.with_label_values(&[
                &c.name,
                method_label(method),
                status.as_str(),
            ])
        });
        m.duration.observe(elapsed.as_secs_f64());
    }

    fn method<'a>(&self, c: &'a ClientSeries, method: &Method) -> &'a MethodSeries {
        c.methods[method_index(method)].get_or_init(|| MethodSeries {
            duration: self
                .metrics
                .request_duration_seconds
                .with_label_values(&[&c.name, method_label(method)]),
            answered: Mutex::new(Vec::new()),
        })
    }
}

/// Counts one for `key`, with the handle resolved by `make` the first time
/// (incremented under the lock: no handle clone per call).
fn count<K: PartialEq>(
    list: &Mutex<Vec<(K, IntCounter)>>,
    key: K,
    make: impl FnOnce() -> IntCounter,
) {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    match list.iter().find(|(k, _)| *k == key) {
        Some((_, c)) => c.inc(),
        None => {
            let c = make();
            c.inc();
            list.push((key, c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_handles_count_in_the_same_series_as_the_registry() {
        let m = Metrics::new();
        let calls = CallMetrics::new(&m, ["app".into()].into_iter(), "anonymous".into());
        for _ in 0..3 {
            calls.answered(
                Some(0),
                &Method::GET,
                StatusCode::OK,
                None,
                Duration::from_millis(2),
            );
        }
        calls.answered(
            None,
            &Method::PATCH,
            StatusCode::TOO_MANY_REQUESTS,
            Some("quota_exhausted"),
            Duration::ZERO,
        );
        calls.answered(
            Some(9),
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::OK,
            None,
            Duration::ZERO,
        );
        let get = |labels: &[&str]| m.requests_total.with_label_values(labels).get();
        assert_eq!(get(&["app", "GET", "200"]), 3);
        assert_eq!(get(&["anonymous", "PATCH", "429"]), 1);
        assert_eq!(
            get(&["anonymous", "other", "200"]),
            1,
            "an unknown index is the anonymous caller"
        );
        assert_eq!(
            m.rejected_total
                .with_label_values(&["anonymous", "quota_exhausted"])
                .get(),
            1
        );
        assert_eq!(
            m.request_duration_seconds
                .with_label_values(&["app", "GET"])
                .get_sample_count(),
            3
        );
    }
}
