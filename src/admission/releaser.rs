//! The releaser: one task per quota key that sleeps until the exact instant
//! the next slot frees and hands it to the head of the weighted-fair queue.
//! No polling loop, no thundering herd.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, Permit, Refusal, Remote};
use crate::config::StoreOnError;

/// Hands slots to queued calls as they free; sleeps in between.
pub(super) async fn release_loop(inner: Arc<Inner>) {
    loop {
        let next = match &inner.remote {
            Some(remote) => release_remote(&inner, remote).await,
            None => release_ready(&inner),
        };
        match next {
            Release::Sleep(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = inner.wake.notified() => {}
                }
            }
            Release::Idle => inner.wake.notified().await,
            Release::Closed => return,
        }
    }
}

/// One step of the releaser through Redis: grant the head of the queue a
/// slot, or learn how long until one frees.
async fn release_remote(inner: &Arc<Inner>, remote: &Arc<Remote>) -> Release {
    {
        let st = inner.lock();
        if st.queue.is_empty() {
            return if st.closed {
                Release::Closed
            } else {
                Release::Idle
            };
        }
        if let Some(p) = st.paused_until.filter(|p| *p > Instant::now()) {
            return Release::Sleep(p);
        }
    }
    match remote.reserve().await {
        Ok(Ok(member)) => {
            let mut st = inner.lock();
            let now = Instant::now();
            match st.queue.pop() {
                Some((tx, enqueued)) => {
                    let permit =
                        Permit::remote(inner.clone(), member, now.duration_since(enqueued));
                    if let Err(Ok(permit)) = tx.send(Ok(permit)) {
                        drop(st);
                        drop(permit);
                    }
                }
                None => {
                    drop(st);
                    remote.finish(member, false);
                }
            }
            Release::Sleep(Instant::now())
        }
        Ok(Err(wait)) => Release::Sleep(Instant::now() + wait),
        Err(()) if remote.on_error == StoreOnError::Reject => {
            let mut st = inner.lock();
            for tx in st.queue.drain() {
                let _ = tx.send(Err(Refusal::StoreUnavailable));
            }
            Release::Idle
        }
        // Fall back to this replica's share until Redis answers again.
        Err(()) => match release_ready(inner) {
            Release::Idle => Release::Idle,
            Release::Closed => Release::Closed,
            Release::Sleep(at) => {
                Release::Sleep(at.min(Instant::now() + Duration::from_millis(500)))
            }
        },
    }
}

enum Release {
    Sleep(Instant),
    Idle,
    Closed,
}

fn release_ready(inner: &Arc<Inner>) -> Release {
    let mut st = inner.lock();
    let now = Instant::now();
    loop {
        if st.queue.is_empty() {
            return if st.closed {
                Release::Closed
            } else {
                Release::Idle
            };
        }
        let at = st.blocked_until(now);
        if at > now {
            return Release::Sleep(at);
        }
        st.paused_until = None;
        let Some((tx, enqueued)) = st.queue.pop() else {
            continue;
        };
        st.windows.reserve(now);
        let permit = Permit::new(inner.clone(), now.duration_since(enqueued));
        if let Err(Ok(permit)) = tx.send(Ok(permit)) {
            // The caller left between the queue and the grant: nothing was sent.
            permit.defuse();
            st.windows.release();
        }
    }
}
