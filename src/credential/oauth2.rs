//! OAuth2 client-credentials tokens for Dastra, fetched once for all callers.
//!
//! The cache is a tokio mutex held across the fetch: concurrent callers that
//! find no valid token wait for the one fetch in flight instead of each asking
//! (single flight). A failing token endpoint is retried with exponential
//! backoff; callers in between get a clear error instead of hammering it.

use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Limited};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::TOKEN_TIMEOUT;
use crate::metrics::Metrics;
use tower::ServiceExt as _;

use crate::upstream::Upstream;

/// Longest backoff between two failing token requests.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest time a token is used before it is due for refresh.
const EARLY_REFRESH: Duration = Duration::from_secs(30);
/// A token answer is small; anything bigger is not one.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("OAuth2 token endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("OAuth2 token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("OAuth2 token endpoint answer is not a token: {0}")]
    Malformed(String),
    #[error("OAuth2 token endpoint failed recently; next attempt in {} ms", .0.as_millis())]
    Backoff(Duration),
}

#[derive(Debug, Default)]
struct TokenState {
    token: Option<(HeaderValue, Instant)>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Holds the current bearer token and refreshes it when due.
#[derive(Debug)]
pub struct TokenCache {
    upstream: Upstream,
    token_url: Uri,
    scope: String,
    basic: HeaderValue,
    metrics: Metrics,
    state: Mutex<TokenState>,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenCache {
    pub(super) fn new(
        upstream: Upstream,
        token_url: Uri,
        scope: String,
        basic: HeaderValue,
        metrics: Metrics,
    ) -> Self {
        Self {
            upstream,
            token_url,
            scope,
            basic,
            metrics,
            state: Mutex::default(),
        }
    }

    /// `Bearer <token>`, fetching a new token when there is none or it is
    /// due; `true` when it was fetched for this very call.
    pub async fn bearer(&self) -> Result<(HeaderValue, bool), TokenError> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        if let Some((value, refresh_at)) = &st.token {
            if now < *refresh_at {
                return Ok((value.clone(), false));
            }
        }
        if let Some(retry_at) = st.retry_at.filter(|r| now < *r) {
            return Err(TokenError::Backoff(retry_at - now));
        }
        match self.fetch().await {
            Ok((value, lifetime)) => {
                let early = EARLY_REFRESH.min(lifetime / 2);
                st.token = Some((value.clone(), Instant::now() + lifetime - early));
                st.failures = 0;
                st.retry_at = None;
                self.metrics
                    .token_refresh_total
                    .with_label_values(&["ok"])
                    .inc();
                Ok((value, true))
            }
            Err(e) => {
                st.failures += 1;
                let backoff =
                    Duration::from_millis(500u64.saturating_mul(1 << st.failures.min(10)))
                        .min(MAX_BACKOFF);
                st.retry_at = Some(Instant::now() + backoff);
                st.token = None;
                self.metrics
                    .token_refresh_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "OAuth2 token request failed");
                Err(e)
            }
        }
    }

    /// Drops the token `used` if it is still the current one (after a 401).
    pub async fn invalidate(&self, used: &HeaderValue) {
        let mut st = self.state.lock().await;
        if st.token.as_ref().is_some_and(|(v, _)| v == used) {
            st.token = None;
        }
    }

    async fn fetch(&self) -> Result<(HeaderValue, Duration), TokenError> {
        let form = format!(
            "grant_type=client_credentials&scope={}",
            form_encode(&self.scope)
        );
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(header::AUTHORIZATION, self.basic.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Body::from(form))
            .map_err(|e| TokenError::Unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(TOKEN_TIMEOUT, self.upstream.clone().oneshot(req))
            .await
            .map_err(|_| TokenError::Unreachable("timed out".into()))?
            .map_err(|e| TokenError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| TokenError::Unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(TokenError::Status(status.as_u16()));
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", answer.access_token)).map_err(|_| {
                TokenError::Malformed("access_token is not a valid header value".into())
            })?;
        value.set_sensitive(true);
        // Capped: a huge `expires_in` would overflow the expiry instant.
        let lifetime =
            Duration::from_secs(answer.expires_in.unwrap_or(3600).clamp(1, MAX_LIFETIME));
        Ok((value, lifetime))
    }
}

/// The longest a token is trusted, whatever `expires_in` says (SPEC §9.1).
const MAX_LIFETIME: u64 = 24 * 3600;

/// `application/x-www-form-urlencoded` for the few characters a scope may hold.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::form_encode;

    /// Scopes are space-separated (RFC 6749 §3.3): a space is `+` in a form.
    #[test]
    fn a_scope_is_form_encoded() {
        assert_eq!(form_encode("api1 offline_access"), "api1+offline_access");
        assert_eq!(form_encode("a/b:c"), "a%2Fb%3Ac");
        assert_eq!(form_encode("A-z_0.9~"), "A-z_0.9~");
    }
}
