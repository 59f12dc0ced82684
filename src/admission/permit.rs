use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;

/// One recorded send. Dropped before [`Permit::sent`], it gives the slot back:
/// the caller went away, so nothing reached Dastra.
#[derive(Debug)]
pub struct Permit {
    inner: Option<Arc<Inner>>,
    at: Instant,
    waited: Duration,
}

impl Permit {
    pub(super) fn new(inner: Arc<Inner>, at: Instant, waited: Duration) -> Self {
        Self {
            inner: Some(inner),
            at,
            waited,
        }
    }

    /// How long the call waited in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The request is being sent: from here the slot is spent.
    pub fn sent(mut self) -> SentPermit {
        SentPermit {
            inner: self.inner.take(),
            at: self.at,
        }
    }

    /// Forgets the permit without touching the windows (the releaser holds the lock).
    pub(super) fn defuse(mut self) {
        self.inner = None;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.refund(self.at);
        }
    }
}

/// A slot whose call went out; it can still be refunded if the connection
/// never opened.
#[derive(Debug)]
pub struct SentPermit {
    inner: Option<Arc<Inner>>,
    at: Instant,
}

impl SentPermit {
    /// The call never reached Dastra (connect or TLS failure): give the slot back.
    pub fn refund(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.refund(self.at);
        }
    }
}
