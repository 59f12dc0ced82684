//! The request body limit, enforced while streaming.
//!
//! `Content-Length` over the limit is refused before anything is sent; a body
//! without one is cut off here when it passes the limit. The overflow is also
//! noted in a flag, because HTTP/2 turns a body error into a bare stream reset
//! and the cause would otherwise be lost.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The body grew past `server.max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct TooLarge(pub u64);

pin_project! {
    /// Streams `inner`, failing once more than `limit` bytes went by.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        left: u64,
        limit: u64,
        overflowed: Arc<AtomicBool>,
    }
}

impl<B> LimitedBody<B> {
    /// Returns the body and the flag that says whether it overflowed.
    pub fn new(inner: B, limit: u64) -> (Self, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (
            Self {
                inner,
                left: limit,
                limit,
                overflowed: flag.clone(),
            },
            flag,
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
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.left {
                        this.overflowed.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
                    }
                    *this.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
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
    use http_body_util::{BodyExt as _, Full};

    #[tokio::test]
    async fn passes_up_to_the_limit_and_flags_past_it() {
        let (b, flag) = LimitedBody::new(Full::new(Bytes::from_static(b"12345")), 5);
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 5);
        assert!(!flag.load(Ordering::Acquire));
        let (b, flag) = LimitedBody::new(Full::new(Bytes::from_static(b"123456")), 5);
        assert!(b.collect().await.is_err());
        assert!(flag.load(Ordering::Acquire));
    }
}
