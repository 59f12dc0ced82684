//! Validation of `[[clients]]`, `[store]` and `[log]`.

use super::error::ConfigError;
use super::raw;
use super::types::*;
use super::validate::Validator;
use crate::secret::{Secret, SecretSource};
use sha2::{Digest, Sha256};

/// Keys anyone would try first (and that examples on the web use): a client
/// whose digest is one of these is as good as open.
const WEAK_KEYS: [&str; 9] = [
    "", "abc", "hello", "test", "password", "secret", "changeme", "key", "123456",
];

/// `store.state_file` when the file names none, relative to the config file.
const DEFAULT_STATE_FILE: &str = "dastra-proxy.state";

/// A client's or credential's name: it goes in metric labels and logs as it is.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
}

impl Validator<'_> {
    pub(super) fn clients(
        &self,
        raw: Vec<raw::RawClient>,
    ) -> Result<Vec<ClientConfig>, ConfigError> {
        let mut out: Vec<ClientConfig> = Vec::with_capacity(raw.len());
        for (i, c) in raw.into_iter().enumerate() {
            let key = format!("clients[{i}]");
            if !valid_name(&c.name) {
                return Err(self.invalid(
                    &format!("{key}.name"),
                    "1 to 64 characters of A-Z a-z 0-9 - _ .",
                ));
            }
            if c.name == super::ANONYMOUS || out.iter().any(|o| o.name == c.name) {
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
            if let Some(weak) = WEAK_KEYS
                .iter()
                .find(|k| <[u8; 32]>::from(Sha256::digest(k.as_bytes())) == digest)
            {
                return Err(self.invalid(
                    &format!("{key}.key_sha256"),
                    format!(
                        "is the digest of the well-known key \"{weak}\": anyone can guess it; \
                         make one with `dastra-proxy gen-key`"
                    ),
                ));
            }
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
                    let (count, period) = super::units::parse_rate(&r)
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
                allow: self.nets(&format!("{key}.allow"), c.allow)?,
                weight,
                rate,
                credential: c.credential,
                limits: match c.limits {
                    Some(l) => self.limits(l, &format!("{key}.limits"))?,
                    None => Vec::new(),
                },
                dry_run: c.dry_run.unwrap_or(false),
                reserve: match c.reserve.unwrap_or(0.0) {
                    r if (0.0..=0.9).contains(&r) => r,
                    r => {
                        return Err(self.invalid(
                            &format!("{key}.reserve"),
                            format!("{r} is not a fraction between 0 and 0.9"),
                        ))
                    }
                },
                priority: {
                    let p = c.priority.as_deref().unwrap_or("normal");
                    (PRIORITIES.iter().position(|n| *n == p))
                        .and_then(|i| u8::try_from(i).ok())
                        .ok_or_else(|| {
                            self.invalid(
                                &format!("{key}.priority"),
                                format!("`{p}`: use \"high\", \"normal\" or \"low\""),
                            )
                        })?
                },
            });
        }
        Ok(out)
    }

    pub(super) fn store(&self, raw: raw::RawStore) -> Result<StoreConfig, ConfigError> {
        match raw.kind.as_deref().unwrap_or("memory") {
            "memory" => {
                let set = [
                    ("url", raw.url.is_some()),
                    ("url_env", raw.url_env.is_some()),
                    ("url_file", raw.url_file.is_some()),
                    ("key_prefix", raw.key_prefix.is_some()),
                    ("on_error", raw.on_error.is_some()),
                    ("replicas", raw.replicas.is_some()),
                    ("ca_file", raw.ca_file.is_some()),
                ];
                if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                    return Err(
                        self.invalid(&format!("store.{k}"), "only used with kind = \"redis\"")
                    );
                }
                let state_file = match raw.state_file.as_deref() {
                    None => Some(self.relative(std::path::Path::new(DEFAULT_STATE_FILE))),
                    Some("") => None,
                    Some(f) => Some(self.relative(std::path::Path::new(f))),
                };
                Ok(StoreConfig::Memory { state_file })
            }
            "redis" => {
                // `""` (keep nothing) is allowed: an image's memory config
                // turned into a Redis one from the environment says so.
                if raw.state_file.as_deref().is_some_and(|f| !f.is_empty()) {
                    return Err(self.invalid(
                        "store.state_file",
                        "only used with kind = \"memory\": Redis holds the shared window \
                         (set it to \"\" to turn a memory config into a Redis one)",
                    ));
                }
                // The URL may carry a password: it is a secret wherever it
                // comes from (this file, or url_env / url_file).
                let url = match (raw.url, raw.url_env.is_some() || raw.url_file.is_some()) {
                    (Some(_), true) => {
                        return Err(self.invalid("store.url", "set one of url, url_env or url_file"))
                    }
                    (Some(u), false) => {
                        Secret::from_value(SecretSource::File(self.path.to_owned()), u)
                    }
                    (None, true) => self.secret("store.url", raw.url_env, raw.url_file)?,
                    (None, false) => {
                        return Err(self.invalid(
                            "store.url",
                            "needed with kind = \"redis\" (or url_env / url_file)",
                        ))
                    }
                };
                let text = url.expose();
                let schemes = [
                    "redis://",
                    "rediss://",
                    "redis+cluster://",
                    "rediss+cluster://",
                ];
                if !schemes.iter().any(|s| text.starts_with(s)) {
                    return Err(self.invalid(
                        "store.url",
                        "must start with redis://, rediss://, redis+cluster:// or rediss+cluster://",
                    ));
                }
                if raw.ca_file.is_some() && !text.starts_with("rediss") {
                    return Err(self.invalid(
                        "store.ca_file",
                        "only used with rediss:// or rediss+cluster:// (TLS)",
                    ));
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
                    ca_file: raw.ca_file.map(|p| self.relative(&p)),
                })
            }
            o => Err(self.invalid("store.kind", format!("`{o}`: use \"memory\" or \"redis\""))),
        }
    }

    pub(super) fn log(&self, raw: raw::RawLog) -> Result<LogConfig, ConfigError> {
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
