//! Several Dastra credentials on one gateway (SPEC §9.3b), judged on what
//! the mock Dastra received: each client's calls go out with its own key
//! only, and each key's quota is held apart — its windows, its pause after a
//! 429, its cache entries, across a reload, a restart and two replicas.

mod support;

use std::path::Path;

use axum::body::Body;
use http::Method;
use sha2::{Digest as _, Sha256};
use support::*;

const HR_KEY: &str = "dastra-hr-key-0123456789";
const CRM_KEY: &str = "dastra-crm-key-9876543210";
const HR_APP: &str = "hr-app-client-key-0001";
const CRM_APP: &str = "crm-app-client-key-0002";
const OTHER_APP: &str = "other-client-key-0003";

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Key files for `hr` and `crm`; two credentials of 3 a minute each, a
/// client for each, and a third client on the default `[credential]`.
fn several(keys: &Path, more: &str) -> String {
    std::fs::write(keys.join("hr.key"), HR_KEY).unwrap();
    std::fs::write(keys.join("crm.key"), CRM_KEY).unwrap();
    format!(
        "[[credentials]]\nname = \"hr\"\napi_key_file = \"{}\"\n\
         [[credentials.limits]]\nrequests = 3\nper = \"1m\"\n\n\
         [[credentials]]\nname = \"crm\"\napi_key_file = \"{}\"\n\
         [[credentials.limits]]\nrequests = 3\nper = \"1m\"\n\n\
         [[clients]]\nname = \"hr-app\"\nkey_sha256 = \"{}\"\ncredential = \"hr\"\n\
         [[clients]]\nname = \"crm-app\"\nkey_sha256 = \"{}\"\ncredential = \"crm\"\n\
         [[clients]]\nname = \"other\"\nkey_sha256 = \"{}\"\n\n\
         [admission]\non_limit = \"reject\"\n{more}",
        keys.join("hr.key").display(),
        keys.join("crm.key").display(),
        digest(HR_APP),
        digest(CRM_APP),
        digest(OTHER_APP),
    )
}

async fn as_client(c: &TestClient, url: &str, key: &str) -> Reply {
    send(c, Method::GET, url, &[("x-api-key", key)], Body::empty()).await
}

/// The statuses of `/v1/{who}/{i}` for each `i`, called one after another as `key`.
async fn calls(
    c: &TestClient,
    url: impl Fn(&str) -> String,
    who: &str,
    key: &str,
    range: std::ops::Range<usize>,
) -> Vec<u16> {
    let mut out = Vec::new();
    for i in range {
        let r = as_client(c, &url(&format!("/v1/{who}/{i}")), key).await;
        out.push(r.status.as_u16());
    }
    out
}

