//! The facts one stage of a call learns and other stages use, each declared
//! here with its one writer and its readers.
//!
//! Facts that only travel down the path are typed request extensions
//! ([`Route`], [`BodyFault`](crate::body::BodyFault), [`CallQuota`]); facts
//! that only travel up with the answer are response extensions
//! ([`FreshToken`]). [`Facts`] holds those the observe and rescue stages read
//! once the call has ended, however it ended (an error carries no
//! extensions). Each field names its one writer, and `tests/layout.rs`
//! checks that its setter is called from that one file. A fact learned
//! before the path may be run again for this call (an OAuth2 401 retry
//! passes admission again) is written once and a second write is a bug a
//! debug build reports; one learned by a stage that may run again keeps the
//! latest pass's value (the quota: the first's, the same key's).
//!
//! A stage that needs a fact its writer has not yet written was put before
//! that writer: it answers [`ProxyError::Misordered`] naming the fact, never
//! a default, so a wrongly built stack fails every call (and every test)
//! rather than quietly skipping a check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{HeaderValue, Request};

use crate::access::Identity;
use crate::admission::Admission;
use crate::app::Policy;
use crate::credential::{QuotaKey, Route};
use crate::error::ProxyError;

/// The per-call cells, put in the request's extensions by the observe stage
/// (one allocation per call).
#[derive(Debug)]
pub(crate) struct Facts {
    /// Observe, at the start: the call's `X-Request-Id` (kept or made).
    /// Read by forward (to Dastra) and observe (on the answer).
    pub(crate) request_id: HeaderValue,
    /// Observe: whether the caller sent that id itself; a fresh one is
    /// written on the request by forward, so a refused call's never is.
    pub(crate) id_on_request: bool,
    /// Who called, under which config generation: written in `stages.rs`
    /// (access); read by the guard, admission, forward (forwarding hops)
    /// and observe (counts).
    caller: OnceLock<Authorized>,
    /// The call's quota, once known: written in `admit.rs`; read by rescue
    /// (the RateLimit fields any later failure answers with). A 401 retry's
    /// second pass asks for the same key: the first pass's is kept.
    quota: Latest<Admission>,
    /// The fields of the client's own window or its part of a split
    /// credential, when that refused: written in `admit.rs`; read by rescue
    /// instead of the quota's.
    own_fields: Latest<(HeaderValue, HeaderValue)>,
    /// The wait the caller's `Prefer: wait=N` was held to: written in
    /// `admit.rs`; read by observe (`Preference-Applied`).
    wait_applied: Micros,
    /// How long the call queued for its slot: written in `admit.rs`; read
    /// by observe (access log).
    queue_wait: Micros,
    /// How long Dastra took: written in `forward.rs`, each attempt; read by
    /// observe (the last attempt's).
    upstream: Micros,
    /// The code of the error the call was answered with: written in
    /// `rescue.rs`; read by observe.
    code: Latest<&'static str>,
}

/// Who called and the config generation the call runs under, together: the
/// identity's index is into that generation's clients.
#[derive(Debug)]
pub(crate) struct Authorized {
    pub(crate) identity: Identity,
    pub(crate) policy: Arc<Policy>,
}

/// A fact of a stage that may run more than once for a call: the latest
/// pass's value, or the first's (an uncontended lock: the stages of a call
/// run one at a time; cheaper to set than a `OnceLock`).
#[derive(Debug)]
struct Latest<T>(Mutex<Option<T>>);

impl<T: Clone> Latest<T> {
    fn new() -> Self {
        Self(Mutex::new(None))
    }
    fn set(&self, v: T) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }
    fn set_first(&self, v: T) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(v);
    }
    fn get(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A duration fact of a stage that may run more than once for a call, as
/// µs + 1 (0: not known): the latest pass's value, lock-free.
#[derive(Debug, Default)]
struct Micros(AtomicU64);

impl Micros {
    fn set(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
        self.0.store(us + 1, Ordering::Relaxed);
    }
    fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_micros(n - 1)),
        }
    }
}

