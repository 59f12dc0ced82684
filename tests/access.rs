//! Who may use the proxy: client keys, IP allow-lists (IPv4 and IPv6 peers),
//! forwarding headers, inbound TLS, the per-client guard, and logs that never
//! carry a secret.

mod support;

use std::sync::Arc;

use axum::body::Body;
use base64::Engine as _;
use http::Method;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;

const CRM_KEY: &str = "crm-client-key-AAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const HR_KEY: &str = "hr-client-key-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

fn clients(extra_crm: &str) -> String {
    format!(
        "[[clients]]\nname = \"crm\"\nkey_sha256 = \"{}\"\n{extra_crm}\n[[clients]]\nname = \"hr\"\nkey_sha256 = \"{}\"\nallow = [\"::1/128\"]\n",
        dastra_proxy::access::hash_key(CRM_KEY),
        dastra_proxy::access::hash_key(HR_KEY)
    )
}

#[tokio::test]
async fn client_keys_from_each_header_and_the_refusals() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, &clients("")).await;
    let c = client();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("anything:{CRM_KEY}"))
    );
    let bearer = format!("Bearer {CRM_KEY}");
    for h in [
        ("x-api-key", CRM_KEY),
        ("authorization", bearer.as_str()),
        ("authorization", basic.as_str()),
    ] {
        let r = send(&c, Method::GET, &proxy.url("/v1/ok"), &[h], Body::empty()).await;
        assert_eq!(r.status, 200, "{}", h.0);
    }
    for rec in up.log() {
        assert_eq!(rec.headers["x-api-key"], DASTRA_KEY);
        assert!(
            rec.headers.get("authorization").is_none(),
            "the client's key never reaches Dastra"
        );
    }
    let wrong = send(
        &c,
        Method::GET,
        &proxy.url("/v1/no"),
        &[("x-api-key", "wrong")],
        Body::empty(),
    )
    .await;
    assert_eq!(
        (wrong.status.as_u16(), wrong.code().as_str()),
        (401, "unauthenticated")
    );
    let none = get(&c, &proxy.url("/v1/no")).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"dastra-proxy\""),
        "a 401 says how to authenticate"
    );
    assert_eq!(up.count(), 3, "refused calls are not forwarded");
    let m = proxy.metrics.render();
    assert!(
        m.contains("dastra_proxy_requests_total{client=\"crm\",method=\"GET\",status=\"200\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("dastra_proxy_rejected_total{client=\"anonymous\",code=\"unauthenticated\"} 2"),
        "{m}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn ipv4_and_ipv6_peers_against_the_allow_lists() {
    let up = MockUpstream::start().await;
    let extra = format!(
        "[access]\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n{}",
        clients("")
    );
    let proxy = TestProxy::start_edit(&up, &extra, |s| {
        s.replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\"")
    })
    .await;
    let port = proxy.proxy.port();
    let at = |host: &str, path: &str| format!("http://{host}:{port}{path}");
    let key = [("x-api-key", CRM_KEY)];
    let hr = [("x-api-key", HR_KEY)];

    let r = send(
        &client_from("127.0.0.1"),
        Method::GET,
        &at("127.0.0.1", "/v1/a"),
        &key,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200, "IPv4 peer in the list");
    let r = send(
        &client_from("127.0.0.2"),
        Method::GET,
        &at("127.0.0.1", "/v1/b"),
        &key,
        Body::empty(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "ip_not_allowed")
    );
    let r = send(
        &client_from("::1"),
        Method::GET,
        &at("[::1]", "/v1/c"),
        &key,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200, "IPv6 peer in the list");
    let r = send(
        &client_from("::1"),
        Method::GET,
        &at("[::1]", "/v1/d"),
        &hr,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200, "hr may come from ::1");
    let r = send(
        &client_from("127.0.0.1"),
        Method::GET,
        &at("127.0.0.1", "/v1/e"),
        &hr,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 403, "clients.allow narrows [access].allow");
    let r = send(
        &client_from("127.0.0.2"),
        Method::GET,
        &at("127.0.0.1", "/v1/f"),
        &[
            ("x-api-key", CRM_KEY),
            ("x-forwarded-for", "127.0.0.1"),
            ("forwarded", "for=127.0.0.1"),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "forwarding headers of an untrusted peer are not believed"
    );
    let targets: Vec<String> = up.log().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/v1/a", "/v1/c", "/v1/d"]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn trusted_proxy_chains_use_the_rightmost_untrusted_address() {
    let up = MockUpstream::start().await;
    let extra = "[access]\nallow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.3/32\", \"192.0.2.0/24\"]\n";
    let proxy = TestProxy::start(&up, extra).await;
    let c = client_from("127.0.0.3");
    let url = proxy.url("/v1/x");
    let with = |xff: &'static str| [("x-forwarded-for", xff)];
    let r = send(&c, Method::GET, &url, &with("10.1.2.3"), Body::empty()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.log()[0].headers["x-forwarded-for"],
        "10.1.2.3, 127.0.0.3",
        "the chain is extended"
    );
    let r = send(
        &c,
        Method::GET,
        &url,
        &with("203.0.113.9, 10.1.2.3, 192.0.2.10"),
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200, "trusted hops are skipped from the right");
    let r = send(
        &c,
        Method::GET,
        &url,
        &with("10.1.2.3, 203.0.113.9"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "the rightmost untrusted hop decides, not the leftmost"
    );
    let r = send(
        &c,
        Method::GET,
        &url,
        &[("forwarded", "for=10.9.9.9;proto=https")],
        Body::empty(),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "only the configured header (x-forwarded-for) is believed: `Forwarded` \
         is ignored and the peer itself, not allowed, is judged"
    );
    let r = get(&c, &url).await;
    assert_eq!(
        r.status, 403,
        "a trusted proxy need not be allowed itself, but is judged when it names nobody"
    );
    let r = send(
        &client_from("127.0.0.1"),
        Method::GET,
        &url,
        &with("10.1.2.3"),
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, 403, "spoofing from an untrusted peer");
    proxy.shutdown().await;
}

#[tokio::test]
async fn inbound_tls_with_http2_by_alpn() {
    let up = MockUpstream::start().await;
    let pki = TestPki::new();
    let extra = String::new();
    let tls = format!(
        "[server]\ntls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
        pki.cert_path().display(),
        pki.key_path().display()
    );
    let proxy = TestProxy::start_edit(&up, &extra, |s| s.replacen("[server]\n", &tls, 1)).await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_all_versions()
        .build();
    let c: Client<_, Body> = Client::builder(TokioExecutor::new()).build(https);
    let resp = c
        .request(
            http::Request::get(format!(
                "https://localhost:{}/v1/secure",
                proxy.proxy.port()
            ))
            .body(Body::empty())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(up.log()[0].headers["x-forwarded-proto"], "https");
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        client().request(
            http::Request::get(format!("http://127.0.0.1:{}/v1/plain", proxy.proxy.port()))
                .body(Body::empty())
                .unwrap(),
        ),
    )
    .await
    .expect("the TLS listener closes a plain connection");
    assert!(plain.is_err(), "no HTTP answer on a TLS port");
    assert_eq!(up.count(), 1, "plain HTTP is not served on a TLS listener");
    proxy.shutdown().await;
}

#[tokio::test]
async fn per_client_guard_answers_client_rate() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start_edit(&up, &clients("rate = \"1/10s\"\nburst = 2\n"), |s| {
        s.replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\"")
    })
    .await;
    let c = client();
    let call = |key: &'static str| {
        let (c, url) = (
            c.clone(),
            format!("http://127.0.0.1:{}/v1/g", proxy.proxy.port()),
        );
        async move { send(&c, Method::GET, &url, &[("x-api-key", key)], Body::empty()).await }
    };
    assert_eq!(call(CRM_KEY).await.status, 200);
    assert_eq!(call(CRM_KEY).await.status, 200);
    let r = call(CRM_KEY).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (429, "client_rate"));
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((9..=10).contains(&ra), "one cell per 10 s: {ra}");
    let hr = send(
        &client_from("::1"),
        Method::GET,
        &format!("http://[::1]:{}/v1/g", proxy.proxy.port()),
        &[("x-api-key", HR_KEY)],
        Body::empty(),
    )
    .await;
    assert_ne!(hr.status, 429, "other clients are not affected");
    let m = proxy.metrics.render();
    assert!(
        m.contains("dastra_proxy_rejected_total{client=\"crm\",code=\"client_rate\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("dastra_proxy_rejected_total{client=\"crm\",code=\"quota_exhausted\"} 0"),
        "counted apart from quota refusals (that series exists at 0 from start-up): {m}"
    );
    proxy.shutdown().await;
}

