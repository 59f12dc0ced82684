//! The one place where every error the proxy answers itself becomes HTTP.
//!
//! Each variant maps to exactly one status and code of SPEC §4; the match is
//! exhaustive, so a new failure cannot silently fall into a generic 500.

use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};

use crate::quota::ceil_secs;

/// A call the proxy answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("a valid client key is required (X-API-Key, Authorization: Bearer or Basic)")]
    Unauthenticated,
    #[error("the client address is not in the allow-list")]
    IpNotAllowed,
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the Dastra quota is used up; retry after {} s", ceil_secs(*retry_after))]
    QuotaExhausted { retry_after: Duration },
    #[error("too many calls are already waiting for quota; retry after {} s", ceil_secs(*retry_after))]
    QueueFull { retry_after: Duration },
    #[error("this client's own rate limit is exceeded; retry after {} s", ceil_secs(*retry_after))]
    ClientRate { retry_after: Duration },
    #[error("{0}")]
    UpstreamUnreachable(String),
    #[error("the upstream sent no response head within {} ms", .0.as_millis())]
    UpstreamTimeout(Duration),
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error("the shared quota store is unreachable")]
    StoreUnavailable,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ProxyError::IpNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::QuotaExhausted { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::ClientRate { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ShuttingDown | ProxyError::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The stable code of SPEC §4, also the `code` label of `rejected_total`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Unauthenticated => "unauthenticated",
            ProxyError::IpNotAllowed => "ip_not_allowed",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::QuotaExhausted { .. } => "quota_exhausted",
            ProxyError::QueueFull { .. } => "queue_full",
            ProxyError::ClientRate { .. } => "client_rate",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::ShuttingDown => "shutting_down",
            ProxyError::StoreUnavailable => "store_unavailable",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::QuotaExhausted { retry_after }
            | ProxyError::QueueFull { retry_after }
            | ProxyError::ClientRate { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The JSON error envelope; 429s carry `Retry-After` in whole seconds,
    /// rounded up so that a caller waiting that long is never early.
    pub fn into_response(self) -> Response<Body> {
        // Written directly (no serde_json::Value): this is the 429 hot path.
        // Codes are fixed identifiers; only the message needs JSON escaping.
        let message = serde_json::to_string(&self.to_string()).unwrap_or_else(|_| "\"\"".into());
        let kind = if matches!(self, ProxyError::QuotaExhausted { .. }) {
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
        let r = ProxyError::BadRequest("a \"quoted\" host\n".into()).into_response();
        let body = futures_body(r);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert_eq!(v["error"]["message"], "a \"quoted\" host\n");
        let r = ProxyError::QuotaExhausted {
            retry_after: Duration::from_secs(3),
        }
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
        let r = ProxyError::QuotaExhausted {
            retry_after: Duration::from_millis(16_001),
        }
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "17");
        let r = ProxyError::QueueFull {
            retry_after: Duration::ZERO,
        }
        .into_response();
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
