//! Our own outbound client on `hyper::client::conn`: one small pool per origin
//! (Dastra, the token endpoint). HTTP/2 when ALPN says so (one connection,
//! multiplexed), otherwise HTTP/1.1 connections kept alive and reused most
//! recently used first. Compared with hyper-util's legacy client there is no
//! checkout racing a lazy connect and no per-call pool key hashing; a
//! connection goes back to the pool when its answer's body ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::refused::{head_of, unprocessed};
use super::{error_chain, CallError};

/// Idle HTTP/1.1 connections kept per origin; more are closed when they free.
const MAX_IDLE: usize = 64;
/// An idle connection older than this is not reused (servers close theirs).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// The outbound client: TLS settings and a pool per origin.
pub struct Client {
    tls: TlsConnector,
    connect_timeout: Duration,
    /// Dastra's and the token endpoint's: so few that a scan beats hashing
    /// the authority on every call.
    origins: Mutex<Vec<Arc<Origin>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// One origin's connections.
struct Origin {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    idle: Mutex<Vec<(http1::SendRequest<Body>, Instant)>>,
    /// The HTTP/2 connection, numbered so a call can drop exactly the one
    /// that refused it (a GOAWAY'd connection takes no new requests).
    h2: Mutex<Option<(u64, http2::SendRequest<Body>)>>,
    h2_made: std::sync::atomic::AtomicU64,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(u64, http2::SendRequest<Body>),
}

/// How many times a request Dastra refused unprocessed is sent again.
const REFUSED_RETRIES: u32 = 3;

impl Client {
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        let mut tls = tls;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            origins: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (absolute URI) and returns the answer's head; its body
    /// streams and gives the connection back when it ends.
    ///
    /// A future of its own (owning the client) rather than an `async fn`:
    /// that kept its request argument and the moved-in copy side by side,
    /// and the caller's `async` wrapper around the borrow added another; the
    /// boxed call was 1,088 bytes, past glibc's per-thread cache (1,032),
    /// so every call took malloc's slow path.
    pub fn request(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, CallError>> + Send + 'static {
        let this = self.clone();
        async move {
            let origin = this.origin(req.uri())?;
            let mut refused = 0;
            loop {
                let (conn, fresh) = match origin.checkout() {
                    Some(c) => (c, false),
                    // Boxed: inline, the TCP and TLS handshakes' state made every
                    // call's future several KB, copied whole as it started.
                    None => {
                        // The call waits for a connection (see `head`).
                        crate::head::detach(&mut req);
                        (Box::pin(this.connect(&origin)).await?, true)
                    }
                };
                match conn {
                    Conn::H2(id, mut s) => {
                        *req.version_mut() = Version::HTTP_2;
                        // A bodiless request can go again if Dastra refuses it
                        // unprocessed (RFC 9113 §8.7); its head is kept for that.
                        let again =
                            hyper::body::Body::is_end_stream(req.body()).then(|| head_of(&req));
                        let mut e = match s.try_send_request(req).await {
                            Ok(resp) => return Ok(resp.map(Body::new)),
                            Err(e) => e,
                        };
                        match e.take_message() {
                            // Not sent: this connection is gone; try another.
                            Some(back) if !fresh => {
                                origin.drop_h2(id);
                                req = back;
                                continue;
                            }
                            Some(_) => return Err(failed(&origin, e.error())),
                            None => {}
                        }
                        let refused_stream = match unprocessed(e.error()) {
                            Some(r) => r,
                            None => return Err(failed(&origin, e.error())),
                        };
                        origin.drop_h2(id);
                        if !refused_stream {
                            // A GOAWAY: the stream may have been processed
                            // before the connection closed (h2 reports both
                            // the same way), so it is not sent again here,
                            // where it would go uncounted; admission may
                            // retry it on a slot of its own.
                            return Err(CallError::Interrupted(format!(
                                "{}://{} closed the connection (GOAWAY) before answering: {}",
                                origin.scheme,
                                origin.authority,
                                error_chain(e.error())
                            )));
                        }
                        match again {
                            Some(r) if refused < REFUSED_RETRIES => {
                                refused += 1;
                                req = r;
                                continue;
                            }
                            // Never processed: a refund, not a spent call.
                            _ => {
                                return Err(CallError::NotConnected(format!(
                                    "{}://{} refused the request unprocessed: {}",
                                    origin.scheme,
                                    origin.authority,
                                    error_chain(e.error())
                                )))
                            }
                        }
                    }
                    Conn::H1(mut s) => {
                        if !s.is_ready() {
                            // It waits for the connection to free (see `head`).
                            crate::head::detach(&mut req);
                        }
                        if s.ready().await.is_err() {
                            continue;
                        }
                        to_origin_form(&mut req, &origin);
                        match s.try_send_request(req).await {
                            Ok(resp) => {
                                let (parts, body) = resp.into_parts();
                                let body = Returning {
                                    body,
                                    back: Some((s, origin.clone())),
                                };
                                return Ok(Response::from_parts(
                                    parts,
                                    Body::new(body.give_back_if_done()),
                                ));
                            }
                            Err(mut e) => match e.take_message() {
                                Some(back) if !fresh => {
                                    req = back;
                                    continue;
                                }
                                _ => return Err(failed(&origin, e.error())),
                            },
                        }
                    }
                }
            }
        }
    }

