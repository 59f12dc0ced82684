//! Turning the raw file into a [`Config`]: every rule that spans fields is
//! checked here, so an invalid file stops the process before any socket is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use super::error::ConfigError;
use super::raw::{self, RawConfig};
use super::types::*;
use crate::secret::{Secret, SecretEnv, SecretSource};

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    /// Where `*_env` and `*_file` secrets are read from.
    pub(super) env: &'a SecretEnv,
}

impl Validator<'_> {
    pub(super) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            message: message.into(),
            at: None,
        }
    }

    pub(super) fn secret(
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
        Secret::load(source, self.env).map_err(|source| ConfigError::Secret {
            path: self.path.to_owned(),
            key: key.to_owned(),
            source,
            at: None,
        })
    }

    /// An allow-list: CIDR networks, a bare address meaning itself alone
    /// (/32 or /128); host bits set are refused with the network they would
    /// mean, since `10.1.2.3/8` admitting all of 10/8 is rarely what was meant.
    pub(super) fn nets(
        &self,
        key: &str,
        raw: Option<Vec<String>>,
    ) -> Result<Option<Vec<ipnet::IpNet>>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let mut out = Vec::with_capacity(raw.len());
        for (i, entry) in raw.iter().enumerate() {
            let at = format!("{key}[{i}]");
            let entry = entry.trim();
            let net = match entry.parse::<ipnet::IpNet>() {
                Ok(net) if net.trunc() != net => {
                    return Err(self.invalid(
                        &at,
                        format!(
                            "\"{entry}\" has host bits set: write \"{}\" for the whole network, \
                             or \"{}\" for the one address",
                            net.trunc(),
                            ipnet::IpNet::from(net.addr())
                        ),
                    ))
                }
                Ok(net) => net,
                Err(_) => match entry.parse::<std::net::IpAddr>() {
                    Ok(addr) => ipnet::IpNet::from(addr),
                    Err(_) => {
                        return Err(self.invalid(
                            &at,
                            format!(
                            "\"{entry}\" is neither an address nor a network like \"10.0.0.0/8\""
                        ),
                        ))
                    }
                },
            };
            out.push(net);
        }
        Ok(Some(out))
    }

    /// Paths in the file are relative to the file, not to the working directory.
    pub(super) fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let upstream = self.upstream(raw.upstream)?;
        let limits = match raw.limits {
            Some(l) => self.limits(l, "limits")?,
            None => Limit::dastra(),
        };
        let (credential, credentials) = self.credentials(raw.credential, raw.credentials)?;
        let mut admission = self.admission(raw.admission)?;
        // A permit is spent before the token fetch (OAuth2), the connect and
        // the wait for the answer head; the call lands by then at the latest.
        admission.flight = upstream.connect_timeout
            + upstream.timeout
            + if credential
                .iter()
                .chain(credentials.iter().map(|n| &n.credential))
                .any(|c| matches!(c, CredentialConfig::OAuth2 { .. }))
            {
                TOKEN_TIMEOUT
            } else {
                Duration::ZERO
            };
        let access = AccessConfig {
            allow: self
                .nets("access.allow", raw.access.allow)?
                .unwrap_or_else(loopback),
            trusted_proxies: self
                .nets("access.trusted_proxies", raw.access.trusted_proxies)?
                .unwrap_or_default(),
            forwarded_header: match raw.access.forwarded_header.as_deref() {
                None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
                Some("forwarded") => ForwardedHeader::Forwarded,
                Some(o) => {
                    return Err(self.invalid(
                        "access.forwarded_header",
                        format!("`{o}`: use \"x-forwarded-for\" or \"forwarded\""),
                    ))
                }
            },
        };
        let clients = self.clients(raw.clients)?;
        if matches!(credential, Some(CredentialConfig::Passthrough { .. })) && !clients.is_empty() {
            return Err(self.invalid(
                "credential.kind",
                "\"passthrough\" cannot be combined with [[clients]]: the caller's credential would be both a client key and the Dastra credential",
            ));
        }
        self.routes(credential.as_ref(), &credentials, &clients)?;
        let store = self.store(raw.store)?;
        if let StoreConfig::Redis { replicas, .. } = &store {
            // While Redis is down each replica holds limit / replicas: with
            // more replicas than a window's N, that share would round to zero
            // (or, rounded up to one, together exceed N).
            let every = limits
                .iter()
                .chain(credentials.iter().flat_map(|n| n.limits.iter().flatten()));
            if let Some(l) = every.into_iter().find(|l| l.requests < *replicas) {
                return Err(self.invalid(
                    "store.replicas",
                    format!(
                        "{replicas} replicas cannot share window \"{}\" of {} requests: each \
                         replica's share while Redis is down would be less than one call",
                        l.name, l.requests
                    ),
                ));
            }
        }
        self.reserves(&limits, &credentials, &clients, &store)?;
        let log = self.log(raw.log)?;
        let cache = self.cache(raw.cache)?;
        let cors = self.cors(raw.cors)?;
        let tracing = self.tracing(raw.tracing)?;
        Ok(Config {
            source: self.path.to_owned(),
            server,
            upstream,
            credential,
            credentials,
            limits,
            admission,
            access,
            clients,
            store,
            log,
            cache,
            cors,
            tracing,
            from_env: Vec::new(),
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
            super::units::parse_size(raw.max_request_body.as_deref().unwrap_or("50MiB"))
                .map_err(|m| self.invalid("server.max_request_body", m))?;
        let positive = |key: &str, v: Option<Duration>, default: u64| {
            let d = v.unwrap_or(Duration::from_secs(default));
            if d.is_zero() {
                Err(self.invalid(key, "must be greater than zero"))
            } else {
                Ok(d)
            }
        };
        let count = |key: &str, v: Option<i64>, default: i64| {
            usize::try_from(v.unwrap_or(default))
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .ok_or_else(|| self.invalid(key, "must be between 1 and 10000000"))
        };
        Ok(ServerConfig {
            listen,
            admin_listen,
            public_url: public_url.trim_end_matches('/').to_owned(),
            max_request_body,
            shutdown_grace: raw.shutdown_grace.unwrap_or(Duration::from_secs(30)),
            tls,
            header_read_timeout: positive(
                "server.header_read_timeout",
                raw.header_read_timeout,
                10,
            )?,
            idle_timeout: positive("server.idle_timeout", raw.idle_timeout, 60)?,
            body_read_timeout: positive("server.body_read_timeout", raw.body_read_timeout, 30)?,
            max_connections: count("server.max_connections", raw.max_connections, 10_000)?,
            max_connections_per_ip: count(
                "server.max_connections_per_ip",
                raw.max_connections_per_ip,
                512,
            )?,
            watch: raw.watch.unwrap_or(false),
            max_concurrent_streams: u32::try_from(raw.max_concurrent_streams.unwrap_or(100))
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    self.invalid(
                        "server.max_concurrent_streams",
                        "must be between 1 and 10000",
                    )
                })?,
            max_buffered_body: super::units::parse_size(
                raw.max_buffered_body.as_deref().unwrap_or("64MiB"),
            )
            .map_err(|m| self.invalid("server.max_buffered_body", m))?,
            admin_allow: self
                .nets("server.admin_allow", raw.admin_allow)?
                .unwrap_or_else(loopback),
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
        let breaker_failures = u32::try_from(raw.breaker_failures.unwrap_or(5))
            .ok()
            .filter(|n| *n <= 1000)
            .ok_or_else(|| {
                self.invalid(
                    "upstream.breaker_failures",
                    "must be between 0 (no breaker) and 1000",
                )
            })?;
        let breaker_open = raw.breaker_open.unwrap_or(Duration::from_secs(10));
        if breaker_open.is_zero() {
            return Err(self.invalid(
                "upstream.breaker_open",
                "must be greater than zero (breaker_failures = 0 turns the breaker off)",
            ));
        }
        Ok(UpstreamConfig {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            connect_timeout,
            timeout,
            ca_file: raw.ca_file.map(|p| self.relative(&p)),
            breaker_failures,
            breaker_open,
            adapt: raw.adapt.unwrap_or(true),
            retries: u32::try_from(raw.retries.unwrap_or(2))
                .ok()
                .filter(|n| *n <= 10)
                .ok_or_else(|| self.invalid("upstream.retries", "must be between 0 and 10"))?,
            retry_budget: Some(raw.retry_budget.unwrap_or(0.1))
                .filter(|b| (0.0..=1.0).contains(b))
                .ok_or_else(|| {
                    self.invalid(
                        "upstream.retry_budget",
                        "must be between 0 and 1 (a share of calls)",
                    )
                })?,
        })
    }

    /// `at`: `limits`, or `credentials[i].limits` for a key's own windows.
    pub(super) fn limits(
        &self,
        raw: Vec<raw::RawLimit>,
        at: &str,
    ) -> Result<Vec<Limit>, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid(at, format!("at least one [[{at}]] window is needed")));
        }
        let mut out: Vec<Limit> = Vec::with_capacity(raw.len());
        for (i, l) in raw.into_iter().enumerate() {
            let key = format!("{at}[{i}]");
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
            flight: Duration::ZERO,
            dry_run: raw.dry_run.unwrap_or(false),
            aging: raw.aging.unwrap_or(Duration::from_secs(10)),
        })
    }
}

fn loopback() -> Vec<ipnet::IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("a valid network"),
        "::1/128".parse().expect("a valid network"),
    ]
}
