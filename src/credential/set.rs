//! Every Dastra credential one gateway holds (SPEC §9.3b): the single
//! `[credential]`, the default, and the named `[[credentials]]`, each with a
//! quota key of its own, so each key's quota is held apart.

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest as _, Sha256};

use super::{CallerCredentialError, Credential, CredentialError, QuotaKey};
use crate::config::{ClientConfig, Config, CredentialConfig, DEFAULT_CREDENTIAL};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The credentials of one config generation; a reload builds the next one,
/// keeping each unchanged credential (and its OAuth2 token) as it was.
#[derive(Debug)]
pub struct Credentials {
    default: Option<Held>,
    named: Vec<Held>,
}

#[derive(Debug, Clone)]
struct Held {
    route: Route,
    config: CredentialConfig,
}

/// Which credential a call goes out with, and the quota it counts in.
#[derive(Debug, Clone)]
pub struct Route {
    /// `default` for `[credential]`; the `credential` label of metrics.
    pub name: Arc<str>,
    pub credential: Arc<Credential>,
    /// `None` for the default: its key is the held one's, or in passthrough
    /// a digest of the caller's credential.
    key: Option<QuotaKey>,
}

impl Route {
    /// The quota key of a call with these (caller) headers.
    pub fn quota_key(&self, headers: &HeaderMap) -> Result<QuotaKey, CallerCredentialError> {
        match self.key {
            Some(k) => Ok(k),
            None => self.credential.quota_key(headers),
        }
    }

    /// Whether the key is computed per call (passthrough: a digest of the
    /// caller's credential), so worth computing once.
    pub fn computes_key(&self) -> bool {
        matches!(*self.credential, Credential::Passthrough)
    }
}

impl QuotaKey {
    /// A named credential's key: a digest of its name, so it stays the same
    /// across restarts (state file, Redis) and when its secret is rotated.
    pub fn named(name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"dastra-proxy credential\0");
        h.update(name.as_bytes());
        QuotaKey(h.finalize().into())
    }
}

impl QuotaKey {
    /// A client's reserve in its credential's windows (`reserve`), and a
    /// credential's shared rest beside the reserves: digests of names.
    pub fn reserve(client: &str) -> Self {
        Self::digest(b"dastra-proxy reserve\0", client)
    }

    pub fn rest(credential: &str) -> Self {
        Self::digest(b"dastra-proxy shared rest\0", credential)
    }

    fn digest(prefix: &[u8], name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(prefix);
        h.update(name.as_bytes());
        QuotaKey(h.finalize().into())
    }
}

impl QuotaKey {
    /// A client's own windows' key (`[[clients.limits]]`): a digest of its
    /// name, apart from every credential's.
    pub fn client(name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"dastra-proxy client\0");
        h.update(name.as_bytes());
        QuotaKey(h.finalize().into())
    }
}

impl Credentials {
    /// `previous`: the running generation, whose credentials are kept where
    /// their settings did not change.
    pub fn new(
        cfg: &Config,
        upstream: &Upstream,
        metrics: &Metrics,
        previous: Option<&Credentials>,
    ) -> Result<Self, CredentialError> {
        let kept = |name: &str, config: &CredentialConfig| {
            previous
                .into_iter()
                .flat_map(|p| p.default.iter().chain(&p.named))
                .find(|h| &*h.route.name == name && h.config == *config)
                .map(|h| h.route.credential.clone())
        };
        let hold = |name: &str, config: &CredentialConfig, key| -> Result<Held, CredentialError> {
            let credential = match kept(name, config) {
                Some(c) => c,
                None => Arc::new(Credential::new(config, upstream.clone(), metrics.clone())?),
            };
            Ok(Held {
                route: Route {
                    name: name.into(),
                    credential,
                    key,
                },
                config: config.clone(),
            })
        };
        let default = match &cfg.credential {
            Some(c) => Some(hold(DEFAULT_CREDENTIAL, c, None)?),
            None => None,
        };
        let named = (cfg.credentials.iter())
            .map(|n| hold(&n.name, &n.credential, Some(QuotaKey::named(&n.name))))
            .collect::<Result<_, _>>()?;
        Ok(Self { default, named })
    }

    /// The route of a client naming `name` (`None`: the default). `None`
    /// when there is no such credential (removed by a reload since the
    /// caller was identified).
    pub fn route(&self, name: Option<&str>) -> Option<&Route> {
        match name {
            None => self.default.as_ref().map(|h| &h.route),
            Some(n) => self
                .named
                .iter()
                .find(|h| &*h.route.name == n)
                .map(|h| &h.route),
        }
    }

    /// The credentials that are new or changed since `previous` (for the log).
    pub fn changed_from(&self, previous: &Credentials) -> Vec<Arc<str>> {
        let before = || previous.default.iter().chain(&previous.named);
        (self.default.iter().chain(&self.named))
            .filter(|h| !before().any(|p| Arc::ptr_eq(&p.route.credential, &h.route.credential)))
            .map(|h| h.route.name.clone())
            .collect()
    }
}

/// Each client's route, fixed per config generation: the access stage
/// hands the caller's to the later stages with its identity.
#[derive(Debug)]
pub struct Routes {
    by_client: Vec<Option<Route>>,
    anonymous: Option<Route>,
}

impl Routes {
    pub fn new(credentials: &Credentials, clients: &[ClientConfig]) -> Self {
        Self {
            by_client: (clients.iter())
                .map(|c| credentials.route(c.credential.as_deref()).cloned())
                .collect(),
            anonymous: credentials.route(None).cloned(),
        }
    }

    /// The route of `[[clients]]` entry `index` (`None`: no client key).
    /// `None` only where validation refused the config: a client naming no
    /// credential there is, or a caller without a key and no default.
    pub fn of(&self, index: Option<usize>) -> Option<Route> {
        match index {
            Some(i) => self.by_client.get(i).cloned().flatten(),
            None => self.anonymous.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named key is stable (a restart finds its sends in the state file
    /// and Redis), never the default's, and differs per name.
    #[test]
    fn a_named_key_is_a_digest_of_its_name() {
        assert_eq!(QuotaKey::named("hr"), QuotaKey::named("hr"));
        assert_ne!(QuotaKey::named("hr"), QuotaKey::named("crm"));
        assert_ne!(QuotaKey::named("hr"), QuotaKey([0; 32]));
        assert_ne!(QuotaKey::named("hr").file_id(), 0);
        assert_eq!(
            hex::encode(QuotaKey::named("hr").0),
            hex::encode(Sha256::digest(b"dastra-proxy credential\0hr"))
        );
    }
}
