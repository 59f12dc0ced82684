//! Configuration: the TOML file, checked once into typed values.
//!
//! `raw` mirrors the file; [`Config`] is what the rest of the proxy sees. All
//! cross-field rules live in `validate`, so an invalid file stops the process
//! before any socket is bound, with the file, line/column and key named.

mod describe;
mod raw;
mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;

use crate::secret::{Secret, SecretError, SecretSource};
use raw::RawConfig;

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages and reloads.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub credential: CredentialConfig,
    /// Every window is enforced on the same quota key.
    pub limits: Vec<Limit>,
    pub admission: AdmissionConfig,
    pub access: AccessConfig,
    /// Empty: no client keys are asked for (sidecar use).
    pub clients: Vec<ClientConfig>,
    pub store: StoreConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Base that upstream `Location` headers are rewritten to, without a trailing `/`.
    pub public_url: String,
    pub max_request_body: u64,
    pub shutdown_grace: Duration,
    /// Inbound TLS, so client keys never cross the network in clear.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
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
}

impl UpstreamConfig {
    /// `scheme://authority`, as upstream `Location` headers spell it.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// How the proxy authenticates to Dastra.
#[derive(Debug, Clone)]
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
    Passthrough,
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

#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    pub on_limit: OnLimit,
    pub max_queue: usize,
    pub max_wait: Duration,
    /// Added to every window, to absorb jitter between here and Dastra.
    pub margin: Duration,
    pub upstream_429: Upstream429,
}

#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub allow: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    pub key_sha256: [u8; 32],
    /// Narrows `[access].allow` for this client.
    pub allow: Option<Vec<IpNet>>,
    pub weight: u32,
    pub rate: Option<ClientRate>,
}

/// The optional per-client guard: `count` per `period`, bursting to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    Memory,
    Redis {
        /// May carry a password, so it is treated as a secret when printed.
        url: String,
        key_prefix: String,
        on_error: StoreOnError,
        replicas: u32,
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

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// A config that cannot be used, said so that the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {}{message}", path.display(), key_prefix(key))]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    #[error("{}: `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: `{key}`: {source}", path.display())]
    Secret {
        path: PathBuf,
        key: String,
        source: SecretError,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default()
}

impl Config {
    /// Reads and validates `path`, loading every secret it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(e, text, path))?;
        Validator { path }.validate(raw)
    }

    /// Human notes that do not make the config invalid, such as windows that
    /// can never bind given the others.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (j, wj) in self.limits.iter().enumerate() {
            for (i, wi) in self.limits.iter().enumerate() {
                if i == j || wi.per > wj.per {
                    continue;
                }
                let cover = wj.per.as_nanos().div_ceil(wi.per.as_nanos());
                let most = u128::from(wi.requests) * cover;
                if most <= u128::from(wj.requests) && (most < u128::from(wj.requests) || i < j) {
                    out.push(format!(
                        "window \"{}\" ({} per {}) can never bind: \"{}\" allows at most {} x {} = {} \
                         requests in any {}, which is within {}",
                        wj.name, wj.requests, wj.name, wi.name, wi.requests, cover, most, wj.name,
                        wj.requests
                    ));
                    break;
                }
            }
        }
        if matches!(self.credential, CredentialConfig::Passthrough) {
            out.push(
                "credential.kind = \"passthrough\": every caller credential gets its own quota"
                    .to_owned(),
            );
        }
        if self.access.allow.is_empty() {
            out.push("access.allow is empty: every caller is refused".to_owned());
        }
        out
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe::write(self, f)
    }
}

fn parse_error(e: toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column, key_at(text, span.start))
        }
        None => (0, 0, None),
    };
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        key,
        message: e.message().trim().to_owned(),
    }
}