/// Every log line of the real binary at trace level, across successes and
/// errors, must be free of the Dastra key, the client key and tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = BinProxy::start_edit(dir.path(), &up, &clients(""), |s| s);
    proxy.relaunch_logging(dir.path(), "trace");
    let c = client();
    let url = |p: &str| proxy.url(&format!("{p}?key={CRM_KEY}&api_key={DASTRA_KEY}"));
    for (h, path) in [
        (("x-api-key", CRM_KEY), "/v1/ok"),
        (
            ("authorization", "Bearer wrong-client-key-CCCCCCCCCCCC"),
            "/v1/denied",
        ),
        (("x-api-key", CRM_KEY), "/status/401"),
        (("x-api-key", CRM_KEY), "/status/500"),
    ] {
        let _ = send(&c, Method::POST, &url(path), &[h], "{\"a\":1}").await;
    }
    proxy.signal("TERM");
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(logs.lines().count() > 20, "trace logging is on: {logs}");
    assert!(logs.contains("/v1/ok"), "the access log names the path");
    for secret in [DASTRA_KEY, CRM_KEY, "wrong-client-key-CCCCCCCCCCCC"] {
        assert!(
            !logs.contains(secret),
            "secret {secret} leaked into the logs"
        );
    }
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in a log written to a file"
    );
}
