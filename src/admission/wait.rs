//! A queued call's wait. It ends with its slot; with a refusal when
//! `max_wait` runs out — the projection at arrival said it would start in
//! time, but later calls of heavier clients were served first (the fair
//! order lets them overtake); or with the call leaving the queue when its
//! caller goes away.

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::remote::Answer;
use super::{Admission, Caller, Inner, Permit, Refusal};

/// How far past `max_wait` a queued call is refused: a call projected to
/// start at exactly `max_wait` is granted at that instant by the releaser
/// (another task; with Redis, after one round trip), so its timer must not
/// win the race against the grant.
const GRACE: std::time::Duration = std::time::Duration::from_millis(10);

impl Admission {
    /// Waits for the releaser to hand this call (queued at `queued_at`) its
    /// slot, for at most `max_wait`.
    pub(super) async fn wait_in_queue(
        &self,
        caller: &Caller,
        id: u64,
        mut rx: oneshot::Receiver<Result<Permit, Refusal>>,
        queued_at: Instant,
    ) -> Result<Permit, Refusal> {
        let guard = LeaveOnDrop {
            inner: &self.inner,
            caller: &caller.name,
            id: Some(id),
        };
        let deadline = queued_at + caller.max_wait(self.inner.lock().max_wait) + GRACE;
        // Boxed, as the refusal's Redis question below: inline, their state
        // would sit in every queued call's future.
        let timer = Box::pin(tokio::time::sleep_until(deadline));
        let out = tokio::select! {
            biased;
            got = &mut rx => got,
            () = timer => {
                // Out of the queue under the lock the releaser grants under:
                // either the call is still queued (refused now) or its grant
                // was already sent (taken, it started in time).
                let left = self.inner.lock().queue.remove(&caller.name, id).is_some();
                match left {
                    true => Ok(Err(Box::pin(self.overtaken(caller)).await)),
                    false => rx.await,
                }
            }
        };
        guard.disarm();
        out.unwrap_or(Err(Refusal::ShuttingDown))
    }

    /// The refusal of a call whose `max_wait` ran out in the queue, with
    /// when a call of its client could start now (an honest Retry-After):
    /// Redis's projection when replicas share the quota, else this key's.
    async fn overtaken(&self, caller: &Caller) -> Refusal {
        let (ahead, local) = {
            let st = self.inner.lock();
            let now = Instant::now();
            let (start, ahead) = st.project_for(caller, now);
            (ahead, st.exhausted(start, now))
        };
        let Some(remote) = &self.inner.remote else {
            return local;
        };
        let answer = remote.ask(ahead, true).await;
        // Paused here, or in Redis (another replica heard the 429: its reply
        // just said so), as for a call refused up front.
        let here = self.inner.lock().paused_until;
        let paused = remote.pause_with(here, Instant::now());
        match answer {
            Answer::StartsAt(at) | Answer::Settling(at) => super::remote::held_by(paused, at),
            Answer::Slot(_) => Refusal::QuotaExhausted {
                retry_at: Instant::now(),
            },
            Answer::Failed => local,
        }
    }
}

/// Takes a queued call out of the queue when its caller goes away.
struct LeaveOnDrop<'a> {
    inner: &'a Inner,
    caller: &'a str,
    id: Option<u64>,
}

impl LeaveOnDrop<'_> {
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.inner.lock().queue.remove(self.caller, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::{Admission, Caller, Refusal};
    use crate::config::{AdmissionConfig, OnLimit, Upstream429};
    use crate::quota::test_limits as limits;

    fn queue(max_wait_s: u64) -> AdmissionConfig {
        AdmissionConfig {
            on_limit: OnLimit::Queue,
            max_queue: 100,
            max_wait: Duration::from_secs(max_wait_s),
            margin: Duration::ZERO,
            upstream_429: Upstream429::Pause,
            flight: Duration::from_secs(5),
            dry_run: false,
            aging: std::time::Duration::from_secs(10),
        }
    }

    fn caller(name: &str, weight: u32) -> Caller {
        Caller {
            name: name.into(),
            weight,
            wait: None,
            priority: crate::admission::NORMAL,
        }
    }

    /// 1 per second, `max_wait` 3 s. A light client's call is queued at 0
    /// to start at 1 s; a heavy client (1000:1) then queues three calls the
    /// fair order serves first, at 1, 2 and 3 s. The light call would start
    /// at 4 s: it is refused when its 3 s run out (not served at 4 s), with
    /// Retry-After the instant its client's next call could start.
    #[tokio::test(start_paused = true)]
    async fn a_call_overtaken_in_the_queue_is_refused_when_max_wait_runs_out() {
        let cfg = queue(3);
        let a = Admission::new(&limits(&[(1, 1000)]), &cfg);
        let t0 = Instant::now();
        a.acquire(&caller("heavy", 1000))
            .await
            .unwrap()
            .sent()
            .landed();
        let light = {
            let a = a.clone();
            tokio::spawn(async move {
                let got = a.acquire(&caller("light", 1)).await;
                (got.map(|p| p.waited()), Instant::now())
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(a.waiting(), 1, "the light call is queued");
        let mut heavy = Vec::new();
        for _ in 0..3 {
            let a = a.clone();
            heavy.push(tokio::spawn(async move {
                let p = a.acquire(&caller("heavy", 1000)).await.unwrap();
                let at = Instant::now();
                p.sent().landed();
                at
            }));
            tokio::task::yield_now().await;
        }
        let mut served = Vec::new();
        for h in heavy {
            served.push(h.await.unwrap() - t0);
        }
        assert_eq!(
            served,
            [1000, 2000, 3000].map(Duration::from_millis),
            "the heavy calls overtook the light one"
        );
        let (got, at) = light.await.unwrap();
        assert_eq!(at - t0, Duration::from_millis(3000) + super::GRACE);
        match got {
            Err(Refusal::QuotaExhausted { retry_at }) => {
                assert_eq!(retry_at - t0, Duration::from_millis(4000))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.waiting(), 0, "it left the queue");
        // Its slot was not given away: the next call starts at 4 s.
        let next = a.acquire(&caller("light", 1)).await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_millis(4000));
        drop(next);
    }

    /// A call that starts within `max_wait` is never refused by the timer,
    /// however long that is (the grant at exactly `max_wait` wins).
    #[tokio::test(start_paused = true)]
    async fn a_call_granted_at_exactly_max_wait_is_served() {
        let cfg = queue(2);
        let a = Admission::new(&limits(&[(1, 1000)]), &cfg);
        // What `Preference-Applied` caps a caller's wait at.
        assert_eq!(a.max_wait(), Duration::from_secs(2));
        let t0 = Instant::now();
        let c = caller("x", 1);
        a.acquire(&c).await.unwrap().sent().landed();
        // Each lands as it is granted (a slot ages from its landing).
        let go = || async {
            let p = a.acquire(&c).await.unwrap();
            let (waited, ahead) = (p.waited(), p.ahead());
            p.sent().landed();
            (waited, ahead)
        };
        let (s, t) = tokio::join!(go(), go());
        // Each queued behind the calls served first: a trace's queue position.
        assert_eq!(s, (Duration::from_millis(1000), 0));
        assert_eq!(t, (Duration::from_millis(2000), 1));
        assert_eq!(Instant::now() - t0, Duration::from_millis(2000));
    }
}
