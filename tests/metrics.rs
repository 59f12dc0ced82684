//! Metrics as SPEC §6 names them: promtool accepts them, counters move for
//! each refusal, and every PromQL query of the Grafana dashboard returns data
//! from a real Prometheus scraping the proxy under load.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use http::Method;
use support::*;

const LOAD: &str =
    "[[limits]]\nrequests = 5\nper = \"300ms\"\n[admission]\nmax_queue = 6\nmargin = \"10ms\"\n";

/// [`LOAD`] with one client that has windows of its own (`[[clients.limits]]`)
/// and one holding a reserve that never calls.
fn load_with_client() -> String {
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(LOAD_KEY.as_bytes()));
    format!(
        "{LOAD}[[clients]]\nname = \"load\"\nkey_sha256 = \"{digest}\"\n\
         [[clients.limits]]\nrequests = 1000\nper = \"1m\"\n\
         [[clients]]\nname = \"form\"\nkey_sha256 = \"{}\"\nreserve = 0.2\n",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            b"metrics-form-client-key-2"
        ))
    )
}

const LOAD_KEY: &str = "metrics-load-client-key-01";

/// 30 calls at once against 5 per 300 ms with room for 6 in the queue: some
/// go at once, some wait, the rest are refused with queue_full.
async fn load(proxy: &TestProxy, key: &'static [(&'static str, &'static str)]) {
    let c = client();
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let (c, url) = (c.clone(), proxy.url(&format!("/v1/m/{i}")));
            tokio::spawn(async move {
                let r = send(&c, Method::GET, &url, key, Body::empty()).await;
                r.status.as_u16()
            })
        })
        .collect();
    let mut codes = Vec::new();
    for call in calls {
        codes.push(call.await.unwrap());
    }
    assert!(codes.contains(&200) && codes.contains(&429), "{codes:?}");
    let _ = send(
        &c,
        Method::GET,
        &proxy.url("/status/503"),
        key,
        Body::empty(),
    )
    .await;
    // Dastra's own count, as an answer's X-RateLimit headers say it.
    let _ = send(
        &c,
        Method::GET,
        &proxy.url("/ratelimit/x/50/1"),
        key,
        Body::empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition_and_counters_move() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, LOAD).await;
    load(&proxy, &[]).await;
    let text = get(&client(), &proxy.admin_url("/metrics")).await.body;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus)");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );

    let m = String::from_utf8_lossy(&text);
    let value = |series: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{m}"))
    };
    let ok =
        value("dastra_proxy_requests_total{client=\"anonymous\",method=\"GET\",status=\"200\"}");
    let full = value("dastra_proxy_rejected_total{client=\"anonymous\",code=\"queue_full\"}");
    let queued = value("dastra_proxy_queue_wait_seconds_count{client=\"anonymous\"}");
    // 30 calls of the load and its last GET (Dastra's own count); the 503 aside.
    assert_eq!(ok + full, 31.0, "every call was either served or refused");
    assert!(queued >= 1.0, "some calls waited in the queue");
    assert_eq!(
        value("dastra_proxy_requests_total{client=\"anonymous\",method=\"GET\",status=\"503\"}"),
        1.0
    );
    assert_eq!(
        value("dastra_proxy_window_limit{credential=\"default\",window=\"300ms\"}"),
        5.0
    );
    assert_eq!(value("dastra_proxy_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(m.contains("dastra_proxy_queue_depth{client=\"anonymous\"} 0"));
    proxy.shutdown().await;
}

fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/dastra-proxy.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(out.len() >= 15);
    out
}

/// The query's JSON answer; `null` while Prometheus is still starting (503).
async fn prom_query(c: &TestClient, base: &str, expr: &str) -> serde_json::Value {
    let q: String = url_encode(expr);
    let r = get(c, &format!("{base}/api/v1/query?query={q}")).await;
    serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, &load_with_client()).await;
    let dir = tempfile::tempdir().unwrap();
    let prom_addr = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dastra-proxy\n    static_configs:\n      - targets: [\"{}\"]\n",
            proxy.admin
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prom.log")).unwrap())
        .spawn()
        .expect("prometheus is installed (scripts/test installs Debian's prometheus)");
    let base = format!("http://{prom_addr}");
    let c = client();
    wait_for_port(prom_addr);
    // A scrape before the load and several after, so rate() has points to use.
    let scraped = |n: usize| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            for _ in 0..100 {
                let r = prom_query(&c, &base, "count_over_time(dastra_proxy_build_info[1m])").await;
                if r["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
                    >= n
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("prometheus never scraped the proxy {n} times");
        }
    };
    scraped(1).await;
    load(&proxy, &[("x-api-key", LOAD_KEY)]).await;
    let before = prom_query(&c, &base, "count_over_time(dastra_proxy_build_info[1m])").await;
    let n: usize = before["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    scraped(n + 3).await;

    let mut failures = Vec::new();
    for expr in dashboard_queries() {
        // Series only an instance serving TLS has (this one does not).
        if expr.contains("dastra_proxy_tls_cert_expiry_timestamp_seconds") {
            continue;
        }
        let e = expr
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m");
        let r = prom_query(&c, &base, &e).await;
        let results = r["data"]["result"].as_array().map_or(0, Vec::len);
        if r["status"] != "success" || results == 0 {
            failures.push(format!("{expr}\n  -> {r}"));
        }
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        failures.is_empty(),
        "dashboard queries without data:\n{}",
        failures.join("\n")
    );
    proxy.shutdown().await;
}

/// A quiet instance: the series of known label values exist at 0 from
/// start-up (the dashboard reads 0, not "No data"), and the start time says
/// since when every counter counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_series_exist_at_zero_before_any_call() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let m = String::from_utf8_lossy(&get(&client(), &proxy.admin_url("/metrics")).await.body)
        .into_owned();
    for series in [
        "dastra_proxy_queue_depth{client=\"anonymous\"} 0",
        "dastra_proxy_rejected_total{client=\"anonymous\",code=\"quota_exhausted\"} 0",
        "dastra_proxy_rejected_total{client=\"anonymous\",code=\"queue_full\"} 0",
        "dastra_proxy_rejected_total{client=\"anonymous\",code=\"overloaded\"} 0",
    ] {
        assert!(m.contains(series), "missing {series} in\n{m}");
    }
    let started: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("dastra_proxy_process_start_time_seconds "))
        .expect("process_start_time_seconds")
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 600.0 && started <= now,
        "{started} vs {now}"
    );
    proxy.shutdown().await;
}

