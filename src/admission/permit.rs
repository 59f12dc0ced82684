//! Quota slots as values: a [`Permit`] reserved, a [`SentPermit`] in flight;
//! dropping either does the right thing for the window.

use std::sync::Arc;
use std::time::Duration;

use super::Inner;

/// One reserved quota slot. Dropped before [`Permit::sent`], it gives the slot
/// back: the caller went away, so nothing reached Dastra.
#[derive(Debug)]
pub struct Permit {
    inner: Option<Arc<Inner>>,
    /// With a shared store: the call id, and whether Redis reserved the slot
    /// (or this replica's own share did, while Redis was unreachable).
    remote: Option<(u64, bool)>,
    waited: Duration,
    /// How many calls the fair order served before this one, when it queued.
    ahead: usize,
    /// In a dry run, what the call would have met (`None`: it went as it would have).
    would: Option<super::Would>,
}

impl Permit {
    pub(super) fn new(inner: Arc<Inner>, waited: Duration) -> Self {
        Self {
            inner: Some(inner),
            remote: None,
            waited,
            ahead: 0,
            would: None,
        }
    }

    pub(super) fn remote(inner: Arc<Inner>, id: u64, via_redis: bool, waited: Duration) -> Self {
        Self {
            inner: Some(inner),
            remote: Some((id, via_redis)),
            waited,
            ahead: 0,
            would: None,
        }
    }

    /// How long the call waited in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Its place in the queue when it joined (0: it did not queue).
    pub fn ahead(&self) -> usize {
        self.ahead
    }

    pub(super) fn placed(mut self, ahead: usize) -> Self {
        self.ahead = ahead;
        self
    }

    /// In a dry run: what the call would have met without it.
    pub fn would(&self) -> Option<super::Would> {
        self.would
    }

    pub(super) fn dry(mut self, would: Option<super::Would>) -> Self {
        self.would = would;
        self
    }

    /// The request is being sent: from here the slot is spent. With a state
    /// file, the send is written there first.
    pub fn sent(mut self) -> SentPermit {
        let inner = self.inner.take();
        let seq = inner
            .as_ref()
            .and_then(|i| i.persist.as_ref())
            .and_then(|p| p.write(p.file.reserve(p.key)));
        SentPermit {
            inner,
            remote: self.remote.take(),
            seq,
        }
    }

    /// Forgets the permit without touching the windows (the releaser holds the lock).
    /// Returns the call id, if any, for the caller to end itself.
    pub(super) fn defuse(mut self) -> Option<(u64, bool)> {
        self.inner = None;
        self.remote.take()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.finish(self.remote.take(), false);
        }
    }
}

/// A slot whose call went out. It is logged when the response head arrives
/// (or the call fails after leaving, or is abandoned) — the latest moment
/// Dastra can have counted it — and given back if the connection never opened.
#[derive(Debug)]
pub struct SentPermit {
    inner: Option<Arc<Inner>>,
    remote: Option<(u64, bool)>,
    /// The send's number in the state file.
    seq: Option<u64>,
}

impl SentPermit {
    /// The call never reached Dastra (connect or TLS failure): give the slot back.
    pub fn refund(mut self) {
        if let Some(inner) = self.inner.take() {
            if let (Some(p), Some(seq)) = (&inner.persist, self.seq) {
                p.write(p.file.release(seq));
            }
            inner.finish(self.remote.take(), false);
        }
    }

    /// The response head arrived: the slot now ages from this instant.
    pub fn landed(self) {}
}

impl Drop for SentPermit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if let (Some(p), Some(seq)) = (&inner.persist, self.seq) {
                p.write(p.file.land(seq));
            }
            inner.finish(self.remote.take(), true);
        }
    }
}
