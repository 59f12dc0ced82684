//! Everything a request needs, built once from the config.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::access::Access;
use crate::admission::{KeyBounds, LocalState, NamedQuota, Quotas, SharedStore};
use crate::config::{Config, StoreConfig, StoreOnError, Upstream429, ANONYMOUS};
use crate::credential::{Credentials, QuotaKey, Routes};
use crate::guard::Guard;
use crate::metrics::{CallMetrics, Metrics};
use crate::state_file::{StateError, StateFile};
use crate::store::RedisLink;
use crate::target::Target;
use crate::upstream::{build_client, upstream, Upstream, UpstreamError};

/// The parts of the config that SIGHUP may change, swapped as one.
#[derive(Debug)]
pub struct Policy {
    pub access: Access,
    pub cors: crate::cors::Cors,
    pub guard: Guard,
    pub upstream_429: Upstream429,
    /// `admission.dry_run` of this generation (the status page says so).
    pub dry_run: bool,
    /// Per-call series of this generation's clients.
    pub calls: CallMetrics,
    /// The Dastra credentials of this generation (an unchanged one is the
    /// previous generation's, its OAuth2 token kept).
    pub credentials: Arc<Credentials>,
    /// Which credential each client's calls go out with.
    pub routes: Routes,
    /// The windows each client's sends are counted in (`/quota`, metrics).
    pub spent_in: Vec<(Arc<str>, Vec<crate::config::Limit>)>,
}

impl Policy {
    fn new(cfg: &Config, metrics: &Metrics, credentials: Arc<Credentials>) -> Self {
        Self {
            routes: Routes::new(&credentials, &cfg.clients),
            spent_in: (cfg.client_windows().into_iter())
                .map(|(c, w)| (c.into(), w))
                .collect(),
            credentials,
            access: Access::new(cfg),
            cors: crate::cors::Cors::new(&cfg.cors),
            guard: Guard::new(&cfg.clients),
            upstream_429: cfg.admission.upstream_429,
            dry_run: cfg.admission.dry_run,
            calls: CallMetrics::new(
                metrics,
                cfg.clients.iter().map(|c| Arc::from(c.name.as_str())),
                ANONYMOUS.into(),
            ),
        }
    }
}

/// Shared state of the running proxy.
#[derive(Debug)]
pub struct App {
    /// The config the process started with; listeners, upstream, credential
    /// and store come from here and need a restart to change.
    pub config: Config,
    /// Every outbound call (Dastra and the token endpoint) goes through it.
    pub upstream: Upstream,
    /// Which request targets are ours (not an open proxy).
    pub target: Arc<Target>,
    pub quotas: Quotas,
    /// Coalesced GETs and cached answers (`[cache]`); reloadable.
    pub cache: Arc<crate::cache::Cache>,
    pub metrics: Metrics,
    /// Set once both listeners are bound; `/readyz` reports it.
    pub ready: AtomicBool,
    /// Whether the shared store answered last time (always true in memory).
    pub store_healthy: Arc<AtomicBool>,
    /// Without the store this replica refuses calls (`on_error = "reject"`).
    pub store_rejects: bool,
    /// Request bodies read ahead of admission (`server.max_buffered_body`).
    pub read_ahead: Arc<crate::body::ReadAhead>,
    /// Answers 503 without sending while Dastra keeps failing.
    pub breaker: Arc<crate::breaker::Breaker>,
    /// What retries of failed calls may still spend.
    pub retry: crate::retry::RetryBudget,
    /// Each call's trace, exported when `[tracing]` names a collector.
    pub tracer: crate::trace::Tracer,
    /// Each client's sends in its windows: who spent the quota.
    pub spent: crate::spent::Spent,
    policy: Arc<ArcSwap<Policy>>,
}

/// The first key of `section` whose value differs between the two configs,
/// as `check` prints them (`server.listen`); the section when none does
/// (a secret's value, which `check` never prints).
fn changed_key(cur: &Config, next: &Config, section: &str) -> String {
    let table = section.trim_matches(|c| c == '[' || c == ']');
    let keys = |c: &Config| -> Vec<(String, String)> {
        let mut current = String::new();
        let mut out = Vec::new();
        for line in c.to_string().lines() {
            let t = line.trim();
            if t.starts_with('[') {
                current = t.trim_matches(|ch| ch == '[' || ch == ']').to_owned();
            } else if let Some((k, v)) = t.split_once(" = ") {
                if current == table {
                    out.push((format!("{current}.{k}"), v.to_owned()));
                }
            }
        }
        out
    };
    let (a, b) = (keys(cur), keys(next));
    a.iter()
        .find(|(k, v)| {
            b.iter()
                .find(|(k2, _)| k2 == k)
                .is_none_or(|(_, v2)| v2 != v)
        })
        .or_else(|| b.iter().find(|(k, _)| a.iter().all(|(k2, _)| k2 != k)))
        .map_or_else(|| section.to_owned(), |(k, _)| k.clone())
}