/// `/quota` (and the status page's header from it) says when the proxy is
/// degraded, and how long it has been up (every counter is since then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_says_when_the_proxy_is_degraded_and_its_uptime() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let q = get(&client(), &proxy.admin_url("/quota")).await.json();
    assert_eq!(q["degraded"], serde_json::json!([]), "{q}");
    assert!(q["uptime_seconds"].as_f64().unwrap() >= 0.0);
    proxy.shutdown().await;
    // Redis unreachable, falling back to this replica's share.
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\non_error = \"local\"\nreplicas = 1\n",
        free_port().port()
    );
    let proxy = TestProxy::start(&up, &store).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/while-down")).await.status, 200);
    let q = get(&c, &proxy.admin_url("/quota")).await.json();
    let degraded = q["degraded"].to_string();
    assert!(
        degraded.contains("store unreachable: holding this replica's share"),
        "{q}"
    );
    proxy.shutdown().await;
}

/// SPEC §9.4: a panel for every metric. Every family the proxy exposes
/// (right after start-up, before any call) is queried by the dashboard, so
/// a new metric without a panel fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_proxy_exposes_has_a_panel() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let m = get(&client(), &proxy.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let queries = dashboard_queries().join("\n");
    let missing: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !queries.contains(name))
        .collect();
    assert!(missing.is_empty(), "metrics without a panel: {missing:?}");
    proxy.shutdown().await;
}

/// Who spent the quota: `/quota` (and the status page's Clients table) has
/// each client's calls and refusals since start and who waits now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_says_who_used_the_gateway() {
    let (crm, bi) = (
        "crm-client-key-CCCCCCCCCCCCCCCCCCCCCCCCCC",
        "bi-client-key-DDDDDDDDDDDDDDDDDDDDDDDDDDD",
    );
    let extra = format!(
        "[[limits]]\nrequests = 3\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n\
         [[clients]]\nname = \"crm\"\nkey_sha256 = \"{}\"\n[[clients]]\nname = \"bi\"\nkey_sha256 = \"{}\"\n",
        dastra_proxy::access::hash_key(crm),
        dastra_proxy::access::hash_key(bi)
    );
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, &extra).await;
    let c = client();
    for (key, n) in [(crm, 2), (bi, 4)] {
        for i in 0..n {
            let url = proxy.url(&format!("/v1/x/{i}"));
            send(&c, Method::GET, &url, &[("x-api-key", key)], Body::empty()).await;
        }
    }
    let q = get(&c, &proxy.admin_url("/quota")).await.json();
    let cl = &q["clients"];
    assert_eq!(
        cl["crm"],
        serde_json::json!({"calls": 2, "refused": 0, "waiting": 0, "weight": 1, "priority": "normal",
            "windows": [{"window": "1m", "used": 2}]}),
        "{q}"
    );
    assert_eq!(
        cl["bi"],
        serde_json::json!({"calls": 4, "refused": 3, "waiting": 0, "weight": 1, "priority": "normal",
            "windows": [{"window": "1m", "used": 1}]}),
        "{q}"
    );
    // The status page's chart: the window's sends, binned over its period.
    let sends: Vec<u64> = q["windows"][0]["sends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!((sends.len(), sends.iter().sum::<u64>()), (30, 3), "{q}");
    let page = String::from_utf8_lossy(&get(&c, &proxy.admin_url("/")).await.body).into_owned();
    assert!(page.contains("<h2>Clients</h2>") && page.contains("q.clients"));
    assert!(page.contains("<svg class=\"sends\""));
    proxy.shutdown().await;
}
