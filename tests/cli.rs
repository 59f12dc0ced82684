//! The real binary: commands, config errors, shutdown, and memory while
//! streaming large bodies.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use http::Method;
use support::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
}

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .env("TEST_DASTRA_KEY", DASTRA_KEY)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const KEY: &str = "[credential]\napi_key_env = \"TEST_DASTRA_KEY\"\n";

#[test]
fn shipped_config_is_valid_and_check_redacts_secrets() {
    let out = bin()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .env("DASTRA_API_KEY", "super-secret-dastra-key")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("super-secret") && !stderr.contains("super-secret"));
    assert!(stdout.contains("<redacted from env DASTRA_API_KEY>"));
    assert!(
        stderr.contains("note: window \"10m\" (10000 per 10m) can never bind"),
        "{stderr}"
    );
    assert!(stderr.contains("500 x 10 = 5000"), "{stderr}");
}

#[test]
fn unknown_key_names_file_line_column_and_key() {
    let (code, _, err) = check(&format!(
        "{KEY}\n[admission]\nmax_queue = 10\nmax_wiat = \"1s\"\n"
    ));
    assert_eq!(code, 1);
    assert!(err.contains("config.toml:6:1"), "{err}");
    assert!(
        err.contains("admission.max_wiat") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn bad_duration_and_bad_values_are_explained() {
    let (code, _, err) = check(&format!("{KEY}[server]\nshutdown_grace = \"30 parsecs\"\n"));
    assert_eq!(code, 1);
    assert!(
        err.contains(":4:18") && err.contains("server.shutdown_grace"),
        "{err}"
    );
    let (code, _, err) = check(&format!("{KEY}[[limits]]\nrequests = 0\nper = \"1m\"\n"));
    assert_eq!(code, 1);
    assert!(err.contains("limits[0].requests"), "{err}");
    let (code, _, err) = check(&format!(
        "{KEY}[[limits]]\nrequests = 5\nper = \"1 fortnightish\"\n"
    ));
    assert_eq!(code, 1);
    assert!(err.contains("limits[0].per"), "{err}");
}

#[test]
fn missing_file_and_missing_secret_are_named() {
    let out = bin()
        .args(["check", "--config", "/nonexistent/dp.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dp.toml: cannot read"));
    let (code, _, err) = check("[credential]\napi_key_env = \"DP_TEST_SURELY_UNSET\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("DP_TEST_SURELY_UNSET is not set"), "{err}");
}

#[test]
fn hash_key_and_gen_key_agree() {
    let out = bin().arg("gen-key").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key        "))
        .unwrap()
        .to_owned();
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("key_sha256 "))
        .unwrap()
        .to_owned();
    assert!(key.len() >= 43, "at least 256 bits");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "URL-safe"
    );
    assert_eq!(hash_key(&format!("{key}\n")), digest);
    assert_eq!(
        hash_key("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sha256(\"abc\")"
    );
}

fn hash_key(input: &str) -> String {
    let mut child = bin()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_then_exits_0_and_readyz_says_503_meanwhile() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = BinProxy::start(dir.path(), &up, "");
    let c = client();
    let url = proxy.url("/slow/800");
    let call = tokio::spawn(async move { get(&c, &url).await });
    for _ in 0..200 {
        if up.state.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal("TERM");
    // While it drains, a probe on a new connection reads 503, not a refusal.
    let probe = client();
    let admin = format!("http://{}/readyz", proxy.admin);
    let mut draining = None;
    for _ in 0..50 {
        let r = get(&probe, &admin).await;
        if r.status == 503 {
            draining = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        draining.is_some(),
        "/readyz never said 503 during the drain"
    );
    let r = call.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight call finished");
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A sidecar given one core runs tokio on one thread (no worker threads to
/// hand calls between); everything still works there: forwarding, a queue
/// that waits on the clock, and a drain on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_it_runs_on_one_thread_and_still_queues_and_drains() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[limits]]\nrequests = 2\nper = \"500ms\"\n[admission]\non_limit = \"queue\"\nmax_wait = \"5s\"\n";
    let mut proxy = BinProxy::start_on_one_cpu(dir.path(), &up, extra);
    let workers = proxy
        .threads()
        .into_iter()
        .filter(|t| t.starts_with("tokio-r"))
        .count();
    assert_eq!(workers, 0, "threads: {:?}", proxy.threads());
    let c = client();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let (c, url) = (c.clone(), proxy.url(&format!("/v1/one-cpu/{i}")));
            tokio::spawn(async move { get(&c, &url).await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let arrivals = up.arrivals("/v1/one-cpu/");
    assert_eq!(arrivals.len(), 6);
    // 2 per 500 ms: the last two could not go before a full window passed.
    assert!(
        arrivals[5] - arrivals[0] >= Duration::from_millis(900),
        "{arrivals:?}"
    );
    proxy.signal("TERM");
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_command_reads_readyz() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, "");
    let ok = bin()
        .args(["healthcheck", "--config"])
        .arg(dir.path().join("config.toml"))
        .env("TEST_DASTRA_KEY", DASTRA_KEY)
        .status()
        .unwrap();
    assert!(ok.success());
    let down = free_port();
    let bad = bin()
        .args(["healthcheck", "--url", &format!("http://{down}/readyz")])
        .status()
        .unwrap();
    assert_eq!(bad.code(), Some(1));
    drop(proxy);
}

/// 200 MiB each way through the real binary; its peak RSS must stay small,
/// which only holds if bodies are streamed and never buffered whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_memory() {
    const SIZE: u64 = 200 << 20;
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start_edit(dir.path(), &up, "", |s| {
        s.replace("[server]\n", "[server]\nmax_request_body = \"1GiB\"\n")
            .replace("timeout = \"2s\"", "timeout = \"120s\"")
    });
    let c = client();
    let before = proxy.peak_rss_kib();

    let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let frames = (0..SIZE / chunk.len() as u64)
        .map(move |_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone())));
    let body = Body::new(http_body_util::StreamBody::new(IterStream(frames)));
    let r = send(&c, Method::POST, &proxy.url("/upload"), &[], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(std::str::from_utf8(&r.body).unwrap(), SIZE.to_string());

    let resp = c
        .request(
            http::Request::get(proxy.url(&format!("/download/{SIZE}")))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    use http_body_util::BodyExt as _;
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, SIZE);
    let peak = proxy.peak_rss_kib();
    eprintln!("proxy peak RSS: {before} KiB before, {peak} KiB after 2 x 200 MiB");
    assert!(
        peak < 48 * 1024,
        "peak RSS {peak} KiB: bodies are being buffered"
    );
}

struct IterStream<I>(I);
impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

#[test]
fn check_warns_when_max_connections_exceeds_the_open_file_limit() {
    let (code, _, err) = check(&format!("[server]\nmax_connections = 10000000\n{KEY}"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("open-file limit"), "{err}");
    let (_, _, err) = check(&format!("[server]\nmax_connections = 10\n{KEY}"));
    assert!(!err.contains("open-file limit"), "{err}");
}

/// `check` fails exactly when `run` would: a state file whose directory
/// does not exist is an error naming the key; `--offline` skips Redis and
/// says so, where a plain `check` fails on an unreachable one.
#[test]
fn check_fails_where_run_would_and_offline_skips_the_network() {
    let (code, _, err) = check(&format!(
        "{KEY}[store]\nstate_file = \"/nonexistent-dir/dp.state\"\n"
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("store.state_file /nonexistent-dir/dp.state"),
        "{err}"
    );
    let redis = format!(
        "{KEY}[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n",
        free_port().port()
    );
    let (code, _, err) = check(&redis);
    assert_eq!(code, 1, "an unreachable Redis fails check: {err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &redis).unwrap();
    let out = bin()
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .env("TEST_DASTRA_KEY", DASTRA_KEY)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--offline: Redis was not contacted"), "{err}");
}