/// The Dastra key each call under `prefix` went out with.
fn keys_sent(up: &MockUpstream, prefix: &str) -> Vec<String> {
    (up.log().into_iter())
        .filter(|r| r.target.starts_with(prefix))
        .map(|r| r.headers["x-api-key"].to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_goes_out_with_its_own_key_and_each_key_has_its_own_window() {
    let up = MockUpstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let proxy = TestProxy::start(&up, &several(keys.path(), "")).await;
    let c = client();
    let mut hr = Vec::new();
    let mut crm = Vec::new();
    for i in 0..4 {
        hr.push(as_client(&c, &proxy.url(&format!("/v1/hr/{i}")), HR_APP).await);
        crm.push(as_client(&c, &proxy.url(&format!("/v1/crm/{i}")), CRM_APP).await);
    }
    let statuses = |r: &[Reply]| r.iter().map(|r| r.status.as_u16()).collect::<Vec<_>>();
    assert_eq!(statuses(&hr), [200, 200, 200, 429], "hr's own 3 a minute");
    assert_eq!(statuses(&crm), [200, 200, 200, 429], "crm's own 3 a minute");
    assert_eq!(hr[3].code(), "quota_exhausted");
    assert!(hr[2]
        .header("ratelimit")
        .unwrap()
        .starts_with("\"1m\";r=0;"));
    assert_eq!(hr[0].header("ratelimit-policy"), Some("\"1m\";q=3;w=60"));
    // The default credential keeps the top-level (Dastra's) windows.
    let other = as_client(&c, &proxy.url("/v1/other/0"), OTHER_APP).await;
    assert_eq!(other.status, 200);
    assert!(other
        .header("ratelimit")
        .unwrap()
        .starts_with("\"1m\";r=499;"));

    assert_eq!(keys_sent(&up, "/v1/hr/"), vec![HR_KEY; 3]);
    assert_eq!(keys_sent(&up, "/v1/crm/"), vec![CRM_KEY; 3]);
    assert_eq!(keys_sent(&up, "/v1/other/"), vec![DASTRA_KEY]);
    for r in up.log() {
        let sent = format!("{:?}", r.headers);
        for app in [HR_APP, CRM_APP, OTHER_APP] {
            assert!(!sent.contains(app), "a client key reached Dastra: {sent}");
        }
    }

    let q = get(&c, &proxy.admin_url("/quota")).await.json();
    let used = |name: &str| q["credentials"][name]["windows"][0]["used"].clone();
    assert_eq!(
        (used("hr"), used("crm"), used("default")),
        (3.into(), 3.into(), 1.into()),
        "{q}"
    );
    assert_eq!(q["credentials"]["hr"]["windows"][0]["limit"], 3);
    let m = scrape(&c, proxy.admin).await;
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_window_used{credential=\"hr\",window=\"1m\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_window_limit{credential=\"crm\",window=\"1m\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "dastra_proxy_window_limit{credential=\"default\",window=\"10m\"}"
        ),
        10_000.0
    );
    proxy.shutdown().await;
}

/// Dastra's 429 to one key pauses that key only: the other's calls still
/// go at once, and each shows its own pause and 429 count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_to_one_key_pauses_only_that_key() {
    let up = MockUpstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let proxy = TestProxy::start(&up, &several(keys.path(), "upstream_429 = \"pause\"\n")).await;
    let c = client();
    let told = as_client(&c, &proxy.url("/retry-after/30"), HR_APP).await;
    assert_eq!(told.status, 429, "Dastra's own 429 reaches its caller");
    let held = as_client(&c, &proxy.url("/v1/hr/after"), HR_APP).await;
    assert_eq!(held.code(), "upstream_throttled", "hr is paused");
    let free = as_client(&c, &proxy.url("/v1/crm/after"), CRM_APP).await;
    assert_eq!(free.status, 200, "crm is not");
    assert_eq!(keys_sent(&up, "/v1/hr/"), Vec::<String>::new());
    assert_eq!(keys_sent(&up, "/v1/crm/"), vec![CRM_KEY]);
    let q = get(&c, &proxy.admin_url("/quota")).await.json();
    assert!(
        q["credentials"]["hr"]["paused_seconds"].as_f64().unwrap() > 20.0,
        "{q}"
    );
    assert!(q["credentials"]["crm"]["paused_seconds"].is_null(), "{q}");
    assert_eq!(q["credentials"]["hr"]["responses_429"], 1);
    assert_eq!(q["credentials"]["crm"]["responses_429"], 0);
    let m = scrape(&c, proxy.admin).await;
    assert_eq!(
        metric(&m, "dastra_proxy_upstream_429_total{credential=\"hr\"}"),
        1.0
    );
    assert!(
        m.contains("dastra_proxy_upstream_429_total{credential=\"crm\"} 0"),
        "{m}"
    );
    proxy.shutdown().await;
}

/// An OAuth2 credential beside an API key: each client's calls carry only
/// its own; and a cached answer fetched with one key never answers a client
/// of the other (each key may see different data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_beside_an_api_key_and_cache_entries_never_cross_credentials() {
    let up = MockUpstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let oauth2 = format!(
        "[[credentials]]\nname = \"crm\"\nkind = \"oauth2\"\ntoken_url = \"{}/connect/token\"\n\
         public_key_env = \"TEST_DASTRA_PUBLIC\"\nprivate_key_env = \"TEST_DASTRA_PRIVATE\"\n",
        up.url()
    );
    let cache = "[cache]\n[[cache.rules]]\npath = \"/v1/cached/*\"\nttl = \"1h\"\n";
    let config = several(keys.path(), cache);
    let api_key_crm = format!(
        "[[credentials]]\nname = \"crm\"\napi_key_file = \"{}\"\n",
        keys.path().join("crm.key").display()
    );
    let proxy = TestProxy::start(&up, &config.replace(&api_key_crm, &oauth2)).await;
    let c = client();
    for key in [HR_APP, HR_APP, CRM_APP, CRM_APP] {
        let r = as_client(&c, &proxy.url("/v1/cached/x"), key).await;
        assert_eq!(r.status, 200);
    }
    let sent: Vec<_> = (up.log().into_iter())
        .filter(|r| r.target == "/v1/cached/x")
        .map(|r| {
            let h = &r.headers;
            (h.get("x-api-key").cloned(), h.get("authorization").cloned())
        })
        .collect();
    assert_eq!(
        sent.len(),
        2,
        "one call per key, each then cached: {sent:?}"
    );
    assert_eq!(sent[0].0.as_ref().unwrap(), HR_KEY);
    assert_eq!(sent[0].1, None);
    assert_eq!(
        sent[1].0, None,
        "the OAuth2 client's call carries no API key"
    );
    assert!(sent[1]
        .1
        .as_ref()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Bearer "));
    proxy.shutdown().await;
}

/// A reload that rotates one credential's key keeps both windows (they
/// are the credentials' by name); one that removes a credential a client
/// still names is refused; removing both is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_one_credential_and_keeps_every_window() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = BinProxy::start(dir.path(), &up, &several(dir.path(), ""));
    let c = client();
    let url = |p: &str| proxy.url(p);
    assert_eq!(calls(&c, url, "crm", CRM_APP, 0..3).await, [200; 3]);
    assert_eq!(calls(&c, url, "hr", HR_APP, 0..1).await, [200]);
    std::fs::write(dir.path().join("hr.key"), "dastra-hr-rotated-key-55").unwrap();
    hup(&c, &proxy, "ok", 1.0).await;
    assert_eq!(
        as_client(&c, &proxy.url("/v1/crm/3"), CRM_APP).await.code(),
        "quota_exhausted",
        "crm's window survived the reload"
    );
    assert_eq!(calls(&c, url, "hr", HR_APP, 1..3).await, [200; 2]);
    assert_eq!(
        as_client(&c, &proxy.url("/v1/hr/3"), HR_APP).await.code(),
        "quota_exhausted",
        "hr's window survived its own key's rotation"
    );
    let hr = keys_sent(&up, "/v1/hr/");
    assert_eq!(
        hr,
        [
            HR_KEY,
            "dastra-hr-rotated-key-55",
            "dastra-hr-rotated-key-55"
        ]
    );

    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let crm_credential = format!(
        "[[credentials]]\nname = \"crm\"\napi_key_file = \"{}\"\n\
         [[credentials.limits]]\nrequests = 3\nper = \"1m\"\n\n",
        dir.path().join("crm.key").display()
    );
    assert!(text.contains(&crm_credential));
    std::fs::write(&path, text.replace(&crm_credential, "")).unwrap();
    hup(&c, &proxy, "error", 1.0).await;
    let crm_client = format!(
        "[[clients]]\nname = \"crm-app\"\nkey_sha256 = \"{}\"\ncredential = \"crm\"\n",
        digest(CRM_APP)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&crm_client, "")).unwrap();
    hup(&c, &proxy, "ok", 2.0).await;
    assert_eq!(
        as_client(&c, &proxy.url("/v1/crm/4"), CRM_APP).await.code(),
        "unauthenticated"
    );
    let q = get(&c, &format!("http://{}/quota", proxy.admin))
        .await
        .json();
    assert!(q["credentials"].get("crm").is_none(), "{q}");
    assert_eq!(q["credentials"]["hr"]["windows"][0]["used"], 3, "{q}");
    assert_eq!(keys_sent(&up, "/v1/crm/").len(), 3);
}

