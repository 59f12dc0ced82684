//! Reserved shares (`[[clients]] reserve`, SPEC §9.3) through the real
//! stack, judged on the mock Dastra's arrivals: the owner's burst goes at
//! once however hard the others flood, the others never get more than what
//! the unused reserve leaves them, and Dastra's window holds as a whole —
//! in memory, across a restart, and across replicas through Redis.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::Method;
use sha2::{Digest as _, Sha256};
use support::*;

const SYNC: &str = "crm-sync-client-key-00001";
const FORM: &str = "rights-form-client-key-02";

/// `limits`, then a flooding `sync` and a `form` holding `reserve`.
fn config(limits: &str, reserve: &str) -> String {
    format!(
        "{limits}[[clients]]\nname = \"sync\"\nkey_sha256 = \"{}\"\n\
         [[clients]]\nname = \"form\"\nkey_sha256 = \"{}\"\nreserve = {reserve}\n",
        hex::encode(Sha256::digest(SYNC.as_bytes())),
        hex::encode(Sha256::digest(FORM.as_bytes())),
    )
}

async fn as_client(c: &TestClient, url: &str, key: &str) -> Reply {
    send(c, Method::GET, url, &[("x-api-key", key)], Body::empty()).await
}

/// The most arrivals in any `span` of the sorted `log`.
fn busiest(log: &[tokio::time::Instant], span: Duration) -> usize {
    (0..log.len())
        .map(|i| log[i..].iter().take_while(|a| **a < log[i] + span).count())
        .max()
        .unwrap_or(0)
}

