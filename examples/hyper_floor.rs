//! The floor under any proxy built on hyper and tokio, for `scripts/bench-load`:
//! HTTP/1.1 in, one kept-alive upstream connection per caller connection, and
//! nothing else (no limits, credential, headers, metrics or logs), on the
//! runtime dastra-proxy picks on one CPU. Its throughput against nginx's says
//! how near parity hyper itself can come; dastra-proxy's against it says what
//! our own stack costs. A measuring stick, not part of the product.
//!
//! Usage: `hyper_floor LISTEN_ADDR UPSTREAM_ADDR` (e.g. 127.0.0.1:9000 127.0.0.1:8080).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<SocketAddr>());
    let (Some(Ok(listen)), Some(Ok(upstream))) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (caller, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = caller.set_nodelay(true);
            let Ok(up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let Ok((send, conn)) = client::handshake::<_, Incoming>(TokioIo::new(up)).await else {
                return;
            };
            tokio::spawn(conn);
            // One call at a time per HTTP/1.1 connection: the lock is never contended.
            let send = Arc::new(Mutex::new(send));
            let svc = service_fn(move |req: Request<Incoming>| {
                let send = send.clone();
                async move { send.lock().await.send_request(req).await }
            });
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(caller), svc)
                .await;
        });
    }
}
