//! The edges of the quota promise, on tokio's paused clock: each test here
//! kills a mutant `scripts/mutants` found surviving (a key still holding
//! sends forgotten, a pause that ends before the window, the longer of two
//! pauses, a wait of exactly `max_wait`, the fast path refusing what may
//! queue, `max_queue` over every key, the state file not told of a landing
//! or refund).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;
use crate::config::Upstream429;
use crate::credential::QuotaKey;
use crate::quota::test_limits as limits;
use crate::state_file::StateFile;

fn reject() -> AdmissionConfig {
    AdmissionConfig {
        on_limit: OnLimit::Reject,
        max_queue: 10,
        max_wait: Duration::from_secs(30),
        margin: Duration::ZERO,
        upstream_429: Upstream429::Pause,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: std::time::Duration::from_secs(10),
    }
}

fn caller() -> Caller {
    Caller {
        name: "x".into(),
        weight: 1,
        wait: None,
        priority: crate::admission::NORMAL,
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_with_sends_in_its_window_is_never_forgotten_while_the_map_is_full() {
    let q = Quotas::new(
        &limits(&[(2, 1000), (3, 4000)]),
        &reject(),
        Some(KeyBounds {
            max_keys: 2,
            max_keys_per_ip: 2,
        }),
        None,
        None,
    )
    .unwrap();
    let t0 = Instant::now();
    let (a, b, c) = (QuotaKey([1; 32]), QuotaKey([2; 32]), QuotaKey([3; 32]));
    for key in [a, b] {
        let adm = q.get(key, None).unwrap();
        for _ in 0..2 {
            adm.acquire(&caller()).await.unwrap().sent().landed();
        }
    }
    advance(Duration::from_millis(100)).await;
    // A full map of busy keys: the newcomer waits until the first one is
    // empty in *every* window (the 4 s one), not only the shortest.
    match q.get(c, None) {
        Err(Refusal::TooManyKeys { retry_at }) => {
            assert_eq!(retry_at, t0 + Duration::from_millis(4000))
        }
        other => panic!("{other:?}"),
    }
    // Past the short window only: `a` still holds two sends in the long one.
    advance(Duration::from_millis(1000)).await;
    assert!(matches!(q.get(c, None), Err(Refusal::TooManyKeys { .. })));
    // And `a`, asked again, is the same admission with its sends counted.
    {
        let adm = q.get(a, None).unwrap();
        adm.acquire(&caller()).await.unwrap().sent().landed();
        assert!(matches!(
            adm.acquire(&caller()).await,
            Err(Refusal::QuotaExhausted { .. })
        ));
    }
    advance(Duration::from_millis(3000)).await;
    // `b` has emptied (`a` sent again at 1.1 s): the newcomer takes its place.
    assert!(q.get(c, None).is_ok());
    assert_eq!(q.all().len(), 2);
    assert!(
        q.get(a, None).unwrap().acquire(&caller()).await.is_ok(),
        "`a` kept, its 1.1 s send still counted below the 3 in 4 s"
    );
}

/// A pause that ends before the window frees: once it is over (still set,
/// not yet cleared) the full window still decides — no admission, and a
/// refusal names when the window frees, not when the pause ended.
#[tokio::test(start_paused = true)]
async fn a_pause_ending_before_the_window_frees_neither_admits_nor_answers_early() {
    let a = Admission::new(&limits(&[(2, 1000)]), &reject());
    let t0 = Instant::now();
    for _ in 0..2 {
        a.acquire(&caller()).await.unwrap().sent().landed();
    }
    a.pause_until(t0 + Duration::from_millis(100));
    advance(Duration::from_millis(300)).await;
    match a.acquire(&caller()).await {
        Err(Refusal::QuotaExhausted { retry_at }) => {
            assert_eq!(retry_at, t0 + Duration::from_millis(1000))
        }
        other => panic!("{other:?}"),
    }
    match a.try_acquire() {
        Some(Err((Refusal::QuotaExhausted { retry_at }, _))) => {
            assert_eq!(retry_at, t0 + Duration::from_millis(1000))
        }
        other => panic!("{:?}", other.map(|r| r.map(drop))),
    }
}

/// Landings and refunds reach the state file: a restart counts a refunded
/// send as nothing and a landed one from when it landed.
#[tokio::test(start_paused = true)]
async fn landings_and_refunds_reach_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.state");
    {
        let (file, _) = StateFile::open(&path, 16).unwrap();
        let persist = Persist {
            file: file.clone(),
            key: 0,
            metrics: crate::metrics::Metrics::new(),
        };
        let a = Admission::with_state(&limits(&[(5, 60_000)]), &reject(), persist, &[]);
        a.acquire(&caller()).await.unwrap().sent().refund();
        a.acquire(&caller()).await.unwrap().sent().landed();
        a.close();
        drop(a);
        // The releaser task holds the file too until it sees the close.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(Arc::strong_count(&file), 1, "only this test holds the file");
    }
    let (_, mut restored) = StateFile::open(&path, 16).unwrap();
    let ages = restored.take(0);
    assert_eq!(
        ages.len(),
        1,
        "the refunded send does not count after a restart"
    );
}

/// The synchronous fast path answers only what needs no waiting: a full
/// window in queue mode is the slow path's (the call queues), never a refusal.
#[tokio::test(start_paused = true)]
async fn the_fast_path_never_refuses_a_call_that_may_queue() {
    let queue = AdmissionConfig {
        on_limit: OnLimit::Queue,
        ..reject()
    };
    let a = Admission::new(&limits(&[(1, 1000)]), &queue);
    a.try_acquire().unwrap().unwrap().sent().landed();
    assert!(
        a.try_acquire().is_none(),
        "full, queue mode: it must wait, not be refused"
    );
    let r = Admission::new(&limits(&[(1, 1000)]), &reject());
    r.try_acquire().unwrap().unwrap().sent().landed();
    assert!(matches!(
        r.try_acquire(),
        Some(Err((Refusal::QuotaExhausted { .. }, _)))
    ));
}

/// A call that would wait exactly `max_wait` is queued, not refused: it can
/// start in time.
#[tokio::test(start_paused = true)]
async fn a_wait_of_exactly_max_wait_is_queued() {
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_wait: Duration::from_millis(1000),
        ..reject()
    };
    let a = Admission::new(&limits(&[(1, 1000)]), &cfg);
    let t0 = Instant::now();
    a.acquire(&caller()).await.unwrap().sent().landed();
    let p = a.acquire(&caller()).await.expect("queued, then admitted");
    assert_eq!(Instant::now() - t0, Duration::from_millis(1000));
    drop(p);
}

