//! SIGHUP: limits, admission, access and clients change without a restart,
//! without dropped calls or lost window state; a broken file changes nothing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::time::Instant;

const BEFORE: &str = "[[limits]]\nrequests = 10\nper = \"300ms\"\n[admission]\nmargin = \"30ms\"\nmax_wait = \"20s\"\n";
const AFTER: &str = "[[limits]]\nrequests = 4\nper = \"300ms\"\n[admission]\nmargin = \"30ms\"\nmax_wait = \"20s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_changes_under_load_with_no_failed_call_and_no_violation() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Arc::new(BinProxy::start(dir.path(), &up, BEFORE));
    let c = client();
    let stop = Instant::now() + Duration::from_millis(2400);
    let mut workers = Vec::new();
    for w in 0..12 {
        let (c, url) = (c.clone(), proxy.url(&format!("/v1/load/{w}")));
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while Instant::now() < stop {
                statuses.push(get(&c, &url).await.status.as_u16());
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(BEFORE, AFTER);
    std::fs::write(&path, text).unwrap();
    proxy.signal("HUP");
    let reloaded = wait_metric(
        &c,
        proxy.admin,
        "dastra_proxy_config_reloads_total{result=\"ok\"}",
        1.0,
    )
    .await;
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert!(all.len() > 30, "load ran: {} calls", all.len());
    assert!(
        all.iter().all(|s| *s == 200),
        "no call failed across the reload: {all:?}"
    );
    let mut arrivals = up.arrivals("/v1/load/");
    arrivals.sort();
    let per = Duration::from_millis(300);
    for (i, t) in arrivals.iter().enumerate() {
        let n = arrivals[i..].iter().take_while(|a| **a < *t + per).count();
        assert!(n <= 10, "{n} in 300 ms under the old limit");
        if *t > reloaded + Duration::from_millis(50) {
            assert!(n <= 4, "{n} in 300 ms after the reload to 4");
        }
    }
    let q = get(&c, &format!("http://{}/quota", proxy.admin))
        .await
        .json();
    assert_eq!(q["windows"][0]["limit"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_keeps_the_old_config_serving() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, BEFORE);
    let c = client();
    let path = dir.path().join("config.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\n[admission]\nmax_wiat = \"1s\"\n")).unwrap();
    proxy.signal("HUP");
    wait_metric(
        &c,
        proxy.admin,
        "dastra_proxy_config_reloads_total{result=\"error\"}",
        1.0,
    )
    .await;
    assert_eq!(
        get(&c, &proxy.url("/v1/still")).await.status,
        200,
        "still serving"
    );
    let q = get(&c, &format!("http://{}/quota", proxy.admin))
        .await
        .json();
    assert_eq!(q["windows"][0]["limit"], 10, "the old limits stay in force");
    std::fs::write(
        &path,
        good.replace("[server]\n", "[server]\nmax_request_body = \"1KiB\"\n"),
    )
    .unwrap();
    proxy.signal("HUP");
    wait_metric(
        &c,
        proxy.admin,
        "dastra_proxy_config_reloads_total{result=\"error\"}",
        2.0,
    )
    .await;
}

/// A SIGHUP that arrives while the proxy is still starting (here: its admin
/// port is bound and it waits on a Redis that never answers) is a reload once
/// it runs, not the default action that ends the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_start_up_is_a_reload_not_a_death() {
    let up = MockUpstream::start().await;
    // Connections land in its backlog and are never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://{}\"\n",
        silent.local_addr().unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = BinProxy::start(dir.path(), &up, &extra);
    proxy.signal("HUP");
    let c = client();
    wait_metric(
        &c,
        proxy.admin,
        "dastra_proxy_config_reloads_total{result=\"ok\"}",
        1.0,
    )
    .await;
    assert!(proxy.child.try_wait().unwrap().is_none(), "still running");
}

/// The leaf certificate a TLS handshake with `port` presents.
async fn presented(port: u16, cas: &[&TestPki]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.ca_pem.as_bytes()).unwrap())
            .unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf(pki: &TestPki) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pki.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// SIGHUP reads the inbound TLS pair again: a rotated certificate is served
/// to new connections without a restart; a pair that does not load keeps the
/// old one and counts a failed reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_inbound_certificate_and_a_broken_pair_keeps_the_old() {
    let up = MockUpstream::start().await;
    let (a, b) = (TestPki::new(), TestPki::expiring(Some((2031, 5, 17))));
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, &a.cert_pem).unwrap();
    std::fs::write(&key, &a.key_pem).unwrap();
    let tls = format!(
        "[server]\ntls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
        crt.display(),
        key.display()
    );
    let proxy = BinProxy::start_edit(dir.path(), &up, "", move |s| {
        s.replacen("[server]\n", &tls, 1)
    });
    let port = proxy.proxy.port();
    assert_eq!(presented(port, &[&a, &b]).await, leaf(&a));
    std::fs::write(&crt, &b.cert_pem).unwrap();
    std::fs::write(&key, &b.key_pem).unwrap();
    let c = client();
    let expiry = |c: TestClient| {
        let url = format!("http://{}/metrics", proxy.admin);
        async move {
            let m = String::from_utf8_lossy(&get(&c, &url).await.body).into_owned();
            m.lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "dastra_proxy_tls_cert_expiry_timestamp_seconds{listener=\"proxy\"} ",
                    )
                })
                .map(str::to_owned)
        }
    };
    // rcgen's default: 4096-01-01T00:00:00Z.
    assert_eq!(expiry(c.clone()).await.as_deref(), Some("67090118400"));
    hup(&c, &proxy, "ok", 1.0).await;
    assert_eq!(
        presented(port, &[&a, &b]).await,
        leaf(&b),
        "the rotated pair"
    );
    // 2031-05-17T00:00:00Z: the expiry follows the pair in use.
    assert_eq!(expiry(c.clone()).await.as_deref(), Some("1936742400"));
    std::fs::write(&key, "not a key\n").unwrap();
    hup(&c, &proxy, "error", 1.0).await;
    assert_eq!(
        presented(port, &[&a, &b]).await,
        leaf(&b),
        "the old pair stays"
    );
}

