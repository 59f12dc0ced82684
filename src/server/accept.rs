//! One listener's accept loop, and how each accepted connection is served:
//! its place among the connection caps, its protocol (HTTP/1.1 or HTTP/2,
//! by ALPN or by the h2c preface), the watchdog, graceful shutdown.
//!
//! Each connection is one task holding only what its protocol needs: hyper's
//! version-sniffing server read the first bytes through a rewind buffer,
//! which made hyper's HTTP/1 read buffer grow to 16 KiB on every connection;
//! here the preface is peeked from the socket (`sniff`), and hyper reads it
//! itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures_util::future::Either;
use futures_util::FutureExt as _;
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::util::MapRequest;
use tower::ServiceExt as _;

use super::drain::Drain;
use super::service::InPlace;
use super::sniff::Cleartext;
use crate::access::ConnInfo;
use crate::config::Config;
use crate::conn::{self, ActiveIo, Activity, ConnLimits, Tracked};
use crate::metrics::Metrics;

/// What each accepted connection is held to (see `conn`).
#[derive(Debug, Clone)]
pub(super) struct ConnPolicy {
    limits: Arc<ConnLimits>,
    header_timeout: Duration,
    idle_timeout: Duration,
    max_concurrent_streams: u32,
}

impl ConnPolicy {
    pub(super) fn new(config: &Config, metrics: &Metrics) -> Self {
        let s = &config.server;
        Self {
            limits: ConnLimits::new(s.max_connections, s.max_connections_per_ip, metrics.clone()),
            header_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_concurrent_streams: s.max_concurrent_streams,
        }
    }
}

/// hyper's servers for each protocol, configured once per listener.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(max_concurrent_streams: u32) -> Arc<Self> {
        let mut h1 = http1::Builder::new();
        // The watchdog in `conn` holds the first request head to
        // header_read_timeout, and a connection with no request in flight
        // and nothing written to idle_timeout, a later head trickled in
        // byte by byte included. hyper's own head timer (30 s by default)
        // would arm a timer and allocate on every request: off.
        h1.header_read_timeout(None);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(max_concurrent_streams);
        Arc::new(Self { h1, h2 })
    }
}

/// Accepts until told to stop, then hands back the graceful-shutdown watcher
/// of the connections still open.
pub(super) async fn accept_loop<F, S>(
    listener: TcpListener,
    tls: Option<Arc<arc_swap::ArcSwap<TlsAcceptor>>>,
    policy: ConnPolicy,
    mut stop: watch::Receiver<bool>,
    make_service: F,
) -> Drain
where
    F: Fn(ConnInfo) -> S + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain = Drain::new();
    let protocols = Protocols::new(policy.max_concurrent_streams);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over a cap, the socket is closed at once: it costs nothing more.
        let Ok(slot) = policy.limits.admit(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let service = InPlace::new(Tracked::new(
            make_service(ConnInfo::new(peer, tls.is_some())),
            activity.clone(),
        ));
        let watcher = drain.watcher();
        let p = protocols.clone();
        let watched = Watched {
            activity: activity.clone(),
            policy: policy.clone(),
            slot,
            peer,
        };
        // Plain and TLS connections are tasks of different types: one future
        // for both made every plain connection carry room for a TLS session
        // (4.0 KB per connection's task; 1.6 KB now).
        // The pair in force when the connection came (see `Running::reload_tls`).
        match tls.as_ref().map(|t| t.load_full()) {
            None => watched.spawn(Cleartext::new(stream, move |stream, h2| {
                if h2 {
                    activity.set_h2();
                }
                let io = TokioIo::new(ActiveIo::new(stream, activity));
                if h2 {
                    // Rare: boxed, so HTTP/1 connections do not carry its size.
                    Either::Right(Box::pin(watcher.watch(p.h2.serve_connection(io, service))))
                } else {
                    Either::Left(watcher.watch(p.h1.serve_connection(io, service)))
                }
            })),
            Some(acceptor) => watched.spawn(async move {
                let io = ActiveIo::new(stream, activity);
                let tls_stream = match acceptor.accept(io).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return Ok(());
                    }
                };
                // Over TLS, HTTP/2 is chosen by ALPN only (RFC 9113 §3.2).
                let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                if h2 {
                    tls_stream.get_ref().0.activity().set_h2();
                }
                let io = TokioIo::new(tls_stream);
                if h2 {
                    watcher.watch(p.h2.serve_connection(io, service)).await
                } else {
                    watcher.watch(p.h1.serve_connection(io, service)).await
                }
            }),
        }
    }
    drain
}

/// What one connection's task needs besides serving it.
struct Watched {
    activity: Arc<Activity>,
    policy: ConnPolicy,
    slot: conn::ConnSlot,
    peer: SocketAddr,
}

impl Watched {
    /// Runs `serve` under the watchdog in a task of its own.
    fn spawn<F>(self, serve: F)
    where
        F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        let Self {
            activity,
            policy,
            slot,
            peer,
        } = self;
        let serve = conn::watch(serve, activity, policy.header_timeout, policy.idle_timeout);
        let limits = policy.limits;
        tokio::spawn(serve.map(move |r| finish(r, slot, &limits, peer)));
    }
}

/// How a served connection ended: logged, a watchdog close counted, and its
/// place given back. A plain function mapped over the connection's future:
/// an `async fn` taking that future would hold it twice.
fn finish(
    ended: Result<Result<(), hyper::Error>, conn::Refused>,
    slot: conn::ConnSlot,
    limits: &ConnLimits,
    peer: SocketAddr,
) {
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        Err(why) => {
            limits.refuse(why);
            tracing::debug!(%peer, reason = why.label(), "connection closed");
        }
    }
    drop(slot);
}

/// A service for one connection: each request carries the connection's
/// facts, and its body as the one body type the services take (axum's Router
/// for the admin side, the proxy stack for the other).
pub(super) fn with_conn<S>(
    svc: S,
    conn: ConnInfo,
) -> MapRequest<S, impl FnMut(Request<Incoming>) -> Request<Body> + Clone>
where
    S: tower::Service<Request<Body>>,
{
    svc.map_request(move |req: Request<Incoming>| {
        // Most calls have no body: an empty one costs no allocation.
        let mut req = req.map(|body| {
            if body.is_end_stream() {
                Body::empty()
            } else {
                Body::new(body)
            }
        });
        req.extensions_mut().insert(conn.clone());
        req
    })
}
