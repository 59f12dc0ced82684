//! Browser callers (SPEC §9.4): a CORS preflight carries no key and is never
//! a call to Dastra, so the proxy answers every one itself — spending no
//! quota — with the CORS headers only for an allowed origin. Calls from an
//! allowed origin (refusals included) expose what a browser app needs to
//! read: the RateLimit fields, `Retry-After`, `Cache-Status`, the request id.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::config::CorsConfig;

/// The headers a browser app may read from an answer.
const EXPOSED: &str = "RateLimit, RateLimit-Policy, Retry-After, Cache-Status, X-Request-Id";
/// The verbs Dastra's API has.
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// How long a browser may keep a preflight's answer (seconds).
const MAX_AGE: &str = "600";

/// The allowed origins of this config generation.
#[derive(Debug, Default)]
pub struct Cors {
    origins: Vec<HeaderValue>,
}

impl Cors {
    pub fn new(cfg: &CorsConfig) -> Self {
        Self {
            origins: cfg
                .allow_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        }
    }

    /// The request's `Origin` when it is one of ours (compared
    /// case-insensitively: a browser sends the host lower-case anyway).
    pub fn allowed<'a>(&self, req: &'a HeaderMap) -> Option<&'a HeaderValue> {
        if self.origins.is_empty() {
            return None;
        }
        let o = req.get(header::ORIGIN)?;
        self.origins
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(o.as_bytes()))
            .then_some(o)
    }

    /// The answer to a preflight: `204`, with the CORS grant when `origin`
    /// is allowed and nothing a browser would take as one otherwise.
    pub fn preflight(&self, req: &HeaderMap) -> (StatusCode, HeaderMap) {
        let mut h = HeaderMap::new();
        h.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        if let Some(origin) = self.allowed(req) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(METHODS),
            );
            if let Some(asked) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE),
            );
        }
        (StatusCode::NO_CONTENT, h)
    }

    /// Grants `origin` the answer and the headers it may read.
    pub fn expose(origin: HeaderValue, answer: &mut HeaderMap) {
        answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        answer.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        answer.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// A CORS preflight: `OPTIONS` with an `Origin` and the method it asks for.
pub fn is_preflight(method: &Method, req: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && req.contains_key(header::ORIGIN)
        && req.contains_key(HeaderName::from_static("access-control-request-method"))
}
