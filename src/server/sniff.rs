//! Which protocol a cleartext connection speaks: HTTP/2 if it opens with the
//! h2c preface, HTTP/1.1 otherwise. The preface is peeked, not read, so hyper
//! reads it itself and needs no rewind buffer.
//!
//! A future of its own rather than an async block: an async block keeps what
//! it captured (the socket, the connection's service) for its whole life, next
//! to the connection that took them over; here the sniffing state and the
//! served connection share the same bytes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pin_project! {
    /// Peeks at `stream`, then serves it with `start(stream, is_h2c)`.
    #[project = CleartextProj]
    pub(super) enum Cleartext<M, F> {
        Sniffing {
            stream: Option<TcpStream>,
            start: Option<M>,
            // Only for a client that sent part of the preface and stalled.
            pause: Option<Pin<Box<Sleep>>>,
            next_pause: Duration,
        },
        Serving {
            #[pin]
            conn: F,
        },
    }
}

impl<M, F> Cleartext<M, F>
where
    M: FnOnce(TcpStream, bool) -> F,
    F: Future,
{
    pub(super) fn new(stream: TcpStream, start: M) -> Self {
        Cleartext::Sniffing {
            stream: Some(stream),
            start: Some(start),
            pause: None,
            next_pause: Duration::from_millis(1),
        }
    }
}

impl<M, F> Future for Cleartext<M, F>
where
    M: FnOnce(TcpStream, bool) -> F,
    F: Future,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        loop {
            let conn = match self.as_mut().project() {
                CleartextProj::Serving { conn } => return conn.poll(cx),
                CleartextProj::Sniffing {
                    stream,
                    start,
                    pause,
                    next_pause,
                } => {
                    if let Some(p) = pause {
                        std::task::ready!(p.as_mut().poll(cx));
                        *pause = None;
                    }
                    let Some(s) = stream.as_ref() else {
                        unreachable!("a sniffing connection holds its socket")
                    };
                    let mut buf = [0u8; PREFACE.len()];
                    let mut seen = ReadBuf::new(&mut buf);
                    let h2 = match std::task::ready!(s.poll_peek(cx, &mut seen)) {
                        Ok(n) if n > 0 && seen.filled() == &PREFACE[..n] => {
                            if n < PREFACE.len() {
                                // Looked at again with growing pauses (at most
                                // 10 a second) until the header timeout.
                                *pause = Some(Box::pin(tokio::time::sleep(*next_pause)));
                                *next_pause = (*next_pause * 2).min(Duration::from_millis(100));
                                continue;
                            }
                            true
                        }
                        // Anything else, an EOF or an error included, is hyper's to answer.
                        _ => false,
                    };
                    match (stream.take(), start.take()) {
                        (Some(s), Some(start)) => start(s, h2),
                        _ => unreachable!("a sniffing connection is started once"),
                    }
                }
            };
            self.set(Cleartext::Serving { conn });
        }
    }
}