/// Writes a write-once fact; a second write is a second writer.
fn once<T: std::fmt::Debug>(cell: &OnceLock<T>, value: T, what: &str) {
    let second = cell.set(value).is_err();
    debug_assert!(!second, "{what} written twice: it has one writer");
}

impl Facts {
    pub(crate) fn new(request_id: HeaderValue, id_on_request: bool) -> Self {
        Self {
            request_id,
            id_on_request,
            caller: OnceLock::new(),
            quota: Latest::new(),
            own_fields: Latest::new(),
            wait_applied: Micros::default(),
            queue_wait: Micros::default(),
            upstream: Micros::default(),
            code: Latest::new(),
        }
    }

    pub(crate) fn set_caller(&self, identity: Identity, policy: Arc<Policy>) {
        once(&self.caller, Authorized { identity, policy }, "the caller");
    }

    /// The caller, for a stage that must run after access.
    pub(crate) fn caller(&self) -> Result<&Authorized, ProxyError> {
        self.caller
            .get()
            .ok_or(ProxyError::Misordered("the caller (access stage)"))
    }

    /// The caller if access got that far (observe: a call refused before
    /// it counts as anonymous).
    pub(crate) fn caller_if_known(&self) -> Option<&Authorized> {
        self.caller.get()
    }

    pub(crate) fn set_quota(&self, a: Admission) {
        self.quota.set_first(a);
    }

    pub(crate) fn set_own_fields(&self, fields: (HeaderValue, HeaderValue)) {
        self.own_fields.set(fields);
    }

    /// The RateLimit fields a failure of this call answers with: the own
    /// window's or part's that refused it, else its quota's; none before
    /// admission chose a quota.
    pub(crate) fn failure_fields(&self) -> Option<(HeaderValue, HeaderValue)> {
        match self.own_fields.get() {
            Some(f) => Some(f),
            None => self.quota.get().map(|a| a.ratelimit_fields()),
        }
    }

    pub(crate) fn set_wait_applied(&self, w: Duration) {
        self.wait_applied.set(w);
    }

    pub(crate) fn wait_applied(&self) -> Option<Duration> {
        self.wait_applied.get()
    }

    pub(crate) fn set_queue_wait(&self, w: Duration) {
        self.queue_wait.set(w);
    }

    pub(crate) fn queue_wait(&self) -> Option<Duration> {
        self.queue_wait.get()
    }

    pub(crate) fn set_upstream(&self, took: Duration) {
        self.upstream.set(took);
    }

    pub(crate) fn upstream(&self) -> Option<Duration> {
        self.upstream.get()
    }

    pub(crate) fn set_code(&self, code: &'static str) {
        self.code.set_first(code);
    }

    pub(crate) fn code(&self) -> Option<&'static str> {
        self.code.get()
    }
}

/// The call's quota key when it had to be computed (passthrough: a SHA-256
/// of the caller's credential). Written by the savings stage, which needs it
/// first; read by admission. A configured credential's key is its
/// [`Route`]'s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallQuota(pub(crate) QuotaKey);

/// On a response: it went out with an OAuth2 token fetched for this very
/// call. Written by credential injection; read by the 401 retry (buffer):
/// a 401 to it says nothing about the token, so it is neither dropped nor
/// retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FreshToken;

/// The call's [`Facts`]; the observe stage puts them in place first.
pub(crate) fn facts<B>(req: &Request<B>) -> Result<&Arc<Facts>, ProxyError> {
    req.extensions()
        .get::<Arc<Facts>>()
        .ok_or(ProxyError::Misordered("the call's facts (observe stage)"))
}

/// The call's credential and quota; the access stage puts them in place.
pub(crate) fn route<B>(req: &Request<B>) -> Result<&Route, ProxyError> {
    req.extensions()
        .get::<Route>()
        .ok_or(ProxyError::Misordered("the call's route (access stage)"))
}
