//! The synchronous stages, in the order the stack runs them: target, access,
//! the client's guard, the body limit. Each only adapts its concern's module
//! to the request path.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::body::Body;
use http::{header, HeaderMap, Request};

use super::check::Check;
use super::observe::Outcome;
use crate::access::{AccessError, ConnInfo, Identity};
use crate::app::{App, Policy};
use crate::body::{LimitedBody, TooLarge};
use crate::guard::GuardError;
use crate::target::{strip_hop_by_hop, TargetError};

/// Not an open proxy; nothing hop-by-hop crosses, so nothing later (the quota
/// key in passthrough included) can see a header that will not be forwarded.
#[derive(Debug, Clone)]
pub(crate) struct TargetStage(pub(crate) Arc<App>);

impl Check for TargetStage {
    type Error = TargetError;
    fn check(&self, req: &mut Request<Body>) -> Result<(), TargetError> {
        self.0.target.check(req)?;
        strip_hop_by_hop(req.headers_mut());
        Ok(())
    }
}

/// The allow-lists and client keys; says who called for every later stage.
#[derive(Debug, Clone)]
pub(crate) struct AccessStage(pub(crate) Arc<App>);

impl Check for AccessStage {
    type Error = AccessError;
    fn check(&self, req: &mut Request<Body>) -> Result<(), AccessError> {
        let policy = self.0.policy();
        let peer = req
            .extensions()
            .get::<ConnInfo>()
            .expect("the server inserts ConnInfo")
            .peer
            .ip();
        let identity = policy.access.authorize(peer, req.headers())?;
        if let Some(o) = req.extensions().get::<Arc<Outcome>>() {
            o.set_client(identity.name.clone());
        }
        req.extensions_mut().insert(identity);
        req.extensions_mut().insert(policy);
        Ok(())
    }
}

/// The client's own `rate`/`burst`, before it can queue for the shared quota.
#[derive(Debug, Clone)]
pub(crate) struct GuardStage;

impl Check for GuardStage {
    type Error = GuardError;
    fn check(&self, req: &mut Request<Body>) -> Result<(), GuardError> {
        let ext = req.extensions();
        match (ext.get::<Arc<Policy>>(), ext.get::<Identity>()) {
            (Some(policy), Some(id)) => policy.guard.check(id),
            _ => Ok(()),
        }
    }
}

/// Set when the streamed body passed the limit: HTTP/2 turns the body error
/// into a bare stream reset, and the forward stage needs the cause.
#[derive(Debug, Clone)]
pub(crate) struct BodyOverflow(pub(crate) Arc<AtomicBool>);

/// `Content-Length` over the limit is refused here; a body without one is
/// cut while streaming.
#[derive(Debug, Clone)]
pub(crate) struct BodyLimitStage(pub(crate) u64);

impl Check for BodyLimitStage {
    type Error = TooLarge;
    fn check(&self, req: &mut Request<Body>) -> Result<(), TooLarge> {
        let limit = self.0;
        if content_length(req.headers()).is_some_and(|n| n > limit) {
            return Err(TooLarge(limit));
        }
        let body = std::mem::take(req.body_mut());
        let (limited, overflowed) = LimitedBody::new(body, limit);
        *req.body_mut() = Body::new(limited);
        req.extensions_mut().insert(BodyOverflow(overflowed));
        Ok(())
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
