//! Several replicas share one quota through a real redis-server, and survive
//! it going away.

mod support;

use std::time::Duration;

use support::*;
use tokio::time::Instant;

fn store(redis: &RedisServer, on_error: &str, replicas: u32) -> String {
    format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-test\"\non_error = \"{on_error}\"\nreplicas = {replicas}\n",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_one_quota_exactly_and_use_it_fully() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let extra = format!(
        "[[limits]]\nrequests = 20\nper = \"2s\"\n[admission]\nmargin = \"10ms\"\nmax_wait = \"30s\"\n{}",
        store(&redis, "local", 3)
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas: Vec<BinProxy> = dirs
        .iter()
        .map(|d| BinProxy::start(d.path(), &up, &extra))
        .collect();
    let c = client();
    let first = get(&c, &replicas[0].url("/v1/r/first")).await;
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"2s\";q=20;w=2"),
        "the whole quota, not a replica's share"
    );
    let mut calls = Vec::new();
    for i in 0..69 {
        let (c, url) = (c.clone(), replicas[i % 3].url(&format!("/v1/r/{i}")));
        calls.push(tokio::spawn(
            async move { get(&c, &url).await.status.as_u16() },
        ));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let mut arrivals = up.arrivals("/v1/r/");
    arrivals.sort();
    assert_eq!(arrivals.len(), 70);
    let r = get(&c, &replicas[2].url("/v1/r/last")).await;
    let rl = r.header("ratelimit").unwrap_or_default().to_owned();
    assert!(rl.starts_with("\"2s\";r="), "{rl}");
    let remaining: u32 = rl
        .split(";r=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining < 20,
        "the shared window is counted, not this replica's: {rl}"
    );
    let w = Duration::from_secs(2);
    for (i, t) in arrivals.iter().enumerate() {
        let n = arrivals[i..].iter().take_while(|a| **a < *t + w).count();
        assert!(n <= 20, "{n} arrivals within 2 s across the replicas");
    }
    let q = get(&c, &format!("http://{}/quota", replicas[1].admin))
        .await
        .json();
    assert_eq!(
        q["windows"][0]["limit"], 20,
        "the shared window, not this replica's share: {q}"
    );
    let used = q["windows"][0]["used"].as_u64().unwrap();
    assert!(
        (10..=20).contains(&used),
        "every replica's sends are counted: {q}"
    );
    // 70 calls need 3 full windows, each held as W + margin, after the first burst.
    let took = *arrivals.last().unwrap() - arrivals[0];
    let ideal = Duration::from_millis(3 * 2010);
    assert!(took >= ideal);
    let utilisation = ideal.as_secs_f64() / took.as_secs_f64();
    assert!(
        utilisation >= 0.95,
        "the replicas used {:.1}% of the window's capacity ({took:?})",
        utilisation * 100.0
    );
}

