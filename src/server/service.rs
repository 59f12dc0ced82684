//! How hyper calls one connection's tower stack.
//!
//! hyper-util's `TowerToHyperService` clones the whole stack for every
//! request (an `Arc` count up and down per stage) and drives the clone
//! through a `Oneshot`. Our stacks are always ready, so each connection keeps
//! one copy and calls it in place: the lock is never contended (hyper calls a
//! connection's service from that connection's task only, and `call` is
//! synchronous), it only turns hyper's `&self` into tower's `&mut self`.

use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::future::Either;
use tower::util::Oneshot;
use tower::ServiceExt as _;

/// One connection's stack, as hyper's `Service`.
#[derive(Debug)]
pub(super) struct InPlace<S>(Mutex<S>);

impl<S> InPlace<S> {
    pub(super) fn new(service: S) -> Self {
        Self(Mutex::new(service))
    }
}

impl<S, R> hyper::service::Service<R> for InPlace<S>
where
    S: tower::Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Oneshot<S, R>>;

    fn call(&self, req: R) -> Self::Future {
        let mut service = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(service.call(req)),
            // Not ready now, or failing: the tower way, on a copy of its own,
            // which waits for readiness or reports the failure.
            _ => Either::Right(service.clone().oneshot(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::Service as _;
    use std::convert::Infallible;
    use std::future::{ready, Ready};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Ready only every other time it is asked; counts its clones.
    #[derive(Debug)]
    struct Fussy {
        asked: usize,
        clones: Arc<AtomicUsize>,
    }

    impl Clone for Fussy {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::Relaxed);
            Self {
                asked: self.asked,
                clones: self.clones.clone(),
            }
        }
    }

    impl tower::Service<u32> for Fussy {
        type Response = u32;
        type Error = Infallible;
        type Future = Ready<Result<u32, Infallible>>;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.asked += 1;
            if self.asked % 2 == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: u32) -> Self::Future {
            ready(Ok(req * 2))
        }
    }

    #[tokio::test]
    async fn a_ready_stack_is_called_in_place_and_an_unready_one_is_waited_for() {
        let clones = Arc::new(AtomicUsize::new(0));
        let svc = InPlace::new(Fussy {
            asked: 1,
            clones: clones.clone(),
        });
        // Asked a second time: ready, called without a copy.
        assert_eq!(svc.call(3).await.unwrap(), 6);
        assert_eq!(clones.load(Ordering::Relaxed), 0);
        // Asked a third time: not ready, so a copy waits until it is.
        assert_eq!(svc.call(4).await.unwrap(), 8);
        assert_eq!(clones.load(Ordering::Relaxed), 1);
    }
}
