//! Graceful shutdown of the open connections: each is told to finish what it
//! is serving and close, and shutdown waits until all have.
//!
//! hyper-util's `GracefulShutdown` does the same, but polls a `watch`
//! channel's change future (with tokio's cooperative budget) every time a
//! connection wakes: ~600 instructions a call. Here a connection registers
//! for the signal once, and afterwards only reads a flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{watch, Notify};

/// The listener's side: hands out watchers, then shuts them all down.
#[derive(Debug)]
pub(super) struct Drain {
    /// Only counted (a receiver per open connection), never sent on.
    open: watch::Sender<()>,
    draining: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

/// One connection's share of a [`Drain`].
pub(super) struct Watcher {
    _open: watch::Receiver<()>,
    draining: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Drain {
    pub(super) fn new() -> Self {
        Self {
            open: watch::channel(()).0,
            draining: Arc::new(AtomicBool::new(false)),
            notify: Arc::new(Notify::new()),
        }
    }

    pub(super) fn watcher(&self) -> Watcher {
        Watcher {
            _open: self.open.subscribe(),
            draining: self.draining.clone(),
            notify: self.notify.clone(),
        }
    }

    /// Tells every connection to finish and close; done when all have.
    pub(super) async fn shutdown(self) {
        self.draining.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.open.closed().await;
    }
}

impl Watcher {
    pub(super) fn watch<C: GracefulConnection>(self, conn: C) -> Draining<C> {
        let notified = self.notify.clone().notified_owned();
        Draining {
            conn,
            notified,
            watcher: self,
            registered: false,
            told: false,
        }
    }
}

pin_project! {
    /// A connection that closes gracefully when its [`Drain`] shuts down.
    pub(super) struct Draining<C> {
        #[pin]
        conn: C,
        #[pin]
        notified: OwnedNotified,
        watcher: Watcher,
        registered: bool,
        told: bool,
    }
}

impl<C: GracefulConnection> Future for Draining<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.told {
            // The first poll registers this task's waker, which the signal
            // wakes; after that, reading the flag is enough.
            let signalled = this.watcher.draining.load(Ordering::SeqCst)
                || (!*this.registered && {
                    *this.registered = true;
                    this.notified.as_mut().poll(cx).is_ready()
                });
            if signalled {
                *this.told = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;

    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn an_idle_kept_alive_connection_closes_and_shutdown_returns() {
        let drain = Drain::new();
        let (client, server) = tokio::io::duplex(4096);
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(String::from("ok")))
        });
        let conn = drain
            .watcher()
            .watch(http1::Builder::new().serve_connection(TokioIo::new(server), svc));
        let served = tokio::spawn(conn);
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = rd.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Kept alive and idle: only the signal ends it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!served.is_finished());
        tokio::time::timeout(Duration::from_secs(5), drain.shutdown())
            .await
            .expect("shutdown waits only for the open connections");
        assert!(served.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_watched_after_the_signal_closes_too() {
        let drain = Drain::new();
        let watcher = drain.watcher();
        drain.draining.store(true, Ordering::SeqCst);
        drain.notify.notify_waiters();
        let (_client, server) = tokio::io::duplex(4096);
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(String::new()))
        });
        let conn = watcher.watch(http1::Builder::new().serve_connection(TokioIo::new(server), svc));
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("told at its first poll")
            .unwrap();
    }
}
