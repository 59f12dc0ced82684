//! Shared test harness: a real TLS mock of Dastra on 127.0.0.1:0 with
//! certificates made by rcgen, the real proxy started from a config file
//! through the real loader, and a small HTTP client.
#![allow(dead_code, unreachable_pub)]

pub mod replica;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use dastra_proxy::config::Config;
use dastra_proxy::metrics::Metrics;
use dastra_proxy::secret::SecretEnv;
use dastra_proxy::server::{self, Running};
pub use upstream::MockUpstream;

/// A certificate authority and a localhost leaf it signed.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        Self::expiring(None)
    }

    /// A PKI whose leaf stops being valid at midnight UTC of `(y, m, d)`
    /// (rcgen's far-future default without one).
    pub fn expiring(ymd: Option<(i32, u8, u8)>) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dastra-proxy test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        if let Some((y, m, d)) = ymd {
            leaf_params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pki = Self {
            dir,
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        };
        std::fs::write(pki.ca_path(), &pki.ca_pem).unwrap();
        std::fs::write(pki.dir.path().join("leaf.pem"), &pki.cert_pem).unwrap();
        std::fs::write(pki.dir.path().join("leaf.key"), &pki.key_pem).unwrap();
        pki
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("leaf.pem")
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("leaf.key")
    }
}

/// Writes a config whose `[upstream]` points at `upstream`, plus `extra` TOML.
pub fn write_config(dir: &std::path::Path, upstream: &MockUpstream, extra: &str) -> PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\npublic_url = \"http://proxy.test\"\nshutdown_grace = \"5s\"\n\n\
         [upstream]\nurl = \"{}\"\nca_file = \"{}\"\nconnect_timeout = \"1s\"\ntimeout = \"2s\"\n\n\
         [credential]\nkind = \"api_key\"\napi_key_env = \"TEST_DASTRA_KEY\"\n\n{extra}",
        upstream.url(),
        upstream.pki.ca_path().display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The Dastra key the test configs inject.
pub const DASTRA_KEY: &str = "dastra-secret-key-0123456789";

/// The only environment the in-process proxies' configs read: tests never
/// mutate the process environment (see `.clippy.toml`).
pub fn test_env() -> SecretEnv {
    SecretEnv::fixed([
        ("TEST_DASTRA_KEY", DASTRA_KEY),
        ("TEST_DASTRA_PUBLIC", "pub-id"),
        ("TEST_DASTRA_PRIVATE", "priv-secret"),
    ])
}

/// The real proxy server stack, in this process.
pub struct TestProxy {
    pub running: Option<Running>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub metrics: Metrics,
}

impl TestProxy {
    pub async fn start(upstream: &MockUpstream, extra: &str) -> Self {
        Self::start_edit(upstream, extra, |s| s).await
    }

