//! Quota savings end to end (SPEC §8, `[cache]`): identical GETs in flight
//! share one upstream call, cached answers spend nothing, and nothing stale or
//! foreign is ever served. Judged on the mock upstream's own log.

mod support;

use std::time::Duration;

use http::Method;
use support::{client, get, send, MockUpstream, Reply, TestClient, TestProxy};

const RULES: &str = "[cache]\n[[cache.rules]]\npath = \"/v1/ws/*/Actors\"\nttl = \"400ms\"\n";

async fn many(
    c: &TestClient,
    urls: Vec<(String, Vec<(&'static str, &'static str)>)>,
) -> Vec<Reply> {
    support::gets_together(c, urls).await
}

fn body(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn upstream_calls(up: &MockUpstream, prefix: &str) -> usize {
    up.log()
        .iter()
        .filter(|r| r.target.starts_with(prefix))
        .count()
}

/// Whether calls wait for the quota or are refused at once, identical GETs
/// share one call while the window has room (`reject` skips sharing only
/// when the call would be refused anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_identical_gets_in_flight_cost_one_call() {
    for admission in ["", "[admission]\non_limit = \"reject\"\n"] {
        ten_identical_gets_cost_one_call(admission).await;
    }
}

async fn ten_identical_gets_cost_one_call(admission: &str) {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, admission).await;
    let c = client();
    let replies = many(
        &c,
        (0..10)
            .map(|_| (proxy.url("/seq/300/same"), vec![]))
            .collect(),
    )
    .await;
    assert_eq!(upstream_calls(&up, "/seq/300/same"), 1, "{admission}");
    let first = body(&replies[0]);
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(body(r), first, "every caller got the one call's answer");
    }
    let collapsed = replies
        .iter()
        .filter(|r| r.header("cache-status") == Some("dastra-proxy; fwd=uri-miss; collapsed"))
        .count();
    assert_eq!(collapsed, 9);
    let q = get(&c, &proxy.admin_url("/quota")).await.json();
    assert_eq!(q["windows"][0]["used"], 1, "{q}");
    let m = String::from_utf8_lossy(&get(&c, &proxy.admin_url("/metrics")).await.body).into_owned();
    assert!(
        m.contains("dastra_proxy_quota_saved_total{how=\"coalesced\"} 9"),
        "{m}"
    );
}

