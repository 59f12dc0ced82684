//! What a connection's activity is: requests from call to answer head, then
//! the answer's bytes (HTTP/1: bytes written; HTTP/2: answer body frames, so
//! control frames are not activity).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Activity, RequestGuard};

/// Counts a connection's requests in flight, from call to answer head.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, R> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R, Response = http::Response<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        TrackedFuture {
            guard: Some(self.activity.request()),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The inner future; the request stops counting when it completes.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let Some(guard) = this.guard.take() else {
            return Poll::Ready(out);
        };
        // HTTP/2: what the answer body sends is the activity (see `Activity::h2`).
        if !guard.0.h2.load(Ordering::Relaxed) {
            return Poll::Ready(out);
        }
        let activity = guard.0.clone();
        drop(guard);
        Poll::Ready(out.map(|resp| resp.map(|inner| Body::new(ActiveBody { inner, activity }))))
    }
}

pin_project! {
    /// An HTTP/2 answer body that marks its connection active as it streams.
    struct ActiveBody {
        #[pin]
        inner: Body,
        activity: Arc<Activity>,
    }
}

impl http_body::Body for ActiveBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if r.is_ready() {
            this.activity.touch();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// An IO stream that tells its connection's [`Activity`] when bytes are
    /// written. Reads are not activity: what a caller sends only counts once
    /// it is a request (hyper's own per-head timer, which cost a timer entry
    /// and an allocation on every request, is off: see `server::accept`).
    #[derive(Debug)]
    pub struct ActiveIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T> ActiveIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl<T: AsyncRead> AsyncRead for ActiveIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for ActiveIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, b);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
