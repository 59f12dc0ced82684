//! Admission on tokio's paused clock: every instant below is exact.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;
use crate::config::{AdmissionConfig, OnLimit, Upstream429};

use crate::quota::test_limits as limits;

fn cfg(on_limit: OnLimit, max_queue: usize, max_wait_ms: u64, margin_ms: u64) -> AdmissionConfig {
    AdmissionConfig {
        on_limit,
        max_queue,
        max_wait: Duration::from_millis(max_wait_ms),
        margin: Duration::from_millis(margin_ms),
        upstream_429: Upstream429::Pause,
        flight: Duration::from_secs(5),
        dry_run: false,
        aging: std::time::Duration::from_secs(10),
    }
}

fn caller(name: &str, weight: u32) -> Caller {
    Caller {
        name: name.into(),
        weight,
        wait: None,
        priority: crate::admission::NORMAL,
    }
}

#[tokio::test(start_paused = true)]
async fn reject_mode_refuses_with_the_exact_freeing_instant() {
    let a = Admission::new(
        &limits(&[(3, 1000)]),
        &cfg(OnLimit::Reject, 10, 30_000, 100),
    );
    let t0 = Instant::now();
    let c = caller("x", 1);
    for _ in 0..3 {
        a.acquire(&c).await.unwrap().sent();
        advance(Duration::from_millis(10)).await;
    }
    match a.acquire(&c).await {
        Err(Refusal::QuotaExhausted { retry_at }) => {
            assert_eq!(retry_at, t0 + Duration::from_millis(1100))
        }
        other => panic!("{other:?}"),
    }
    advance(Duration::from_millis(1100) - t0.elapsed()).await;
    assert!(
        a.acquire(&c).await.is_ok(),
        "a caller waiting exactly that long is admitted"
    );
}

#[tokio::test(start_paused = true)]
async fn queued_calls_go_exactly_as_slots_free() {
    let a = Admission::new(&limits(&[(2, 1000)]), &cfg(OnLimit::Queue, 10, 30_000, 0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let p = a.acquire(&caller("x", 1)).await.unwrap();
            p.sent();
            (i, Instant::now())
        }));
        tokio::task::yield_now().await;
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let offsets: Vec<u64> = got
        .iter()
        .map(|(_, at)| (*at - t0).as_millis() as u64)
        .collect();
    assert_eq!(offsets, [0, 0, 1000, 1000, 2000, 2000]);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "FIFO");
}