/// SIGHUP reads `*_file` secrets again: a rotated Dastra key goes out on the
/// next call, no restart; another kind of credential still needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_rotated_key_file() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dastra.key");
    std::fs::write(&key, "first-key-0123456789\n").unwrap();
    let file = format!("api_key_file = \"{}\"", key.display());
    let proxy = BinProxy::start_edit(dir.path(), &up, "", move |s| {
        s.replace("api_key_env = \"TEST_DASTRA_KEY\"", &file)
    });
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/before")).await.status, 200);
    std::fs::write(&key, "second-key-9876543210\n").unwrap();
    hup(&c, &proxy, "ok", 1.0).await;
    assert_eq!(get(&c, &proxy.url("/v1/after")).await.status, 200);
    let sent = |path: &str| {
        up.log()
            .into_iter()
            .find(|r| r.target == path)
            .unwrap()
            .headers["x-api-key"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(sent("/v1/before"), "first-key-0123456789");
    assert_eq!(sent("/v1/after"), "second-key-9876543210");
    // Another kind: refused, the rotated key stays in force.
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("kind = \"api_key\"", "kind = \"passthrough\"");
    let text = text.replace(&format!("api_key_file = \"{}\"", key.display()), "");
    std::fs::write(&path, text).unwrap();
    hup(&c, &proxy, "error", 1.0).await;
    assert_eq!(get(&c, &proxy.url("/v1/later")).await.status, 200);
    assert_eq!(sent("/v1/later"), "second-key-9876543210");
}

/// `server.watch`: a changed secret file is reloaded without a signal, as a
/// Kubernetes Secret swap would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_a_changed_secret_file_without_a_signal() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dastra.key");
    std::fs::write(&key, "watched-key-one-0000\n").unwrap();
    let file = format!("api_key_file = \"{}\"", key.display());
    let proxy = BinProxy::start_edit(dir.path(), &up, "", move |s| {
        s.replace("api_key_env = \"TEST_DASTRA_KEY\"", &file)
            .replacen("[server]\n", "[server]\nwatch = true\n", 1)
    });
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/one")).await.status, 200);
    std::fs::write(&key, "watched-key-two-11111\n").unwrap();
    // Checked every 2 s: wait_metric polls for up to 3 s.
    wait_metric(
        &c,
        proxy.admin,
        "dastra_proxy_config_reloads_total{result=\"ok\"}",
        1.0,
    )
    .await;
    assert_eq!(get(&c, &proxy.url("/v1/two")).await.status, 200);
    let two = up
        .log()
        .into_iter()
        .find(|r| r.target == "/v1/two")
        .unwrap();
    assert_eq!(two.headers["x-api-key"], "watched-key-two-11111");
}

/// A reload that must refuse a change names the key that changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_names_the_key_that_changed() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let app = proxy.running.as_ref().unwrap().app.clone();
    let path = proxy.dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for (from, to, key) in [
        (
            "shutdown_grace = \"5s\"",
            "shutdown_grace = \"6s\"",
            "server.shutdown_grace",
        ),
        (
            "\ntimeout = \"2s\"",
            "\ntimeout = \"3s\"",
            "upstream.timeout",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let changed = text.replacen(from, to, 1);
        let next = dastra_proxy::config::Config::parse_with(&changed, &path, &test_env()).unwrap();
        let e = app.reload(&next).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")), "{e}");
    }
    proxy.shutdown().await;
}

/// A client a reload adds has its series at 0 at once (SPEC §9.4: known
/// label values exist from start-up and from each reload), so its panels
/// read 0, not "No data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_a_reload_adds_has_its_series_at_zero() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client_of = |name: &str, key: &str| {
        format!(
            "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n",
            dastra_proxy::access::hash_key(key)
        )
    };
    let first = client_of("crm", "crm-client-key-AAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let proxy = BinProxy::start(dir.path(), &up, &first);
    let c = client();
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let second = client_of("bi", "bi-client-key-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBB");
    std::fs::write(&path, format!("{text}\n{second}")).unwrap();
    hup(&c, &proxy, "ok", 1.0).await;
    let m = get(&c, &format!("http://{}/metrics", proxy.admin)).await;
    let text = String::from_utf8_lossy(&m.body);
    for series in [
        "dastra_proxy_rejected_total{client=\"bi\",code=\"quota_exhausted\"} 0",
        "dastra_proxy_dry_run_total{client=\"bi\",would=\"queue\"} 0",
        "dastra_proxy_queue_depth{client=\"bi\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}
