//! Configuration: the TOML file, checked once into typed values.
//!
//! `raw` mirrors the file; [`Config`] (in `types`) is what the rest of the
//! proxy sees. All cross-field rules live in `validate` and `clients`, so an
//! invalid file stops the process before any socket is bound, with the file,
//! line/column and key named (`error`).

mod cache;
mod clients;
mod cors;
mod credential;
mod describe;
mod env;
mod error;
mod raw;
mod reserve;
mod traces;
mod types;
mod units;
mod validate;

use std::fmt;
use std::path::Path;

pub use credential::DEFAULT_CREDENTIAL;
pub use env::FromEnv;
pub use error::{ConfigError, Place};
pub use reserve::{Split, MAX_RESERVED};
pub use types::*;

use crate::secret::SecretEnv;
use error::parse_error;
use raw::RawConfig;
use validate::Validator;

/// The client label used when no `[[clients]]` are configured; reserved, so
/// no configured client can take it.
pub const ANONYMOUS: &str = "anonymous";

/// The most sends the state file keeps (4 MB on disk, 3 MB in memory): a
/// window with a larger N restarts knowing only its newest sends.
pub const MAX_STATE_SLOTS: u64 = 100_000;

impl Config {
    /// Reads and validates `path`, loading every secret it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &SecretEnv::system())
    }

    /// Like [`Config::load`], reading secrets through `env` (tests pass a fixed
    /// map instead of touching the process environment).
    pub fn load_with(path: &Path, env: &SecretEnv) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_with(&text, path, env)
    }

    /// Validates config text; `path` is only used in messages and to resolve
    /// relative file names.
    pub fn parse_with(text: &str, path: &Path, env: &SecretEnv) -> Result<Self, ConfigError> {
        // The file alone first, so its own mistakes are named by line.
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(e, text, path))?;
        let vars = env.vars_with_prefix(env::PREFIX);
        if vars.is_empty() {
            return Validator { path, env }
                .validate(raw)
                .map_err(|e| e.located(text, &[]));
        }
        let (raw, from_env) = env::apply(text, vars, path)?;
        let mut config = Validator { path, env }
            .validate(raw)
            .map_err(|e| e.located(text, &from_env))?;
        config.from_env = from_env;
        Ok(config)
    }

    /// What deserves attention without making the config invalid.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(shortest) = self.limits.iter().min_by_key(|l| l.per) {
            for r in self.cache.rules.iter().filter(|r| r.ttl > shortest.per) {
                out.push(format!(
                    "cache rule \"{}\": ttl {} is longer than the shortest window ({}): callers may \
                     see data older than a whole quota period",
                    r.path,
                    humantime::format_duration(r.ttl),
                    shortest.name
                ));
            }
        }
        if self.admission.dry_run {
            out.push(
                "admission.dry_run = true: NOTHING waits or is refused for quota — Dastra's \
                 quota is unguarded (its own 429s reach callers); calls that would have \
                 queued or been refused are only counted (dry_run_total) and logged"
                    .to_owned(),
            );
        }
        if self.passthrough().is_some() {
            out.push(
                "credential.kind = \"passthrough\": every caller credential gets its own quota"
                    .to_owned(),
            );
        }
        let largest = self.limits.iter().map(|l| l.requests).max().unwrap_or(0);
        if matches!(
            self.store,
            StoreConfig::Memory {
                state_file: Some(_)
            }
        ) && u64::from(largest) > MAX_STATE_SLOTS
        {
            out.push(format!(
                "store.state_file keeps the newest {MAX_STATE_SLOTS} sends: a window of \
                 {largest} restarts knowing only those"
            ));
        }
        if matches!(self.store, StoreConfig::Memory { state_file: None }) {
            out.push(
                "store.state_file = \"\": a restart forgets the window, so right after one \
                 Dastra can see up to twice a window's limit"
                    .to_owned(),
            );
        }
        if self.upstream.scheme == http::uri::Scheme::HTTP {
            out.push(format!(
                "upstream.url is plain http ({}): the Dastra credential crosses the network in clear",
                self.upstream.origin()
            ));
        }
        for (at, c) in self.every_credential() {
            if let CredentialConfig::OAuth2 { token_url, .. } = c {
                if token_url.scheme() == Some(&http::uri::Scheme::HTTP) {
                    out.push(format!(
                        "{at}.token_url is plain http ({token_url}): the client secret crosses the network in clear"
                    ));
                }
            }
        }
        out.extend(self.shared_secrets());
        let everyone = |nets: &[ipnet::IpNet]| nets.iter().any(|n| n.prefix_len() == 0);
        if everyone(&self.access.allow) && self.clients.is_empty() {
            out.push(
                "access.allow admits every address and no [[clients]] ask for a key: anyone who \
                 reaches the listener spends the Dastra quota with the proxy's credential"
                    .to_owned(),
            );
        }
        if everyone(&self.access.trusted_proxies) {
            out.push(
                "access.trusted_proxies trusts every address: any caller can name its own \
                 client address in a forwarding header"
                    .to_owned(),
            );
        }
        if !self.clients.is_empty()
            && self.server.tls.is_none()
            && !self.server.listen.ip().is_loopback()
        {
            out.push(format!(
                "[[clients]] send their keys over plain http on {}: set server.tls, or listen on loopback behind a TLS terminator",
                self.server.listen
            ));
        }
        let loopback_only = |nets: &[ipnet::IpNet]| {
            !nets.is_empty() && nets.iter().all(|n| n.network().is_loopback())
        };
        for (key, addr, allow, allow_key) in [
            (
                "server.listen",
                self.server.listen,
                &self.access.allow,
                "access.allow",
            ),
            (
                "server.admin_listen",
                self.server.admin_listen,
                &self.server.admin_allow,
                "server.admin_allow",
            ),
        ] {
            if !addr.ip().is_loopback() && loopback_only(allow) {
                out.push(format!(
                    "{key} = \"{addr}\" listens beyond this host, but {allow_key} admits only \
                     loopback: every other caller gets 403 (add the networks that call it)"
                ));
            }
        }
        if self.access.allow.is_empty() {
            out.push("access.allow is empty: every caller is refused".to_owned());
        }
        out
    }
}

