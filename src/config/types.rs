//! The validated configuration: plain typed values, what the rest of the
//! proxy sees. Only [`super::validate`] builds them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;

use crate::secret::Secret;

/// `[[clients]] priority` by rank: 0 high, 1 normal, 2 low.
pub const PRIORITIES: [&str; 3] = ["high", "normal", "low"];

/// A priority rank's name, as the config, `check` and `/quota` spell it.
pub fn priority_name(rank: u8) -> &'static str {
    PRIORITIES[usize::from(rank).min(PRIORITIES.len() - 1)]
}

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, for messages and reloads.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    /// The single `[credential]`: the calls of every client that names no
    /// other go out with it. `None` when only `[[credentials]]` are given.
    pub credential: Option<CredentialConfig>,
    /// `[[credentials]]` (SPEC §9.3b): more Dastra keys, each with its own
    /// quota, chosen per client.
    pub credentials: Vec<NamedCredential>,
    /// Every window is enforced on each quota key (a named credential's own
    /// `limits` replace them for that key).
    pub limits: Vec<Limit>,
    pub admission: AdmissionConfig,
    pub access: AccessConfig,
    /// Empty: no client keys are asked for (sidecar use).
    pub clients: Vec<ClientConfig>,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub cache: CacheConfig,
    /// Browser origins whose calls are answered with CORS headers.
    pub cors: CorsConfig,
    /// OpenTelemetry traces of each call (`[tracing]`).
    pub tracing: TracingConfig,
    /// Keys set from the environment, for `check` to name their variable.
    pub from_env: Vec<super::env::FromEnv>,
}

/// `[tracing]` (SPEC §9.4): where spans go, if anywhere. `None`: no
/// exporter runs and a caller's `traceparent` is forwarded as it came.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL (`…/v1/traces`), completed from the
    /// collector's base URL as OTLP's own exporters do.
    pub otlp_endpoint: Option<Uri>,
    /// The share of traces this proxy starts that are recorded; a caller's
    /// own `sampled` flag decides for the traces it continues.
    pub sample_ratio: f64,
    pub service_name: String,
}

/// `[cors]` (SPEC §9.4): the browser origins allowed to call, each as
/// `scheme://host[:port]`, lower-case, no trailing `/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
}

/// Quota savings (SPEC §8): identical GETs in flight share one call, and
/// answers to paths a rule names are kept for its `ttl`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub coalesce: bool,
    /// Larger answers are neither shared nor cached.
    pub max_entry: u64,
    /// All cached answers together (LRU beyond it).
    pub max_bytes: u64,
    /// How long past its freshness an entry may still answer when Dastra fails,
    /// the breaker is open or the quota is used up.
    pub stale_if_error: std::time::Duration,
    /// How long past its freshness an entry may still answer while one
    /// revalidation runs in the background (RFC 5861); Dastra's own
    /// `stale-while-revalidate` counts when longer.
    pub stale_while_revalidate: std::time::Duration,
    pub rules: Vec<CacheRule>,
}

/// One `[[cache.rules]]`: a path pattern (`*` = one segment) and a ttl.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRule {
    pub path: String,
    /// The pattern's segments; `None` matches any one segment.
    pub segments: Vec<Option<String>>,
    pub ttl: Duration,
}

