//! The series of known label values, at 0 from start-up and after each
//! reload: a quiet instance's panels read 0, not "No data".

use super::Metrics;
use crate::config::{Config, DEFAULT_CREDENTIAL};

impl Metrics {
    /// Each credential's windows: `window_limit` set, `window_used` and
    /// `upstream_429_total` at 0 until the first scrape or 429.
    fn window_series(&self, config: &Config) {
        let default = config
            .credential
            .iter()
            .map(|_| (DEFAULT_CREDENTIAL, &config.limits[..]));
        let named = (config.credentials.iter()).map(|n| (n.name.as_str(), config.limits_of(n)));
        for (credential, limits) in default.chain(named) {
            for l in limits {
                let labels = [credential, l.name.as_str()];
                self.window_limit
                    .with_label_values(&labels)
                    .set(i64::from(l.requests));
                self.window_used.with_label_values(&labels);
            }
            self.upstream_429_total.with_label_values(&[credential]);
        }
    }

    /// Each client's per-client series at 0 (at start-up and on reload, so a
    /// client a reload adds reads 0, not "No data").
    /// `codes`: every refusal code (`error::REFUSAL_CODES`).
    pub fn known_series(&self, config: &Config, codes: &[&str]) {
        self.window_series(config);
        let names: Vec<&str> = match config.clients.is_empty() {
            true => vec![crate::config::ANONYMOUS],
            false => config.clients.iter().map(|c| c.name.as_str()).collect(),
        };
        for name in names {
            self.queue_depth.with_label_values(&[name]);
            for code in codes {
                self.rejected_total.with_label_values(&[name, code]);
            }
            for would in ["queue", "reject"] {
                self.dry_run_total.with_label_values(&[name, would]);
            }
        }
        // A reserve removed by a reload leaves no series behind.
        self.client_reserve.reset();
        for (client, part) in config.splits().iter().flat_map(|s| &s.reserves) {
            for l in part {
                let series = self.client_reserve.with_label_values(&[client, &l.name]);
                series.set(i64::from(l.requests));
            }
        }
        for (client, windows) in config.client_windows() {
            for l in &windows {
                self.client_window_used
                    .with_label_values(&[&client, &l.name]);
            }
        }
    }
}