    /// Like `start`, with `edit` applied to the generated config text.
    pub async fn start_edit(
        upstream: &MockUpstream,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), upstream, extra);
        std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
        let config = Config::load_with(&path, &test_env()).expect("test config is valid");
        let metrics = Metrics::new();
        let running = server::start(config, metrics.clone())
            .await
            .expect("proxy starts");
        Self {
            proxy: running.proxy_addr,
            admin: running.admin_addr,
            running: Some(running),
            dir,
            metrics,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The real binary, started on a config file.
pub struct BinProxy {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl BinProxy {
    /// Starts the binary on free ports; `extra` follows the generated sections.
    pub fn start(dir: &std::path::Path, upstream: &MockUpstream, extra: &str) -> Self {
        Self::start_edit(dir, upstream, extra, |s| s)
    }

    pub fn start_edit(
        dir: &std::path::Path,
        upstream: &MockUpstream,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        Self::launch(dir, upstream, extra, edit, &[])
    }

    /// Starts the binary allowed onto CPU 0 only (`taskset`), as a sidecar
    /// given one core runs.
    pub fn start_on_one_cpu(dir: &std::path::Path, upstream: &MockUpstream, extra: &str) -> Self {
        Self::launch(dir, upstream, extra, |s| s, &["taskset", "-c", "0"])
    }

    fn launch(
        dir: &std::path::Path,
        upstream: &MockUpstream,
        extra: &str,
        edit: impl FnOnce(String) -> String,
        wrapper: &[&str],
    ) -> Self {
        let proxy = free_port();
        let admin = free_port();
        let path = write_config(dir, upstream, extra);
        let text = edit(std::fs::read_to_string(&path).unwrap())
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{proxy}\""),
                1,
            )
            .replacen(
                "admin_listen = \"127.0.0.1:0\"",
                &format!("admin_listen = \"{admin}\""),
                1,
            );
        std::fs::write(&path, text).unwrap();
        let exe = env!("CARGO_BIN_EXE_dastra-proxy");
        let mut command = match wrapper {
            [] => Command::new(exe),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
        };
        let child = command
            .arg("--config")
            .arg(&path)
            .env("TEST_DASTRA_KEY", DASTRA_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_port(admin);
        Self {
            child,
            proxy,
            admin,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The names of the process's threads.
    pub fn threads(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Starts the binary again on the same config in `dir`, logging at
    /// `level` into `dir/stderr.log` (the tests that read its log lines).
    pub fn relaunch_logging(&mut self, dir: &std::path::Path, level: &str) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        self.child = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("TEST_DASTRA_KEY", DASTRA_KEY)
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(self.admin);
    }

    /// SIGTERM, then waits for the process to end (its drain, its state
    /// file written): a restart's first half.
    pub async fn terminate(self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut proxy = self;
        tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
            .await
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for BinProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Waits (bounded) until something listens on `addr`.
pub fn wait_for_port(addr: SocketAddr) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {addr}");
}

pub type TestClient = Client<HttpConnector, Body>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client whose connections come from `local` (127.0.0.2, ::1, …).
pub fn client_from(local: &str) -> TestClient {
    let mut http = HttpConnector::new();
    http.set_local_address(Some(local.parse::<std::net::IpAddr>().unwrap()));
    Client::builder(TokioExecutor::new()).build(http)
}

/// A proxy whose credential is the caller's own (`kind = "passthrough"`),
/// with these credential keys besides.
pub async fn passthrough(up: &MockUpstream, keys: &str, extra: &str) -> TestProxy {
    let credential = format!("kind = \"passthrough\"\n{keys}");
    TestProxy::start_edit(up, extra, move |s| {
        s.replace(
            "kind = \"api_key\"\napi_key_env = \"TEST_DASTRA_KEY\"\n",
            &credential,
        )
    })
    .await
}

/// GETs all at once, each with its own headers: whichever arrives first
/// leads a shared call, the others may follow it.
pub async fn gets_together(
    c: &TestClient,
    calls: Vec<(String, Vec<(&'static str, &'static str)>)>,
) -> Vec<Reply> {
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(url, headers)| {
            let c = c.clone();
            tokio::spawn(async move { send(&c, Method::GET, &url, &headers, Body::empty()).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A finished response: status, headers and the whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `error.code` of a proxy error envelope.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

pub async fn send(
    c: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(body.into()).unwrap())
        .await
        .expect("request reaches the proxy");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(c: &TestClient, url: &str) -> Reply {
    send(c, Method::GET, url, &[], Body::empty()).await
}

/// Sends the first window holds now, as the proxy's `/quota` says.
pub async fn window_used(c: &TestClient, p: &TestProxy) -> u64 {
    get(c, &p.admin_url("/quota")).await.json()["windows"][0]["used"]
        .as_u64()
        .unwrap()
}

/// A real `redis-server` on a free loopback port, stopped on drop.
pub struct RedisServer {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port().port())
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &["--port".to_string(), port.to_string()])
    }

    /// With more settings (TLS, ACL users, cluster mode); `port` is where it
    /// answers (the TLS port, when only that one is open).
    pub fn start_with(port: u16, args: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)));
        Self { child, port, dir }
    }

    /// A store for key "k" under `prefix` with `limits`, as the store-level
    /// tests build them: no margin, a 5 s flight, not yet connected.
    #[allow(dead_code)]
    pub fn store(
        &self,
        prefix: &str,
        limits: &[dastra_proxy::config::Limit],
    ) -> dastra_proxy::store::RedisStore {
        dastra_proxy::store::RedisStore::new(
            &self.url(),
            prefix,
            "k",
            limits,
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Window-script runs it has served (EVAL and EVALSHA).
    pub fn script_runs(&self) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Every command it has processed, a script's inner calls included.
    pub fn commands_processed(&self) -> u64 {
        self.cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO stats names total_commands_processed")
    }

    /// Runs `redis-cli` against it with these arguments; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed (scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops it and starts it again on the same port and directory, so it
    /// loads the last `SAVE`d dump: an older state than it had.
    pub fn restart_from_dump(&mut self) {
        self.stop();
        self.child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], self.port)));
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of the first sample of `series` in a scrape (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `series` reaches `want` (3 s at most).
pub async fn wait_metric(
    c: &TestClient,
    admin: std::net::SocketAddr,
    series: &str,
    want: f64,
) -> tokio::time::Instant {
    for _ in 0..300 {
        let m = get(c, &format!("http://{admin}/metrics")).await;
        if metric(&String::from_utf8_lossy(&m.body), series) >= want {
            return tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{series} never reached {want}");
}

/// Sends SIGHUP and waits until `config_reloads_total{result}` reaches `n`.
pub async fn hup(c: &TestClient, proxy: &BinProxy, result: &str, n: f64) {
    proxy.signal("HUP");
    let series = format!("dastra_proxy_config_reloads_total{{result=\"{result}\"}}");
    wait_metric(c, proxy.admin, &series, n).await;
}

/// The admin listener's `/metrics`, as text.
pub async fn scrape(c: &TestClient, admin: SocketAddr) -> String {
    let m = get(c, &format!("http://{admin}/metrics")).await;
    String::from_utf8_lossy(&m.body).into_owned()
}
