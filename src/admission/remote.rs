//! Admission through the shared Redis store, and what to do when it does not
//! answer: count the error, mark the store unhealthy, fall back or refuse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Limit, StoreOnError};
use crate::metrics::Metrics;
use crate::store::{Decision, RedisStore, StoreError};

/// Admission through Redis, and what to do when it does not answer.
#[derive(Debug)]
pub struct Remote {
    pub store: Arc<RedisStore>,
    pub on_error: StoreOnError,
    pub metrics: Metrics,
    pub healthy: Arc<AtomicBool>,
    pub replicas: u32,
}

impl Remote {
    /// Reserves a slot in Redis: `Ok(Ok(member))`, `Ok(Err(wait))`, or
    /// `Err(())` when Redis failed (counted and logged).
    pub(super) async fn reserve(&self) -> Result<Result<String, Duration>, ()> {
        let member = self.store.member();
        match self.store.reserve(&member).await {
            Ok(Decision::Admitted) => {
                self.up();
                Ok(Ok(member))
            }
            Ok(Decision::Wait(d)) => {
                self.up();
                Ok(Err(d))
            }
            Err(e) => {
                self.failed("decide", &e);
                Err(())
            }
        }
    }

    /// This replica's share of `limits`, held while Redis is unreachable.
    pub fn share(&self, limits: &[Limit]) -> Vec<Limit> {
        limits
            .iter()
            .map(|l| Limit {
                requests: (l.requests / self.replicas).max(1),
                ..l.clone()
            })
            .collect()
    }

    fn up(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("quota store reachable again; deciding through Redis");
        }
    }

    pub(super) fn failed(&self, op: &str, e: &StoreError) {
        self.metrics
            .store_errors_total
            .with_label_values(&[op])
            .inc();
        if !matches!(e, StoreError::Backoff(_)) && self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, on_error = ?self.on_error, "quota store unreachable");
        }
    }

    /// Lands or releases a remote slot in the background (from `Drop`).
    pub(super) fn finish(self: &Arc<Self>, member: String, land: bool) {
        // A permit may be dropped while the runtime shuts down: then there is
        // nobody left to tell, and Redis expires the reservation by itself.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let r = if land {
                me.store.land(&member, None).await
            } else {
                me.store.release(&member).await
            };
            if let Err(e) = r {
                me.failed(if land { "land" } else { "release" }, &e);
            }
        });
    }
}
