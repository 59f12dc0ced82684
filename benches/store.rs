//! Decisions per second and latency through Redis against the in-memory
//! engine, in one run: `cargo bench --bench store` (starts its own
//! redis-server on a free loopback port).
// Wall-clock latency of real Redis round trips is what this bench measures:
// std::time::Instant is the right clock here, unlike in the proxy and its tests.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dastra_proxy::admission::{Admission, Caller};
use dastra_proxy::config::{AdmissionConfig, Limit, OnLimit, Upstream429};
use dastra_proxy::store::{Decision, RedisStore};

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
        "{name:<28}{rate:>12.0}/s   p50 {:>7.1} µs   p99 {:>7.1} µs",
        p(0.5),
        p(0.99)
    );
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds benches; this one needs a server.
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    std::thread::sleep(Duration::from_millis(300));
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
        };
        let memory = Admission::new(&limits(), &cfg);
        let caller = Caller {
            name: "bench".into(),
            weight: 1,
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

        let store = RedisStore::new(
            &format!("redis://127.0.0.1:{port}"),
            "bench",
            "k",
            &limits(),
            Duration::from_millis(250),
            Duration::from_secs(65),
        )
        .unwrap();
        store.reserve(&store.member()).await.unwrap();
        let n = 5_000;
        let mut lat = Vec::with_capacity(n);
        let t = Instant::now();
        for _ in 0..n {
            let s = Instant::now();
            let m = store.member();
            assert_eq!(store.reserve(&m).await.unwrap(), Decision::Admitted);
            store.land(&m, None).await.unwrap();
            lat.push(s.elapsed());
        }
        let red = report("redis: reserve + land", lat, t.elapsed());

        let store = std::sync::Arc::new(store);
        let t = Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for _ in 0..1_000 {
                        let s = Instant::now();
                        store.reserve(&store.member()).await.unwrap();
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
        report("redis: reserve, 16 at once", lat, t.elapsed());
        println!(
            "\nredis / memory decisions per second (sequential): {:.4}",
            red / mem
        );
    });
    let _ = redis.kill();
    let _ = redis.wait();
}
