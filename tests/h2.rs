//! HTTP/2 bounded like HTTP/1 (SPEC §9.1), with a raw h2 client on a real
//! h2c connection: control frames are not activity, streams per connection
//! are capped, bodies read ahead of admission are bounded over all
//! connections; and idle time counts from the end of the last call.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use support::{MockUpstream, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn proxy_with_server(up: &MockUpstream, server: &str, extra: &str) -> TestProxy {
    let server = server.to_owned();
    TestProxy::start_edit(up, extra, move |s| {
        s.replacen("[server]\n", &format!("[server]\n{server}"), 1)
    })
    .await
}

/// An h2c (prior knowledge) client and its connection, driven in a task
/// that reports when the server closed it.
async fn h2c(
    proxy: &TestProxy,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::PingPong,
    tokio::task::JoinHandle<Instant>,
    usize,
) {
    let tcp = TcpStream::connect(proxy.proxy).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let ping = conn.ping_pong().unwrap();
    let mut send = send.ready().await.unwrap();
    // The server's SETTINGS arrive with the first exchange.
    let (resp, _) = send
        .send_request(
            Request::get("http://proxy.test/v1/first").body(()).unwrap(),
            true,
        )
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let n = chunk.unwrap().len();
        let _ = body.flow_control().release_capacity(n);
    }
    let streams = send.current_max_send_streams();
    (send, ping, driver, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_do_not_keep_an_idle_h2_connection() {
    let up = MockUpstream::start().await;
    let server = "header_read_timeout = \"300ms\"\nidle_timeout = \"400ms\"\n";
    let proxy = proxy_with_server(&up, server, "").await;
    let (_send, mut ping, closed, _) = h2c(&proxy).await;
    let started = Instant::now();
    // A ping every 100 ms, four per idle_timeout, for at most 5 s.
    while !closed.is_finished() && started.elapsed() < Duration::from_secs(5) {
        let _ =
            tokio::time::timeout(Duration::from_millis(200), ping.ping(h2::Ping::opaque())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = closed.await.unwrap();
    assert!(
        at - started < Duration::from_secs(2),
        "still open {:?} after its last call",
        at - started
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_capped() {
    let up = MockUpstream::start().await;
    let proxy = proxy_with_server(&up, "max_concurrent_streams = 7\n", "").await;
    let (_send, _ping, _closed, streams) = h2c(&proxy).await;
    assert_eq!(streams, 7, "the server's SETTINGS_MAX_CONCURRENT_STREAMS");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_h2_uploads_are_bounded_by_max_buffered_body() {
    let up = MockUpstream::start().await;
    // Four 60 KB bodies fit in 256 KiB; the fifth stream is refused at once.
    let server = "max_buffered_body = \"256KiB\"\nbody_read_timeout = \"3s\"\n";
    let proxy = proxy_with_server(&up, server, "").await;
    let (mut send, _ping, _closed, _) = h2c(&proxy).await;
    let mut stalled = Vec::new();
    for i in 0..4 {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://proxy.test/v1/upload/{i}"))
            .header("content-length", "60000")
            .body(())
            .unwrap();
        send = send.ready().await.unwrap();
        // Headers only: the body never comes.
        stalled.push(send.send_request(req, false).unwrap());
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://proxy.test/v1/upload/5")
        .header("content-length", "60000")
        .body(())
        .unwrap();
    send = send.ready().await.unwrap();
    let (resp, _body) = send.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(2), resp)
        .await
        .expect("refused at once, not after the stall")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(
        proxy.running.as_ref().unwrap().app.read_ahead.used(),
        4 * 60_000
    );
    drop(stalled);
    assert_eq!(up.count(), 1, "only the first GET went upstream");
    proxy.shutdown().await;
}

/// A kept-alive HTTP/1.1 connection closes `idle_timeout` after its last
/// call, not only once `header_read_timeout` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_counts_from_the_end_of_the_last_call() {
    let up = MockUpstream::start().await;
    let server = "header_read_timeout = \"10s\"\nidle_timeout = \"400ms\"\n";
    let proxy = proxy_with_server(&up, server, "").await;
    let mut s = TcpStream::connect(proxy.proxy).await.unwrap();
    s.write_all(b"GET /v1/one HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(12), s.read(&mut buf)).await {
            Err(_) => panic!("still open after 12 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "closed {took:?} after its call, header timeout 10 s"
    );
    proxy.shutdown().await;
}

/// An HTTP/2 upstream that closes each connection after 5 requests (a
/// GOAWAY, as nginx's `keepalive_requests` does): none fails, and Dastra
/// never sees a call the windows did not count. h2 reports a stream cut by
/// the closing connection like one above the GOAWAY's last id, so such a
/// call is never resent uncounted: it keeps its slot and goes again as a
/// retry, on a slot of its own (seen here: a call resent uncounted made 201
/// arrivals for 200 slots, about one run in seven).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_goaway_loses_no_call_and_never_sends_one_uncounted() {
    let up = MockUpstream::start().await;
    up.state
        .requests_per_conn
        .store(5, std::sync::atomic::Ordering::SeqCst);
    let proxy = proxy_with_server(&up, "", "").await;
    let c = support::client();
    let mut statuses = Vec::new();
    for round in 0..20 {
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let (c, url) = (c.clone(), proxy.url(&format!("/v1/ga/{round}/{i}")));
                tokio::spawn(async move { support::get(&c, &url).await.status })
            })
            .collect();
        for call in calls {
            statuses.push(call.await.unwrap());
        }
    }
    let failed = statuses.iter().filter(|s| **s != StatusCode::OK).count();
    assert_eq!(failed, 0, "{failed} of 200 calls failed");
    let m = support::get(&c, &proxy.admin_url("/metrics")).await;
    let retries: usize = String::from_utf8_lossy(&m.body)
        .lines()
        .find_map(|l| l.strip_prefix("dastra_proxy_upstream_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let arrivals = up.arrivals("/v1/ga/").len();
    assert!(
        (200..=200 + retries).contains(&arrivals),
        "{arrivals} arrivals, {retries} retries"
    );
    let q = support::get(&c, &proxy.admin_url("/quota")).await.json();
    let used = q["windows"][0]["used"].as_u64().unwrap() as usize;
    assert_eq!(used, 200 + retries, "a slot per call and per retry: {q}");
    assert!(
        used >= arrivals,
        "Dastra saw a call the windows did not count"
    );
    proxy.shutdown().await;
}