impl CacheRule {
    /// Whether `path` (no query) matches segment for segment.
    pub fn matches(&self, path: &str) -> bool {
        let mut it = path.trim_start_matches('/').split('/');
        for seg in &self.segments {
            match (it.next(), seg) {
                (Some(p), None) if !p.is_empty() => {}
                (Some(p), Some(s)) if p == s => {}
                _ => return false,
            }
        }
        it.next().is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Base that upstream `Location` headers are rewritten to, without a trailing `/`.
    pub public_url: String,
    pub max_request_body: u64,
    pub shutdown_grace: Duration,
    /// Inbound TLS, so client keys never cross the network in clear.
    pub tls: Option<TlsFiles>,
    /// Accept to a complete request head (TLS handshake, protocol detection
    /// and the HTTP/2 preface included); a connection slower than that closes.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and nothing written closes
    /// (what a caller sends without completing a request does not count).
    pub idle_timeout: Duration,
    /// The longest gap between two chunks of a request body (408 after it).
    pub body_read_timeout: Duration,
    /// Open client connections in all, and from one address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Re-read the config, TLS and secret files when they change, as SIGHUP does.
    pub watch: bool,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Request bodies held before admission (read ahead, see the buffer
    /// stage), over all connections together; past it `503 overloaded`.
    pub max_buffered_body: u64,
    /// Peers that may use the admin listener.
    pub admin_allow: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// `http` or `https`; plain http only exists for tests and local mocks.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix of `upstream.url`, without a trailing `/` (usually empty).
    pub base_path: String,
    pub connect_timeout: Duration,
    /// Until the response head arrives; bodies may stream for longer.
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// Consecutive failures that open the circuit breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker answers 503 before one probe call.
    pub breaker_open: Duration,
    /// Dastra's own rate-limit headers tighten the windows (`crate::adapt`).
    pub adapt: bool,
    /// Tries after the first for idempotent calls Dastra failed (the retry module).
    pub retries: u32,
    /// Retries allowed as a share of calls.
    pub retry_budget: f64,
}

impl UpstreamConfig {
    /// `scheme://authority`, as upstream `Location` headers spell it.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// The longest one OAuth2 token request may take; part of the time a call
/// can stay in flight (`AdmissionConfig::flight`).
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

/// How the proxy authenticates to Dastra.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialConfig {
    /// Sent as `X-API-Key`.
    ApiKey(Secret),
    /// Sent as `Authorization: Basic base64(public:private)`.
    Basic { public: Secret, private: Secret },
    /// Client-credentials grant; the token is cached and refreshed.
    OAuth2 {
        token_url: Uri,
        scope: String,
        public: Secret,
        private: Secret,
    },
    /// The caller's own credential goes through; its digest is the quota key.
    /// At most `max_keys` credentials are tracked at once, and at most
    /// `max_keys_per_ip` made by one client address.
    Passthrough {
        max_keys: usize,
        max_keys_per_ip: usize,
    },
}

/// One of `[[credentials]]`: a Dastra key of its own, with its own windows.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedCredential {
    pub name: String,
    pub credential: CredentialConfig,
    /// `[[credentials.limits]]`; `None`: the top-level `[[limits]]`.
    pub limits: Option<Vec<Limit>>,
}

/// One sliding window: at most `requests` sends in any interval of length `per`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub requests: u32,
    pub per: Duration,
    /// `per` as written (`"1m"`), used in metric labels and RateLimit fields.
    pub name: String,
}

impl Limit {
    /// Dastra's documented quotas, the default when no `[[limits]]` are given:
    /// 500 per minute and 10,000 per 10 minutes.
    pub fn dastra() -> Vec<Limit> {
        vec![
            Limit {
                requests: 500,
                per: Duration::from_secs(60),
                name: "1m".into(),
            },
            Limit {
                requests: 10_000,
                per: Duration::from_secs(600),
                name: "10m".into(),
            },
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    Queue,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream429 {
    /// Hold all sending until Dastra's `Retry-After`.
    Pause,
    /// Pass the 429 on and change nothing.
    Pass,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    pub on_limit: OnLimit,
    pub max_queue: usize,
    pub max_wait: Duration,
    /// Added to every window, to absorb jitter between here and Dastra.
    pub margin: Duration,
    /// The longest a call may be in flight (token fetch, connect, answer
    /// head): when every slot is taken by calls in flight, Retry-After and `t`
    /// use this bound rather than guess early. Derived from `[upstream]`.
    pub flight: Duration,
    pub upstream_429: Upstream429,
    /// Nothing waits or is refused for quota: what would have been is only
    /// counted and logged, so a limit can be watched before it is enforced.
    pub dry_run: bool,
    /// A waiting call moves up one priority per `aging` (zero: never).
    pub aging: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    pub allow: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// The one forwarding header believed from trusted proxies.
    pub forwarded_header: ForwardedHeader,
}

/// Which header a trusted proxy writes the client's address in; the other is
/// never read and is removed, so a client cannot pick its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    pub name: String,
    pub key_sha256: [u8; 32],
    /// Narrows `[access].allow` for this client.
    pub allow: Option<Vec<IpNet>>,
    pub weight: u32,
    pub rate: Option<ClientRate>,
    /// The `[[credentials]]` name its calls go out with; `None`: `[credential]`.
    pub credential: Option<String>,
    /// `[[clients.limits]]`: its own windows, in front of the credential's.
    pub limits: Vec<Limit>,
    /// 0 high, 1 normal (the default), 2 low: the queue serves higher first.
    pub priority: u8,
    /// Its own limits are measured and reported, not enforced.
    pub dry_run: bool,
    /// The fraction of its credential's every window held for it alone
    /// (0: none); see `config::reserve`.
    pub reserve: f64,
}

/// The optional per-client guard: `count` per `period`, bursting to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// One process, one quota. `state_file` (resolved against the config
    /// file's directory) keeps the window across restarts; `None` keeps none.
    Memory { state_file: Option<PathBuf> },
    Redis {
        /// May carry a password: a secret, from this file or url_env / url_file.
        url: Secret,
        key_prefix: String,
        on_error: StoreOnError,
        replicas: u32,
        /// PEM roots a `rediss` server is checked against, instead of the web PKI's.
        ca_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOnError {
    Local,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}
