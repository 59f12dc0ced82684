//! The request body, held to its limits while streaming: no more than
//! `server.max_request_body` bytes, and no gap longer than
//! `server.body_read_timeout` between two chunks.
//!
//! `Content-Length` over the size limit is refused before anything is sent; a
//! body without one is cut off here when it passes the limit. Which limit
//! broke is also kept in a [`BodyFault`] the request path can read, because
//! HTTP/2 turns a body error into a bare stream reset and the cause would
//! otherwise be lost.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Why a request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// It grew past `server.max_request_body`.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    /// No chunk arrived for `server.body_read_timeout`.
    #[error("the request body stalled for more than {} ms", .0.as_millis())]
    Stalled(Duration),
    /// Reading it ahead of admission would pass `server.max_buffered_body`.
    #[error("the proxy holds too many request bodies; retry in a moment")]
    Overloaded,
}

/// Bytes of request bodies read ahead of admission, over every connection:
/// many streams each trickling a small body must not add up to unbounded
/// memory, whatever `max_concurrent_streams` allows per connection.
#[derive(Debug)]
pub struct ReadAhead {
    max: u64,
    used: std::sync::atomic::AtomicU64,
}

impl ReadAhead {
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: Default::default(),
        })
    }

    /// Room for `n` more bytes, held until the returned value is dropped.
    pub fn take(self: &Arc<Self>, n: u64) -> Result<ReadAheadHold, BodyError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.used
            .fetch_update(Relaxed, Relaxed, |u| {
                u.checked_add(n).filter(|total| *total <= self.max)
            })
            .map_err(|_| BodyError::Overloaded)?;
        Ok(ReadAheadHold {
            budget: self.clone(),
            n,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A body's share of [`ReadAhead`], given back on drop.
#[derive(Debug)]
pub struct ReadAheadHold {
    budget: Arc<ReadAhead>,
    n: u64,
}

impl Drop for ReadAheadHold {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What went wrong with a body, readable after the body itself is gone.
#[derive(Debug, Clone, Default)]
pub struct BodyFault(Arc<AtomicU8>);

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const STALLED: u8 = 2;

    /// The error, given the limits the body was held to.
    pub fn get(&self, limit: u64, timeout: Duration) -> Option<BodyError> {
        match self.0.load(Ordering::Acquire) {
            Self::TOO_LARGE => Some(BodyError::TooLarge(limit)),
            Self::STALLED => Some(BodyError::Stalled(timeout)),
            _ => None,
        }
    }

    fn set(&self, e: BodyError) {
        let v = match e {
            BodyError::TooLarge(_) => Self::TOO_LARGE,
            BodyError::Stalled(_) => Self::STALLED,
            // Refused before reading: never a fault of a body being read.
            BodyError::Overloaded => return,
        };
        self.0.store(v, Ordering::Release);
    }
}

pin_project! {
    /// Streams `inner`, failing once more than `limit` bytes went by or no
    /// chunk came for `timeout`.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        left: u64,
        limit: u64,
        timeout: Duration,
        #[pin]
        stall: Sleep,
        fault: BodyFault,
    }
}

impl<B> LimitedBody<B> {
    /// Returns the body and where its fault, if any, can be read.
    pub fn new(inner: B, limit: u64, timeout: Duration) -> (Self, BodyFault) {
        let fault = BodyFault::default();
        (
            Self {
                inner,
                left: limit,
                limit,
                timeout,
                stall: tokio::time::sleep(timeout),
                fault: fault.clone(),
            },
            fault,
        )
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let fail = |e: BodyError, fault: &BodyFault| {
            fault.set(e);
            Poll::Ready(Some(Err(Box::new(e) as Self::Error)))
        };
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.left {
                        return fail(BodyError::TooLarge(*this.limit), this.fault);
                    }
                    *this.left -= n;
                }
                this.stall.as_mut().reset(Instant::now() + *this.timeout);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.stall.poll(cx) {
                Poll::Ready(()) => fail(BodyError::Stalled(*this.timeout), this.fault),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full, StreamBody};

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn passes_up_to_the_limit_and_flags_past_it() {
        let (b, fault) = LimitedBody::new(Full::new(Bytes::from_static(b"12345")), 5, LONG);
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 5);
        assert_eq!(fault.get(5, LONG), None);
        let (b, fault) = LimitedBody::new(Full::new(Bytes::from_static(b"123456")), 5, LONG);
        assert!(b.collect().await.is_err());
        assert_eq!(fault.get(5, LONG), Some(BodyError::TooLarge(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_longer_than_the_timeout_fails_a_steady_trickle_does_not() {
        let t = Duration::from_secs(2);
        // One chunk every 1.5 s: never a 2 s gap, so it completes.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await;
            }
        });
        let stream = futures_stream(rx);
        let (b, fault) = LimitedBody::new(StreamBody::new(stream), 100, t);
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 4);
        assert_eq!(fault.get(100, t), None);

        // One chunk, then silence: cut 2 s after the chunk.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        let (b, fault) = LimitedBody::new(StreamBody::new(futures_stream(rx)), 100, t);
        let started = Instant::now();
        assert!(b.collect().await.is_err());
        assert_eq!(started.elapsed(), t);
        assert_eq!(fault.get(100, t), Some(BodyError::Stalled(t)));
        drop(tx);
    }

    fn futures_stream<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_core::Stream<Item = T> {
        Poller(move |cx: &mut Context<'_>| rx.poll_recv(cx))
    }

    struct Poller<F>(F);

    impl<T, F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin> futures_core::Stream for Poller<F> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            (self.0)(cx)
        }
    }
}