#[tokio::test(start_paused = true)]
async fn projected_start_past_max_wait_is_refused_at_once() {
    let a = Admission::new(&limits(&[(1, 1000)]), &cfg(OnLimit::Queue, 100, 2500, 0));
    let t0 = Instant::now();
    a.acquire(&caller("x", 1)).await.unwrap().sent();
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let a = a.clone();
        waiting.push(tokio::spawn(async move {
            a.acquire(&caller("x", 1)).await.map(|p| p.sent())
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(a.waiting(), 2, "starts at 1 s and 2 s are within max_wait");
    match a.acquire(&caller("x", 1)).await {
        Err(Refusal::QuotaExhausted { retry_at }) => {
            assert_eq!(retry_at, t0 + Duration::from_secs(3))
        }
        other => panic!("{other:?}"),
    }
    for w in waiting {
        w.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_with_queue_full() {
    let a = Admission::new(&limits(&[(1, 1000)]), &cfg(OnLimit::Queue, 1, 30_000, 0));
    a.acquire(&caller("x", 1)).await.unwrap().sent();
    let a2 = a.clone();
    let w = tokio::spawn(async move { a2.acquire(&caller("x", 1)).await.map(|p| p.sent()) });
    tokio::task::yield_now().await;
    assert!(matches!(
        a.acquire(&caller("x", 1)).await,
        Err(Refusal::QueueFull { .. })
    ));
    w.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_leaves_the_queue_spends_nothing() {
    let a = Admission::new(&limits(&[(1, 1000)]), &cfg(OnLimit::Queue, 10, 30_000, 0));
    let t0 = Instant::now();
    a.acquire(&caller("x", 1)).await.unwrap().sent();
    let a2 = a.clone();
    let leaver = tokio::spawn(async move { a2.acquire(&caller("x", 1)).await.map(|p| p.sent()) });
    tokio::task::yield_now().await;
    assert_eq!(a.waiting(), 1);
    leaver.abort();
    let _ = leaver.await;
    assert_eq!(a.waiting(), 0, "it left the queue at once");
    advance(Duration::from_millis(1000)).await;
    let p = a.acquire(&caller("x", 1)).await.unwrap();
    assert_eq!(
        Instant::now() - t0,
        Duration::from_millis(1000),
        "the freed slot was still there"
    );
    drop(p);
    assert!(
        a.acquire(&caller("x", 1)).await.is_ok(),
        "a permit dropped unsent is refunded"
    );
}

#[tokio::test(start_paused = true)]
async fn refund_after_connect_failure_lets_a_waiter_go_at_once() {
    let a = Admission::new(
        &limits(&[(1, 60_000)]),
        &cfg(OnLimit::Queue, 10, 120_000, 0),
    );
    let t0 = Instant::now();
    let sent = a.acquire(&caller("x", 1)).await.unwrap().sent();
    let a2 = a.clone();
    let waiter = tokio::spawn(async move {
        a2.acquire(&caller("x", 1))
            .await
            .map(|p| (p.sent(), Instant::now()))
    });
    tokio::task::yield_now().await;
    advance(Duration::from_millis(5)).await;
    sent.refund();
    let (_, at) = waiter.await.unwrap().unwrap();
    assert_eq!(
        at - t0,
        Duration::from_millis(5),
        "woken by the refund, not by the window"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_429_pause_holds_everyone_until_it_ends() {
    let a = Admission::new(&limits(&[(100, 1000)]), &cfg(OnLimit::Queue, 10, 30_000, 0));
    let t0 = Instant::now();
    a.pause_until(t0 + Duration::from_secs(3));
    let a2 = a.clone();
    let waiter = tokio::spawn(async move {
        a2.acquire(&caller("x", 1))
            .await
            .map(|p| (p.sent(), Instant::now()))
    });
    let (_, at) = waiter.await.unwrap().unwrap();
    assert_eq!(at - t0, Duration::from_secs(3));
    assert!(a.snapshot().paused_for.is_none());

    let r = Admission::new(
        &limits(&[(100, 1000)]),
        &cfg(OnLimit::Reject, 10, 30_000, 0),
    );
    r.pause_until(Instant::now() + Duration::from_secs(2));
    match r.acquire(&caller("x", 1)).await {
        Err(Refusal::UpstreamThrottled { retry_at }) => {
            assert_eq!(retry_at - Instant::now(), Duration::from_secs(2))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn contending_clients_share_by_weight() {
    let a = Admission::new(&limits(&[(1, 100)]), &cfg(OnLimit::Queue, 100, 60_000, 0));
    a.acquire(&caller("seed", 1)).await.unwrap().sent();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..12 {
        for (name, weight) in [("heavy", 3), ("light", 1)] {
            let (a, order) = (a.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = a.acquire(&caller(name, weight)).await.unwrap();
                order.lock().unwrap().push(format!("{name}{i}"));
                p.sent();
            }));
            tokio::task::yield_now().await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let first12 = &order[..12];
    let heavy = first12.iter().filter(|s| s.starts_with("heavy")).count();
    assert_eq!(heavy, 9, "3:1 while both wait: {order:?}");
    let heavy_seq: Vec<&String> = order.iter().filter(|s| s.starts_with("heavy")).collect();
    let expected: Vec<String> = (0..12).map(|i| format!("heavy{i}")).collect();
    assert!(
        heavy_seq.iter().zip(&expected).all(|(a, b)| *a == b),
        "FIFO within a client"
    );
}

#[tokio::test(start_paused = true)]
async fn close_answers_every_queued_call() {
    let a = Admission::new(
        &limits(&[(1, 60_000)]),
        &cfg(OnLimit::Queue, 10, 120_000, 0),
    );
    a.acquire(&caller("x", 1)).await.unwrap().sent();
    let a2 = a.clone();
    let w = tokio::spawn(async move { a2.acquire(&caller("x", 1)).await.map(|p| p.sent()) });
    tokio::task::yield_now().await;
    a.close();
    assert!(matches!(w.await.unwrap(), Err(Refusal::ShuttingDown)));
    assert!(matches!(
        a.acquire(&caller("x", 1)).await,
        Err(Refusal::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn reconfigure_keeps_recorded_sends() {
    let a = Admission::new(&limits(&[(5, 1000)]), &cfg(OnLimit::Reject, 10, 30_000, 0));
    for _ in 0..3 {
        a.acquire(&caller("x", 1)).await.unwrap().sent();
    }
    a.reconfigure(&limits(&[(3, 2000)]), &cfg(OnLimit::Reject, 10, 30_000, 0));
    assert!(matches!(
        a.acquire(&caller("x", 1)).await,
        Err(Refusal::QuotaExhausted { .. })
    ));
    assert_eq!(a.snapshot().windows[0].used, 3);
}

#[tokio::test(start_paused = true)]
async fn calls_in_flight_are_counted_in_the_snapshot() {
    let a = Admission::new(&limits(&[(2, 1000)]), &cfg(OnLimit::Reject, 10, 0, 0));
    let c = caller("x", 1);
    let first = a.acquire(&c).await.unwrap().sent();
    let _second = a.acquire(&c).await.unwrap().sent();
    let snap = a.snapshot();
    assert_eq!(
        snap.windows[0].used, 2,
        "both slots are taken while in flight"
    );
    assert_eq!(
        snap.windows[0].frees_in,
        Duration::from_millis(6000),
        "every slot in flight: the bound (flight 5 s + span 1 s), never a guess"
    );
    advance(Duration::from_millis(300)).await;
    first.landed();
    let snap = a.snapshot();
    assert_eq!(snap.windows[0].used, 2);
    assert_eq!(snap.windows[0].frees_in, Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_never_early_when_answers_are_slower_than_the_window() {
    // 2 per 2 s; both calls take 3 s to answer; the flight bound is 5 s.
    let a = Admission::new(&limits(&[(2, 2000)]), &cfg(OnLimit::Reject, 10, 0, 0));
    let t0 = Instant::now();
    let c = caller("x", 1);
    let first = a.acquire(&c).await.unwrap().sent();
    let second = a.acquire(&c).await.unwrap().sent();
    advance(Duration::from_millis(500)).await;
    let told = match a.acquire(&c).await {
        Err(Refusal::QuotaExhausted { retry_at }) => retry_at,
        other => panic!("{other:?}"),
    };
    advance(Duration::from_millis(2500)).await; // t = 3 s: both answers arrive
    first.landed();
    second.landed();
    // The real first admission after them is at 3 s + 2 s.
    let real = t0 + Duration::from_millis(5000);
    assert!(
        told >= real,
        "told {:?}, admitted at {:?}",
        told - t0,
        real - t0
    );
    assert!(told <= t0 + Duration::from_millis(7000), "within the bound");
    advance(real - Instant::now() - Duration::from_millis(1)).await;
    assert!(a.acquire(&c).await.is_err(), "not a moment before");
    advance(Duration::from_millis(1)).await;
    assert!(a.acquire(&c).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_reload_below_the_calls_in_flight_keeps_the_window_exact() {
    let a = Admission::new(&limits(&[(3, 1000)]), &cfg(OnLimit::Reject, 10, 0, 0));
    let c = caller("x", 1);
    let p1 = a.acquire(&c).await.unwrap().sent();
    let _p2 = a.acquire(&c).await.unwrap().sent();
    let _p3 = a.acquire(&c).await.unwrap().sent();
    a.reconfigure(&limits(&[(2, 1000)]), &cfg(OnLimit::Reject, 10, 0, 0));
    advance(Duration::from_millis(100)).await;
    p1.landed();
    // Long after that landing aged out, two sends are still in flight: N = 2
    // is reached without any logged send.
    advance(Duration::from_millis(1500)).await;
    assert!(
        matches!(a.acquire(&c).await, Err(Refusal::QuotaExhausted { .. })),
        "two in flight hold both slots of the new N"
    );
    assert_eq!(a.snapshot().windows[0].used, 2);
}

#[tokio::test(start_paused = true)]
async fn a_greedy_client_cannot_starve_a_polite_one() {
    // 10 per 1 s, max_wait 2 s: a weight-1 client keeps 40 calls going; a
    // weight-10 client sends 2 calls a second. Answers take 50 ms.
    let a = Admission::new(&limits(&[(10, 1000)]), &cfg(OnLimit::Queue, 1000, 2000, 0));
    let t0 = Instant::now();
    let sends = Arc::new(std::sync::Mutex::new(Vec::new()));
    let end = t0 + Duration::from_secs(8);
    let mut greedy = Vec::new();
    for _ in 0..40 {
        let (a, sends) = (a.clone(), sends.clone());
        greedy.push(tokio::spawn(async move {
            while Instant::now() < end {
                match a.acquire(&caller("greedy", 1)).await {
                    Ok(p) => {
                        sends.lock().unwrap().push(Instant::now());
                        let sent = p.sent();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        sent.landed();
                    }
                    Err(Refusal::QuotaExhausted { retry_at }) => {
                        tokio::time::sleep_until(
                            retry_at.max(Instant::now() + Duration::from_millis(10)),
                        )
                        .await
                    }
                    Err(other) => panic!("{other:?}"),
                }
            }
        }));
    }
    let mut polite = Vec::new();
    for i in 0..14u64 {
        let (a, sends) = (a.clone(), sends.clone());
        polite.push(tokio::spawn(async move {
            tokio::time::sleep_until(t0 + Duration::from_millis(500 + 500 * i)).await;
            let p = a.acquire(&caller("polite", 10)).await?;
            sends.lock().unwrap().push(Instant::now());
            let sent = p.sent();
            tokio::time::sleep(Duration::from_millis(50)).await;
            sent.landed();
            Ok::<_, Refusal>(())
        }));
    }
    let mut served = 0;
    for p in polite {
        served += usize::from(p.await.unwrap().is_ok());
    }
    for g in greedy {
        g.await.unwrap();
    }
    assert!(
        served >= 13,
        "the polite client got {served} of 14 calls through"
    );
    let sends = sends.lock().unwrap().clone();
    // Slots age from the landing, 50 ms after each send: no 1 s interval may
    // hold more than 10 sends, and each window of the busy stretch is >= 90% used.
    for (i, s) in sends.iter().enumerate() {
        let n = sends
            .iter()
            .filter(|t| **t > *s - Duration::from_millis(1000) && **t <= *s)
            .count();
        assert!(n <= 10, "send {i} at {:?}: {n} in one window", *s - t0);
    }
    let busy = sends
        .iter()
        .filter(|t| **t >= t0 + Duration::from_secs(1) && **t < t0 + Duration::from_secs(7))
        .count();
    assert!(busy >= 54, "6 s at 10 per 1.05 s is ~57 sends; saw {busy}");
}
