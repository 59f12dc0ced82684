//! What one client connection may hold: a place among `max_connections` (and
//! `max_connections_per_ip`), and time. A connection must deliver a request
//! head within `header_read_timeout` of being accepted (TLS handshake,
//! protocol detection and the HTTP/2 preface included), and closes after
//! `idle_timeout` with no request in flight and nothing written to it (an
//! answer still streaming out keeps it). Bytes a caller sends without
//! completing a request do not count: a later head trickled in byte by byte
//! is cut like an idle connection. So idle, half-open or slow sockets cannot
//! use up the file descriptors that real callers need.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Why a connection was turned away or closed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    PerIp,
    HeaderTimeout,
    Idle,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::PerIp => "per_ip",
            Refused::HeaderTimeout => "header_timeout",
            Refused::Idle => "idle",
        }
    }
}

/// Open connections, in all and per address.
#[derive(Debug)]
pub struct ConnLimits {
    max: usize,
    per_ip: usize,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    metrics: Metrics,
}

impl ConnLimits {
    pub fn new(max: usize, per_ip: usize, metrics: Metrics) -> Arc<Self> {
        // Every reason's series exists from start-up, at 0 (SPEC §9.4).
        for r in [
            Refused::MaxConnections,
            Refused::PerIp,
            Refused::HeaderTimeout,
            Refused::Idle,
        ] {
            metrics
                .connections_refused_total
                .with_label_values(&[r.label()]);
        }
        Arc::new(Self {
            max,
            per_ip,
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// A place for a connection from `ip`, or why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err(self.refuse(Refused::MaxConnections));
        }
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(self.refuse(Refused::PerIp));
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections_open.inc();
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Counts a refusal or a close by the watchdog.
    pub fn refuse(&self, why: Refused) -> Refused {
        self.metrics
            .connections_refused_total
            .with_label_values(&[why.label()])
            .inc();
        why
    }
}

/// A connection's place; given back when the connection ends.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut by_ip = self.limits.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
        self.limits.metrics.connections_open.dec();
    }
}

/// What the watchdog needs to know about one connection.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Requests whose answer head has not gone out yet.
    in_flight: AtomicUsize,
    /// Bytes written (or a request ended) since the watchdog last looked: a
    /// flag, not a timestamp, so the IO path reads no clock.
    moved: AtomicBool,
    /// Whether any request arrived (before that, the header timeout rules).
    seen_request: AtomicBool,
    /// HTTP/2: bytes written are not activity (PING, SETTINGS and
    /// WINDOW_UPDATE frames go out with no call); answer bodies are.
    h2: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            moved: AtomicBool::new(false),
            seen_request: AtomicBool::new(false),
            h2: AtomicBool::new(false),
        })
    }

    /// The connection speaks HTTP/2 (see the field).
    pub fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Bytes went out: activity on HTTP/1, where only answers are written.
    fn wrote(&self) {
        if !self.h2.load(Ordering::Relaxed) {
            self.touch();
        }
    }

    /// A request started; the guard ends it.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.seen_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

/// Ends a request's share of the connection's activity when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Runs `conn` until it ends, or closes it (by dropping it) when it breaks
/// the header or idle timeout; says which. Activity is sampled four times
/// per `idle_timeout` from the start (not only once the header timeout has
/// passed), so an idle connection closes between 1 and 1.25 `idle_timeout`
/// after the end of its last call or answer byte: never early.
///
/// A future of its own rather than an `async fn`: an `async fn` keeps its
/// argument and the pinned copy it polls as two fields, and every open
/// connection paid for its whole connection future twice (10.8 KB).
pub fn watch<F: Future>(
    conn: F,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
) -> Watch<F> {
    let base = activity.base;
    let tick = (idle_timeout / 4).max(Duration::from_millis(10));
    Watch {
        conn,
        sleep: tokio::time::sleep_until(base + header_timeout.min(tick)),
        activity,
        tick,
        header_timeout,
        idle_timeout,
        last: base,
    }
}

pin_project! {
    /// The watchdog around one connection: see [`watch`].
    #[derive(Debug)]
    pub struct Watch<F> {
        #[pin]
        conn: F,
        #[pin]
        sleep: tokio::time::Sleep,
        activity: Arc<Activity>,
        tick: Duration,
        header_timeout: Duration,
        idle_timeout: Duration,
        last: Instant,
    }
}

impl<F: Future> Future for Watch<F> {
    type Output = Result<F::Output, Refused>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.conn.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        while this.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let activity = &**this.activity;
            if !activity.seen_request.load(Ordering::Relaxed) {
                let deadline = activity.base + *this.header_timeout;
                if now >= deadline {
                    return Poll::Ready(Err(Refused::HeaderTimeout));
                }
                this.sleep.as_mut().reset(deadline.min(now + *this.tick));
                continue;
            }
            if activity.moved.swap(false, Ordering::Relaxed)
                || activity.in_flight.load(Ordering::Relaxed) > 0
            {
                *this.last = now;
            }
            if now >= *this.last + *this.idle_timeout {
                return Poll::Ready(Err(Refused::Idle));
            }
            this.sleep.as_mut().reset(now + *this.tick);
        }
        Poll::Pending
    }
}

mod track;

pub use track::{ActiveIo, Tracked, TrackedFuture};

#[cfg(test)]
mod tests;
