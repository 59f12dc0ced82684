//! The Dastra credential: held here, injected into every forwarded call, so
//! apps only ever hold their own proxy keys.
//!
//! Whatever credential the caller sent is removed first; only `passthrough`
//! lets the caller's own `X-API-Key` / `Authorization` through, and then a
//! digest of it is the quota key, so each credential gets its own windows.

mod oauth2;
#[cfg(test)]
mod oauth2_tests;
mod passthrough;
mod set;

use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue};

use crate::config::CredentialConfig;
use crate::metrics::Metrics;
use crate::secret::{Secret, SecretSource};
use crate::upstream::Upstream;
pub use oauth2::{TokenCache, TokenError};
pub use passthrough::CallerCredentialError;
pub use set::{Credentials, Route, Routes};

/// What the quota is kept per: one key for a held credential, a digest per
/// caller credential in passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotaKey(pub [u8; 32]);

impl QuotaKey {
    /// The key as the state file names it: its first 8 bytes (0 for a held credential).
    pub fn file_id(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 of 32 bytes"))
    }
}

/// Injects the configured credential.
#[derive(Debug)]
pub enum Credential {
    Static(HeaderValue, header::HeaderName),
    OAuth2(Box<TokenCache>),
    Passthrough,
}

impl Credential {
    pub fn new(
        cfg: &CredentialConfig,
        upstream: Upstream,
        metrics: Metrics,
    ) -> Result<Self, CredentialError> {
        Ok(match cfg {
            CredentialConfig::ApiKey(k) => Credential::Static(
                sensitive(k.expose(), k)?,
                header::HeaderName::from_static("x-api-key"),
            ),
            CredentialConfig::Basic { public, private } => Credential::Static(
                sensitive(&basic(public.expose(), private.expose()), public)?,
                header::AUTHORIZATION,
            ),
            CredentialConfig::OAuth2 {
                token_url,
                scope,
                public,
                private,
            } => Credential::OAuth2(Box::new(TokenCache::new(
                upstream,
                token_url.clone(),
                scope.clone(),
                sensitive(&basic(public.expose(), private.expose()), public)?,
                metrics,
            ))),
            CredentialConfig::Passthrough { .. } => Credential::Passthrough,
        })
    }

    /// The quota key of a call with these (caller) headers.
    pub fn quota_key(&self, headers: &HeaderMap) -> Result<QuotaKey, CallerCredentialError> {
        match self {
            Credential::Passthrough => passthrough::quota_key(headers),
            _ => Ok(QuotaKey([0; 32])),
        }
    }

    /// Whether a 401 from upstream may be fixed by a fresh credential.
    pub fn refreshes(&self) -> bool {
        matches!(self, Credential::OAuth2(_))
    }

    /// The OAuth2 401 policy, decided here alone: an answer `status` to a
    /// token that was *not* fetched for this very call says Dastra no longer
    /// takes that token — it is dropped (credential stage) and the call sent
    /// once more with a fresh one (buffer stage), whatever its method or
    /// body. A 401 to a token fetched for the call says nothing of the
    /// token: neither, or every call would fetch another.
    pub fn token_refused(&self, status: http::StatusCode, fetched_for_call: bool) -> bool {
        self.refreshes() && !fetched_for_call && status == http::StatusCode::UNAUTHORIZED
    }

    /// Replaces the caller's credential headers by the proxy's own; `true`
    /// when that is an OAuth2 token fetched for this very call.
    pub async fn inject(&self, headers: &mut HeaderMap) -> Result<bool, TokenError> {
        let Credential::OAuth2(cache) = self else {
            self.inject_held(headers);
            return Ok(false);
        };
        headers.remove("x-api-key");
        headers.remove(header::AUTHORIZATION);
        // Boxed: the token fetch is large and rare; unboxed it would sit in
        // every queued call's future.
        let (value, fresh) = Box::pin(cache.bearer()).await?;
        headers.insert(header::AUTHORIZATION, value);
        Ok(fresh)
    }