impl Config {
    /// Windows that can never bind given the others (Dastra's own pair: 500 a
    /// minute can never reach 10,000 in ten minutes): a note, not a warning,
    /// since nothing is wrong with them.
    fn never_binding(&self) -> Vec<String> {
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
                    wj.name,
                    wj.requests,
                    wj.name,
                    wi.name,
                    wi.requests,
                    cover,
                    most,
                    wj.name,
                    wj.requests
                ));
                    break;
                }
            }
        }
        out
    }
}

impl Config {
    /// The files a reload reads besides the config itself: inbound TLS and
    /// `*_file` secrets (what `server.watch` looks at).
    pub fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        if let Some(t) = &self.server.tls {
            out.push(t.cert_file.clone());
            out.push(t.key_file.clone());
        }
        let secrets = self
            .every_credential()
            .into_iter()
            .flat_map(|(_, c)| c.secrets());
        for s in secrets {
            if let crate::secret::SecretSource::File(p) = s.source() {
                out.push(p.clone());
            }
        }
        out
    }

    /// Facts an operator should know that are not mistakes.
    pub fn notes(&self) -> Vec<String> {
        let mut out = self.never_binding();
        out.extend(self.reserve_notes());
        if matches!(self.store, StoreConfig::Memory { .. }) {
            out.push(
                "store.kind = \"memory\": this process holds the whole quota by itself; k \
                 sidecars or overlapping replicas on one Dastra credential hold k quotas \
                 (use store.kind = \"redis\" to share one)"
                    .to_owned(),
            );
        }
        out
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe::write(self, f)
    }
}

#[cfg(test)]
mod credential_tests;
#[cfg(test)]
mod tests;