/// 10 per 800 ms, 0.3 of it the form's: the sync floods from 8 loops (it
/// queues), and in no 800 ms of Dastra's log does it get more than 7. The
/// form's burst of 3 is sent at once — between the form sending and its
/// calls arriving, no more of the sync's calls reach Dastra than were
/// already in flight — and nothing is wasted: the sync gets its 7 in each
/// window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_serves_its_owner_at_once_while_a_flood_runs() {
    let up = MockUpstream::start().await;
    let limits = "[[limits]]\nrequests = 10\nper = \"800ms\"\n\
                  [admission]\nmargin = \"10ms\"\nmax_wait = \"30s\"\n";
    let p = TestProxy::start(&up, &config(limits, "0.3")).await;
    let c = client();
    let stop = tokio::time::Instant::now() + Duration::from_millis(2600);
    let loops: Vec<_> = (0..8)
        .map(|l| {
            let (c, url) = (c.clone(), p.url(&format!("/v1/sync/{l}")));
            tokio::spawn(async move {
                for _ in 0..1000 {
                    if tokio::time::Instant::now() >= stop {
                        break;
                    }
                    assert_eq!(as_client(&c, &url, SYNC).await.status, 200);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sent = tokio::time::Instant::now();
    let burst: Vec<_> = (0..3)
        .map(|i| {
            let (c, url) = (c.clone(), p.url(&format!("/v1/form/{i}")));
            tokio::spawn(async move { as_client(&c, &url, FORM).await.status })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    let q = get(&c, &p.admin_url("/quota")).await.json();
    for l in loops {
        l.await.unwrap();
    }
    let form = up.arrivals("/v1/form/");
    assert_eq!(form.len(), 3);
    let last = *form.iter().max().unwrap();
    let overtook = (up.arrivals("/v1/sync/").iter())
        .filter(|t| **t > sent && **t < last)
        .count();
    assert!(
        overtook <= 7,
        "{overtook} sync calls reached Dastra while the form's burst was on its way"
    );
    let sync = up.arrivals("/v1/sync/");
    let span = Duration::from_millis(800);
    assert!(busiest(&sync, span) <= 7, "the flood took the reserve");
    let mut all = up.arrivals("/v1/");
    all.sort();
    assert!(busiest(&all, span) <= 10, "Dastra's window was exceeded");
    assert!(
        sync.len() >= 7 * 3,
        "{} sync calls in ~3 windows: the rest was used",
        sync.len()
    );
    // Who holds what, as /quota says it.
    assert_eq!(q["clients"]["form"]["reserve"][0]["limit"], 3, "{q}");
    assert_eq!(q["clients"]["form"]["reserve"][0]["used"], 3, "{q}");
    let rest = &q["credentials"]["default"]["shared_rest"]["windows"][0];
    assert_eq!(rest["limit"], 7, "{q}");
    p.shutdown().await;
}

/// Reject mode: the sync gets exactly the 7 the reserve leaves, refused with
/// the shared rest's fields; the form's 3 go, its 4th counts in the rest
/// and is refused there too; Retry-After is the sooner of the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_others_get_only_what_every_unused_reserve_leaves() {
    let up = MockUpstream::start().await;
    let limits = "[[limits]]\nrequests = 10\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n";
    let p = TestProxy::start(&up, &config(limits, "0.3")).await;
    let c = client();
    let mut sync = Vec::new();
    for i in 0..9 {
        sync.push(as_client(&c, &p.url(&format!("/v1/sync/{i}")), SYNC).await);
    }
    let statuses: Vec<u16> = sync.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 429, 429]);
    // What the caller asked to wait is held to the rest's max_wait (30 s).
    let asked = send(
        &c,
        Method::GET,
        &p.url("/v1/sync/asked"),
        &[("x-api-key", SYNC), ("prefer", "wait=100")],
        Body::empty(),
    )
    .await;
    assert_eq!(asked.code(), "quota_exhausted");
    assert_eq!(asked.header("preference-applied"), Some("wait=30"));
    assert_eq!(sync[7].code(), "quota_exhausted");
    assert_eq!(sync[7].header("ratelimit-policy"), Some("\"1m\";q=7;w=60"));
    let wait: u64 = sync[7].header("retry-after").unwrap().parse().unwrap();
    assert!((59..=61).contains(&wait), "Retry-After {wait}");
    let mut form = Vec::new();
    for i in 0..4 {
        form.push(as_client(&c, &p.url(&format!("/v1/form/{i}")), FORM).await);
    }
    let statuses: Vec<u16> = form.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "3 of its own, then the full rest"
    );
    assert_eq!(up.arrivals("/v1/sync/").len(), 7);
    assert_eq!(up.arrivals("/v1/form/").len(), 3);
    let m = scrape(&c, p.admin).await;
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_window_used{credential=\"default\",window=\"1m\"}"
        ),
        10.0,
        "the credential's window counts every send"
    );
    // Who spent the quota: each client's sends in each window, as Dastra
    // saw them arrive.
    let series =
        |c: &str| format!("dastra_proxy_client_window_used{{client=\"{c}\",window=\"1m\"}}");
    assert_eq!(metric(&m, &series("sync")), 7.0);
    assert_eq!(metric(&m, &series("form")), 3.0);
    let reserve = "dastra_proxy_client_reserve{client=\"form\",window=\"1m\"}";
    assert_eq!(metric(&m, reserve), 3.0, "the form's part of the window");
    let q = get(&c, &p.admin_url("/quota")).await.json();
    assert_eq!(q["clients"]["sync"]["windows"][0]["used"], 7, "{q}");
    assert_eq!(q["clients"]["form"]["windows"][0]["used"], 3, "{q}");
    assert_eq!(q["clients"]["form"]["windows"][0]["window"], "1m", "{q}");
    p.shutdown().await;
}

/// The reserve and the rest are quota keys of their own in the state file:
/// after a restart the sync still has only what is left of its 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_survives_a_restart() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let limits = "[[limits]]\nrequests = 10\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n";
    let cfg = config(limits, "0.3");
    let proxy = BinProxy::start(dir.path(), &up, &cfg);
    let c = client();
    for i in 0..7 {
        let r = as_client(&c, &proxy.url(&format!("/v1/sync/{i}")), SYNC).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        as_client(&c, &proxy.url("/v1/form/0"), FORM).await.status,
        200
    );
    proxy.terminate().await;
    let proxy = BinProxy::start(dir.path(), &up, &cfg);
    let r = as_client(&c, &proxy.url("/v1/sync/7"), SYNC).await;
    assert_eq!(r.code(), "quota_exhausted", "the restart forgot the rest");
    for i in 1..3 {
        let r = as_client(&c, &proxy.url(&format!("/v1/form/{i}")), FORM).await;
        assert_eq!(r.status, 200, "the form's reserve kept its 2 unused calls");
    }
    let r = as_client(&c, &proxy.url("/v1/form/3"), FORM).await;
    assert_eq!(r.status, 429, "and only those");
    assert_eq!(up.arrivals("/v1/").len(), 10);
}

