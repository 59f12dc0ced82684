//! The one place where every error the proxy answers itself becomes HTTP.
//!
//! Each variant maps to exactly one status and code of SPEC §4; the match is
//! exhaustive, so a new failure cannot silently fall into a generic 500.

use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};
use tokio::time::Instant;

use crate::access::AccessError;
use crate::admission::Refusal;
use crate::body::TooLarge;
use crate::credential::TokenError;
use crate::guard::GuardError;
use crate::quota::ceil_secs;
use crate::target::TargetError;
use crate::upstream::CallError;

/// A call the proxy answers itself instead of forwarding: one variant per
/// stage of the request path, each holding that stage's own error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Body(#[from] TooLarge),
    /// Admission said no; the duration is until a slot frees, from when it said so.
    #[error("{}", refusal_message(.0, .1))]
    Refused(Refusal, Duration),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Upstream(#[from] CallError),
}

impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> Self {
        let retry_at = match r {
            Refusal::QuotaExhausted { retry_at } | Refusal::QueueFull { retry_at } => retry_at,
            Refusal::ShuttingDown | Refusal::StoreUnavailable => Instant::now(),
        };
        ProxyError::Refused(r, retry_at.saturating_duration_since(Instant::now()))
    }
}

fn refusal_message(r: &Refusal, retry_after: &Duration) -> String {
    let secs = ceil_secs(*retry_after).max(1);
    match r {
        Refusal::QuotaExhausted { .. } => {
            format!("the Dastra quota is used up; retry after {secs} s")
        }
        Refusal::QueueFull { .. } => {
            format!("too many calls are already waiting for quota; retry after {secs} s")
        }
        Refusal::ShuttingDown => "the proxy is shutting down".to_owned(),
        Refusal::StoreUnavailable => "the shared quota store is unreachable".to_owned(),
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Target(_) | ProxyError::Access(AccessError::BadForwarded) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Access(AccessError::Unauthenticated) => StatusCode::UNAUTHORIZED,
            ProxyError::Access(AccessError::IpNotAllowed) => StatusCode::FORBIDDEN,
            ProxyError::Body(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Guard(_)
            | ProxyError::Refused(Refusal::QuotaExhausted { .. } | Refusal::QueueFull { .. }, _) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::Refused(Refusal::ShuttingDown | Refusal::StoreUnavailable, _) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Token(_)
            | ProxyError::Upstream(CallError::NotConnected(_) | CallError::Failed(_)) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Upstream(CallError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable code of SPEC §4, also the `code` label of `rejected_total`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Target(_) | ProxyError::Access(AccessError::BadForwarded) => "bad_request",
            ProxyError::Access(AccessError::Unauthenticated) => "unauthenticated",
            ProxyError::Access(AccessError::IpNotAllowed) => "ip_not_allowed",
            ProxyError::Body(_) => "body_too_large",
            ProxyError::Guard(_) => "client_rate",
            ProxyError::Refused(Refusal::QuotaExhausted { .. }, _) => "quota_exhausted",
            ProxyError::Refused(Refusal::QueueFull { .. }, _) => "queue_full",
            ProxyError::Refused(Refusal::ShuttingDown, _) => "shutting_down",
            ProxyError::Refused(Refusal::StoreUnavailable, _) => "store_unavailable",
            ProxyError::Token(_)
            | ProxyError::Upstream(CallError::NotConnected(_) | CallError::Failed(_)) => {
                "upstream_unreachable"
            }
            ProxyError::Upstream(CallError::Timeout(_)) => "upstream_timeout",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::Refused(Refusal::QuotaExhausted { .. } | Refusal::QueueFull { .. }, d) => {
                Some(*d)
            }
            ProxyError::Guard(g) => Some(g.retry_after),
            _ => None,
        }
    }

    /// The JSON error envelope; 429s carry `Retry-After` in whole seconds,
    /// rounded up so that a caller waiting that long is never early.
    pub fn into_response(self) -> Response<Body> {
        // Written directly (no serde_json::Value): this is the 429 hot path.
        // Codes are fixed identifiers; only the message needs JSON escaping.
        let message = serde_json::to_string(&self.to_string()).unwrap_or_else(|_| "\"\"".into());
        let kind = if matches!(self, ProxyError::Refused(Refusal::QuotaExhausted { .. }, _)) {
            r#","type":"https://iana.org/assignments/http-problem-types#quota-exceeded""#
        } else {
            ""
        };
        let body = format!(
            r#"{{"error":{{"code":"{}","message":{message}{kind}}}}}"#,
            self.code()
        );
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(d) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(d).max(1)));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_json_error_envelope() {
        let r = ProxyError::Target(TargetError::OtherHost("a \"quoted\" host\n".into()))
            .into_response();
        let body = futures_body(r);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(a \"quoted\" host\n)"));
        let r = ProxyError::Refused(
            Refusal::QuotaExhausted {
                retry_at: Instant::now(),
            },
            Duration::from_secs(3),
        )
        .into_response();
        let v: serde_json::Value = serde_json::from_str(&futures_body(r)).unwrap();
        assert_eq!(v["error"]["code"], "quota_exhausted");
        assert!(v["error"]["type"]
            .as_str()
            .unwrap()
            .ends_with("#quota-exceeded"));
    }

    fn futures_body(r: Response<Body>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(http_body_util::BodyExt::collect(r.into_body()))
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn retry_after_is_rounded_up_and_never_zero() {
        let r = ProxyError::Refused(
            Refusal::QuotaExhausted {
                retry_at: Instant::now(),
            },
            Duration::from_millis(16_001),
        )
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "17");
        let r = ProxyError::Refused(
            Refusal::QueueFull {
                retry_at: Instant::now(),
            },
            Duration::ZERO,
        )
        .into_response();
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
