//! The releaser: one task per quota key that sleeps until the exact instant
//! the next slot frees and hands it to the head of the weighted-fair queue.
//! No polling loop, no thundering herd.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::remote::Answer;
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
/// slot, or learn how long until one frees. With nobody queued, it asks Redis
/// now and then whether it lost this replica's sends (while there are any).
async fn release_remote(inner: &Arc<Inner>, remote: &Arc<Remote>) -> Release {
    let idle = {
        let st = inner.lock();
        if st.queue.is_empty() && st.closed {
            return Release::Closed;
        }
        if let Some(p) = st.paused_until.filter(|p| *p > Instant::now()) {
            if !st.queue.is_empty() {
                return Release::Sleep(p);
            }
        }
        st.queue.is_empty()
    };
    if idle {
        let now = Instant::now();
        return match remote.heartbeat_due(now) {
            None => Release::Idle,
            Some(at) if at > now => Release::Sleep(at),
            Some(_) => {
                remote.heartbeat().await;
                // The next one, paced from this one; none if nothing is left to watch.
                match remote.heartbeat_due(Instant::now()) {
                    Some(at) => Release::Sleep(at),
                    None => Release::Idle,
                }
            }
        };
    }
    let one = remote.asking.lock().await;
    // While the window is known full the answer below costs Redis nothing,
    // so a lost key is found by the heartbeat's own question, as when idle.
    let now = Instant::now();
    if remote.heartbeat_due(now).is_some_and(|at| at <= now) {
        remote.check().await;
    }
    let answer = remote.ask(0, false).await;
    drop(one);
    match answer {
        Answer::Slot(id) => {
            let mut st = inner.lock();
            let now = Instant::now();
            match st.queue.pop(now) {
                Some((tx, enqueued)) => {
                    st.windows.reserve(now);
                    let permit =
                        Permit::remote(inner.clone(), id, true, now.duration_since(enqueued));
                    if let Err(Ok(permit)) = tx.send(Ok(permit)) {
                        drop(st);
                        drop(permit);
                    }
                }
                None => {
                    drop(st);
                    remote.finish(id, false, inner.clone());
                }
            }
            Release::Sleep(Instant::now())
        }
        // Calls queued here while another replica finds Redis lost sends:
        // asked again within a heartbeat, so this replica writes its own
        // back during the settle, not after it.
        Answer::StartsAt(at) | Answer::Settling(at) => {
            let now = Instant::now();
            match remote.store.watch_due(now) {
                Some(_) => Release::Sleep(at.min(now + remote.store.heartbeat())),
                None => Release::Sleep(at),
            }
        }
        Answer::Failed if remote.on_error == StoreOnError::Reject => {
            let mut st = inner.lock();
            for tx in st.queue.drain() {
                let _ = tx.send(Err(Refusal::StoreUnavailable));
            }
            // On to the idle step: its heartbeat asks whether Redis is back.
            Release::Sleep(Instant::now())
        }
        // Fall back to this replica's share until Redis answers again.
        Answer::Failed => match release_ready(inner) {
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
        let Some((tx, enqueued)) = st.queue.pop(now) else {
            continue;
        };
        st.windows.reserve(now);
        let permit = inner.fallback_permit(now.duration_since(enqueued));
        if let Err(Ok(permit)) = tx.send(Ok(permit)) {
            // The caller left between the queue and the grant: nothing was sent.
            if let (Some((id, _)), Some(r)) = (permit.defuse(), &inner.remote) {
                r.store.finished_locally(id, false);
            }
            st.windows.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::admission::Admission;
    use crate::store::RedisStore;

    /// Redis down, calls granted from this replica's share: a caller that
    /// left between the queue and its grant sent nothing, so its local send
    /// is given back in what the replica will write back to Redis.
    #[tokio::test]
    async fn a_caller_gone_before_its_grant_leaves_no_local_send() {
        let limits = crate::quota::test_limits(&[(4, 60_000)]);
        let store = RedisStore::new(
            "redis://127.0.0.1:1",
            "t",
            "gone",
            &limits,
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .unwrap();
        // Ids 0 and 1 taken: the grant's is 2, which no constant reply names.
        let (_, _) = (store.next_id(), store.next_id());
        let remote = Remote::new(
            Arc::new(store),
            StoreOnError::Local,
            crate::metrics::Metrics::new(),
            Arc::new(AtomicBool::new(false)),
            1,
        );
        let cfg = super::super::reserve_props::cfg();
        let a = Admission::with_remote(&limits, &cfg, Some(remote));
        {
            let (tx, rx) = tokio::sync::oneshot::channel();
            drop(rx);
            let mut st = a.inner.lock();
            st.queue.push(&"crm".into(), 1, 1, Instant::now(), tx);
        }
        release_ready(&a.inner);
        let store = &a.inner.remote.as_ref().unwrap().store;
        assert_eq!(
            store.watch_due(Instant::now()),
            None,
            "no send left to write back"
        );
    }
}