/// Identical GETs that arrive while the window is full, in queue mode, wait
/// together behind one call: one send when the window frees, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_gets_waiting_for_the_window_cost_one_call() {
    let up = MockUpstream::start().await;
    let limits = "[[limits]]\nrequests = 1\nper = \"600ms\"\n[admission]\nmargin = \"0s\"\n";
    let proxy = TestProxy::start(&up, limits).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/first")).await.status, 200);
    let replies = many(
        &c,
        (0..5)
            .map(|_| (proxy.url("/seq/100/later"), vec![]))
            .collect(),
    )
    .await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(upstream_calls(&up, "/seq/100/later"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_queries_accepts_methods_and_credentials_are_never_shared() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let replies = many(
        &c,
        vec![
            (proxy.url("/seq/300/q?x=1"), vec![]),
            (proxy.url("/seq/300/q?x=2"), vec![]),
            (proxy.url("/seq/300/q?x=1"), vec![("accept", "text/csv")]),
            (
                proxy.url("/seq/300/q?x=1"),
                vec![("accept", "application/json")],
            ),
        ],
    )
    .await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(upstream_calls(&up, "/seq/300/q"), 4);
    let posts: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (c.clone(), proxy.url("/seq/300/post"));
            tokio::spawn(async move {
                send(&c, Method::POST, &url, &[], axum::body::Body::empty()).await
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.await.unwrap().status, 200);
    }
    assert_eq!(
        upstream_calls(&up, "/seq/300/post"),
        3,
        "a write is never shared"
    );

    // Passthrough: two callers' own credentials are two quota keys.
    let pass = TestProxy::start_edit(&up, "", |t| {
        t.replace(
            "kind = \"api_key\"\napi_key_env = \"TEST_DASTRA_KEY\"",
            "kind = \"passthrough\"",
        )
    })
    .await;
    let replies = many(
        &c,
        vec![
            (
                pass.url("/seq/300/cred"),
                vec![("x-api-key", "caller-one-key-0123456789")],
            ),
            (
                pass.url("/seq/300/cred"),
                vec![("x-api-key", "caller-two-key-0123456789")],
            ),
        ],
    )
    .await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(upstream_calls(&up, "/seq/300/cred"), 2);
    assert_ne!(body(&replies[0]), body(&replies[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_max_entry_sends_followers_upstream_themselves() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "[cache]\nmax_entry = \"1MiB\"\n").await;
    let c = client();
    let replies = many(
        &c,
        (0..3)
            .map(|_| (proxy.url("/seq/300/big"), vec![]))
            .collect(),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 2 << 20);
    }
    assert_eq!(upstream_calls(&up, "/seq/300/big"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_of_a_leader_or_a_follower_disturb_nobody() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let gone = |path: &str| {
        let (c, url) = (c.clone(), proxy.url(path));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(100), get(&c, &url)).await;
        })
    };
    // The leader leaves; the follower still gets the one call's answer.
    let leader = gone("/seq/400/lead");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let follower = get(&c, &proxy.url("/seq/400/lead")).await;
    leader.await.unwrap();
    assert_eq!(follower.status, 200);
    assert_eq!(
        follower.header("cache-status"),
        Some("dastra-proxy; fwd=uri-miss; collapsed")
    );
    assert_eq!(upstream_calls(&up, "/seq/400/lead"), 1);
    // A follower leaves; the leader and another follower are answered.
    let lead = {
        let (c, url) = (c.clone(), proxy.url("/seq/400/follow"));
        tokio::spawn(async move { get(&c, &url).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let quitter = gone("/seq/400/follow");
    let other = get(&c, &proxy.url("/seq/400/follow")).await;
    quitter.await.unwrap();
    let lead = lead.await.unwrap();
    assert_eq!((lead.status.as_u16(), other.status.as_u16()), (200, 200));
    assert_eq!(body(&lead), body(&other));
    assert_eq!(upstream_calls(&up, "/seq/400/follow"), 1);
}

/// A call queued for the window whose every caller left — its follower,
/// then its leader — is dropped from the queue, not finished for nobody:
/// it spends no quota. The next call, queued behind it, is the next sent;
/// the same GET later starts a flight of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_call_everyone_left_spends_nothing() {
    let up = MockUpstream::start().await;
    let limits = "[[limits]]\nrequests = 1\nper = \"600ms\"\n[admission]\nmargin = \"0s\"\n";
    let proxy = TestProxy::start(&up, limits).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/first")).await.status, 200);
    let leave_after = |ms: u64| {
        let (c, url) = (c.clone(), proxy.url("/v1/left"));
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_millis(ms), get(&c, &url)).await;
            assert!(r.is_err(), "answered while the window was full");
        })
    };
    let leader = leave_after(200);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let follower = leave_after(100);
    follower.await.unwrap();
    leader.await.unwrap();
    assert_eq!(get(&c, &proxy.url("/v1/next")).await.status, 200);
    assert_eq!(upstream_calls(&up, "/v1/left"), 0, "sent for nobody");
    // The abandoned flight is over: the same GET later leads a new one
    // rather than follow one that will never land.
    let again = tokio::time::timeout(Duration::from_secs(5), get(&c, &proxy.url("/v1/left")))
        .await
        .expect("followed a flight that never lands");
    assert_eq!(again.status, 200);
    assert_eq!(upstream_calls(&up, "/v1/left"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_spend_nothing_and_never_go_stale_or_survive_a_write() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, RULES).await;
    let c = client();
    let url = proxy.url("/v1/ws/1/Actors");
    let first = get(&c, &url).await;
    assert_eq!(
        first.header("cache-status"),
        Some("dastra-proxy; fwd=uri-miss; stored")
    );
    let hit = get(&c, &url).await;
    assert!(hit
        .header("cache-status")
        .unwrap()
        .starts_with("dastra-proxy; hit; ttl="));
    assert_eq!(body(&hit), body(&first));
    let head = send(&c, Method::HEAD, &url, &[], axum::body::Body::empty()).await;
    assert!(head.header("cache-status").unwrap().contains("hit"));
    assert!(head.body.is_empty());
    assert_eq!(
        upstream_calls(&up, "/v1/ws/1/Actors"),
        1,
        "hits and HEAD spent nothing"
    );

    // After the ttl: a miss.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let after = get(&c, &url).await;
    assert_ne!(body(&after), body(&first));
    assert_eq!(upstream_calls(&up, "/v1/ws/1/Actors"), 2);

    // A failed write leaves the entry; a 2xx write under the resource evicts it.
    let w = send(
        &c,
        Method::POST,
        &proxy.url("/v1/ws/1/Actors/7"),
        &[("x-mock-status", "400")],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(w.status, 400);
    assert!(get(&c, &url)
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    let w = send(
        &c,
        Method::PUT,
        &proxy.url("/v1/ws/1/Actors/7"),
        &[],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(w.status, 200);
    let evicted = get(&c, &url).await;
    assert_eq!(
        evicted.header("cache-status"),
        Some("dastra-proxy; fwd=uri-miss; stored")
    );
    assert_eq!(
        upstream_calls(&up, "/v1/ws/1/Actors"),
        5,
        "3 GETs upstream and 2 writes"
    );

    // The client's no-cache goes upstream and refreshes the entry.
    let fresh = send(
        &c,
        Method::GET,
        &url,
        &[("cache-control", "no-cache")],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(
        fresh.header("cache-status"),
        Some("dastra-proxy; fwd=request; stored")
    );
    assert_eq!(body(&get(&c, &url).await), body(&fresh));

    let m = String::from_utf8_lossy(&get(&c, &proxy.admin_url("/metrics")).await.body).into_owned();
    assert!(
        m.contains("dastra_proxy_quota_saved_total{how=\"cached\"} 4"),
        "{m}"
    );
    assert!(!m.contains("dastra_proxy_cache_bytes 0\n"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_answers_are_not_kept() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(
        &up,
        "[cache]\n[[cache.rules]]\npath = \"/seq/0/nostore\"\nttl = \"30s\"\n",
    )
    .await;
    let c = client();
    for _ in 0..2 {
        let r = get(&c, &proxy.url("/seq/0/nostore")).await;
        assert_eq!(r.header("cache-status"), Some("dastra-proxy; fwd=uri-miss"));
    }
    assert_eq!(upstream_calls(&up, "/seq/0/nostore"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_shared_by_those_waiting_on_it_only() {
    let up = MockUpstream::start().await;
    // upstream.timeout is 2 s in the test config: /slow/2500 times out.
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let replies = many(
        &c,
        (0..3).map(|_| (proxy.url("/slow/2500"), vec![])).collect(),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, 504, "{}", body(r));
        assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    }
    assert_eq!(
        upstream_calls(&up, "/slow/2500"),
        1,
        "one call, one failure, shared"
    );
    // Arriving after the failure: a call of its own, not the old error.
    let fresh = get(&c, &proxy.url("/slow/10")).await;
    assert_eq!(fresh.status, 200);
    let again = many(&c, vec![(proxy.url("/slow/2500"), vec![])]).await;
    assert_eq!(again[0].status, 504);
    assert_eq!(upstream_calls(&up, "/slow/2500"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_rules_apply_on_reload() {
    let up = MockUpstream::start().await;
    let proxy = TestProxy::start(&up, "").await;
    let c = client();
    let url = proxy.url("/v1/ws/9/Actors");
    for _ in 0..2 {
        assert_eq!(
            get(&c, &url).await.header("cache-status"),
            Some("dastra-proxy; fwd=uri-miss")
        );
    }
    let path = proxy.dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap() + RULES;
    std::fs::write(&path, text).unwrap();
    let next = dastra_proxy::config::Config::load_with(&path, &support::test_env()).unwrap();
    proxy.running.as_ref().unwrap().app.reload(&next).unwrap();
    assert_eq!(
        get(&c, &url).await.header("cache-status"),
        Some("dastra-proxy; fwd=uri-miss; stored")
    );
    assert!(get(&c, &url)
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    assert_eq!(upstream_calls(&up, "/v1/ws/9/Actors"), 3);
}