async fn metric(c: &TestClient, admin: std::net::SocketAddr, series: &str) -> f64 {
    let m = get(c, &format!("http://{admin}/metrics")).await;
    String::from_utf8_lossy(&m.body)
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_until_200(c: &TestClient, url: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(c, url).await;
        if r.status == 200 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_with_local_fallback_holds_this_replicas_share_then_recovers() {
    let up = MockUpstream::start().await;
    let mut redis = RedisServer::start();
    let port = redis.port;
    let extra = format!(
        "[[limits]]\nrequests = 10\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n{}",
        store(&redis, "local", 2)
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &extra);
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/before")).await.status, 200);

    redis.stop();
    let mut codes = Vec::new();
    for i in 0..8 {
        codes.push(
            get(&c, &proxy.url(&format!("/v1/down/{i}")))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(
        codes.iter().filter(|s| **s == 200).count(),
        4,
        "the local share is 10 / 2 replicas, one of them already sent through Redis: {codes:?}"
    );
    assert!(codes[4..].iter().all(|s| *s == 429));
    assert!(
        metric(
            &c,
            proxy.admin,
            "dastra_proxy_store_errors_total{op=\"decide\"}"
        )
        .await
            >= 1.0
    );
    let ready = get(&c, &format!("http://{}/readyz", proxy.admin)).await;
    assert_eq!(ready.status, 200);
    assert!(String::from_utf8_lossy(&ready.body).contains("store unreachable"));

    let _redis = RedisServer::start_on(port);
    let r = wait_until_200(&c, &proxy.url("/v1/after")).await;
    assert_eq!(r.status, 200, "back on Redis, which restarted empty");
    let q = get(&c, &format!("http://{}/quota", proxy.admin))
        .await
        .json();
    assert_eq!(q["store"]["reachable"], true, "{q}");
    assert_eq!(
        q["windows"][0]["used"], 6,
        "the sends made before and during the outage were written back: {q}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_with_reject_answers_503_then_recovers() {
    let up = MockUpstream::start().await;
    let mut redis = RedisServer::start();
    let port = redis.port;
    let extra = format!(
        "[[limits]]\nrequests = 10\nper = \"1m\"\n{}",
        store(&redis, "reject", 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &extra);
    let c = client();
    assert_eq!(get(&c, &proxy.url("/v1/before")).await.status, 200);
    redis.stop();
    let r = get(&c, &proxy.url("/v1/down")).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "store_unavailable")
    );
    assert_eq!(
        get(&c, &format!("http://{}/readyz", proxy.admin))
            .await
            .status,
        503
    );
    let _redis = RedisServer::start_on(port);
    let r = wait_until_200(&c, &proxy.url("/v1/after")).await;
    assert_eq!(r.status, 200, "recovered without a restart");
    assert_eq!(
        get(&c, &format!("http://{}/readyz", proxy.admin))
            .await
            .status,
        200
    );
    assert_eq!(
        up.arrivals("/v1/down").len(),
        0,
        "nothing was sent without a decision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_limits_apply_in_redis_and_keep_the_recorded_sends() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let before = "[[limits]]\nrequests = 3\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n";
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(
        dir.path(),
        &up,
        &format!("{before}{}", store(&redis, "reject", 1)),
    );
    let c = client();
    for i in 0..3 {
        assert_eq!(get(&c, &proxy.url(&format!("/v1/a/{i}"))).await.status, 200);
    }
    assert_eq!(get(&c, &proxy.url("/v1/a/full")).await.status, 429);
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("requests = 3", "requests = 5");
    std::fs::write(&path, text).unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &c,
        proxy.admin,
        "dastra_proxy_config_reloads_total{result=\"ok\"}",
    )
    .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "reload never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                get(&c, &proxy.url(&format!("/v1/b/{i}")))
                    .await
                    .status
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(
        codes,
        [200, 200, 429],
        "5 in the window now, 3 of them already spent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_on_one_replica_pauses_all_of_them() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let extra = format!(
        "[admission]\nupstream_429 = \"pause\"\n{}",
        store(&redis, "local", 2)
    );
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = BinProxy::start(da.path(), &up, &extra);
    let b = BinProxy::start(db.path(), &up, &extra);
    let c = client();
    assert_eq!(
        get(&c, &a.url("/status/429")).await.status,
        429,
        "Dastra's 429 (Retry-After: 1) reaches replica A"
    );
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*:pause")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the pause never reached Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        get(&c, &b.url("/v1/on-b")).await.status,
        200,
        "queued on B, not failed"
    );
    let first = up.arrivals("/status/429")[0];
    let next = up.arrivals("/v1/on-b")[0];
    assert!(
        next - first >= Duration::from_millis(900),
        "B held back {:?} after A's 429",
        next - first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_when_redis_dies_are_served_from_the_local_share() {
    let up = MockUpstream::start().await;
    let mut redis = RedisServer::start();
    let extra = format!(
        "[[limits]]\nrequests = 2\nper = \"1500ms\"\n[admission]\nmargin = \"0ms\"\nmax_wait = \"10s\"\n{}",
        store(&redis, "local", 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &extra);
    let c = client();
    for i in 0..2 {
        assert_eq!(
            get(&c, &proxy.url(&format!("/v1/fill/{i}"))).await.status,
            200
        );
    }
    let queued: Vec<_> = (0..2)
        .map(|i| {
            let (c, url) = (c.clone(), proxy.url(&format!("/v1/queued/{i}")));
            tokio::spawn(async move { get(&c, &url).await.status.as_u16() })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let q = get(&c, &format!("http://{}/quota", proxy.admin))
            .await
            .json();
        if q["queue_total"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the calls never queued: {q}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.stop();
    for q in queued {
        let status = tokio::time::timeout(Duration::from_secs(10), q)
            .await
            .expect("no hung call")
            .unwrap();
        assert_eq!(
            status, 200,
            "a queued call is not lost when Redis goes away"
        );
    }
    assert_eq!(up.arrivals("/v1/queued/").len(), 2);
}
