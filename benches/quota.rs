//! The in-process cost of one admission decision with Dastra's two windows.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dastra_proxy::config::Limit;
use dastra_proxy::quota::WindowSet;
use tokio::time::Instant;

fn decisions(c: &mut Criterion) {
    let t0 = Instant::now();
    let step = Duration::from_millis(120);

    // Steady state: both logs are full, every decision pops one entry and pushes one.
    c.bench_function("decide: admit with full logs (2 windows)", |b| {
        let mut ws = WindowSet::new(&Limit::dastra(), Duration::from_millis(250));
        let mut now = t0;
        b.iter(|| {
            now += step;
            black_box(ws.try_admit(black_box(now))).ok();
        })
    });

    c.bench_function("decide: refuse (window full)", |b| {
        let mut ws = WindowSet::new(&Limit::dastra(), Duration::from_millis(250));
        for _ in 0..500 {
            ws.try_admit(t0).unwrap();
        }
        b.iter(|| black_box(ws.try_admit(black_box(t0 + Duration::from_secs(1)))))
    });

    c.bench_function("decide: through Admission (lock + windows + permit)", |b| {
        let rt = runtime();
        // Two windows far above what one core can send: every call is admitted,
        // so this measures the lock, the decision and the permit round trip.
        let (limits, cfg) = (open_limits(), reject());
        let a = rt.block_on(async { dastra_proxy::admission::Admission::new(&limits, &cfg) });
        acquire_and_send(b, &rt, &a);
    });

    // The same with the memory store's state file: each send is one pwrite of
    // its reservation and one of its landing (page cache; fsync is elsewhere).
    c.bench_function(
        "decide: through Admission + state file (reserve + land)",
        |b| {
            let rt = runtime();
            let limits = open_limits();
            let dir = tempfile::tempdir().unwrap();
            let (file, _) =
                dastra_proxy::state_file::StateFile::open(&dir.path().join("bench.state"), 10_000)
                    .unwrap();
            let persist = dastra_proxy::admission::Persist {
                file,
                key: 0,
                metrics: dastra_proxy::metrics::Metrics::new(),
            };
            let a = rt.block_on(async {
                dastra_proxy::admission::Admission::with_state(&limits, &reject(), persist, &[])
            });
            acquire_and_send(b, &rt, &a);
        },
    );

    // A shared gateway: 20 clients of three priorities, 4 holding reserves,
    // the credential split into their parts and the rest. Each call takes
    // its part (reserve or rest) and then the credential's slot: what the
    // admission stage does per call of a split credential.
    c.bench_function(
        "decide: 20 clients, priorities, reserves (part + credential)",
        |b| {
            let rt = runtime();
            let limits = open_limits();
            let split = dastra_proxy::config::Split {
                credential: "default".into(),
                rest: limits
                    .iter()
                    .map(|l| Limit {
                        requests: l.requests / 5,
                        ..l.clone()
                    })
                    .collect(),
                reserves: (0..4)
                    .map(|i| {
                        let part = limits.iter().map(|l| Limit {
                            requests: l.requests / 5,
                            ..l.clone()
                        });
                        (format!("client{i}"), part.collect())
                    })
                    .collect(),
            };
            let quotas = rt.block_on(async {
                let q = dastra_proxy::admission::Quotas::new(&limits, &reject(), None, None, None)
                    .unwrap();
                q.set_splits(&[split], &reject()).unwrap();
                q
            });
            let key = dastra_proxy::credential::QuotaKey([0; 32]);
            let credential = quotas.get(key, None).unwrap();
            let callers: Vec<_> = (0..20u8)
                .map(|i| dastra_proxy::admission::Caller {
                    name: format!("client{i}").into(),
                    weight: 1,
                    wait: None,
                    priority: i % 3,
                })
                .collect();
            let mut i = 0;
            b.iter(|| {
                let caller = &callers[i % 20];
                i += 1;
                black_box(rt.block_on(async {
                    let shares = quotas.shares(&caller.name, "default").unwrap();
                    let (part, _) = shares.acquire(caller).await.unwrap();
                    let p = credential.acquire(caller).await.unwrap();
                    (part.sent(), p.sent())
                }));
            })
        },
    );
}

/// One admission and send per iteration (the permit lands when dropped).
fn acquire_and_send(
    b: &mut criterion::Bencher<'_>,
    rt: &tokio::runtime::Runtime,
    a: &dastra_proxy::admission::Admission,
) {
    let caller = dastra_proxy::admission::Caller {
        name: "bench".into(),
        weight: 1,
        wait: None,
        priority: dastra_proxy::admission::NORMAL,
    };
    b.iter(|| {
        let p = rt.block_on(a.acquire(&caller));
        black_box(p.map(|p| p.sent()).ok());
    })
}

/// A current-thread runtime with time, for one benchmark.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn open_limits() -> [Limit; 2] {
    [
        Limit {
            requests: 1_000_000,
            per: Duration::from_millis(1),
            name: "1ms".into(),
        },
        Limit {
            requests: 2_000_000,
            per: Duration::from_millis(2),
            name: "2ms".into(),
        },
    ]
}

fn reject() -> dastra_proxy::config::AdmissionConfig {
    dastra_proxy::config::AdmissionConfig {
        on_limit: dastra_proxy::config::OnLimit::Reject,
        max_queue: 0,
        max_wait: Duration::ZERO,
        margin: Duration::ZERO,
        upstream_429: dastra_proxy::config::Upstream429::Pause,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: std::time::Duration::from_secs(10),
    }
}

criterion_group!(benches, decisions);
criterion_main!(benches);
