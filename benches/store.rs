//! Decisions per second and latency through Redis against the in-memory
//! engine, in one run: `cargo bench --bench store` (starts its own
//! redis-servers on free loopback ports: plain, TLS, and a 3-node Cluster).
// Wall-clock latency of real Redis round trips is what this bench measures:
// std::time::Instant is the right clock here, unlike in the proxy and its tests.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dastra_proxy::admission::{Admission, Caller};
use dastra_proxy::config::{AdmissionConfig, Limit, OnLimit, Upstream429};
use dastra_proxy::store::{Decision, RedisLink, RedisStore};

fn limits() -> Vec<Limit> {
    // Far above what is sent: every decision admits, as in normal operation.
    vec![
        Limit {
            requests: 10_000_000,
            per: Duration::from_secs(60),
            name: "1m".into(),
        },
        Limit {
            requests: 20_000_000,
            per: Duration::from_secs(600),
            name: "10m".into(),
        },
    ]
}

fn report(name: &str, mut lat: Vec<Duration>, wall: Duration) -> f64 {
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    let rate = lat.len() as f64 / wall.as_secs_f64();
    println!(
        "{name:<36}{rate:>12.0}/s   p50 {:>7.1} µs   p99 {:>7.1} µs",
        p(0.5),
        p(0.99)
    );
    rate
}

/// A redis-server on a free loopback port with `args` added; killed on drop.
struct Server {
    child: std::process::Child,
    /// Where it may write (cluster nodes keep their config there).
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server(args: &[String]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    std::thread::sleep(Duration::from_millis(300));
    Server { child, _dir: dir }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A TLS-only server with a certificate for 127.0.0.1 made here; returns its CA (PEM).
fn tls_server(port: u16) -> (Server, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("leaf.pem"), dir.path().join("leaf.key"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let s = server(&strings(&[
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert.display().to_string(),
        "--tls-key-file",
        &key.display().to_string(),
        "--tls-auth-clients",
        "no",
    ]));
    (s, ca.pem().into_bytes())
}

/// Three cluster nodes joined by `redis-cli --cluster create`.
fn cluster(ports: &[u16]) -> Vec<Server> {
    let nodes = ports
        .iter()
        .map(|p| {
            server(&strings(&[
                "--port",
                &p.to_string(),
                "--cluster-enabled",
                "yes",
            ]))
        })
        .collect();
    let mut create = Command::new("redis-cli");
    create.args(["--cluster", "create"]);
    for p in ports {
        create.arg(format!("127.0.0.1:{p}"));
    }
    let ok = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(ok.success());
    std::thread::sleep(Duration::from_secs(2));
    nodes
}

/// Sequential reserve + land, then 16 callers reserving at once.
async fn redis_rows(name: &str, url: &str, ca: Option<Vec<u8>>) -> f64 {
    let link = RedisLink::new(url, ca).unwrap();
    let store = RedisStore::with_link(
        link,
        "bench",
        name,
        &limits(),
        Duration::from_millis(250),
        Duration::from_secs(65),
    )
    .with_settle(Duration::ZERO);
    store.reserve(store.next_id(), 0, None).await.unwrap();
    let n = 3_000;
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for _ in 0..n {
        let s = Instant::now();
        let m = store.next_id();
        assert_eq!(store.reserve(m, 0, None).await.unwrap(), Decision::Admitted);
        store.land(m, None).await.unwrap();
        lat.push(s.elapsed());
    }
    let rate = report(&format!("{name}: reserve + land"), lat, t.elapsed());
    let store = std::sync::Arc::new(store);
    let t = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for _ in 0..500 {
                    let s = Instant::now();
                    store.reserve(store.next_id(), 0, None).await.unwrap();
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    report(&format!("{name}: reserve, 16 at once"), lat, t.elapsed());
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds benches; this one needs servers.
    }
    let port = free_port();
    let _plain = server(&strings(&["--port", &port.to_string()]));
    let tls_port = free_port();
    let (_tls, ca) = tls_server(tls_port);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _cluster = cluster(&ports);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = AdmissionConfig {
            on_limit: OnLimit::Reject,
            max_queue: 0,
            max_wait: Duration::ZERO,
            margin: Duration::from_millis(250),
            upstream_429: Upstream429::Pause,
            flight: Duration::from_secs(5),
            dry_run: false,
            aging: std::time::Duration::from_secs(10),
        };
        let memory = Admission::new(&limits(), &cfg);
        let caller = Caller {
            name: "bench".into(),
            weight: 1,
            wait: None,
            priority: dastra_proxy::admission::NORMAL,
        };
        let n = 20_000;
        let mut lat = Vec::with_capacity(n);
        let t = Instant::now();
        for _ in 0..n {
            let s = Instant::now();
            drop(memory.acquire(&caller).await.unwrap().sent());
            lat.push(s.elapsed());
        }
        let mem = report("memory: reserve + land", lat, t.elapsed());

        let red = redis_rows("redis", &format!("redis://127.0.0.1:{port}"), None).await;
        let tls = redis_rows(
            "rediss",
            &format!("rediss://127.0.0.1:{tls_port}"),
            Some(ca),
        )
        .await;
        let clu = redis_rows(
            "redis+cluster",
            &format!("redis+cluster://127.0.0.1:{}", ports[0]),
            None,
        )
        .await;
        println!("\nrediss / redis (sequential): {:.3}", tls / red);
        println!("redis+cluster / redis (sequential): {:.3}", clu / red);
        println!(
            "\nredis / memory decisions per second (sequential): {:.4}",
            red / mem
        );
    });
}
