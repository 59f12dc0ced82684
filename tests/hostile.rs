//! Hostile and broken clients, through the real server stack and raw
//! sockets: stalled uploads, idle and half-open connections on every
//! protocol, one address hogging connections, invented methods, credential
//! churn and hop-by-hop tricks. A well-behaved caller must be served
//! throughout, and nothing may cost quota it should not.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use support::*;

const FAST_TIMEOUTS: &str =
    "header_read_timeout = \"300ms\"\nidle_timeout = \"500ms\"\nbody_read_timeout = \"300ms\"\n";

/// The test config with extra `[server]` keys.
async fn proxy_with_server(up: &MockUpstream, server: &str, extra: &str) -> TestProxy {
    let server = server.to_owned();
    TestProxy::start_edit(up, extra, move |s| {
        s.replacen("[server]\n", &format!("[server]\n{server}"), 1)
    })
    .await
}

async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{local}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Reads until the peer closes (or resets) the connection; how long it took.
async fn closed_after(mut s: impl tokio::io::AsyncRead + Unpin) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let deadline = Duration::from_secs(5);
    loop {
        match tokio::time::timeout(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {deadline:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// A kept-alive HTTP/1 connection that has had one answer (its head read).
async fn after_one_call(proxy: &TestProxy) -> TcpStream {
    let mut s = TcpStream::connect(proxy.proxy).await.unwrap();
    s.write_all(b"GET /v1/one HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    s
}

fn refused(proxy: &TestProxy, reason: &str) -> u64 {
    proxy
        .metrics
        .connections_refused_total
        .with_label_values(&[reason])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_and_spends_no_quota() {
    let up = MockUpstream::start().await;
    let limit = "[[limits]]\nrequests = 1\nper = \"1h\"\n[admission]\non_limit = \"reject\"\n";
    let proxy = proxy_with_server(&up, FAST_TIMEOUTS, limit).await;
    let mut s = TcpStream::connect(proxy.proxy).await.unwrap();
    s.write_all(b"POST /v1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789a")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The one slot of the hour is still there, and Dastra saw nothing.
    assert_eq!(up.count(), 0);
    let r = get(&client(), &proxy.url("/v1/after")).await;
    assert_eq!(r.status, 200, "the stalled upload held no slot");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_in_time_on_every_protocol_and_the_admin_port() {
    let up = MockUpstream::start().await;
    let pki = &up.pki;
    let tls = format!(
        "{FAST_TIMEOUTS}tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
        pki.cert_path().display(),
        pki.key_path().display()
    );
    let proxy = proxy_with_server(&up, &tls, "").await;

    // A TCP connection that sends nothing.
    let plain = TcpStream::connect(proxy.proxy).await.unwrap();
    // A TLS connection that completes its handshake, then sends nothing.
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for c in rustls_pki_types::CertificateDer::pem_file_iter(pki.ca_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(proxy.proxy).await.unwrap();
    let tls_stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("the TLS handshake completes");
    // Nothing on the admin port.
    let admin = TcpStream::connect(proxy.admin).await.unwrap();

    let (a, b, c) = tokio::join!(
        closed_after(plain),
        closed_after(tls_stream),
        closed_after(admin)
    );
    for (what, t) in [("plain", a), ("tls", b), ("admin", c)] {
        assert!(
            t < Duration::from_secs(2),
            "{what} idle socket closed after {t:?}"
        );
    }
    assert!(refused(&proxy, "header_timeout") >= 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_after_its_preface_and_http1_after_a_call_close_when_idle() {
    let up = MockUpstream::start().await;
    let proxy = proxy_with_server(&up, FAST_TIMEOUTS, "").await;
    let mut h2 = TcpStream::connect(proxy.proxy).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame, then silence.
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let kept = after_one_call(&proxy).await;
    let (a, b) = tokio::join!(closed_after(h2), closed_after(kept));
    assert!(a < Duration::from_secs(2), "h2c after preface: {a:?}");
    assert!(b < Duration::from_secs(2), "kept-alive HTTP/1: {b:?}");
    assert!(
        refused(&proxy, "idle") >= 1,
        "the kept-alive one counts as idle"
    );
    proxy.shutdown().await;
}

/// Bytes that never make a request are not activity: a second head
/// trickled in a byte at a time, faster than the idle timeout, is cut by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_head_trickled_in_byte_by_byte_is_cut_as_idle() {
    let up = MockUpstream::start().await;
    let proxy = proxy_with_server(&up, FAST_TIMEOUTS, "").await;
    let (read, mut write) = after_one_call(&proxy).await.into_split();
    let closed = tokio::spawn(closed_after(read));
    let started = Instant::now();
    // 100 ms apart, five times within idle_timeout (500 ms); at most 4 s.
    for b in b"GET /v1/two HTTP/1.1\r\nhost: x\r\nx-padding: aaaaa".iter() {
        if closed.is_finished() || write.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closed.await.unwrap();
    let took = started.elapsed();
    // idle_timeout sampled four times per period: 500-625 ms, with room for
    // a loaded machine; hyper's own head timer would have cut it at 1.5 s.
    assert!(took < Duration::from_millis(1200), "cut after {took:?}");
    assert_eq!(refused(&proxy, "idle"), 1);
    assert_eq!(up.count(), 1, "the trickled head never became a call");
    proxy.shutdown().await;
}

/// The h2c preface is peeked, not read: one that comes in pieces still
/// opens HTTP/2, and one that stops halfway is closed at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_preface_in_pieces_works_and_half_a_preface_is_cut_off() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let up = MockUpstream::start().await;
    let proxy = proxy_with_server(&up, FAST_TIMEOUTS, "").await;
    let mut pieces = TcpStream::connect(proxy.proxy).await.unwrap();
    pieces.write_all(&PREFACE[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    pieces.write_all(&PREFACE[5..]).await.unwrap();
    pieces
        .write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // An HTTP/2 server answers with its own SETTINGS frame (type 4).
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(2), pieces.read_exact(&mut frame))
        .await
        .expect("an HTTP/2 answer")
        .unwrap();
    assert_eq!(frame[3], 4, "a SETTINGS frame: {frame:?}");

    let before = refused(&proxy, "header_timeout");
    let mut half = TcpStream::connect(proxy.proxy).await.unwrap();
    half.write_all(&PREFACE[..10]).await.unwrap();
    let t = closed_after(half).await;
    assert!(
        t < Duration::from_secs(2),
        "half a preface: closed after {t:?}"
    );
    // (The HTTP/2 connection above, which never sent a request, may be
    // counted too.)
    assert!(refused(&proxy, "header_timeout") > before);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let up = MockUpstream::start().await;
    let proxy = proxy_with_server(
        &up,
        "max_connections_per_ip = 3\n",
        "[access]\nallow = [\"127.0.0.0/8\"]\n",
    )
    .await;
    let mut hogs = Vec::new();
    for _ in 0..3 {
        hogs.push(connect_from("127.0.0.9", proxy.proxy).await);
    }
    // The three are counted once the proxy has accepted them.
    for _ in 0..200 {
        if proxy.metrics.connections_open.get() >= 3 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(proxy.metrics.connections_open.get(), 3);
    let fourth = connect_from("127.0.0.9", proxy.proxy).await;
    let t = closed_after(fourth).await;
    assert!(
        t < Duration::from_millis(500),
        "over the per-address cap: closed at once ({t:?})"
    );
    let r = get(&client_from("127.0.0.2"), &proxy.url("/v1/legit")).await;
    assert_eq!(
        r.status, 200,
        "another caller is served while the hog holds its three"
    );
    assert_eq!(refused(&proxy, "per_ip"), 1);
    assert!(proxy
        .metrics
        .render()
        .contains("dastra_proxy_connections_open"));
    drop(hogs);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_from_a_refused_address_do_not_grow_metrics() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "[access]\nallow = [\"127.0.0.2/32\"]\n").await;
    let c = client();
    for m in ["FOO", "BAR", "XYZZY", "PROPFIND"] {
        let r = send(
            &c,
            Method::from_bytes(m.as_bytes()).unwrap(),
            &proxy.url("/v1/x"),
            &[],
            Body::empty(),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    let m = proxy.metrics.render();
    for invented in ["FOO", "BAR", "XYZZY", "PROPFIND"] {
        assert!(!m.contains(invented), "{invented} became a label");
    }
    assert!(m.contains("method=\"other\",status=\"403\"} 4"), "{m}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_tracks_at_most_max_keys_and_forgets_idle_ones() {
    let up = MockUpstream::start().await;
    let extra = "[[limits]]\nrequests = 5\nper = \"300ms\"\n[admission]\nmargin = \"0ms\"\n";
    let proxy = passthrough(&up, "max_keys = 50\n", extra).await;
    let c = client();
    let app = proxy.running.as_ref().unwrap().app.clone();
    let (mut ok, mut too_many) = (0, 0);
    for i in 0..300 {
        let key = format!("caller-key-{i}");
        let r = send(
            &c,
            Method::GET,
            &proxy.url("/v1/x"),
            &[("x-api-key", &key)],
            Body::empty(),
        )
        .await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(r.code(), "too_many_keys");
                let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!(wait >= 1);
                too_many += 1;
            }
            s => panic!("unexpected {s}"),
        }
        assert!(app.quotas.all().len() <= 50, "more than max_keys tracked");
        if i % 50 == 49 {
            // Every key's window empties: the next 50 fit again.
            tokio::time::sleep(Duration::from_millis(350)).await;
        }
    }
    assert_eq!(ok, up.count());
    assert!(
        ok >= 250 && too_many <= 50,
        "{ok} served, {too_many} refused"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_header_cannot_mint_new_quota_keys() {
    let up = MockUpstream::start().await;
    let extra = "[[limits]]\nrequests = 3\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n";
    let proxy = passthrough(&up, "", extra).await;
    // hyper's client would drop `Connection`; write the requests by hand.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let mut s = TcpStream::connect(proxy.proxy).await.unwrap();
        let req = format!(
            "GET /v1/x HTTP/1.1\r\nhost: x\r\nx-api-key: SAME\r\nconnection: authorization, close\r\n\
             authorization: Bearer different-{i}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        statuses.push(String::from_utf8_lossy(&head[9..]).into_owned());
    }
    assert_eq!(
        up.count(),
        3,
        "one quota for the credential actually forwarded: {statuses:?}"
    );
    assert!(up
        .log()
        .iter()
        .all(|r| !r.headers.contains_key("authorization")));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_forwarding_header_counts_and_claims_are_dropped() {
    let up = MockUpstream::start().await;
    let extra = "[access]\nallow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\nforwarded_header = \"forwarded\"\n";
    let proxy = TestProxy::start(&up, extra).await;
    let c = client();
    let url = proxy.url("/v1/x");
    // The client adds an allowed XFF; the trusted proxy wrote only Forwarded.
    let r = send(
        &c,
        Method::GET,
        &url,
        &[
            ("x-forwarded-for", "10.1.1.1"),
            ("forwarded", "for=192.0.2.1"),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 403, "Forwarded decides; the XFF is ignored");
    let r = send(
        &c,
        Method::GET,
        &url,
        &[("forwarded", "for=unknown")],
        Body::empty(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "ip_not_allowed"),
        "never 400"
    );
    let r = send(
        &c,
        Method::GET,
        &url,
        &[
            ("forwarded", "for=10.2.2.2"),
            ("x-forwarded-for", "9.9.9.9"),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    let log = up.log();
    let h = &log[0].headers;
    assert_eq!(
        h["x-forwarded-for"], "10.2.2.2, 127.0.0.1",
        "the parsed chain, not the raw one"
    );
    assert!(!h.contains_key("forwarded"));

    // An untrusted peer's claims never reach Dastra.
    let open = TestProxy::start(&up, "").await;
    let r = send(
        &c,
        Method::GET,
        &open.url("/v1/y"),
        &[
            ("x-forwarded-host", "evil.test"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-port", "1"),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    let log = up.log();
    let h = &log.last().unwrap().headers;
    for name in ["x-forwarded-host", "x-real-ip", "x-forwarded-port"] {
        assert!(!h.contains_key(name), "{name} reached Dastra");
    }
    proxy.shutdown().await;
    open.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_only_admin_allow() {
    let up = MockUpstream::start().await;
    let proxy = proxy_with_server(&up, "admin_allow = [\"127.0.0.2/32\"]\n", "").await;
    let admin = format!("http://{}/metrics", proxy.admin);
    let r = get(&client_from("127.0.0.1"), &admin).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "admin_not_allowed")
    );
    let r = get(&client_from("127.0.0.2"), &admin).await;
    assert_eq!(r.status, 200);
    proxy.shutdown().await;
}
