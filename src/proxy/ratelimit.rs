//! What the caller is told about the quota its call counts in: the
//! `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-
//! headers), on every answer the proxy forwards or gives itself. Their
//! values are computed by the quota (`Admission::ratelimit_fields`); here
//! they are written, in one place.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::admission::Admission;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The two fields as computed (`RateLimit-Policy`, then `RateLimit`).
pub(crate) fn insert(h: &mut HeaderMap, (policy, state): (HeaderValue, HeaderValue)) {
    h.insert(&RATELIMIT_POLICY, policy);
    h.insert(&RATELIMIT, state);
}

/// The fields of the call's quota key, as they stand now.
pub(crate) fn add_quota_fields(h: &mut HeaderMap, admission: &Admission) {
    insert(h, admission.ratelimit_fields());
}

/// Whether a header is one of the two: a stored answer's own are replaced
/// by the quota's of the moment it is served.
pub(crate) fn is_field(name: &HeaderName) -> bool {
    name == RATELIMIT_POLICY || name == RATELIMIT
}