    fn origin(&self, uri: &Uri) -> Result<Arc<Origin>, CallError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(CallError::NotConnected(format!(
                "not an absolute URL: {uri}"
            )));
        };
        let mut all = lock(&self.origins);
        // Our own URLs spell the authority as configured: the exact bytes
        // match at once, before the case-insensitive comparison.
        let same = |o: &Origin| {
            (o.authority.as_str() == authority.as_str() || o.authority == *authority)
                && o.scheme == *scheme
        };
        if let Some(o) = all.iter().find(|o| same(o)) {
            return Ok(o.clone());
        }
        let o = Arc::new(Origin {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host: HeaderValue::from_str(authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_made: Default::default(),
        });
        all.push(o.clone());
        Ok(o)
    }

    /// A new connection; every failure here is `NotConnected` (nothing sent).
    async fn connect(&self, origin: &Arc<Origin>) -> Result<Conn, CallError> {
        let not = |what: &str, e: &(dyn std::error::Error + 'static)| {
            CallError::NotConnected(format!(
                "cannot reach {}://{}: {what}: {}",
                origin.scheme,
                origin.authority,
                error_chain(e)
            ))
        };
        let tls = origin.scheme == Scheme::HTTPS;
        let port = origin
            .authority
            .port_u16()
            .unwrap_or(if tls { 443 } else { 80 });
        let host = origin
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let work = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| not("connect", &e))?;
            let _ = tcp.set_nodelay(true);
            if !tls {
                return handshake_h1(TokioIo::new(tcp))
                    .await
                    .map_err(|e| not("handshake", &e));
            }
            let name = ServerName::try_from(host.clone()).map_err(|e| not("server name", &e))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| not("tls", &e))?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(stream);
            if h2 {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| not("http2 handshake", &e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let id = origin
                    .h2_made
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *lock(&origin.h2) = Some((id, send.clone()));
                Ok(Conn::H2(id, send))
            } else {
                handshake_h1(io).await.map_err(|e| not("handshake", &e))
            }
        };
        match tokio::time::timeout(self.connect_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(CallError::NotConnected(format!(
                "cannot reach {}://{}: no connection within {} ms",
                origin.scheme,
                origin.authority,
                self.connect_timeout.as_millis()
            ))),
        }
    }
}

async fn handshake_h1<T>(io: T) -> Result<Conn, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn::H1(send))
}

impl Origin {
    /// The HTTP/2 connection if one is open, else the most recently used
    /// idle HTTP/1.1 connection that is still open and fresh.
    fn checkout(&self) -> Option<Conn> {
        if let Some((id, s)) = lock(&self.h2).as_ref() {
            if !s.is_closed() {
                return Some(Conn::H2(*id, s.clone()));
            }
        }
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some((s, since)) = idle.pop() {
            if !s.is_closed() && now.duration_since(since) < IDLE_TIMEOUT {
                return Some(Conn::H1(s));
            }
        }
        None
    }

    /// Forgets HTTP/2 connection `id` (not a newer one made meanwhile).
    fn drop_h2(&self, id: u64) {
        let mut h2 = lock(&self.h2);
        if h2.as_ref().is_some_and(|(current, _)| *current == id) {
            *h2 = None;
        }
    }

    /// Kept unless closed: right after a body's last frame the connection
    /// may not say it is ready yet; `ready()` at checkout waits for that.
    fn give_back(&self, s: http1::SendRequest<Body>) {
        if !s.is_closed() {
            let mut idle = lock(&self.idle);
            if idle.len() < MAX_IDLE {
                idle.push((s, Instant::now()));
            }
        }
    }
}

/// Whether an HTTP/2 request failed without Dastra processing it: above a
/// GOAWAY's last stream id, or reset with REFUSED_STREAM (RFC 9113 §8.7).
/// Anything else may have been processed and is never sent again.
/// HTTP/1.1 wants the path on the request line and the origin in `Host`.
fn to_origin_form(req: &mut Request<Body>, origin: &Origin) {
    *req.version_mut() = Version::HTTP_11;
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    req.headers_mut().insert(header::HOST, origin.host.clone());
}

fn failed(origin: &Origin, e: &hyper::Error) -> CallError {
    let message = format!(
        "cannot reach {}://{}: {}",
        origin.scheme,
        origin.authority,
        error_chain(e)
    );
    if e.is_canceled() {
        CallError::NotConnected(message)
    } else {
        CallError::Failed(message)
    }
}

/// An HTTP/1.1 answer's body that gives its connection back to the pool
/// once it has been read to the end (a body dropped early closes it).
struct Returning {
    body: Incoming,
    back: Option<(http1::SendRequest<Body>, Arc<Origin>)>,
}

impl Returning {
    /// An answer without a body frees its connection at once.
    fn give_back_if_done(mut self) -> Self {
        if hyper::body::Body::is_end_stream(&self.body) {
            self.release();
        }
        self
    }

    fn release(&mut self) {
        if let Some((s, origin)) = self.back.take() {
            origin.give_back(s);
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let out = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(out, Poll::Ready(None)) || self.body.is_end_stream() {
            self.release();
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind the lock: still usable after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