/// Each named credential's quota as admission keeps it.
fn named_quotas(config: &Config) -> Vec<NamedQuota> {
    (config.credentials.iter())
        .map(|n| NamedQuota {
            name: n.name.as_str().into(),
            key: QuotaKey::named(&n.name),
            limits: config.limits_of(n).to_vec(),
            gate: None,
        })
        .collect()
}

/// Each client's own windows as admission keeps them: refused, not queued,
/// over them; only measured in its `dry_run`.
fn client_quotas(config: &Config) -> Vec<NamedQuota> {
    (config.clients.iter())
        .filter(|c| !c.limits.is_empty())
        .map(|c| NamedQuota {
            name: c.name.as_str().into(),
            key: QuotaKey::client(&c.name),
            limits: c.limits.clone(),
            gate: Some(c.dry_run),
        })
        .collect()
}

/// How long a send counts in some window: the longest window of any
/// credential or client, plus the margin every window is held with.
fn longest_window(config: &Config) -> std::time::Duration {
    let named = config.credentials.iter().flat_map(|n| config.limits_of(n));
    let clients = config.clients.iter().flat_map(|c| &c.limits);
    (config.limits.iter().chain(named).chain(clients))
        .map(|l| l.per)
        .max()
        .unwrap_or_default()
        + config.admission.margin
}

/// The most sends counted per client: twice the largest window's N (only a
/// dry run could send more).
fn spent_cap(config: &Config) -> usize {
    let windows = config.client_windows();
    let most = windows.iter().flat_map(|(_, w)| w).map(|l| l.requests);
    most.max().unwrap_or(1) as usize * 2
}

/// Why a config that passed validation still cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Credential(#[from] crate::credential::CredentialError),
    #[error("store.url: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("store.ca_file: {}: {source}", path.display())]
    StoreCa {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The shared connection to Redis, with `ca_file`'s roots for `rediss`.
pub fn redis_link(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<RedisLink>, AppError> {
    let ca = match ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| AppError::StoreCa {
            path: path.to_owned(),
            source,
        })?),
        None => None,
    };
    Ok(RedisLink::new(url, ca)?)
}

/// Connects to the configured Redis once and pings it. `Ok` also when the
/// store is memory. A wrong password or a TLS failure is
/// [`crate::store::StoreError::Config`]; messages never hold the password.
pub async fn probe_store(config: &Config) -> Result<(), AppError> {
    if let StoreConfig::Redis { url, ca_file, .. } = &config.store {
        redis_link(url.expose(), ca_file.as_deref())?
            .probe()
            .await?;
    }
    Ok(())
}

/// Why SIGHUP left the running config in place.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("`{0}` cannot change on reload; restart the proxy to change it")]
    NeedsRestart(String),
    #[error(transparent)]
    Credential(#[from] crate::credential::CredentialError),
    #[error("store.url: {0}")]
    Store(crate::store::StoreError),
}

impl App {
    /// Must run inside a tokio runtime (admission starts its releaser task).
    pub fn new(config: Config, metrics: Metrics) -> Result<Arc<Self>, AppError> {
        let client = build_client(
            config.upstream.ca_file.as_deref(),
            config.upstream.connect_timeout,
        )?;
        Self::with_upstream(config, metrics, upstream(client))
    }

