//! Redis mode through what real operations do to it: reordered limits, an
//! upstream pause, greedy bursts with max_wait, a Redis restarted empty, TLS
//! with an ACL user, a 3-node Cluster and a wrong password. Quotas are judged
//! on the mock upstream's own arrival log.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{client, get, BinProxy, MockUpstream, RedisServer, TestClient, TestPki};
use tokio::time::Instant;

fn store(url: &str, on_error: &str, replicas: u32) -> String {
    format!(
        "[store]\nkind = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"dp-faults\"\non_error = \"{on_error}\"\nreplicas = {replicas}\n"
    )
}

async fn codes(c: &TestClient, proxy: &BinProxy, prefix: &str, n: usize) -> Vec<u16> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            get(c, &proxy.url(&format!("{prefix}/{i}")))
                .await
                .status
                .as_u16(),
        );
    }
    v
}

async fn reload(
    c: &TestClient,
    proxy: &BinProxy,
    dir: &std::path::Path,
    edit: impl FnOnce(String) -> String,
) {
    let path = dir.join("config.toml");
    std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = get(c, &format!("http://{}/metrics", proxy.admin)).await;
        if String::from_utf8_lossy(&m.body)
            .contains("dastra_proxy_config_reloads_total{result=\"ok\"} 1")
        {
            return;
        }
        assert!(Instant::now() < deadline, "reload never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The most arrivals any span-long window of the upstream log holds.
fn most_in_any_window(arrivals: &[Instant], span: Duration) -> usize {
    let mut a = arrivals.to_vec();
    a.sort();
    (0..a.len())
        .map(|i| a[i..].iter().take_while(|t| **t - a[i] < span).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_and_adding_limits_across_sighup_keeps_each_windows_sends() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let limits = "[[limits]]\nrequests = 4\nper = \"1m\"\n[[limits]]\nrequests = 2\nper = \"1s\"\n";
    let extra = format!(
        "{limits}[admission]\non_limit = \"reject\"\nmargin = \"0s\"\n{}",
        store(&redis.url(), "reject", 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &extra);
    let c = client();
    assert_eq!(
        codes(&c, &proxy, "/v1/a", 3).await,
        [200, 200, 429],
        "2 per second"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        codes(&c, &proxy, "/v1/b", 3).await,
        [200, 200, 429],
        "4 per minute"
    );
    // The 1 s window first, the 1 min window second, and a third one added.
    reload(&c, &proxy, dir.path(), |t| {
        t.replace(
            limits,
            "[[limits]]\nrequests = 2\nper = \"1s\"\n[[limits]]\nrequests = 4\nper = \"1m\"\n[[limits]]\nrequests = 100\nper = \"10m\"\n",
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        codes(&c, &proxy, "/v1/c", 2).await,
        [429, 429],
        "the minute window still holds its 4 sends after moving to second place"
    );
    assert_eq!(up.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_during_an_upstream_pause_say_at_least_the_pause() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    for (mode, extra_admission) in [("reject", ""), ("queue", "max_wait = \"5s\"\n")] {
        let extra = format!(
            "[admission]\non_limit = \"{mode}\"\nupstream_429 = \"pause\"\n{extra_admission}{}",
            store(&redis.url(), "local", 1).replace("dp-faults", &format!("dp-pause-{mode}"))
        );
        let dir = tempfile::tempdir().unwrap();
        let proxy = BinProxy::start(dir.path(), &up, &extra);
        let c = client();
        assert_eq!(get(&c, &proxy.url("/retry-after/30")).await.status, 429);
        let r = get(&c, &proxy.url("/v1/during")).await;
        assert_eq!(
            r.status,
            429,
            "{mode}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.code(), "upstream_throttled", "{mode}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (29..=31).contains(&retry),
            "{mode}: Retry-After {retry}, the pause is 30 s"
        );
    }
    assert_eq!(up.arrivals("/v1/during").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_holds_for_calls_that_arrive_together() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let extra = format!(
        "[[limits]]\nrequests = 2\nper = \"1s\"\n[admission]\non_limit = \"queue\"\nmax_wait = \"1500ms\"\nmargin = \"0s\"\n{}",
        store(&redis.url(), "local", 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &extra);
    let c = client();
    // The key's first decision pays the settle; take it out of the picture.
    assert_eq!(get(&c, &proxy.url("/v1/warm")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t0 = Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let (c, url) = (c.clone(), proxy.url(&format!("/v1/six/{i}")));
            tokio::spawn(async move {
                let r = get(&c, &url).await;
                (r.status.as_u16(), t0.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in calls {
        out.push(h.await.unwrap());
    }
    let ok: Vec<_> = out.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(
        ok.len(),
        4,
        "2 now and 2 a second later; the rest would wait 2 s: {out:?}"
    );
    assert!(
        out.iter()
            .filter(|(s, _)| *s == 429)
            .all(|(_, d)| *d < Duration::from_millis(500)),
        "refused at once: {out:?}"
    );
    assert!(
        ok.iter()
            .all(|(_, d)| *d < Duration::from_millis(1500 + 300)),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_between_two_bursts_forgets_nothing() {
    let up = MockUpstream::start().await;
    let mut redis = RedisServer::start();
    let port = redis.port;
    let extra = format!(
        "[[limits]]\nrequests = 6\nper = \"20s\"\n[admission]\non_limit = \"reject\"\n{}",
        store(&redis.url(), "local", 2)
    );
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = BinProxy::start(da.path(), &up, &extra);
    let b = BinProxy::start(db.path(), &up, &extra);
    let c = client();
    for i in 0..3 {
        assert_eq!(get(&c, &a.url(&format!("/v1/one/a{i}"))).await.status, 200);
        assert_eq!(get(&c, &b.url(&format!("/v1/one/b{i}"))).await.status, 200);
    }
    redis.stop();
    let _redis = RedisServer::start_on(port);
    // Straight away, both replicas at once: Redis has nothing of the first burst.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url(&format!("/v1/two/{i}"))
            } else {
                b.url(&format!("/v1/two/{i}"))
            };
            let c = c.clone();
            tokio::spawn(async move { get(&c, &url).await.status.as_u16() })
        })
        .collect();
    for h in calls {
        assert_ne!(h.await.unwrap(), 200);
    }
    let all = up.arrivals("/v1/");
    assert_eq!(
        most_in_any_window(&all, Duration::from_secs(20)),
        6,
        "upstream saw {} calls",
        all.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_an_acl_user_and_a_ca_file() {
    let up = MockUpstream::start().await;
    let pki = TestPki::new();
    let port = support::free_port().port();
    let p = |x: &std::path::Path| x.display().to_string();
    let args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &p(&pki.cert_path()),
        "--tls-key-file",
        &p(&pki.key_path()),
        "--tls-ca-cert-file",
        &p(&pki.ca_path()),
        "--tls-auth-clients",
        "no",
        "--user",
        "default",
        "off",
        "--user",
        "app",
        "on",
        ">s3cret-pw",
        "~*",
        "&*",
        "+@all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _redis = RedisServer::start_with(port, &args);
    let url = format!("rediss://app:s3cret-pw@localhost:{port}");
    let ca = format!("ca_file = \"{}\"\n", pki.ca_path().display());
    let extra = format!(
        "[[limits]]\nrequests = 2\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n{}{ca}",
        store(&url, "reject", 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &extra);
    let c = client();
    assert_eq!(codes(&c, &proxy, "/v1/tls", 3).await, [200, 200, 429]);

    // `check`: the good settings pass; a wrong password, or TLS without the
    // CA, fail with a clear message that never shows the password.
    let cfg = dir.path().join("config.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let run = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
            .args(["--config", &cfg.display().to_string(), "check"])
            .env("TEST_DASTRA_KEY", support::DASTRA_KEY)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), all)
    };
    let (code, out) = run(good.clone());
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("s3cret-pw"), "{out}");
    let (code, out) = run(good.replace("s3cret-pw", "wr0ng-pw"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("WRONGPASS") || out.contains("uthentication"),
        "{out}"
    );
    assert!(!out.contains("wr0ng-pw"), "{out}");
    let (code, out) = run(good.replace(&ca, ""));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("certificate") || out.contains("TLS"), "{out}");

    // And the proxy refuses to start with the wrong password.
    drop(proxy);
    std::fs::write(&cfg, good.replace("s3cret-pw", "wr0ng-pw")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dastra-proxy"))
        .args(["--config", &cfg.display().to_string()])
        .env("TEST_DASTRA_KEY", support::DASTRA_KEY)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("store.url") && !err.contains("wr0ng-pw"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_holds_the_quota() {
    let up = MockUpstream::start().await;
    let ports: Vec<u16> = (0..3).map(|_| support::free_port().port()).collect();
    let _nodes: Vec<RedisServer> = ports
        .iter()
        .map(|port| {
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            RedisServer::start_with(*port, &args)
        })
        .collect();
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for port in &ports {
        create.arg(format!("127.0.0.1:{port}"));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli is installed (scripts/test installs redis-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every node must see the whole slot map before the proxy starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in &ports {
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let url = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        ports[0], ports[1]
    );
    let extra = format!(
        "[[limits]]\nrequests = 3\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n{}",
        store(&url, "reject", 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &extra);
    let c = client();
    assert_eq!(
        codes(&c, &proxy, "/v1/cluster", 4).await,
        [200, 200, 200, 429]
    );
    let q = get(&c, &format!("http://{}/quota", proxy.admin))
        .await
        .json();
    assert_eq!(q["windows"][0]["used"], 3, "{q}");
}
