//! The Redis script decides exactly as the in-memory engine does.

mod support;

use std::time::Duration;

use dastra_proxy::config::Limit;
use dastra_proxy::quota::WindowSet;
use dastra_proxy::store::{Decision, RedisStore};
use support::RedisServer;
use tokio::time::Instant;

/// A small deterministic generator, so a failing sequence can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn lua_script_and_memory_engine_agree_on_every_decision() {
    let redis = RedisServer::start();
    for seed in 0..24u64 {
        let mut rng = Lcg(seed);
        let limits: Vec<Limit> = (0..1 + rng.next(3))
            .map(|i| Limit {
                requests: 1 + rng.next(6) as u32,
                per: Duration::from_millis(50 + rng.next(400)),
                name: format!("w{i}"),
            })
            .collect();
        let margin = Duration::from_millis(rng.next(20));
        let store = RedisStore::new(
            &redis.url(),
            "t",
            &format!("seed{seed}"),
            &limits,
            margin,
            Duration::from_secs(600),
        )
        .unwrap();
        let mut mem = WindowSet::new(&limits, margin);
        let t0 = Instant::now();
        let base_us: u64 = 1_700_000_000_000_000;
        let mut ms = 0u64;
        let mut in_flight: Vec<String> = Vec::new();
        for step in 0..80 {
            ms += rng.next(60);
            let now = t0 + Duration::from_millis(ms);
            let now_us = Some(base_us + ms * 1000);
            match rng.next(3) {
                0 | 1 => {
                    let member = store.member();
                    let remote = store.reserve_at(&member, now_us).await.unwrap();
                    let at = mem.next_admit(now);
                    let local = if at <= now {
                        mem.reserve(now);
                        Decision::Admitted
                    } else {
                        Decision::Wait(at - now)
                    };
                    assert_eq!(
                        remote, local,
                        "seed {seed} step {step} at {ms} ms, limits {limits:?}"
                    );
                    if remote == Decision::Admitted {
                        in_flight.push(member);
                    }
                }
                _ if !in_flight.is_empty() => {
                    let m = in_flight.remove(rng.next(in_flight.len() as u64) as usize);
                    if rng.next(4) == 0 {
                        store.run("release", &m, now_us, None).await.unwrap();
                        mem.release();
                    } else {
                        store.land(&m, now_us).await.unwrap();
                        mem.land(now);
                    }
                }
                _ => {}
            }
        }
    }
}
