//! The forwarding core, end to end: the real proxy stack in front of a real
//! TLS mock upstream whose certificate is trusted through `upstream.ca_file`.

mod support;

use axum::body::Body;
use http::{Method, StatusCode, Version};
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

#[tokio::test]
async fn every_verb_goes_through_with_path_and_query_unchanged() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let target = "/v1/datasubjects/42?filter=a%20b&x=%2F&key=y";
    for m in METHODS {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let body = if m == "GET" || m == "HEAD" {
            Body::empty()
        } else {
            Body::from("{\"a\":1}")
        };
        let r = send(
            &c,
            method,
            &proxy.url(target),
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{m}");
        if m == "HEAD" {
            assert!(r.body.is_empty());
        }
    }
    let log = up.log();
    assert_eq!(log.len(), 7);
    for (rec, m) in log.iter().zip(METHODS) {
        assert_eq!(rec.method.as_str(), m);
        assert_eq!(
            rec.target, target,
            "path bytes and query are forwarded unchanged"
        );
        assert_eq!(
            rec.authority,
            format!("localhost:{}", up.addr.port()),
            "Host is the upstream"
        );
        assert_eq!(
            rec.version,
            Version::HTTP_2,
            "ALPN picks HTTP/2 when the upstream offers it"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn http1_upstream_and_hop_by_hop_headers_removed_both_ways() {
    let up = MockUpstream::start_with(&[b"http/1.1"]).await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/hop"),
        &[
            ("connection", "x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=9"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-end-to-end", "kept"),
            ("x-request-id", "req-abc-123"),
            ("x-api-key", "caller-own-key"),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-end-to-end"), Some("1"));
    assert_eq!(
        r.header("x-hop"),
        None,
        "named by the upstream's Connection header"
    );
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    let rec = &up.log()[0];
    assert_eq!(rec.version, Version::HTTP_11);
    let h = &rec.headers;
    for gone in ["x-private", "keep-alive", "te", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} must not reach upstream");
    }
    assert_eq!(h["x-end-to-end"], "kept");
    assert_eq!(h["x-request-id"], "req-abc-123");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["x-api-key"], DASTRA_KEY,
        "the caller's key is replaced by the proxy's"
    );
    assert_eq!(rec.authority, format!("localhost:{}", up.addr.port()));
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_id_is_generated_when_absent_and_matches_both_sides() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let a = get(&c, &proxy.url("/v1/a")).await;
    let b = get(&c, &proxy.url("/v1/b")).await;
    let (ida, idb) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_ne!(ida, idb);
    assert_eq!(up.log()[0].headers["x-request-id"], ida);
    // An id unfit for logs is replaced, on both sides alike.
    let c3 = send(
        &c,
        Method::GET,
        &proxy.url("/v1/c"),
        &[("x-request-id", "not fit")],
        Body::empty(),
    )
    .await;
    let idc = c3.header("x-request-id").unwrap();
    assert_eq!(idc.len(), 32);
    assert_eq!(up.log()[2].headers["x-request-id"], idc);
    proxy.shutdown().await;
}

#[tokio::test]
async fn bodies_round_trip_byte_for_byte() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let payload: Vec<u8> = (0..900_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let r = send(
        &c,
        Method::POST,
        &proxy.url("/echo"),
        &[("content-type", "application/octet-stream")],
        payload.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert!(r.body == payload, "echoed body differs");
    proxy.shutdown().await;
}

#[tokio::test]
async fn location_headers_pointing_at_upstream_are_rewritten() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let r = get(&c, &proxy.url("/redirect")).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://proxy.test/v1/after?x=1"));
    assert_eq!(
        r.header("content-location"),
        Some("http://proxy.test/v1/cl")
    );
    let r = get(&c, &proxy.url("/elsewhere")).await;
    assert_eq!(
        r.header("location"),
        Some("https://example.org/x"),
        "other hosts are left alone"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_gives_its_slot_back() {
    let up = MockUpstream::start().await;
    let closed = free_port();
    let limits = "[[limits]]\nrequests = 1\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n";
    // The breaker would answer 503 after five failed attempts (retries count).
    let proxy = TestProxy::start_edit(&up, limits, |s| {
        s.replace(&up.url(), &format!("https://localhost:{}", closed.port()))
            .replace(
                "timeout = \"2s\"\n",
                "timeout = \"2s\"\nbreaker_failures = 0\n",
            )
    })
    .await;
    let c = client();
    for _ in 0..3 {
        let r = get(&c, &proxy.url("/v1/x")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            r.code(),
            "upstream_unreachable",
            "a refunded slot means no 429 here"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start_edit(&up, "", |s| {
        s.lines()
            .filter(|l| !l.starts_with("ca_file"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await;
    let r = get(&client(), &proxy.url("/v1/x")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.code(), "upstream_unreachable");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{:?}",
        r.body
    );
    assert_eq!(up.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_head_is_504() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start_edit(&up, "", |s| {
        s.replace("timeout = \"2s\"", "timeout = \"200ms\"")
    })
    .await;
    let r = get(&client(), &proxy.url("/slow/2000")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.code(), "upstream_timeout");
    proxy.shutdown().await;
}

async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn not_an_open_proxy() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let r = raw(
        proxy.proxy,
        "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("bad_request"));
    let r = raw(
        proxy.proxy,
        "GET http://example.org/steal HTTP/1.1\r\nHost: example.org\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(up.count(), 0, "nothing was forwarded");
    let r = raw(
        proxy.proxy,
        "GET http://proxy.test/v1/ok HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 200"),
        "absolute-form naming the proxy itself is fine: {r}"
    );
    assert_eq!(up.log()[0].target, "/v1/ok");
    proxy.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_413_and_never_spend_quota() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start_edit(&up, "", |s| {
        s.replace("[server]\n", "[server]\nmax_request_body = \"1KiB\"\n")
    })
    .await;
    let c = client();
    let r = send(
        &c,
        Method::POST,
        &proxy.url("/upload"),
        &[],
        vec![0u8; 2048],
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "body_too_large");
    assert_eq!(
        up.count(),
        0,
        "refused on Content-Length before anything was sent"
    );
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| {
            Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                1u8;
                1000
            ])))
        })
        .collect();
    let stream = http_body_util::StreamBody::new(tokio_stream_iter(chunks));
    let r = send(
        &c,
        Method::POST,
        &proxy.url("/upload"),
        &[],
        Body::new(stream),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "a chunked body is cut off at the limit: {:?}",
        r.body
    );
    let r = send(
        &c,
        Method::POST,
        &proxy.url("/upload"),
        &[],
        vec![0u8; 1024],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"1024");
    proxy.shutdown().await;
}

fn tokio_stream_iter<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Unpin {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}
