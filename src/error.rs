//! The one place where every error the proxy answers itself becomes HTTP.
//!
//! Each variant maps to exactly one status and code of SPEC §4; the match is
//! exhaustive, so a new failure cannot silently fall into a generic 500.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};
use tokio::time::Instant;

use crate::access::AccessError;
use crate::admission::Refusal;
use crate::body::BodyError;
use crate::credential::{CallerCredentialError, TokenError};
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
    Body(#[from] BodyError),
    /// Admission said no; the duration is until a slot frees, from when it said so.
    #[error("{}", RefusalText(.0, .1))]
    Refused(Refusal, Duration),
    #[error(transparent)]
    Credential(#[from] CallerCredentialError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Upstream(#[from] CallError),
    /// The circuit breaker is open: Dastra kept failing, so nothing is sent
    /// (and no quota spent) for this long.
    #[error("Dastra keeps failing; calls are not sent for now; retry after {} s", wait_secs(*.0))]
    Unavailable(Duration),
    /// The same failure as the call this one shared (identical GETs in
    /// flight at once): answered the same way.
    #[error("{0}")]
    Shared(Arc<ProxyError>),
    /// `Cache-Control: only-if-cached` and nothing usable is stored.
    #[error(
        "no stored answer may be used for this request, and only-if-cached forbids asking Dastra"
    )]
    NotCached,
    /// A stage ran before the stage that writes a fact it needs: the stack
    /// is built wrong (a bug, never a caller's doing; see `proxy::facts`).
    #[error("internal error: {0} was needed before it was known")]
    Misordered(&'static str),
}

impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::ShuttingDown | Refusal::StoreUnavailable => {
                ProxyError::Refused(r, Duration::ZERO)
            }
            _ => ProxyError::refused_at(r, Instant::now()),
        }
    }
}

impl ProxyError {
    /// A refusal decided at `at`: its wait is counted from then, with no
    /// clock read of its own (the 429 fast path has read it already).
    pub fn refused_at(r: Refusal, at: Instant) -> Self {
        let wait = r
            .retry_at()
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(at));
        ProxyError::Refused(r, wait)
    }
}

/// A refusal's message, written straight into the formatter.
struct RefusalText<'a>(&'a Refusal, &'a Duration);

impl std::fmt::Display for RefusalText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (text, waits) = refusal_text(self.0);
        f.write_str(text)?;
        if waits {
            write!(f, "{} s", wait_secs(*self.1))?;
        }
        Ok(())
    }
}

/// A refusal's fixed text, and whether the wait in seconds and " s" follow it:
/// the one place the words are, for logs and for the pre-encoded 429 body.
fn refusal_text(r: &Refusal) -> (&'static str, bool) {
    match r {
        Refusal::QuotaExhausted { .. } => ("the Dastra quota is used up; retry after ", true),
        Refusal::UpstreamThrottled { .. } => (
            "Dastra asked for a pause (its 429); nothing is sent until it ends; retry after ",
            true,
        ),
        Refusal::QueueFull { .. } => (
            "too many calls are already waiting for quota; retry after ",
            true,
        ),
        Refusal::TooManyKeys { .. } => (
            "too many caller credentials are busy at once; retry after ",
            true,
        ),
        Refusal::ClientQuotaExhausted { .. } => (
            "this client's own quota ([[clients.limits]]) is used up; retry after ",
            true,
        ),
        Refusal::ShuttingDown => ("the proxy is shutting down", false),
        Refusal::StoreUnavailable => ("the shared quota store is unreachable", false),
    }
}

/// A wait in whole seconds, rounded up so that a caller waiting that long is
/// never early, and never 0 (which would invite an immediate retry).
fn wait_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