    /// [`Self::inject`] for a credential that never waits (a held key or
    /// Basic pair, passthrough): the common call needs no future for it.
    /// `false`, and the headers untouched, for OAuth2.
    pub fn inject_held(&self, headers: &mut HeaderMap) -> bool {
        match self {
            Credential::Static(value, name) => {
                // Inserting ours replaces the caller's of the same name.
                if *name == header::AUTHORIZATION {
                    headers.remove("x-api-key");
                } else {
                    headers.remove(header::AUTHORIZATION);
                }
                headers.insert(name.clone(), value.clone());
                true
            }
            Credential::Passthrough => true,
            Credential::OAuth2(_) => false,
        }
    }

    /// After an upstream 401: forget `used` so the next call fetches a new token.
    pub async fn invalidate(&self, used: Option<&HeaderValue>) {
        if let (Credential::OAuth2(cache), Some(used)) = (self, used) {
            Box::pin(cache.invalidate(used)).await;
        }
    }
}

fn basic(public: &str, private: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{public}:{private}"))
    )
}

/// A secret that cannot be sent: names where it came from, never its value.
#[derive(Debug, thiserror::Error)]
#[error("the secret from {0} holds characters that cannot go in an HTTP header")]
pub struct CredentialError(SecretSource);

/// A header value that hyper's HPACK never indexes and Debug never prints.
fn sensitive(s: &str, from: &Secret) -> Result<HeaderValue, CredentialError> {
    let mut v = HeaderValue::from_str(s).map_err(|_| CredentialError(from.source().clone()))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state file names a key by its first 8 bytes (little-endian); the
    /// held credential's key is 0. Two passthrough keys that differ there
    /// must not share a record.
    #[test]
    fn a_keys_file_id_is_its_first_eight_bytes() {
        assert_eq!(QuotaKey([0; 32]).file_id(), 0);
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        k[8] = 9;
        assert_eq!(QuotaKey(k).file_id(), 0x0807_0605_0403_0201);
        let mut other = k;
        other[0] = 2;
        assert_ne!(QuotaKey(other).file_id(), QuotaKey(k).file_id());
    }

    /// Only an OAuth2 token can be mended by fetching another: a 401 to a
    /// held key or a caller's own credential is final (never retried, and
    /// the buffer stage copies nothing for it).
    #[test]
    fn only_oauth2_refreshes() {
        let key = Credential::Static(
            HeaderValue::from_static("k"),
            header::HeaderName::from_static("x-api-key"),
        );
        assert!(!key.refreshes());
        assert!(!Credential::Passthrough.refreshes());
    }

    #[test]
    fn a_held_credential_replaces_the_callers_at_once_passthrough_keeps_it() {
        let caller = |h: &mut HeaderMap| {
            h.insert("x-api-key", HeaderValue::from_static("callers-key"));
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_static("Bearer caller"),
            );
        };
        let held = Credential::Static(
            HeaderValue::from_static("Basic b3Vycw=="),
            header::AUTHORIZATION,
        );
        let mut h = HeaderMap::new();
        caller(&mut h);
        assert!(held.inject_held(&mut h));
        assert_eq!(h.get("x-api-key"), None);
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(h[header::AUTHORIZATION], "Basic b3Vycw==");

        let key = Credential::Static(
            HeaderValue::from_static("ours"),
            header::HeaderName::from_static("x-api-key"),
        );
        let mut h = HeaderMap::new();
        caller(&mut h);
        assert!(key.inject_held(&mut h));
        assert_eq!(h.get(header::AUTHORIZATION), None);
        assert_eq!(h.get_all("x-api-key").iter().count(), 1);
        assert_eq!(h["x-api-key"], "ours");

        let mut h = HeaderMap::new();
        caller(&mut h);
        assert!(Credential::Passthrough.inject_held(&mut h));
        assert_eq!(h["x-api-key"], "callers-key");
        assert_eq!(h[header::AUTHORIZATION], "Bearer caller");
    }
}
