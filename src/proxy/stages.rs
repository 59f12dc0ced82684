//! The synchronous stages, in the order the stack runs them: target, access,
//! the client's guard, the body limit. Each only adapts its concern's module
//! to the request path.

use std::sync::Arc;

use arc_swap::ArcSwap;

use axum::body::Body;
use http::{header, HeaderMap, Request};
use http_body::Body as _;

use super::check::Check;
use super::facts::facts;
use crate::access::{AccessError, ConnInfo};
use crate::app::Policy;
use crate::body::{BodyError, LimitedBody};
use crate::error::ProxyError;
use crate::target::{strip_request_hop_by_hop, Target, TargetError};

/// Not an open proxy; nothing hop-by-hop crosses, so nothing later (the quota
/// key in passthrough included) can see a header that will not be forwarded.
/// The caller's credentials are marked sensitive in the same pass.
#[derive(Debug, Clone)]
pub(crate) struct TargetStage(pub(crate) Arc<Target>);

impl Check for TargetStage {
    type Error = TargetError;
    fn check(&self, req: &mut Request<Body>) -> Result<(), TargetError> {
        self.0.check(req)?;
        strip_request_hop_by_hop(req.headers_mut());
        Ok(())
    }
}

/// The allow-lists and client keys; says who called for every later stage.
/// It reads the policy of the moment, and nothing else of the `App`.
#[derive(Debug, Clone)]
pub(crate) struct AccessStage(pub(crate) Arc<ArcSwap<Policy>>);

impl Check for AccessStage {
    type Error = ProxyError;
    fn check(&self, req: &mut Request<Body>) -> Result<(), ProxyError> {
        let policy = self.0.load_full();
        let peer = req
            .extensions()
            .get::<ConnInfo>()
            .ok_or(ProxyError::Misordered("the connection (server)"))?
            .peer
            .ip();
        let identity = policy.access.authorize(peer, req.headers())?;
        // Which Dastra credential the caller's calls go out with; none only
        // for a caller without a key when every credential is a client's.
        let route = (policy.routes.of(identity.index)).ok_or(AccessError::Unauthenticated)?;
        req.extensions_mut().insert(route);
        facts(req)?.set_caller(identity, policy);
        Ok(())
    }
}

/// The client's own `rate`/`burst`, before it can queue for the shared quota.
#[derive(Debug, Clone)]
pub(crate) struct GuardStage;

impl Check for GuardStage {
    type Error = ProxyError;
    fn check(&self, req: &mut Request<Body>) -> Result<(), ProxyError> {
        let caller = facts(req)?.caller()?;
        Ok(caller.policy.guard.check(&caller.identity)?)
    }
}

/// `Content-Length` over the limit is refused here; a body without one is
/// cut while streaming, and so is one that stalls (`body_read_timeout`). An
/// empty body is left alone (nothing to count, nothing to wait for).
#[derive(Debug, Clone)]
pub(crate) struct BodyLimitStage {
    pub(crate) limit: u64,
    pub(crate) timeout: std::time::Duration,
}

impl Check for BodyLimitStage {
    type Error = BodyError;
    fn check(&self, req: &mut Request<Body>) -> Result<(), BodyError> {
        if content_length(req.headers()).is_some_and(|n| n > self.limit) {
            return Err(BodyError::TooLarge(self.limit));
        }
        if req.body().is_end_stream() {
            return Ok(());
        }
        // Reading the body can wait (see `head`).
        crate::head::detach(req);
        let body = std::mem::take(req.body_mut());
        let (limited, fault) = LimitedBody::new(body, self.limit, self.timeout);
        *req.body_mut() = Body::new(limited);
        // A typed fact of the call: the stages that read the body ask it why
        // the body broke.
        req.extensions_mut().insert(fault);
        Ok(())
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