/// Of two pauses ordered by Dastra's 429s, the longer holds, whichever came
/// first.
#[tokio::test(start_paused = true)]
async fn the_longest_pause_holds() {
    let t0 = Instant::now();
    for (first, second) in [(100, 500), (500, 100)] {
        let a = Admission::new(&limits(&[(100, 1000)]), &reject());
        a.pause_until(t0 + Duration::from_millis(first));
        a.pause_until(t0 + Duration::from_millis(second));
        let now = Instant::now();
        advance(Duration::from_millis(200) - (now - t0).min(Duration::from_millis(200))).await;
        match a.acquire(&caller()).await {
            Err(Refusal::UpstreamThrottled { retry_at }) => {
                assert_eq!(
                    retry_at,
                    t0 + Duration::from_millis(500),
                    "{first} then {second}"
                )
            }
            other => panic!("{first} then {second}: {other:?}"),
        }
    }
}

/// `max_queue` bounds the waiting calls of every passthrough key together.
#[tokio::test(start_paused = true)]
async fn max_queue_bounds_every_key_together() {
    let cfg = AdmissionConfig {
        on_limit: OnLimit::Queue,
        max_queue: 1,
        ..reject()
    };
    let bounds = KeyBounds {
        max_keys: 4,
        max_keys_per_ip: 4,
    };
    let q = Quotas::new(&limits(&[(1, 1000)]), &cfg, Some(bounds), None, None).unwrap();
    let (a, b) = (
        q.get(QuotaKey([1; 32]), None).unwrap(),
        q.get(QuotaKey([2; 32]), None).unwrap(),
    );
    a.acquire(&caller()).await.unwrap().sent().landed();
    b.acquire(&caller()).await.unwrap().sent().landed();
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.acquire(&caller()).await.map(drop) })
    };
    tokio::task::yield_now().await;
    assert!(
        matches!(b.acquire(&caller()).await, Err(Refusal::QueueFull { .. })),
        "one call already waits (on another key)"
    );
    advance(Duration::from_millis(1000)).await;
    assert!(waiting.await.unwrap().is_ok());
}