/// The codes a refusal of a call can carry (`rejected_total{code}`), so
/// their series exist at 0 from start-up; `tests` checks `code()` against it.
pub const REFUSAL_CODES: [&str; 18] = [
    "quota_exhausted",
    "client_quota_exhausted",
    "upstream_throttled",
    "queue_full",
    "client_rate",
    "too_many_keys",
    "unauthenticated",
    "ip_not_allowed",
    "bad_request",
    "ambiguous_credential",
    "method_not_allowed",
    "body_too_large",
    "body_timeout",
    "overloaded",
    "shutting_down",
    "store_unavailable",
    "upstream_unavailable",
    "not_cached",
];

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Shared(e) => e.status(),
            ProxyError::Target(TargetError::Trace) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Credential(_) => StatusCode::BAD_REQUEST,
            ProxyError::Target(_) | ProxyError::Access(AccessError::BadForwarded) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Access(AccessError::Unauthenticated) => StatusCode::UNAUTHORIZED,
            ProxyError::Access(AccessError::IpNotAllowed | AccessError::AdminNotAllowed) => {
                StatusCode::FORBIDDEN
            }
            ProxyError::Body(BodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Body(BodyError::Stalled(_)) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Body(BodyError::Overloaded) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Guard(_)
            | ProxyError::Refused(
                Refusal::QuotaExhausted { .. }
                | Refusal::UpstreamThrottled { .. }
                | Refusal::QueueFull { .. }
                | Refusal::TooManyKeys { .. }
                | Refusal::ClientQuotaExhausted { .. },
                _,
            ) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Refused(Refusal::ShuttingDown | Refusal::StoreUnavailable, _)
            | ProxyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Token(_)
            | ProxyError::Upstream(
                CallError::NotConnected(_) | CallError::Failed(_) | CallError::Interrupted(_),
            ) => StatusCode::BAD_GATEWAY,
            ProxyError::Upstream(CallError::Timeout(_)) | ProxyError::NotCached => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Misordered(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of SPEC §4, also the `code` label of `rejected_total`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Shared(e) => e.code(),
            ProxyError::Target(TargetError::Trace) => "method_not_allowed",
            ProxyError::Credential(CallerCredentialError::Ambiguous) => "ambiguous_credential",
            ProxyError::Target(_) | ProxyError::Access(AccessError::BadForwarded) => "bad_request",
            ProxyError::Access(AccessError::Unauthenticated) => "unauthenticated",
            ProxyError::Access(AccessError::IpNotAllowed) => "ip_not_allowed",
            ProxyError::Access(AccessError::AdminNotAllowed) => "admin_not_allowed",
            ProxyError::Body(BodyError::TooLarge(_)) => "body_too_large",
            ProxyError::Body(BodyError::Stalled(_)) => "body_timeout",
            ProxyError::Body(BodyError::Overloaded) => "overloaded",
            ProxyError::Guard(_) => "client_rate",
            ProxyError::Refused(Refusal::QuotaExhausted { .. }, _) => "quota_exhausted",
            ProxyError::Refused(Refusal::UpstreamThrottled { .. }, _) => "upstream_throttled",
            ProxyError::Refused(Refusal::QueueFull { .. }, _) => "queue_full",
            ProxyError::Refused(Refusal::TooManyKeys { .. }, _) => "too_many_keys",
            ProxyError::Refused(Refusal::ClientQuotaExhausted { .. }, _) => {
                "client_quota_exhausted"
            }
            ProxyError::Refused(Refusal::ShuttingDown, _) => "shutting_down",
            ProxyError::Refused(Refusal::StoreUnavailable, _) => "store_unavailable",
            ProxyError::Unavailable(_) => "upstream_unavailable",
            ProxyError::Token(_)
            | ProxyError::Upstream(
                CallError::NotConnected(_) | CallError::Failed(_) | CallError::Interrupted(_),
            ) => "upstream_unreachable",
            ProxyError::Upstream(CallError::Timeout(_)) => "upstream_timeout",
            ProxyError::NotCached => "not_cached",
            ProxyError::Misordered(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::Shared(e) => e.retry_after(),
            ProxyError::Refused(r, d) => r.retry_at().map(|_| *d),
            ProxyError::Guard(g) => Some(g.retry_after),
            ProxyError::Unavailable(d) => Some(*d),
            ProxyError::Body(BodyError::Overloaded) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The refusal behind this error, if admission refused it.
    fn refusal(&self) -> Option<(&Refusal, Duration)> {
        match self {
            ProxyError::Shared(e) => e.refusal(),
            ProxyError::Refused(r, d) => Some((r, *d)),
            _ => None,
        }
    }

    /// The JSON error envelope; 429s carry `Retry-After` in whole seconds,
    /// rounded up so that a caller waiting that long is never early.
    pub fn into_response(self) -> Response<Body> {
        // Written into one buffer (no serde_json::Value): this is the 429 hot
        // path, where a refusal's body is copied from fixed parts and its
        // seconds. Codes are fixed identifiers; any other message is escaped
        // only when it holds something JSON must escape (a caller-sent host).
        let mut num = itoa::Buffer::new();
        let mut body = Vec::with_capacity(192);
        body.extend_from_slice(br#"{"error":{"code":""#);
        body.extend_from_slice(self.code().as_bytes());
        body.extend_from_slice(br#"","message":""#);
        match self.refusal() {
            Some((r, d)) => {
                let (text, waits) = refusal_text(r);
                body.extend_from_slice(text.as_bytes());
                if waits {
                    body.extend_from_slice(num.format(wait_secs(d)).as_bytes());
                    body.extend_from_slice(b" s");
                }
                body.push(b'"');
            }
            None => push_json_text(&mut body, &self),
        }
        if self.code() == "quota_exhausted" {
            body.extend_from_slice(
                br#","type":"https://iana.org/assignments/http-problem-types#quota-exceeded""#,
            );
        }
        body.extend_from_slice(b"}}");
        let mut resp = Response::new(Body::from(bytes::Bytes::from(body)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(d) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(wait_secs(d)));
        }
        if matches!(self, ProxyError::Access(AccessError::Unauthenticated)) {
            // RFC 9110 §11.6.1: a 401 says how to authenticate.
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dastra-proxy\""),
            );
        }
        if matches!(self, ProxyError::Target(TargetError::Trace)) {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        resp
    }
}

/// `text` as the rest of a JSON string whose opening quote is written.
fn push_json_text(body: &mut Vec<u8>, text: &impl std::fmt::Display) {
    use std::io::Write as _;
    let at = body.len();
    let _ = write!(body, "{text}\"");
    let inner = &body[at..body.len() - 1];
    if inner
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
    {
        let plain = String::from_utf8_lossy(inner).into_owned();
        let escaped = serde_json::to_string(&plain).unwrap_or_else(|_| "\"\"".into());
        body.truncate(at);
        body.extend_from_slice(&escaped.as_bytes()[1..]);
    }
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