/// The dotted key (`server.listen`) written on the line that holds `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = line.split_once('=').map(|(k, _)| k.trim().to_owned());
    match (table, key) {
        (Some(t), Some(k)) if !line.trim_start().starts_with('[') => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), _) => Some(t),
        (None, None) => None,
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn secret(
        &self,
        key: &str,
        env: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Secret, ConfigError> {
        let source = match (env, file) {
            (Some(e), None) => SecretSource::Env(e),
            (None, Some(f)) => SecretSource::File(self.relative(&f)),
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    &format!("{key}_env"),
                    format!("set either {key}_env or {key}_file, not both"),
                ))
            }
            (None, None) => {
                return Err(self.invalid(
                    &format!("{key}_env"),
                    format!("missing: name the secret with {key}_env or {key}_file"),
                ))
            }
        };
        Secret::load(source).map_err(|source| ConfigError::Secret {
            path: self.path.to_owned(),
            key: key.to_owned(),
            source,
        })
    }

    /// Paths in the file are relative to the file, not to the working directory.
    fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let upstream = self.upstream(raw.upstream)?;
        let credential = self.credential(raw.credential)?;
        let limits = self.limits(raw.limits)?;
        let admission = self.admission(raw.admission)?;
        let access = AccessConfig {
            allow: raw.access.allow.unwrap_or_else(|| {
                vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
            }),
            trusted_proxies: raw.access.trusted_proxies.unwrap_or_default(),
        };
        let clients = self.clients(raw.clients)?;
        if matches!(credential, CredentialConfig::Passthrough) && !clients.is_empty() {
            return Err(self.invalid(
                "credential.kind",
                "\"passthrough\" cannot be combined with [[clients]]: the caller's credential would be both a client key and the Dastra credential",
            ));
        }
        let store = self.store(raw.store)?;
        let log = self.log(raw.log)?;
        Ok(Config {
            source: self.path.to_owned(),
            server,
            upstream,
            credential,
            limits,
            admission,
            access,
            clients,
            store,
            log,
        })
    }

    fn server(&self, raw: raw::RawServer) -> Result<ServerConfig, ConfigError> {
        let addr =
            |key: &str, v: Option<String>, default: &str| -> Result<SocketAddr, ConfigError> {
                let v = v.unwrap_or_else(|| default.to_owned());
                v.parse().map_err(|_| {
                    self.invalid(
                        key,
                        format!("`{v}` is not an address such as \"127.0.0.1:8080\""),
                    )
                })
            };
        let listen = addr("server.listen", raw.listen, "127.0.0.1:8080")?;
        let admin_listen = addr("server.admin_listen", raw.admin_listen, "127.0.0.1:9090")?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(self.invalid("server.admin_listen", "must differ from server.listen"));
        }
        let tls = raw.tls.map(|t| TlsFiles {
            cert_file: self.relative(&t.cert_file),
            key_file: self.relative(&t.key_file),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = raw
            .public_url
            .unwrap_or_else(|| format!("{scheme}://{listen}"));
        let parsed: Uri = public_url.parse().map_err(|_| {
            self.invalid("server.public_url", format!("`{public_url}` is not a URL"))
        })?;
        if parsed.scheme().is_none() || parsed.authority().is_none() {
            return Err(self.invalid(
                "server.public_url",
                "needs a scheme and host, e.g. \"http://127.0.0.1:8080\"",
            ));
        }
        let max_request_body =
            units::parse_size(raw.max_request_body.as_deref().unwrap_or("50MiB"))
                .map_err(|m| self.invalid("server.max_request_body", m))?;
        Ok(ServerConfig {
            listen,
            admin_listen,
            public_url: public_url.trim_end_matches('/').to_owned(),
            max_request_body,
            shutdown_grace: raw.shutdown_grace.unwrap_or(Duration::from_secs(30)),
            tls,
        })
    }

    fn upstream(&self, raw: raw::RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let url = raw
            .url
            .unwrap_or_else(|| "https://api.dastra.eu".to_owned());
        let uri: Uri = url
            .parse()
            .map_err(|_| self.invalid("upstream.url", format!("`{url}` is not a URL")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .filter(|s| *s == http::uri::Scheme::HTTPS || *s == http::uri::Scheme::HTTP);
        let (Some(scheme), Some(authority)) = (scheme, uri.authority().cloned()) else {
            return Err(self.invalid(
                "upstream.url",
                format!("`{url}` needs an https:// (or http://) scheme and a host"),
            ));
        };
        if uri.query().is_some() {
            return Err(self.invalid("upstream.url", "must not carry a query string"));
        }
        let connect_timeout = raw.connect_timeout.unwrap_or(Duration::from_secs(5));
        let timeout = raw.timeout.unwrap_or(Duration::from_secs(60));
        if connect_timeout.is_zero() || timeout.is_zero() {
            return Err(self.invalid("upstream.timeout", "timeouts must be greater than zero"));
        }
        Ok(UpstreamConfig {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            connect_timeout,
            timeout,
            ca_file: raw.ca_file.map(|p| self.relative(&p)),
        })
    }

    fn credential(&self, raw: raw::RawCredential) -> Result<CredentialConfig, ConfigError> {
        let kind = raw.kind.as_deref().unwrap_or("api_key");
        let unused = |keys: &[(&str, bool)]| -> Result<(), ConfigError> {
            match keys.iter().find(|(_, set)| *set) {
                Some((k, _)) => Err(self.invalid(
                    &format!("credential.{k}"),
                    format!("not used by kind = \"{kind}\""),
                )),
                None => Ok(()),
            }
        };
        let api_set = raw.api_key_env.is_some() || raw.api_key_file.is_some();
        let pair_set = raw.public_key_env.is_some()
            || raw.public_key_file.is_some()
            || raw.private_key_env.is_some()
            || raw.private_key_file.is_some();
        let oauth_set = raw.token_url.is_some() || raw.scope.is_some();
        match kind {
            "api_key" => {
                unused(&[("public_key_env", pair_set), ("token_url", oauth_set)])?;
                let env = if api_set {
                    raw.api_key_env
                } else {
                    Some("DASTRA_API_KEY".to_owned())
                };
                Ok(CredentialConfig::ApiKey(self.secret(
                    "credential.api_key",
                    env,
                    raw.api_key_file,
                )?))
            }
            "basic" => {
                unused(&[("api_key_env", api_set), ("token_url", oauth_set)])?;
                let (public, private) = self.key_pair(raw)?;
                Ok(CredentialConfig::Basic { public, private })
            }
            "oauth2" => {
                unused(&[("api_key_env", api_set)])?;
                let url = raw
                    .token_url
                    .clone()
                    .unwrap_or_else(|| "https://account.dastra.eu/connect/token".to_owned());
                let token_url: Uri = url
                    .parse()
                    .ok()
                    .filter(|u: &Uri| u.scheme().is_some() && u.authority().is_some())
                    .ok_or_else(|| {
                        self.invalid(
                            "credential.token_url",
                            format!("`{url}` is not an absolute URL"),
                        )
                    })?;
                let scope = raw.scope.clone().unwrap_or_else(|| "api1".to_owned());
                let (public, private) = self.key_pair(raw)?;
                Ok(CredentialConfig::OAuth2 {
                    token_url,
                    scope,
                    public,
                    private,
                })
            }
            "passthrough" => {
                unused(&[
                    ("api_key_env", api_set),
                    ("public_key_env", pair_set),
                    ("token_url", oauth_set),
                ])?;
                Ok(CredentialConfig::Passthrough)
            }
            other => Err(self.invalid(
                "credential.kind",
                format!("unknown kind `{other}` (api_key, basic, oauth2 or passthrough)"),
            )),
        }
    }

    /// Dastra's public/private key pair, used by both `basic` and `oauth2`.
    fn key_pair(&self, raw: raw::RawCredential) -> Result<(Secret, Secret), ConfigError> {
        Ok((
            self.secret(
                "credential.public_key",
                raw.public_key_env,
                raw.public_key_file,
            )?,
            self.secret(
                "credential.private_key",
                raw.private_key_env,
                raw.private_key_file,
            )?,
        ))
    }

    fn limits(&self, raw: Option<Vec<raw::RawLimit>>) -> Result<Vec<Limit>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Limit::dastra());
        };
        if raw.is_empty() {
            return Err(self.invalid("limits", "at least one [[limits]] window is needed"));
        }
        let mut out: Vec<Limit> = Vec::with_capacity(raw.len());
        for (i, l) in raw.into_iter().enumerate() {
            let key = format!("limits[{i}]");
            let requests = u32::try_from(l.requests)
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .ok_or_else(|| {
                    self.invalid(&format!("{key}.requests"), "must be between 1 and 10000000")
                })?;
            let per = humantime::parse_duration(&l.per)
                .map_err(|e| self.invalid(&format!("{key}.per"), format!("`{}`: {e}", l.per)))?;
            if per < Duration::from_millis(1) {
                return Err(self.invalid(&format!("{key}.per"), "must be at least 1ms"));
            }
            if out.iter().any(|o| o.name == l.per) {
                return Err(self.invalid(
                    &format!("{key}.per"),
                    format!("window \"{}\" is configured twice", l.per),
                ));
            }
            out.push(Limit {
                requests,
                per,
                name: l.per,
            });
        }
        Ok(out)
    }

    fn admission(&self, raw: raw::RawAdmission) -> Result<AdmissionConfig, ConfigError> {
        let on_limit = match raw.on_limit.as_deref().unwrap_or("queue") {
            "queue" => OnLimit::Queue,
            "reject" => OnLimit::Reject,
            o => {
                return Err(self.invalid(
                    "admission.on_limit",
                    format!("`{o}`: use \"queue\" or \"reject\""),
                ))
            }
        };
        let upstream_429 = match raw.upstream_429.as_deref().unwrap_or("pause") {
            "pause" => Upstream429::Pause,
            "pass" => Upstream429::Pass,
            o => {
                return Err(self.invalid(
                    "admission.upstream_429",
                    format!("`{o}`: use \"pause\" or \"pass\""),
                ))
            }
        };
        let max_queue = usize::try_from(raw.max_queue.unwrap_or(1000))
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| self.invalid("admission.max_queue", "must be between 0 and 1000000"))?;
        Ok(AdmissionConfig {
            on_limit,
            max_queue,
            max_wait: raw.max_wait.unwrap_or(Duration::from_secs(30)),
            margin: raw.margin.unwrap_or(Duration::from_millis(250)),
            upstream_429,
        })
    }

    fn clients(&self, raw: Vec<raw::RawClient>) -> Result<Vec<ClientConfig>, ConfigError> {
        let mut out: Vec<ClientConfig> = Vec::with_capacity(raw.len());
        for (i, c) in raw.into_iter().enumerate() {
            let key = format!("clients[{i}]");
            if c.name.is_empty()
                || c.name.len() > 64
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(self.invalid(
                    &format!("{key}.name"),
                    "1 to 64 characters of A-Z a-z 0-9 - _ .",
                ));
            }
            if c.name == crate::access::ANONYMOUS || out.iter().any(|o| o.name == c.name) {
                return Err(self.invalid(
                    &format!("{key}.name"),
                    format!("`{}` is reserved or used twice", c.name),
                ));
            }
            let digest = hex::decode(c.key_sha256.trim())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| {
                    self.invalid(
                        &format!("{key}.key_sha256"),
                        "must be 64 hex digits from `dastra-proxy hash-key`",
                    )
                })?;
            if out.iter().any(|o| o.key_sha256 == digest) {
                return Err(self.invalid(
                    &format!("{key}.key_sha256"),
                    "the same key is given to two clients",
                ));
            }
            let weight = u32::try_from(c.weight.unwrap_or(1))
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| {
                    self.invalid(&format!("{key}.weight"), "must be between 1 and 1000")
                })?;
            let rate = match (c.rate, c.burst) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(self.invalid(&format!("{key}.burst"), "needs a rate"))
                }
                (Some(r), burst) => {
                    let (count, period) = units::parse_rate(&r)
                        .map_err(|m| self.invalid(&format!("{key}.rate"), m))?;
                    let burst = u32::try_from(burst.unwrap_or(i64::from(count)))
                        .ok()
                        .filter(|b| *b >= 1)
                        .ok_or_else(|| {
                            self.invalid(&format!("{key}.burst"), "must be at least 1")
                        })?;
                    Some(ClientRate {
                        count,
                        period,
                        burst,
                    })
                }
            };
            out.push(ClientConfig {
                name: c.name,
                key_sha256: digest,
                allow: c.allow,
                weight,
                rate,
            });
        }
        Ok(out)
    }

    fn store(&self, raw: raw::RawStore) -> Result<StoreConfig, ConfigError> {
        match raw.kind.as_deref().unwrap_or("memory") {
            "memory" => {
                let set = [
                    ("url", raw.url.is_some()),
                    ("key_prefix", raw.key_prefix.is_some()),
                    ("on_error", raw.on_error.is_some()),
                    ("replicas", raw.replicas.is_some()),
                ];
                if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                    return Err(
                        self.invalid(&format!("store.{k}"), "only used with kind = \"redis\"")
                    );
                }
                Ok(StoreConfig::Memory)
            }
            "redis" => {
                let url = raw
                    .url
                    .ok_or_else(|| self.invalid("store.url", "needed with kind = \"redis\""))?;
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(self.invalid("store.url", "must start with redis:// or rediss://"));
                }
                let on_error = match raw.on_error.as_deref().unwrap_or("local") {
                    "local" => StoreOnError::Local,
                    "reject" => StoreOnError::Reject,
                    o => {
                        return Err(self.invalid(
                            "store.on_error",
                            format!("`{o}`: use \"local\" or \"reject\""),
                        ))
                    }
                };
                let replicas = u32::try_from(raw.replicas.unwrap_or(1))
                    .ok()
                    .filter(|r| *r >= 1)
                    .ok_or_else(|| self.invalid("store.replicas", "must be at least 1"))?;
                Ok(StoreConfig::Redis {
                    url,
                    key_prefix: raw.key_prefix.unwrap_or_else(|| "dastra-proxy".to_owned()),
                    on_error,
                    replicas,
                })
            }
            o => Err(self.invalid("store.kind", format!("`{o}`: use \"memory\" or \"redis\""))),
        }
    }

    fn log(&self, raw: raw::RawLog) -> Result<LogConfig, ConfigError> {
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            o => return Err(self.invalid("log.format", format!("`{o}`: use \"text\" or \"json\""))),
        };
        let level = raw.level.unwrap_or_else(|| "info".to_owned());
        tracing_subscriber::EnvFilter::try_new(&level)
            .map_err(|e| self.invalid("log.level", format!("`{level}`: {e}")))?;
        Ok(LogConfig { format, level })
    }
}

#[cfg(test)]
mod tests;
