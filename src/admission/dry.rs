//! `admission.dry_run`: every call goes at once, and what admission would
//! have decided rides on its permit for the proxy to count and log
//! (`dry_run_total{client,would}`), so a limit can be watched before it is
//! enforced. The send is still recorded: a window's log keeps its newest N,
//! which is all "would the next call have waited" needs.

use tokio::time::Instant;

use super::State;
use crate::config::OnLimit;

/// What a call would have met without the dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Would {
    /// Queued for a slot (within `max_wait`).
    Queue,
    /// Refused (reject mode, or a start past `max_wait`).
    Reject,
}

impl Would {
    /// The `would` label of `dry_run_total`.
    pub fn label(self) -> &'static str {
        match self {
            Would::Queue => "queue",
            Would::Reject => "reject",
        }
    }

    /// From when the call could have started.
    pub(super) fn of(start: Instant, now: Instant, st: &State) -> Option<Self> {
        if start <= now {
            return None;
        }
        Some(match st.on_limit {
            OnLimit::Queue if start.duration_since(now) <= st.max_wait => Would::Queue,
            _ => Would::Reject,
        })
    }
}

impl State {
    /// The call goes now, its send recorded; what it would have met.
    pub(super) fn dry_admit(&mut self, now: Instant) -> Option<Would> {
        let would = Would::of(self.blocked_until(now), now, self);
        self.windows.reserve(now);
        would
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Would;
    use crate::admission::{Admission, Caller};
    use crate::config::{AdmissionConfig, OnLimit, Upstream429};
    use crate::quota::test_limits as limits;

    fn cfg(on_limit: OnLimit, max_wait_ms: u64) -> AdmissionConfig {
        AdmissionConfig {
            on_limit,
            max_queue: 10,
            max_wait: Duration::from_millis(max_wait_ms),
            margin: Duration::ZERO,
            upstream_429: Upstream429::Pause,
            flight: Duration::from_secs(5),
            dry_run: true,
            aging: std::time::Duration::from_secs(10),
        }
    }

    /// The `would` label values dashboards and alerts query.
    #[test]
    fn the_metric_labels_are_queue_and_reject() {
        assert_eq!(Would::Queue.label(), "queue");
        assert_eq!(Would::Reject.label(), "reject");
    }

    /// 2 per second: every call goes at once; the 3rd and later would have
    /// waited for the window (queued while that is within `max_wait`,
    /// refused past it or in reject mode), and the log keeps the newest two
    /// sends, so the decision stays exact as the window slides.
    #[tokio::test(start_paused = true)]
    async fn every_call_goes_at_once_and_says_what_it_would_have_met() {
        let c = Caller {
            name: "x".into(),
            weight: 1,
            wait: None,
            priority: crate::admission::NORMAL,
        };
        for (on_limit, max_wait, over) in [
            (OnLimit::Queue, 2000, Some(Would::Queue)),
            (OnLimit::Queue, 500, Some(Would::Reject)),
            (OnLimit::Reject, 2000, Some(Would::Reject)),
        ] {
            let a = Admission::new(&limits(&[(2, 1000)]), &cfg(on_limit, max_wait));
            let t0 = Instant::now();
            let mut seen = Vec::new();
            for via_fast_path in [true, false, true, false, true] {
                let p = match via_fast_path {
                    true => a.try_acquire().unwrap().unwrap(),
                    false => a.acquire(&c).await.unwrap(),
                };
                seen.push(p.would());
                p.sent().landed();
            }
            assert_eq!(Instant::now(), t0, "nothing waited");
            assert_eq!(
                seen,
                [None, None, over, over, over],
                "{on_limit:?} {max_wait}"
            );
            assert_eq!(a.waiting(), 0);
            // A second later the newest two sends have aged out: room again.
            tokio::time::advance(Duration::from_millis(1000)).await;
            assert_eq!(a.acquire(&c).await.unwrap().would(), None);
        }
    }
}
