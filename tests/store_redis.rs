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
        .unwrap()
        .with_settle(Duration::ZERO);
        let mut mem = WindowSet::new(&limits, margin);
        let t0 = Instant::now();
        let base_us: u64 = 1_700_000_000_000_000;
        let mut ms = 0u64;
        let mut in_flight: Vec<u64> = Vec::new();
        for step in 0..80 {
            ms += rng.next(60);
            let now = t0 + Duration::from_millis(ms);
            let now_us = Some(base_us + ms * 1000);
            match rng.next(3) {
                0 | 1 => {
                    let id = store.next_id();
                    let remote = store.reserve(id, 0, now_us).await.unwrap();
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
                        in_flight.push(id);
                    }
                }
                _ if !in_flight.is_empty() => {
                    let m = in_flight.remove(rng.next(in_flight.len() as u64) as usize);
                    if rng.next(4) == 0 {
                        store.release(m, now_us).await.unwrap();
                        mem.release();
                    } else {
                        store.land(m, now_us).await.unwrap();
                        mem.land(now);
                    }
                }
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn a_send_landing_after_its_reservation_expired_still_counts() {
    let redis = RedisServer::start();
    let limits = [Limit {
        requests: 1,
        per: Duration::from_secs(1),
        name: "1s".into(),
    }];
    let flight = Duration::from_secs(2);
    let store = RedisStore::new(&redis.url(), "t", "late", &limits, Duration::ZERO, flight)
        .unwrap()
        .with_settle(Duration::ZERO);
    let t0: u64 = 1_700_000_000_000_000;
    let late = store.next_id();
    assert_eq!(
        store.reserve(late, 0, Some(t0)).await.unwrap(),
        Decision::Admitted
    );
    // Past flight + span: the reservation has aged out, and a decision prunes it.
    let t1 = t0 + 3_500_000;
    let other = store.next_id();
    assert_eq!(
        store.reserve(other, 0, Some(t1)).await.unwrap(),
        Decision::Admitted
    );
    store.release(other, Some(t1)).await.unwrap();
    // Its answer arrives now: the send counts from here.
    store.land(late, Some(t1)).await.unwrap();
    assert_eq!(
        store
            .reserve(store.next_id(), 0, Some(t1 + 500_000))
            .await
            .unwrap(),
        Decision::Wait(Duration::from_millis(500)),
        "the late landing fills the window"
    );
}

/// A replica's `RateLimit` field in Redis mode is the script's latest reply
/// about the key, aged to the moment it is asked: nothing before the first
/// reply, then what is left and when the window frees, counting down.
#[tokio::test]
async fn the_ratelimit_field_is_the_latest_reply_aged_to_now() {
    let redis = RedisServer::start();
    let limits = [Limit {
        requests: 3,
        per: Duration::from_secs(10),
        name: "10s".into(),
    }];
    let store = store_with(&redis, "fields", &limits);
    assert_eq!(store.ratelimit_value(Instant::now()), None, "no reply yet");
    let t0: u64 = 1_700_000_000_000_000;
    for _ in 0..2 {
        let id = store.next_id();
        assert_eq!(
            store.reserve(id, 0, Some(t0)).await.unwrap(),
            Decision::Admitted
        );
        store.land(id, Some(t0)).await.unwrap();
    }
    let now = Instant::now();
    assert_eq!(
        store.ratelimit_value(now).as_deref(),
        Some("\"10s\";r=1;t=10")
    );
    assert_eq!(
        store
            .ratelimit_value(now + Duration::from_millis(4_500))
            .as_deref(),
        Some("\"10s\";r=1;t=6"),
        "aged: the window frees 4.5 s sooner"
    );
}

/// A replica that learned "full until T" answers refusals itself, but its
/// own refund and a reload make it ask Redis again: the freed (or added)
/// slot is used at once, not at T.
#[tokio::test]
async fn a_refund_or_a_reload_makes_the_replica_ask_again() {
    let redis = RedisServer::start();
    let one = |n: u32| {
        [Limit {
            requests: n,
            per: Duration::from_secs(10),
            name: "10s".into(),
        }]
    };
    let store = store_with(&redis, "known", &one(1));
    let first = store.next_id();
    assert_eq!(
        store.reserve(first, 0, None).await.unwrap(),
        Decision::Admitted
    );
    assert!(matches!(
        store.reserve(store.next_id(), 0, None).await.unwrap(),
        Decision::Wait(_)
    ));
    // Never sent: its slot is free again, and this replica knows it.
    store.release(first, None).await.unwrap();
    let second = store.next_id();
    assert_eq!(
        store.reserve(second, 0, None).await.unwrap(),
        Decision::Admitted,
        "the refunded slot, at once"
    );
    store.land(second, None).await.unwrap();
    assert!(matches!(
        store.reserve(store.next_id(), 0, None).await.unwrap(),
        Decision::Wait(_)
    ));
    // A reload to two calls per window: the second slot, at once.
    store.reconfigure(&one(2), Duration::ZERO);
    assert_eq!(
        store.reserve(store.next_id(), 0, None).await.unwrap(),
        Decision::Admitted,
        "the reload's new slot, at once"
    );
}

fn store_of(redis: &RedisServer, key: &str, n: u32) -> RedisStore {
    let limits = [Limit {
        requests: n,
        per: Duration::from_secs(10),
        name: "10s".into(),
    }];
    store_with(redis, key, &limits)
}

/// A key's store with `limits`, no margin, and no settle after a new epoch
/// (one replica, or replicas that all write back at once).
fn store_with(redis: &RedisServer, key: &str, limits: &[Limit]) -> RedisStore {
    RedisStore::new(
        &redis.url(),
        "t",
        key,
        limits,
        Duration::ZERO,
        Duration::from_secs(600),
    )
    .unwrap()
    .with_settle(Duration::ZERO)
}

/// Told "no slot before T", a replica answers the calls that follow
/// itself until T: a flood against a full window costs Redis nothing.
#[tokio::test]
async fn a_replica_that_knows_the_window_full_answers_itself() {
    let redis = RedisServer::start();
    let store = store_of(&redis, "quiet", 1);
    assert_eq!(
        store.reserve(store.next_id(), 0, None).await.unwrap(),
        Decision::Admitted
    );
    assert!(matches!(
        store.reserve(store.next_id(), 0, None).await.unwrap(),
        Decision::Wait(_)
    ));
    let runs = redis.script_runs();
    for _ in 0..20 {
        match store.reserve(store.next_id(), 0, None).await.unwrap() {
            Decision::Wait(d) => assert!(d > Duration::from_secs(9), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(redis.script_runs(), runs, "answered without Redis");
}

/// A pause another replica set after Dastra's 429 is heard on this one's
/// next check: its length, and a `RateLimit` of nothing left until it ends.
#[tokio::test]
async fn a_pause_set_by_another_replica_is_heard_on_the_next_check() {
    let redis = RedisServer::start();
    let (a, b) = (store_of(&redis, "pz", 5), store_of(&redis, "pz", 5));
    assert_eq!(a.check().await.unwrap(), Duration::ZERO);
    assert_eq!(a.paused_until(Instant::now()), None);
    b.pause(Duration::from_secs(3)).await.unwrap();
    let left = a.check().await.unwrap();
    assert!(
        left > Duration::from_millis(2_500) && left <= Duration::from_secs(3),
        "{left:?}"
    );
    let now = Instant::now();
    let until = a.paused_until(now).expect("paused");
    assert!(until > now + Duration::from_millis(2_500), "{until:?}");
    assert_eq!(a.ratelimit_value(now).as_deref(), Some("\"10s\";r=0;t=3"));
    assert_eq!(a.paused_until(now + Duration::from_secs(4)), None, "over");
}

/// Redis flushed: the replica writes back the sends it made that still
/// count before anyone is admitted again, so the window holds them.
#[tokio::test]
async fn sends_redis_lost_are_written_back_before_the_next_decision() {
    let redis = RedisServer::start();
    let store = store_of(&redis, "lost", 3);
    for _ in 0..2 {
        let id = store.next_id();
        assert_eq!(
            store.reserve(id, 0, None).await.unwrap(),
            Decision::Admitted
        );
        store.land(id, None).await.unwrap();
    }
    redis.cli(&["FLUSHALL"]);
    assert_eq!(
        store.reserve(store.next_id(), 0, None).await.unwrap(),
        Decision::Admitted,
        "the window's third slot"
    );
    assert!(
        matches!(
            store.reserve(store.next_id(), 0, None).await.unwrap(),
            Decision::Wait(_)
        ),
        "the two sends before the flush still count"
    );
}

/// Sends a replica made on its own share while Redis was unreachable are
/// written back once it answers: a landed one counts, one that never
/// reached Dastra does not.
#[tokio::test]
async fn sends_made_without_redis_are_written_back_as_they_ended() {
    let redis = RedisServer::start();
    let store = store_of(&redis, "local", 3);
    let (landed, refunded) = (store.next_id(), store.next_id());
    store.sent_locally(landed);
    store.sent_locally(refunded);
    store.finished_locally(landed, true);
    store.finished_locally(refunded, false);
    let admitted = |d: Decision| d == Decision::Admitted;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(admitted(
            store.reserve(store.next_id(), 0, None).await.unwrap(),
        ));
    }
    assert_eq!(
        got,
        [true, true, false],
        "the landed local send takes one of 3"
    );
}

/// A replica with sends that may still count asks Redis a heartbeat after
/// it last heard from it (a lost key is found within one); one with none
/// never asks.
#[tokio::test]
async fn a_replica_watches_redis_only_while_its_sends_count() {
    let redis = RedisServer::start();
    let store = store_of(&redis, "watch", 3);
    let now = Instant::now();
    assert_eq!(store.watch_due(now), None, "nothing sent: nothing to watch");
    let id = store.next_id();
    assert_eq!(
        store.reserve(id, 0, None).await.unwrap(),
        Decision::Admitted
    );
    store.land(id, None).await.unwrap();
    let heard = Instant::now();
    let due = store
        .watch_due(heard)
        .expect("a send that counts is watched");
    assert!(
        due > heard && due <= heard + dastra_proxy::store::HEARTBEAT,
        "a heartbeat after the last reply: {:?}",
        due - heard
    );
    assert_eq!(
        store.watch_due(heard + Duration::from_secs(11)),
        None,
        "out of the window: nothing to watch"
    );
}

/// Redis lost the sends key alone (its epoch kept): the replica notices on
/// its next decision, since its newest landed send is missing, and writes
/// its sends back before deciding. A send already near its window's end is
/// not asked about (Redis may have trimmed it): no false alarm, no
/// write-back.
#[tokio::test]
async fn a_sends_key_lost_alone_is_noticed_by_the_newest_landed_send() {
    let redis = RedisServer::start();
    let limits = [Limit {
        requests: 2,
        per: Duration::from_millis(600),
        name: "600ms".into(),
    }];
    let store = store_with(&redis, "alone", &limits);
    let id = store.next_id();
    assert_eq!(
        store.reserve(id, 0, None).await.unwrap(),
        Decision::Admitted
    );
    store.land(id, None).await.unwrap();
    redis.cli(&["DEL", "{t:alone}:sends"]);
    assert_eq!(
        store.reserve(store.next_id(), 0, None).await.unwrap(),
        Decision::Admitted
    );
    assert!(
        matches!(
            store.reserve(store.next_id(), 0, None).await.unwrap(),
            Decision::Wait(_)
        ),
        "the landed send was written back: it still counts"
    );
    // Past half the window, the newest landed send is no longer asked
    // about: another replica's admission may have trimmed it from Redis,
    // and its absence is no loss.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let other = store_with(&redis, "alone", &limits);
    assert_eq!(
        other.reserve(other.next_id(), 0, None).await.unwrap(),
        Decision::Admitted
    );
    let runs = redis.script_runs();
    store.reserve(store.next_id(), 0, None).await.unwrap();
    assert_eq!(redis.script_runs(), runs + 1, "one decision, no write-back");
}
