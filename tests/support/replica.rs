//! One Redis-mode replica (the binary) with its upstream, its Redis and a
//! client, and how its work is judged: the process's own CPU time, Redis'
//! failed contacts, a call held in the queue.

use std::time::Duration;

use super::{client, get, scrape, wait_metric, BinProxy, MockUpstream, RedisServer, TestClient};

/// Calls wait for their slot (up to a minute) unless a test says otherwise.
pub const QUEUE: &str = "on_limit = \"queue\"\nmax_wait = \"60s\"";

pub fn config(redis: &RedisServer, limit: u32, on_error: &str, admission: &str) -> String {
    format!(
        "[[limits]]\nrequests = {limit}\nper = \"30s\"\n[admission]\nmargin = \"0s\"\n{admission}\n\
         [store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-wait\"\non_error = \"{on_error}\"\nreplicas = 1\n",
        redis.url()
    )
}

/// One replica (the binary) of `config`, its upstream, its Redis and a client.
pub struct Replica {
    pub up: MockUpstream,
    pub redis: RedisServer,
    pub proxy: BinProxy,
    pub c: TestClient,
    pub _dir: tempfile::TempDir,
}

pub async fn replica(limit: u32, on_error: &str, admission: &str) -> Replica {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &config(&redis, limit, on_error, admission));
    Replica {
        up,
        redis,
        proxy,
        c: client(),
        _dir: dir,
    }
}

/// CPU time the process has used (user and system), from /proc; the
/// kernel reports it in USER_HZ ticks, 100 a second.
pub fn cpu(proxy: &BinProxy) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", proxy.pid())).unwrap();
    // Fields after the command's closing parenthesis: state is field 3,
    // utime and stime fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// CPU time used over `span` of wall time. A releaser in a loop spends the
/// whole span on a core; a sleeping one next to nothing.
pub async fn cpu_over(proxy: &BinProxy, span: Duration) -> Duration {
    let before = cpu(proxy);
    tokio::time::sleep(span).await;
    cpu(proxy) - before
}

/// Failed contacts with Redis so far, all operations together.
pub async fn store_errors(c: &TestClient, p: &BinProxy) -> f64 {
    scrape(c, p.admin)
        .await
        .lines()
        .filter(|l| l.starts_with("dastra_proxy_store_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub const QUIET: Duration = Duration::from_millis(300);

pub async fn ok(c: &TestClient, p: &BinProxy, path: &str) {
    assert_eq!(get(c, &p.url(path)).await.status, 200, "{path}");
}

/// Spawns a call that will wait in the queue, and returns once it does.
pub async fn queue_one(
    c: &TestClient,
    p: &BinProxy,
    path: &str,
) -> tokio::task::JoinHandle<super::Reply> {
    let call = {
        let (c, url) = (c.clone(), p.url(path));
        tokio::spawn(async move { get(&c, &url).await })
    };
    // One quota key: the gauge's one sample is its queue.
    wait_metric(c, p.admin, "dastra_proxy_queue_depth", 1.0).await;
    call
}
