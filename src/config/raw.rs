//! The TOML file as written: every field optional, unknown keys refused.
//!
//! Nothing outside `config` sees these types; [`super::Config`] is built from
//! them by `validate`, so the rest of the proxy only handles checked values.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) upstream: RawUpstream,
    /// `None`: the default API key from `DASTRA_API_KEY`, unless
    /// `[[credentials]]` are given (then there is no default).
    pub(crate) credential: Option<RawCredential>,
    #[serde(default)]
    pub(crate) credentials: Vec<RawCredential>,
    pub(crate) limits: Option<Vec<RawLimit>>,
    #[serde(default)]
    pub(crate) admission: RawAdmission,
    #[serde(default)]
    pub(crate) access: RawAccess,
    #[serde(default)]
    pub(crate) clients: Vec<RawClient>,
    #[serde(default)]
    pub(crate) store: RawStore,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) cache: RawCache,
    #[serde(default)]
    pub(crate) cors: RawCors,
    #[serde(default)]
    pub(crate) tracing: RawTracing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    pub(crate) otlp_endpoint: Option<String>,
    pub(crate) sample_ratio: Option<f64>,
    pub(crate) service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCors {
    #[serde(default)]
    pub(crate) allow_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub(crate) coalesce: Option<bool>,
    pub(crate) max_entry: Option<String>,
    pub(crate) max_bytes: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) stale_if_error: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) stale_while_revalidate: Option<Duration>,
    #[serde(default)]
    pub(crate) rules: Vec<RawCacheRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCacheRule {
    pub(crate) path: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<String>,
    pub(crate) admin_listen: Option<String>,
    pub(crate) public_url: Option<String>,
    pub(crate) max_request_body: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) shutdown_grace: Option<Duration>,
    pub(crate) tls: Option<RawTls>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) body_read_timeout: Option<Duration>,
    pub(crate) max_connections: Option<i64>,
    pub(crate) max_connections_per_ip: Option<i64>,
    pub(crate) max_concurrent_streams: Option<i64>,
    pub(crate) watch: Option<bool>,
    pub(crate) max_buffered_body: Option<String>,
    pub(crate) admin_allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) timeout: Option<Duration>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) breaker_failures: Option<i64>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) breaker_open: Option<Duration>,
    pub(crate) adapt: Option<bool>,
    pub(crate) retries: Option<i64>,
    pub(crate) retry_budget: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    /// Only in `[[credentials]]`.
    pub(crate) name: Option<String>,
    /// Only in `[[credentials]]`: this key's own windows.
    pub(crate) limits: Option<Vec<RawLimit>>,
    pub(crate) kind: Option<String>,
    pub(crate) api_key_env: Option<String>,
    pub(crate) api_key_file: Option<PathBuf>,
    pub(crate) public_key_env: Option<String>,
    pub(crate) public_key_file: Option<PathBuf>,
    pub(crate) private_key_env: Option<String>,
    pub(crate) private_key_file: Option<PathBuf>,
    pub(crate) token_url: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) max_keys: Option<i64>,
    pub(crate) max_keys_per_ip: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    pub(crate) requests: i64,
    pub(crate) per: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmission {
    pub(crate) on_limit: Option<String>,
    pub(crate) max_queue: Option<i64>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) margin: Option<Duration>,
    pub(crate) upstream_429: Option<String>,
    pub(crate) dry_run: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) aging: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccess {
    pub(crate) allow: Option<Vec<String>>,
    pub(crate) trusted_proxies: Option<Vec<String>>,
    pub(crate) forwarded_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClient {
    pub(crate) name: String,
    pub(crate) key_sha256: String,
    pub(crate) allow: Option<Vec<String>>,
    pub(crate) weight: Option<i64>,
    pub(crate) rate: Option<String>,
    pub(crate) burst: Option<i64>,
    pub(crate) credential: Option<String>,
    pub(crate) limits: Option<Vec<RawLimit>>,
    pub(crate) dry_run: Option<bool>,
    pub(crate) priority: Option<String>,
    pub(crate) reserve: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) kind: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) url_env: Option<String>,
    pub(crate) url_file: Option<PathBuf>,
    pub(crate) key_prefix: Option<String>,
    pub(crate) on_error: Option<String>,
    pub(crate) replicas: Option<i64>,
    pub(crate) state_file: Option<String>,
    pub(crate) ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) format: Option<String>,
    pub(crate) level: Option<String>,
}