/// Passthrough's key map: a key Dastra rejected makes room first, even with
/// sends in its window; busy keys Dastra accepted never do; the map answers
/// for what it tracks and applies a reload to every key.
#[tokio::test(start_paused = true)]
async fn a_rejected_key_makes_room_first_and_accepted_busy_keys_never_do() {
    let bounds = KeyBounds {
        max_keys: 2,
        max_keys_per_ip: 2,
    };
    let q = Quotas::new(&limits(&[(2, 1000)]), &reject(), Some(bounds), None, None).unwrap();
    let (a, b, c) = (QuotaKey([1; 32]), QuotaKey([2; 32]), QuotaKey([3; 32]));
    for key in [a, b] {
        q.get(key, None)
            .unwrap()
            .acquire(&caller())
            .await
            .unwrap()
            .sent()
            .landed();
    }
    assert!(
        matches!(q.get(c, None), Err(Refusal::TooManyKeys { .. })),
        "both busy, both accepted"
    );
    assert!(q.existing(&a).is_some() && q.existing(&c).is_none());
    assert_eq!(q.all().len(), 2);
    q.existing(&a).unwrap().set_rejected(true);
    assert!(q.get(c, None).is_ok(), "the rejected key made room");
    assert!(q.existing(&a).is_none() && q.existing(&b).is_some());
    // A reload reaches every tracked key: b's two sends now fill a limit of 2
    // still, and a limit of 1 refuses c's second call.
    q.reconfigure(&limits(&[(1, 1000)]), &reject());
    let cq = q.get(c, None).unwrap();
    cq.acquire(&caller()).await.unwrap().sent().landed();
    assert!(matches!(
        cq.acquire(&caller()).await,
        Err(Refusal::QuotaExhausted { .. })
    ));
}

/// One address's count goes down when its key is forgotten, so it can make
/// keys again; another address is never held to it.
#[tokio::test(start_paused = true)]
async fn a_client_address_gets_its_keys_back_when_they_are_forgotten() {
    let bounds = KeyBounds {
        max_keys: 2,
        max_keys_per_ip: 1,
    };
    let q = Quotas::new(&limits(&[(2, 1000)]), &reject(), Some(bounds), None, None).unwrap();
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let (x, y, z) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
    let key = |n: u8| QuotaKey([n; 32]);
    let send = |a: Admission| async move { a.acquire(&caller()).await.unwrap().sent().landed() };
    send(q.get(key(1), Some(x)).unwrap()).await;
    assert!(
        matches!(q.get(key(2), Some(x)), Err(Refusal::TooManyKeys { .. })),
        "x made its one"
    );
    advance(Duration::from_millis(1000)).await;
    // x's key is idle now, y's busy: z's new key takes x's place.
    send(q.get(key(3), Some(y)).unwrap()).await;
    q.get(key(4), Some(z)).unwrap();
    assert!(q.existing(&key(1)).is_none());
    // x has no key tracked any more: it may make one again.
    assert!(
        q.get(key(5), Some(x)).is_ok(),
        "x's count came back to zero"
    );
}

/// An address at its cap that makes room among its own keys keeps its count:
/// it never holds more than `max_keys_per_ip` keys.
#[tokio::test(start_paused = true)]
async fn an_address_making_room_among_its_own_keys_stays_at_its_cap() {
    let bounds = KeyBounds {
        max_keys: 10,
        max_keys_per_ip: 2,
    };
    let q = Quotas::new(&limits(&[(2, 1000)]), &reject(), Some(bounds), None, None).unwrap();
    let x: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let key = |n: u8| QuotaKey([n; 32]);
    let send = |a: Admission| async move { a.acquire(&caller()).await.unwrap().sent().landed() };
    send(q.get(key(1), Some(x)).unwrap()).await;
    advance(Duration::from_millis(1000)).await;
    send(q.get(key(2), Some(x)).unwrap()).await;
    // At its cap: key 3 takes idle key 1's place.
    send(q.get(key(3), Some(x)).unwrap()).await;
    assert!(q.existing(&key(1)).is_none());
    assert!(
        matches!(q.get(key(4), Some(x)), Err(Refusal::TooManyKeys { .. })),
        "two busy keys: still at its cap"
    );
}

