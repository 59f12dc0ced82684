//! Each client's own windows (`[[clients.limits]]`, SPEC §9.3) through the
//! real stack, judged on the mock Dastra's arrivals: exact like the
//! credential's windows, refused with the client's own RateLimit fields,
//! measured but not enforced in a dry run, and no business of the others.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::Method;
use sha2::{Digest as _, Sha256};
use support::*;

const BI: &str = "bi-export-client-key-0001";
const FORM: &str = "rights-form-client-key-02";

fn clients(bi_limits: &str, bi_extra: &str) -> String {
    format!(
        "[[clients]]\nname = \"bi\"\nkey_sha256 = \"{}\"\n{bi_extra}{bi_limits}\
         [[clients]]\nname = \"form\"\nkey_sha256 = \"{}\"\n",
        hex::encode(Sha256::digest(BI.as_bytes())),
        hex::encode(Sha256::digest(FORM.as_bytes())),
    )
}

async fn as_client(c: &TestClient, url: &str, key: &str) -> Reply {
    send(c, Method::GET, url, &[("x-api-key", key)], Body::empty()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_own_window_is_refused_with_its_own_fields() {
    let up = MockUpstream::start().await;
    let limits = "[[clients.limits]]\nrequests = 3\nper = \"1m\"\n";
    let p = TestProxy::start(&up, &clients(limits, "")).await;
    let c = client();
    let mut bi = Vec::new();
    for i in 0..5 {
        bi.push(as_client(&c, &p.url(&format!("/v1/bi/{i}")), BI).await);
    }
    let statuses: Vec<u16> = bi.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let refused = &bi[3];
    assert_eq!(refused.code(), "client_quota_exhausted");
    assert_eq!(refused.header("ratelimit-policy"), Some("\"1m\";q=3;w=60"));
    assert!(refused
        .header("ratelimit")
        .unwrap()
        .starts_with("\"1m\";r=0;t="));
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (59..=61).contains(&wait),
        "Retry-After {wait}: when bi's oldest send leaves its window"
    );
    // The answers bi got carry the credential's window, not its own.
    assert_eq!(
        bi[0].header("ratelimit-policy"),
        Some("\"1m\";q=500;w=60, \"10m\";q=10000;w=600")
    );
    // Another client is no business of bi's limit.
    for i in 0..4 {
        assert_eq!(
            as_client(&c, &p.url(&format!("/v1/form/{i}")), FORM)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        up.arrivals("/v1/bi/").len(),
        3,
        "refused calls were never sent"
    );
    let q = get(&c, &p.admin_url("/quota")).await.json();
    assert_eq!(q["clients"]["bi"]["limits"][0]["used"], 3, "{q}");
    assert_eq!(q["clients"]["bi"]["limits"][0]["limit"], 3, "{q}");
    assert_eq!(q["clients"]["bi"]["refused"], 2, "{q}");
    assert!(q["clients"]["form"].get("limits").is_none(), "{q}");
    assert_eq!(q["clients"]["bi"]["priority"], "normal", "{q}");
    assert_eq!(q["clients"]["form"]["weight"], 1, "{q}");
    let m = scrape(&c, p.admin).await;
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_client_window_used{client=\"bi\",window=\"1m\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_rejected_total{client=\"bi\",code=\"client_quota_exhausted\"}"
        ),
        2.0
    );
    p.shutdown().await;
}

/// 5 per 400 ms for bi, calls from 6 loops for about 1.5 s, the
/// credential's window far larger: in any 400 ms span of Dastra's own
/// arrival log there are never more than 5 of bi's calls, and bi's window
/// is used (at least 5 in each of its first few windows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_window_holds_exactly_under_a_flood() {
    let up = MockUpstream::start().await;
    let limits = "[[clients.limits]]\nrequests = 5\nper = \"400ms\"\n";
    let extra = format!("[admission]\nmargin = \"20ms\"\n{}", clients(limits, ""));
    let p = TestProxy::start(&up, &extra).await;
    let c = client();
    let stop = tokio::time::Instant::now() + Duration::from_millis(1500);
    let loops: Vec<_> = (0..6)
        .map(|l| {
            let (c, url) = (c.clone(), p.url(&format!("/v1/bi/{l}")));
            tokio::spawn(async move {
                let mut refused = 0;
                for _ in 0..2000 {
                    if tokio::time::Instant::now() >= stop {
                        break;
                    }
                    let r = as_client(&c, &url, BI).await;
                    match r.status.as_u16() {
                        200 => {}
                        429 => {
                            assert_eq!(r.code(), "client_quota_exhausted");
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        s => panic!("status {s}"),
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for l in loops {
        refused += l.await.unwrap();
    }
    assert!(refused > 0, "the flood met bi's limit");
    let arrivals = up.arrivals("/v1/bi/");
    let span = Duration::from_millis(400);
    for (i, t) in arrivals.iter().enumerate() {
        let n = arrivals[i..].iter().take_while(|a| **a < *t + span).count();
        assert!(n <= 5, "{n} of bi's calls reached Dastra within 400 ms");
    }
    assert!(
        arrivals.len() >= 15,
        "{} sent: bi's window was used",
        arrivals.len()
    );
    p.shutdown().await;
}

/// A client in `dry_run` is measured, not refused: every call goes, and each
/// its limit would have refused is counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_client_is_measured_not_refused() {
    let up = MockUpstream::start().await;
    let limits = "[[clients.limits]]\nrequests = 2\nper = \"1m\"\n";
    let p = TestProxy::start(&up, &clients(limits, "dry_run = true\n")).await;
    let c = client();
    for i in 0..5 {
        assert_eq!(
            as_client(&c, &p.url(&format!("/v1/bi/{i}")), BI)
                .await
                .status,
            200
        );
    }
    assert_eq!(up.arrivals("/v1/bi/").len(), 5, "everything forwarded");
    let m = scrape(&c, p.admin).await;
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_dry_run_total{client=\"bi\",would=\"reject\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_client_window_used{client=\"bi\",window=\"1m\"}"
        ),
        5.0,
        "its sends in the window, over the limit it is watched against"
    );
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_rejected_total{client=\"bi\",code=\"client_quota_exhausted\"}"
        ),
        0.0
    );
    p.shutdown().await;
}

/// Priorities through the real stack, judged on Dastra's arrival log: 12
/// low clients flood a 4-per-400 ms window from 12 loops while a high client
/// calls now and then. Between a high call leaving the caller and reaching
/// Dastra, only low calls already granted (at most the 4 of one window) may
/// arrive: none is granted while it waits. Weighted-fair order alone would
/// put it behind a call of each of the 12.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_client_overtakes_twelve_flooding_low_clients() {
    let up = MockUpstream::start().await;
    let key = |i: usize| format!("low-client-key-{i:04}-padding");
    let mut extra = String::from(
        "[[limits]]\nrequests = 4\nper = \"400ms\"\n[admission]\nmargin = \"10ms\"\nmax_wait = \"30s\"\n",
    );
    for i in 0..12 {
        extra += &format!(
            "[[clients]]\nname = \"low{i}\"\nkey_sha256 = \"{}\"\npriority = \"low\"\n",
            hex::encode(Sha256::digest(key(i).as_bytes()))
        );
    }
    extra += &format!(
        "[[clients]]\nname = \"form\"\nkey_sha256 = \"{}\"\npriority = \"high\"\n",
        hex::encode(Sha256::digest(FORM.as_bytes()))
    );
    let p = TestProxy::start(&up, &extra).await;
    let c = client();
    let stop = tokio::time::Instant::now() + Duration::from_millis(3000);
    let loops: Vec<_> = (0..12)
        .map(|i| {
            let (c, url, key) = (c.clone(), p.url(&format!("/v1/low/{i}")), key(i));
            tokio::spawn(async move {
                for _ in 0..1000 {
                    if tokio::time::Instant::now() >= stop {
                        break;
                    }
                    assert_eq!(as_client(&c, &url, &key).await.status, 200);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut high = Vec::new();
    for i in 0..5 {
        let sent = tokio::time::Instant::now();
        let r = as_client(&c, &p.url(&format!("/v1/high/{i}")), FORM).await;
        assert_eq!(r.status, 200);
        high.push(sent);
        tokio::time::sleep(Duration::from_millis(230)).await;
    }
    for l in loops {
        l.await.unwrap();
    }
    let log = up.log();
    for (i, sent) in high.iter().enumerate() {
        let arrived = (log.iter())
            .find(|r| r.target == format!("/v1/high/{i}"))
            .unwrap()
            .at;
        let lows = (log.iter())
            .filter(|r| r.target.starts_with("/v1/low/") && r.at > *sent && r.at < arrived)
            .count();
        assert!(
            lows <= 4,
            "{lows} low calls reached Dastra while high call {i} waited"
        );
    }
    assert!(
        up.arrivals("/v1/low/").len() >= 20,
        "the low clients got the rest"
    );
    p.shutdown().await;
}

/// With the state file (the default), a client's own window survives a
/// restart as the credential's does: its sends are in the file under a key
/// of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_window_survives_a_restart() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let limits = "[[clients.limits]]\nrequests = 3\nper = \"1m\"\n";
    let config = clients(limits, "");
    let proxy = BinProxy::start(dir.path(), &up, &config);
    let c = client();
    for i in 0..3 {
        let r = as_client(&c, &proxy.url(&format!("/v1/bi/{i}")), BI).await;
        assert_eq!(r.status, 200);
    }
    proxy.terminate().await;
    let proxy = BinProxy::start(dir.path(), &up, &config);
    let r = as_client(&c, &proxy.url("/v1/bi/3"), BI).await;
    assert_eq!(
        r.code(),
        "client_quota_exhausted",
        "the restart forgot bi's window"
    );
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=61).contains(&wait),
        "Retry-After {wait} from the restored window"
    );
    assert_eq!(
        as_client(&c, &proxy.url("/v1/form/0"), FORM).await.status,
        200,
        "the other client is free"
    );
    assert_eq!(up.arrivals("/v1/bi/").len(), 3);
}

/// With Redis, a client's own window is one window across the replicas, as
/// the credential's is: 3 a minute for bi whichever replica it calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_hold_a_clients_window_together_through_redis() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let limits = "[[clients.limits]]\nrequests = 3\nper = \"1m\"\n";
    let config = format!(
        "{}[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-clients\"\nreplicas = 2\n",
        clients(limits, ""),
        redis.url()
    );
    let a = TestProxy::start(&up, &config).await;
    let b = TestProxy::start(&up, &config).await;
    let c = client();
    let mut bi = Vec::new();
    for (i, p) in [&a, &b, &a, &b].iter().enumerate() {
        bi.push(as_client(&c, &p.url(&format!("/v1/bi/{i}")), BI).await);
    }
    let statuses: Vec<u16> = bi.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "one window of 3 across both replicas"
    );
    assert_eq!(bi[3].code(), "client_quota_exhausted");
    assert_eq!(bi[3].header("ratelimit-policy"), Some("\"1m\";q=3;w=60"));
    assert!(bi[3].header("retry-after").is_some());
    assert_eq!(as_client(&c, &b.url("/v1/form/0"), FORM).await.status, 200);
    assert_eq!(up.arrivals("/v1/bi/").len(), 3);
    a.shutdown().await;
    b.shutdown().await;
}
