//! The quota engine end to end: scaled windows through the real proxy, with
//! the mock upstream's arrival log as the judge.

mod support;

use std::time::Duration;

use dastra_proxy::config::Limit;
use dastra_proxy::quota::WindowSet;
use http::StatusCode;
use support::*;
use tokio::time::Instant;

/// 10 per 200 ms binds first; 25 per 1 s binds after the third burst.
const TWO_WINDOWS: &str =
    "[[limits]]\nrequests = 10\nper = \"200ms\"\n[[limits]]\nrequests = 25\nper = \"1s\"\n";

fn scaled() -> Vec<Limit> {
    vec![
        Limit {
            requests: 10,
            per: Duration::from_millis(200),
            name: "200ms".into(),
        },
        Limit {
            requests: 25,
            per: Duration::from_millis(1000),
            name: "1s".into(),
        },
    ]
}

/// Fails if any interval of length W (without margin) saw more than N arrivals.
fn assert_no_violation(arrivals: &[Instant], limits: &[Limit]) {
    for l in limits {
        for t in arrivals {
            let n = arrivals
                .iter()
                .filter(|a| **a >= *t && **a < *t + l.per)
                .count();
            assert!(
                n <= l.requests as usize,
                "{n} arrivals within {:?} of one another, limit {}",
                l.per,
                l.requests
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_sends_at_the_exact_schedule_with_both_windows_binding() {
    let up = MockUpstream::start().await;
    // The margin covers send-to-arrival skew; a cold TLS connect in a debug
    // build takes ~20 ms, so 60 ms leaves room.
    let extra = format!(
        "{TWO_WINDOWS}[admission]\non_limit = \"queue\"\nmargin = \"60ms\"\nmax_wait = \"10s\"\n"
    );
    let proxy = TestProxy::start(&up, &extra).await;
    let c = client();
    let mut calls = Vec::new();
    for i in 0..60 {
        let (c, url) = (c.clone(), proxy.url(&format!("/v1/q/{i}")));
        calls.push(tokio::spawn(async move { get(&c, &url).await.status }));
    }
    for call in calls {
        assert_eq!(
            call.await.unwrap(),
            StatusCode::OK,
            "queued calls are served, not refused"
        );
    }
    let mut arrivals = up.arrivals("/v1/q/");
    arrivals.sort();
    assert_eq!(arrivals.len(), 60);
    assert_no_violation(&arrivals, &scaled());

    // The ideal schedule for 60 calls that all arrive at once.
    let t0 = arrivals[0];
    let mut ideal = WindowSet::new(&scaled(), Duration::from_millis(60));
    let mut schedule = Vec::new();
    let mut t = t0;
    for _ in 0..60 {
        t = ideal.next_admit(t);
        ideal.record(t);
        schedule.push(t - t0);
    }
    assert_eq!(schedule[9], Duration::ZERO);
    assert_eq!(
        schedule[10],
        Duration::from_millis(260),
        "the short window binds first"
    );
    assert_eq!(
        schedule[25],
        Duration::from_millis(1060),
        "then the long one"
    );
    let last = *arrivals.last().unwrap() - t0;
    let ideal_last = *schedule.last().unwrap();
    // The first arrival carries the TLS handshake; the margin absorbs such jitter.
    assert!(
        last + Duration::from_millis(60) >= ideal_last,
        "sent earlier than the windows allow: {last:?} < {ideal_last:?}"
    );
    assert!(
        last <= ideal_last + Duration::from_millis(150),
        "quota wasted: the last call went at {last:?}, the windows allowed {ideal_last:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_gives_exact_retry_after_and_ratelimit_fields() {
    let up = MockUpstream::start().await;
    let extra = format!("{TWO_WINDOWS}[admission]\non_limit = \"reject\"\nmargin = \"20ms\"\n");
    let proxy = TestProxy::start(&up, &extra).await;
    let c = client();
    let mut calls = Vec::new();
    for i in 0..30 {
        let (c, url) = (c.clone(), proxy.url(&format!("/v1/r/{i}")));
        calls.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    let mut ok = 0;
    for call in calls {
        let r = call.await.unwrap();
        match r.status {
            StatusCode::OK => {
                ok += 1;
                assert_eq!(
                    r.header("ratelimit-policy"),
                    Some("\"200ms\";q=10;w=1, \"1s\";q=25;w=1")
                );
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.code(), "quota_exhausted");
                // 220 ms after a landing rounds up to 1 s; while all ten are
                // still in flight the freeing instant is not known yet, and
                // the answer is the bound: connect 1 s + timeout 2 s + 220 ms.
                let wait = r.header("retry-after").unwrap();
                assert!(["1", "2", "3", "4"].contains(&wait), "Retry-After {wait}");
                let rl = r.header("ratelimit").unwrap();
                assert!(
                    rl.starts_with(&format!("\"200ms\";r=0;t={wait}, \"1s\";r=15;t=")),
                    "{rl}"
                );
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 10, "exactly the short window's N went through");
    assert_eq!(up.arrivals("/v1/r/").len(), 10);
    let metrics = proxy.metrics.render();
    assert!(
        metrics.contains(
            "dastra_proxy_rejected_total{client=\"anonymous\",code=\"quota_exhausted\"} 20"
        ),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_queued_spends_no_quota() {
    let up = MockUpstream::start().await;
    let extra = "[[limits]]\nrequests = 1\nper = \"400ms\"\n[admission]\nmargin = \"0ms\"\n";
    let proxy = TestProxy::start(&up, extra).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/first")).await.status, 200);
    let url = proxy.url("/v1/leaver");
    let leaver = tokio::spawn(async move { get(&client(), &url).await });
    let deadline = Instant::now() + Duration::from_secs(2);
    while proxy.running.as_ref().unwrap().app.quotas.all()[0].waiting() == 0 {
        assert!(Instant::now() < deadline, "the call never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leaver.abort();
    let _ = leaver.await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while proxy.running.as_ref().unwrap().app.quotas.all()[0].waiting() != 0 {
        assert!(
            Instant::now() < deadline,
            "the call stayed queued after its client left"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        up.arrivals("/v1/leaver").is_empty(),
        "the abandoned call was never sent"
    );
    let q = get(&c, &proxy.admin_url("/quota")).await.json();
    assert_eq!(q["windows"][0]["used"], 0, "and spent no quota: {q}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_pauses_all_sending_until_its_retry_after() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "[admission]\nupstream_429 = \"pause\"\n").await;
    let c = client();
    let r = get(&c, &proxy.url("/status/429")).await;
    assert_eq!(r.status, 429, "Dastra's own 429 is passed on");
    let r = get(&c, &proxy.url("/v1/after-pause")).await;
    assert_eq!(r.status, 200, "queued, not failed");
    let first = up.arrivals("/status/429")[0];
    let next = up.arrivals("/v1/after-pause")[0];
    assert!(
        next - first >= Duration::from_secs(1),
        "sent {:?} after the 429",
        next - first
    );
    assert!(
        proxy
            .metrics
            .upstream_429_total
            .with_label_values(&["default"])
            .get()
            == 1
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_clients_share_by_weight_and_keep_their_own_order() {
    let up = MockUpstream::start().await;
    let heavy = "heavy-key-0123456789abcdef";
    let light = "light-key-0123456789abcdef";
    let extra = format!(
        "[[limits]]\nrequests = 1\nper = \"250ms\"\n[admission]\nmargin = \"0ms\"\nmax_wait = \"20s\"\n\
         [[clients]]\nname = \"heavy\"\nkey_sha256 = \"{}\"\nweight = 3\n\
         [[clients]]\nname = \"light\"\nkey_sha256 = \"{}\"\nweight = 1\n",
        dastra_proxy::access::hash_key(heavy),
        dastra_proxy::access::hash_key(light)
    );
    let proxy = TestProxy::start(&up, &extra).await;
    let c = client();
    let r = support::send(
        &c,
        http::Method::GET,
        &proxy.url("/v1/seed"),
        &[("x-api-key", heavy)],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    let mut calls = Vec::new();
    // One at a time, so that the queue order is known; all are normally queued
    // before the first slot frees at 250 ms.
    for i in 0..12 {
        for (name, key) in [("heavy", heavy), ("light", light)] {
            let (c, url) = (c.clone(), proxy.url(&format!("/v1/{name}/{i:02}")));
            calls.push(tokio::spawn(async move {
                support::send(
                    &c,
                    http::Method::GET,
                    &url,
                    &[("x-api-key", key)],
                    axum::body::Body::empty(),
                )
                .await
                .status
            }));
            // Send the next call only once this one waits: the queue order is then known.
            let queued = 2 * i + usize::from(name == "light") + 1;
            let admission = proxy.running.as_ref().unwrap().app.quotas.all()[0].clone();
            let deadline = Instant::now() + Duration::from_secs(5);
            let released = || {
                up.log()
                    .iter()
                    .filter(|r| !r.target.contains("seed"))
                    .count()
            };
            while admission.waiting() + released() < queued {
                assert!(Instant::now() < deadline, "call {queued} never queued");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let mut log = up.log();
    log.sort_by_key(|r| r.at);
    let order: Vec<String> = log
        .iter()
        .map(|r| r.target.clone())
        .filter(|t| !t.contains("seed"))
        .collect();
    let first12 = &order[..12];
    let heavy_n = first12.iter().filter(|t| t.contains("heavy")).count();
    assert!(
        (8..=10).contains(&heavy_n),
        "weight 3:1 gives ~9 of 12 to heavy, got {heavy_n}: {order:?}"
    );
    for name in ["heavy", "light"] {
        let mine: Vec<&String> = order.iter().filter(|t| t.contains(name)).collect();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(mine, sorted, "FIFO within {name}");
    }
    proxy.shutdown().await;
}