/// The state file keeps both windows apart across a restart: the full one
/// stays full, the other keeps exactly what it had left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_each_credentials_window() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = several(dir.path(), "");
    let proxy = BinProxy::start(dir.path(), &up, &config);
    let c = client();
    let url = |p: &str| proxy.url(p);
    assert_eq!(calls(&c, url, "hr", HR_APP, 0..3).await, [200; 3]);
    assert_eq!(calls(&c, url, "crm", CRM_APP, 0..1).await, [200]);
    proxy.terminate().await;

    let proxy = BinProxy::start(dir.path(), &up, &config);
    assert_eq!(
        as_client(&c, &proxy.url("/v1/hr/3"), HR_APP).await.code(),
        "quota_exhausted"
    );
    let crm = calls(&c, |p: &str| proxy.url(p), "crm", CRM_APP, 1..4).await;
    assert_eq!(crm, [200, 200, 429], "crm had 2 left, no more, no fewer");
    assert_eq!(keys_sent(&up, "/v1/hr/").len(), 3);
    assert_eq!(keys_sent(&up, "/v1/crm/"), vec![CRM_KEY; 3]);
}

/// Two replicas on one Redis hold each credential's quota together, and
/// the two credentials apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_each_credentials_window_through_redis() {
    let up = MockUpstream::start().await;
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"dp-many\"\nreplicas = 2\n",
        redis.url()
    );
    let config = several(keys.path(), &store);
    let a = TestProxy::start(&up, &config).await;
    let b = TestProxy::start(&up, &config).await;
    let c = client();
    let mut hr = Vec::new();
    for (i, p) in [&a, &b, &a, &b].iter().enumerate() {
        hr.push(
            as_client(&c, &p.url(&format!("/v1/hr/{i}")), HR_APP)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(
        hr,
        [200, 200, 200, 429],
        "one window of 3 across both replicas"
    );
    for (i, p) in [&b, &b, &a].iter().enumerate() {
        let r = as_client(&c, &p.url(&format!("/v1/crm/{i}")), CRM_APP).await;
        assert_eq!(r.status, 200, "crm's window is its own");
    }
    assert_eq!(
        as_client(&c, &a.url("/v1/crm/3"), CRM_APP).await.code(),
        "quota_exhausted"
    );
    assert_eq!(keys_sent(&up, "/v1/hr/"), vec![HR_KEY; 3]);
    assert_eq!(keys_sent(&up, "/v1/crm/"), vec![CRM_KEY; 3]);
    a.shutdown().await;
    b.shutdown().await;
}