/// Through Redis, the reserve and the rest are each one window across the
/// replicas: the sync calling both gets 7 in all, the form its 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_hold_a_reserve_together_through_redis() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let limits = "[[limits]]\nrequests = 20\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n";
    let cfg = format!(
        "{}[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-reserve\"\nreplicas = 2\n",
        config(limits, "0.2"),
        redis.url()
    );
    let a = TestProxy::start(&up, &cfg).await;
    let b = TestProxy::start(&up, &cfg).await;
    let c = client();
    let mut ok = 0;
    for i in 0..20 {
        let p = if i % 2 == 0 { &a } else { &b };
        let r = as_client(&c, &p.url(&format!("/v1/sync/{i}")), SYNC).await;
        ok += usize::from(r.status == 200);
    }
    assert_eq!(ok, 16, "the rest is 20 - 4 across both replicas");
    for i in 0..4 {
        let p = if i % 2 == 0 { &b } else { &a };
        let r = as_client(&c, &p.url(&format!("/v1/form/{i}")), FORM).await;
        assert_eq!(r.status, 200, "the form's reserve, whichever replica");
    }
    let r = as_client(&c, &a.url("/v1/form/4"), FORM).await;
    assert_eq!(r.status, 429);
    assert_eq!(up.arrivals("/v1/").len(), 20);
    a.shutdown().await;
    b.shutdown().await;
}

/// A reload that changes a reserve splits the windows anew, keeping the
/// sends each part holds; Dastra's window holds whatever the parts say:
/// with the form's reserve raised to 0.5 after the sync took its 7, the
/// form gets only the 3 Dastra's window has left; with the reserve gone,
/// nobody gets more until the window frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resplits_the_windows_and_dastras_window_holds() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let limits = "[[limits]]\nrequests = 10\nper = \"1m\"\n[admission]\non_limit = \"reject\"\n";
    let proxy = BinProxy::start(dir.path(), &up, &config(limits, "0.3"));
    let c = client();
    let url = |p: &str| proxy.url(p);
    for i in 0..7 {
        assert_eq!(
            as_client(&c, &url(&format!("/v1/sync/{i}")), SYNC)
                .await
                .status,
            200
        );
    }
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("reserve = 0.3", "reserve = 0.5")).unwrap();
    hup(&c, &proxy, "ok", 1.0).await;
    let q = get(&c, &format!("http://{}/quota", proxy.admin))
        .await
        .json();
    assert_eq!(q["clients"]["form"]["reserve"][0]["limit"], 5, "{q}");
    let rest = &q["credentials"]["default"]["shared_rest"]["windows"][0];
    // The rest's log keeps the newest 5 of the sync's 7: all a full window
    // of 5 needs to know when it next has room.
    assert_eq!(
        (rest["limit"].as_u64(), rest["used"].as_u64()),
        (Some(5), Some(5)),
        "{q}"
    );
    assert_eq!(
        as_client(&c, &url("/v1/sync/7"), SYNC).await.code(),
        "quota_exhausted"
    );
    let mut form = Vec::new();
    for i in 0..5 {
        form.push(
            as_client(&c, &url(&format!("/v1/form/{i}")), FORM)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(form, [200, 200, 200, 429, 429], "Dastra's 10 hold");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("reserve = 0.5\n", "")).unwrap();
    hup(&c, &proxy, "ok", 2.0).await;
    let q = get(&c, &format!("http://{}/quota", proxy.admin))
        .await
        .json();
    assert!(
        q["credentials"]["default"].get("shared_rest").is_none(),
        "{q}"
    );
    assert!(q["clients"]["form"].get("reserve").is_none(), "{q}");
    assert_eq!(
        as_client(&c, &url("/v1/sync/8"), SYNC).await.code(),
        "quota_exhausted"
    );
    assert_eq!(
        as_client(&c, &url("/v1/form/5"), FORM).await.code(),
        "quota_exhausted"
    );
    assert_eq!(up.arrivals("/v1/").len(), 10);
}