/// A pause written to the state file holds again in the next process, from
/// its own clock: refusals during it are the pause's, ending when it ends.
#[tokio::test(start_paused = true)]
async fn a_pause_in_the_state_file_holds_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.state");
    let local = |path: &std::path::Path| {
        let (file, restored) = StateFile::open(path, 16).unwrap();
        LocalState {
            file,
            restored: std::sync::Mutex::new(restored),
            metrics: crate::metrics::Metrics::new(),
        }
    };
    let lim = limits(&[(5, 60_000)]);
    {
        let q = Quotas::new(&lim, &reject(), None, None, Some(local(&path))).unwrap();
        let a = q.get(QuotaKey([0; 32]), None).unwrap();
        a.pause_until(Instant::now() + Duration::from_secs(20));
        a.close();
        drop((a, q));
        // The releaser task holds the file too until it sees the close.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    let q = Quotas::new(&lim, &reject(), None, None, Some(local(&path))).unwrap();
    let a = q.get(QuotaKey([0; 32]), None).unwrap();
    match a.try_acquire() {
        Some(Err((Refusal::UpstreamThrottled { retry_at }, at))) => {
            let left = retry_at - at;
            assert!(
                left > Duration::from_secs(19) && left <= Duration::from_secs(20),
                "{left:?}"
            );
        }
        other => panic!("{:?}", other.map(|r| r.map(drop))),
    }
    advance(Duration::from_secs(20)).await;
    assert!(matches!(a.try_acquire(), Some(Ok(_))), "over when it ends");
}

/// Dastra's "1 left until T" (memory store): one more send, then refusals
/// that name T, then the windows alone again.
#[tokio::test(start_paused = true)]
async fn dastras_cap_admits_what_it_says_and_ends_at_its_reset() {
    let a = Admission::new(&limits(&[(100, 60_000)]), &reject());
    let reset = Instant::now() + Duration::from_secs(3);
    a.adapt(1, reset);
    a.acquire(&caller()).await.unwrap().sent().landed();
    match a.acquire(&caller()).await {
        Err(Refusal::QuotaExhausted { retry_at }) => assert_eq!(retry_at, reset),
        other => panic!("{:?}", other.map(drop)),
    }
    advance(Duration::from_secs(3)).await;
    assert!(a.acquire(&caller()).await.is_ok());
}

/// A pause that ends before the window frees is not what holds the call:
/// the refusal is the quota's, and names when the window frees.
#[tokio::test(start_paused = true)]
async fn a_short_pause_under_a_full_window_is_the_quotas_refusal() {
    let a = Admission::new(&limits(&[(1, 60_000)]), &reject());
    let t0 = Instant::now();
    a.acquire(&caller()).await.unwrap().sent().landed();
    a.pause_until(t0 + Duration::from_secs(5));
    match a.try_acquire() {
        Some(Err((Refusal::QuotaExhausted { retry_at }, _))) => {
            assert_eq!(retry_at, t0 + Duration::from_secs(60))
        }
        other => panic!("{:?}", other.map(|r| r.map(drop))),
    }
}

/// How long a send counts (the longest window, `keep_for`) reaches the
/// state file: with nothing kept, the ring reuses its slots and never grows.
#[tokio::test]
async fn the_state_file_keeps_sends_for_as_long_as_quotas_say() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.state");
    let (file, restored) = StateFile::open(&path, 16).unwrap();
    let local = LocalState {
        file,
        restored: std::sync::Mutex::new(restored),
        metrics: crate::metrics::Metrics::new(),
    };
    let q = Quotas::new(
        &limits(&[(1000, 60_000)]),
        &reject(),
        None,
        None,
        Some(local),
    )
    .unwrap();
    q.keep_for(Duration::ZERO);
    let size = std::fs::metadata(&path).unwrap().len();
    let a = q.get(QuotaKey([0; 32]), None).unwrap();
    for _ in 0..200 {
        a.try_acquire().unwrap().unwrap().sent().landed();
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        size,
        "no slot kept"
    );
}
