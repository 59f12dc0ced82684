//! When Dastra misbehaves (SPEC §9.5): the circuit breaker, judged on the
//! mock upstream's own arrival log. The real stack against a real TLS mock
//! whose outage the test turns on and off.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio::time::Instant;

const OPEN: Duration = Duration::from_millis(400);

/// A proxy whose breaker opens after 3 failures for 400 ms, without
/// retries (each call is one attempt, so failures are counted by call).
async fn proxy(up: &MockUpstream, extra: &str) -> TestProxy {
    TestProxy::start_edit(up, extra, |s| {
        s.replace(
            "timeout = \"2s\"\n",
            "timeout = \"2s\"\nbreaker_failures = 3\nbreaker_open = \"400ms\"\nretries = 0\n",
        )
    })
    .await
}

fn quota_used(q: &serde_json::Value) -> u64 {
    q["windows"][0]["used"].as_u64().unwrap()
}

fn gauge(metrics: &str, name: &str) -> String {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in metrics"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_answers_fast_spends_nothing_and_one_probe_closes_it() {
    let up = MockUpstream::start().await;
    let p = proxy(&up, "[[limits]]\nrequests = 100\nper = \"1m\"\n").await;
    let c = client();
    up.state.fail_status.store(503, Ordering::SeqCst);
    for i in 0..3 {
        let r = get(&c, &p.url(&format!("/v1/down/{i}"))).await;
        assert_eq!(r.status, 503, "Dastra's own 503 goes back as it is");
        assert_eq!(&r.body[..], b"outage");
    }
    assert_eq!(up.count(), 3);
    let used = quota_used(&get(&c, &p.admin_url("/quota")).await.json());
    let opened = Instant::now();
    for i in 0..20 {
        let r = get(&c, &p.url(&format!("/v1/open/{i}"))).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.code(), "upstream_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(up.count(), 3, "an open breaker sends nothing");
    assert_eq!(
        quota_used(&get(&c, &p.admin_url("/quota")).await.json()),
        used,
        "and spends no quota"
    );
    let m = String::from_utf8_lossy(&get(&c, &p.admin_url("/metrics")).await.body).into_owned();
    assert_eq!(
        gauge(&m, "dastra_proxy_breaker_open"),
        "dastra_proxy_breaker_open 1"
    );
    assert!(
        m.contains(
            "dastra_proxy_rejected_total{client=\"anonymous\",code=\"upstream_unavailable\"} 20"
        ),
        "{m}"
    );

    // Still down when it half-opens: the one probe fails and it opens again.
    tokio::time::sleep_until(opened + OPEN).await;
    assert_eq!(&get(&c, &p.url("/v1/probe/1")).await.body[..], b"outage");
    assert_eq!(up.count(), 4, "one probe went out");
    assert_eq!(
        get(&c, &p.url("/v1/after-probe")).await.code(),
        "upstream_unavailable"
    );
    assert_eq!(up.count(), 4);

    // Back up: the next probe closes it.
    up.state.fail_status.store(0, Ordering::SeqCst);
    tokio::time::sleep(OPEN).await;
    assert_eq!(get(&c, &p.url("/v1/probe/2")).await.status, 200);
    for i in 0..5 {
        assert_eq!(get(&c, &p.url(&format!("/v1/up/{i}"))).await.status, 200);
    }
    assert_eq!(up.count(), 10);
    let m = String::from_utf8_lossy(&get(&c, &p.admin_url("/metrics")).await.body).into_owned();
    assert_eq!(
        gauge(&m, "dastra_proxy_breaker_open"),
        "dastra_proxy_breaker_open 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dastra_opens_it_too_and_4xx_or_500_never_do() {
    let up = MockUpstream::start().await;
    let p = proxy(&up, "").await;
    let c = client();
    for i in 0..10 {
        let r = get(&c, &p.url(&format!("/status/404?{i}"))).await;
        assert_eq!(r.status, 404);
    }
    // A 500 is about the request that caused it: a caller who can make
    // Dastra fail must not be able to cut everyone off.
    for i in 0..10 {
        let r = get(&c, &p.url(&format!("/status/500?{i}"))).await;
        assert_eq!(
            r.status, 500,
            "call {i}: Dastra's own 500, not the breaker's 503"
        );
    }
    assert_eq!(get(&c, &p.url("/v1/fine")).await.status, 200);
    // Nothing listens where this one sends: connections are refused.
    let gone = free_port();
    let p = TestProxy::start_edit(&up, "", |s| {
        s.replace(&up.url(), &format!("https://127.0.0.1:{}", gone.port()))
            .replace(
                "timeout = \"2s\"\n",
                "timeout = \"2s\"\nbreaker_failures = 3\nbreaker_open = \"400ms\"\nretries = 0\n",
            )
    })
    .await;
    let mut codes = Vec::new();
    for i in 0..6 {
        codes.push(get(&c, &p.url(&format!("/v1/gone/{i}"))).await.code());
    }
    assert_eq!(
        codes[..3],
        [
            "upstream_unreachable",
            "upstream_unreachable",
            "upstream_unreachable"
        ]
    );
    assert!(
        codes[3..].iter().all(|c| c == "upstream_unavailable"),
        "{codes:?}"
    );
}

async fn exit_code(mut proxy: BinProxy) -> Option<i32> {
    tokio::task::spawn_blocking(move || proxy.child.wait().unwrap().code())
        .await
        .unwrap()
}

/// Dastra answers 429 with `Retry-After: 20`; the proxy is stopped (SIGTERM)
/// and started again: the pause holds, refusals say `upstream_throttled`
/// with `RateLimit` r=0 and t = the pause left, and nothing is sent early.
async fn a_pause_survives_a_restart(extra: &str) {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let proxy = BinProxy::start(dir.path(), &up, extra);
    assert_eq!(get(&c, &proxy.url("/retry-after/20")).await.status, 429);
    let paused_at = Instant::now();
    let r = get(&c, &proxy.url("/v1/paused")).await;
    assert_eq!(r.code(), "upstream_throttled");
    proxy.signal("TERM");
    assert_eq!(exit_code(proxy).await, Some(0));

    let proxy = BinProxy::start(dir.path(), &up, extra);
    let before = up.count();
    for i in 0..5 {
        let r = get(&c, &proxy.url(&format!("/v1/after-restart/{i}"))).await;
        assert_eq!(r.status, 429, "sent during Dastra's pause");
        assert_eq!(r.code(), "upstream_throttled");
        // Never early: at least what is left of the 20 s, counted from
        // before the 429 arrived.
        let left = 20 - paused_at.elapsed().as_secs();
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (left..=20).contains(&wait),
            "Retry-After {wait}, {left} s left"
        );
        let rl = r.header("ratelimit").unwrap();
        assert!(rl.contains(";r=0;t="), "{rl}");
        let t: u64 = rl
            .split(";t=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((left..=20).contains(&t), "{rl}");
    }
    assert_eq!(
        up.count(),
        before,
        "nothing reached Dastra during its pause"
    );
    proxy.signal("TERM");
    assert_eq!(exit_code(proxy).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_restart_in_the_state_file() {
    a_pause_survives_a_restart("[admission]\non_limit = \"reject\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_restart_in_redis() {
    let redis = RedisServer::start();
    a_pause_survives_a_restart(&format!(
        "[admission]\non_limit = \"reject\"\n[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-pause\"\nstate_file = \"\"\n",
        redis.url()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_says_the_window_as_it_is_now_not_as_it_was_stored() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(
        &up,
        "[[limits]]\nrequests = 10\nper = \"1m\"\n[[cache.rules]]\npath = \"/v1/cached/*\"\nttl = \"1m\"\n",
    )
    .await;
    let c = client();
    let first = get(&c, &p.url("/v1/cached/a")).await;
    assert!(first.header("ratelimit").unwrap().contains(";r=9;"));
    for i in 0..3 {
        assert_eq!(get(&c, &p.url(&format!("/v1/other/{i}"))).await.status, 200);
    }
    let hit = get(&c, &p.url("/v1/cached/a")).await;
    assert!(hit.header("cache-status").unwrap().contains("hit"));
    let used = quota_used(&get(&c, &p.admin_url("/quota")).await.json());
    assert_eq!(used, 4);
    let rl = hit.header("ratelimit").unwrap();
    assert!(
        rl.starts_with("\"1m\";r=6;"),
        "{rl}: /quota says 4 of 10 used"
    );
    assert_eq!(up.count(), 4, "the hit sent nothing");
}

/// A 503 with `Retry-After: 1`: nothing reaches Dastra for that second
/// (judged on its arrival log), then calls go again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_holds_every_send_until_then() {
    let up = MockUpstream::start().await;
    let p = proxy(&up, "[admission]\non_limit = \"reject\"\n").await;
    let c = client();
    let asked = Instant::now();
    let r = send(
        &c,
        http::Method::GET,
        &p.url("/v1/busy"),
        &[("x-mock-answer", "status=503|retry-after=1")],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(r.status, 503, "Dastra's own 503, passed on");
    let held = get(&c, &p.url("/v1/held")).await;
    assert_eq!(held.status, 429);
    assert_eq!(held.header("retry-after"), Some("1"));
    tokio::time::sleep_until(asked + Duration::from_millis(1100)).await;
    assert_eq!(get(&c, &p.url("/v1/after")).await.status, 200);
    let early = up
        .arrivals("/v1/")
        .iter()
        .filter(|t| **t < asked + Duration::from_secs(1))
        .count();
    assert_eq!(
        early, 1,
        "only the 503 itself within the second Dastra asked for"
    );
}

/// Dastra says "R left, reset in 3 s": at most R calls reach it before the
/// reset, judged on its own arrival log; then the windows are ours again.
async fn dastras_word_caps_the_sends(kind: &str) {
    let up = MockUpstream::start().await;
    let p = TestProxy::start(&up, "[admission]\non_limit = \"reject\"\n").await;
    let c = client();
    let said = Instant::now();
    assert_eq!(
        get(&c, &p.url(&format!("/ratelimit/{kind}/1/3")))
            .await
            .status,
        200
    );
    let mut codes = Vec::new();
    for i in 0..5 {
        codes.push(
            get(&c, &p.url(&format!("/v1/after/{i}")))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(codes, [200, 429, 429, 429, 429], "one left, then none");
    let refused = get(&c, &p.url("/v1/refused")).await;
    assert_eq!(refused.code(), "quota_exhausted");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=3).contains(&wait),
        "Retry-After {wait}: the reset Dastra named"
    );
    let before_reset = up
        .arrivals("/v1/")
        .iter()
        .filter(|t| **t < said + Duration::from_secs(3))
        .count();
    assert_eq!(before_reset, 1);
    let m = String::from_utf8_lossy(&get(&c, &p.admin_url("/metrics")).await.body).into_owned();
    assert!(
        m.contains("dastra_proxy_upstream_limit_remaining{window="),
        "{m}"
    );
    // "None left" holds everything until the reset; then calls go again.
    assert_eq!(
        get(&c, &p.url(&format!("/ratelimit/{kind}/0/1")))
            .await
            .status,
        429
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(get(&c, &p.url("/v1/after-reset")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_ratelimit_headers_cap_the_sends_until_their_reset() {
    dastras_word_caps_the_sends("x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_ratelimit_fields_cap_the_sends_until_their_reset() {
    dastras_word_caps_the_sends("ietf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_entry_answers_stale_when_dastra_fails_the_breaker_is_open_or_quota_is_out() {
    let up = MockUpstream::start().await;
    let p = proxy(
        &up,
        "[[limits]]\nrequests = 5\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n\
         [cache]\nstale_if_error = \"1m\"\n[[cache.rules]]\npath = \"/seq/*\"\nttl = \"200ms\"\n\
         [[cache.rules]]\npath = \"/seq/*/*\"\nttl = \"200ms\"\n",
    )
    .await;
    let c = client();
    let fresh = get(&c, &p.url("/seq/0")).await;
    assert_eq!(fresh.status, 200);
    let strict = get(&c, &p.url("/seq/0/mustreval")).await;
    assert_eq!(strict.status, 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Dastra answers 503 (the breaker counts one failure).
    up.state.fail_status.store(503, Ordering::SeqCst);
    let r = get(&c, &p.url("/seq/0")).await;
    assert_eq!(r.status, 200, "stale rather than Dastra's 503");
    assert_eq!(r.body, fresh.body);
    assert_eq!(r.header("cache-status"), Some("dastra-proxy; hit; stale"));
    assert!(
        r.header("ratelimit").is_some_and(|v| v.contains(";r=2;")),
        "live fields"
    );
    let r = get(&c, &p.url("/seq/0/mustreval")).await;
    assert_eq!(r.status, 503, "must-revalidate: never served stale");
    // A third failure opens the breaker: stale again, nothing sent.
    assert_eq!(get(&c, &p.url("/v1/down")).await.status, 503);
    let sent = up.count();
    let r = get(&c, &p.url("/seq/0")).await;
    assert_eq!(r.header("cache-status"), Some("dastra-proxy; hit; stale"));
    assert_eq!(up.count(), sent, "the breaker is open: nothing went out");
    // Dastra is back, the quota is used up (5 of 5): stale once more.
    up.state.fail_status.store(0, Ordering::SeqCst);
    tokio::time::sleep(OPEN).await;
    assert_eq!(
        get(&c, &p.url("/v1/probe")).await.status,
        429,
        "quota used up"
    );
    let r = get(&c, &p.url("/seq/0")).await;
    assert_eq!(r.header("cache-status"), Some("dastra-proxy; hit; stale"));
    let m = String::from_utf8_lossy(&get(&c, &p.admin_url("/metrics")).await.body).into_owned();
    assert!(
        m.contains("dastra_proxy_quota_saved_total{how=\"stale\"} 3"),
        "{m}"
    );
}

fn with_retries(budget: &str, breaker: u32) -> impl FnOnce(String) -> String {
    let budget = budget.to_owned();
    move |s: String| {
        s.replace(
            "timeout = \"2s\"\n",
            &format!(
                "timeout = \"2s\"\nretries = 2\nretry_budget = {budget}\nbreaker_failures = {breaker}\n"
            ),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_bring_idempotent_calls_through_and_never_send_a_post_twice() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start_edit(
        &up,
        "[[limits]]\nrequests = 1000\nper = \"1m\"\n",
        with_retries("1.0", 0),
    )
    .await;
    let c = client();
    up.state.fail_alternate.store(true, Ordering::SeqCst);
    for i in 0..20 {
        let r = get(&c, &p.url(&format!("/v1/get/{i}"))).await;
        assert_eq!(r.status, 200, "GET {i} was not retried");
    }
    assert_eq!(
        up.arrivals("/v1/get/").len(),
        40,
        "each GET: a 503, then a 200"
    );
    let mut failed = 0;
    for i in 0..10 {
        let r = send(
            &c,
            http::Method::POST,
            &p.url(&format!("/v1/post/{i}")),
            &[],
            axum::body::Body::from("{}"),
        )
        .await;
        if r.status == 503 {
            failed += 1;
        }
    }
    assert_eq!(up.arrivals("/v1/post/").len(), 10, "a POST is tried once");
    assert_eq!(failed, 5, "and its 503 goes back as it is");
    let q = get(&c, &p.admin_url("/quota")).await.json();
    assert_eq!(quota_used(&q), 50, "every retry took a slot");
    let m = String::from_utf8_lossy(&get(&c, &p.admin_url("/metrics")).await.body).into_owned();
    assert!(m.contains("dastra_proxy_upstream_retries_total 20"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_stops_a_retry_storm_and_a_full_window_stops_retries() {
    let up = MockUpstream::start().await;
    let p = TestProxy::start_edit(
        &up,
        "[[limits]]\nrequests = 1000\nper = \"1m\"\n",
        with_retries("0.1", 0),
    )
    .await;
    let c = client();
    up.state.fail_status.store(503, Ordering::SeqCst);
    for i in 0..50 {
        assert_eq!(get(&c, &p.url(&format!("/v1/storm/{i}"))).await.status, 503);
    }
    let sent = up.arrivals("/v1/storm/").len();
    // 50 calls earn 5 retries, plus the 3 a quiet proxy starts with.
    assert!((50..=58).contains(&sent), "{sent} sends for 50 calls");

    // Retries wait for slots like any call: a full window (reject) ends them.
    let up = MockUpstream::start().await;
    let p = TestProxy::start_edit(
        &up,
        "[[limits]]\nrequests = 3\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n",
        with_retries("1.0", 0),
    )
    .await;
    up.state.fail_status.store(503, Ordering::SeqCst);
    assert_eq!(get(&c, &p.url("/v1/full/0")).await.status, 503);
    assert_eq!(
        up.arrivals("/v1/full/").len(),
        3,
        "two retries, then the window is full"
    );
    let r = get(&c, &p.url("/v1/full/1")).await;
    assert_eq!(r.code(), "quota_exhausted");
    assert_eq!(up.arrivals("/v1/full/").len(), 3);
}