    /// With `upstream` in place of the HTTPS client: tests pass a
    /// `service_fn` and run the whole request path without sockets.
    pub fn with_upstream(
        config: Config,
        metrics: Metrics,
        upstream: Upstream,
    ) -> Result<Arc<Self>, AppError> {
        let credentials = Arc::new(Credentials::new(&config, &upstream, &metrics, None)?);
        let max_keys = config
            .passthrough()
            .map(|(max_keys, max_keys_per_ip)| KeyBounds {
                max_keys,
                max_keys_per_ip,
            });
        let store_healthy = Arc::new(AtomicBool::new(true));
        let shared = match &config.store {
            StoreConfig::Memory { .. } => None,
            StoreConfig::Redis {
                url,
                key_prefix,
                on_error,
                replicas,
                ca_file,
            } => Some(SharedStore {
                link: redis_link(url.expose(), ca_file.as_deref())?,
                key_prefix: key_prefix.clone(),
                on_error: *on_error,
                replicas: *replicas,
                flight: config.upstream.connect_timeout + config.upstream.timeout,
                metrics: metrics.clone(),
                healthy: store_healthy.clone(),
            }),
        };
        let store_rejects = matches!(
            config.store,
            StoreConfig::Redis {
                on_error: StoreOnError::Reject,
                ..
            }
        );
        let local = match &config.store {
            StoreConfig::Memory {
                state_file: Some(path),
            } => {
                let (file, restored) = StateFile::open(path, config.state_slots())?;
                let n = restored.sends.len();
                if n > 0 {
                    tracing::info!(path = %path.display(), sends = n, "state file: the previous process's sends still count");
                }
                Some(LocalState {
                    file,
                    restored: Mutex::new(restored),
                    metrics: metrics.clone(),
                })
            }
            _ => None,
        };
        let quotas = Quotas::new(&config.limits, &config.admission, max_keys, shared, local)?
            .with_named(
                config.credential.is_some(),
                &named_quotas(&config),
                &config.admission,
            )?;
        quotas.set_clients(&client_quotas(&config), &config.admission)?;
        quotas.set_splits(&config.splits(), &config.admission)?;
        quotas.keep_for(longest_window(&config));
        // Known label values exist at 0 from start-up: a quiet instance's
        // panels read 0, not "No data".
        metrics.known_series(&config, &crate::error::REFUSAL_CODES);
        let public_authority = config
            .server
            .public_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.to_string()));
        let target = Target::new(
            public_authority.as_deref(),
            config.upstream.authority.as_str(),
        );
        let cache = crate::cache::Cache::new(&config.cache, metrics.clone());
        Ok(Arc::new(Self {
            cache,
            read_ahead: crate::body::ReadAhead::new(config.server.max_buffered_body),
            retry: crate::retry::RetryBudget::new(
                config.upstream.retries,
                config.upstream.retry_budget,
            ),
            breaker: crate::breaker::Breaker::new(
                config.upstream.breaker_failures,
                config.upstream.breaker_open,
                metrics.breaker_open.clone(),
            ),
            policy: Arc::new(ArcSwap::from_pointee(Policy::new(
                &config,
                &metrics,
                credentials,
            ))),
            tracer: crate::trace::Tracer::new(&config.tracing, config.upstream.connect_timeout),
            spent: crate::spent::Spent::new(longest_window(&config), spent_cap(&config)),
            config,
            upstream,
            target: Arc::new(target),
            quotas,
            metrics,
            ready: AtomicBool::new(false),
            store_healthy,
            store_rejects,
        }))
    }

    /// The current policy, owned: a request holds it across awaits, which
    /// arc-swap's short-lived guards are not meant for.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Where each generation's policy is swapped in: for a stage that needs
    /// the policy and nothing else of the `App`.
    pub fn policies(&self) -> Arc<ArcSwap<Policy>> {
        self.policy.clone()
    }

    /// Applies a new config's limits, admission, access and clients without
    /// dropping connections, queued calls or recorded sends.
    pub fn reload(&self, next: &Config) -> Result<(), ReloadError> {
        let cur = &self.config;
        let fixed: [(&'static str, bool); 6] = [
            ("[server]", next.server == cur.server),
            ("[upstream]", next.upstream == cur.upstream),
            // The stack is built for passthrough (a quota key per caller
            // credential); any other credential may come, go or change.
            (
                "[credential]",
                next.passthrough().is_none() && cur.passthrough().is_none()
                    || next.credential == cur.credential,
            ),
            ("[store]", next.store == cur.store),
            ("[log]", next.log == cur.log),
            ("[tracing]", next.tracing == cur.tracing),
        ];
        if let Some((section, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(ReloadError::NeedsRestart(changed_key(cur, next, section)));
        }
        let running = self.policy().credentials.clone();
        let credentials = Arc::new(Credentials::new(
            next,
            &self.upstream,
            &self.metrics,
            Some(&running),
        )?);
        for name in credentials.changed_from(&running) {
            tracing::info!(credential = %name, "Dastra credential reloaded");
        }
        self.quotas
            .set_named(&named_quotas(next), &next.admission)
            .map_err(ReloadError::Store)?;
        self.quotas.reconfigure(&next.limits, &next.admission);
        self.quotas.keep_for(longest_window(next));
        self.quotas
            .set_clients(&client_quotas(next), &next.admission)
            .map_err(ReloadError::Store)?;
        self.quotas
            .set_splits(&next.splits(), &next.admission)
            .map_err(ReloadError::Store)?;
        self.cache.reconfigure(&next.cache);
        self.spent
            .reconfigure(longest_window(next), spent_cap(next));
        self.policy
            .store(Arc::new(Policy::new(next, &self.metrics, credentials)));
        (self.metrics).known_series(next, &crate::error::REFUSAL_CODES);
        Ok(())
    }
}
