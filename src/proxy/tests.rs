//! The whole request path in process: the real stack and App, a `service_fn`
//! standing in for Dastra, no sockets. One test per stage's refusal, a
//! forwarded call with its headers rewritten, and the OAuth2 401 replay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::stack;
use crate::access::{hash_key, ConnInfo};
use crate::app::App;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::secret::SecretEnv;
use crate::upstream::{CallError, Upstream};

/// What the stand-in for Dastra saw: method, URI and headers of each call.
type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap)>>>;
type Answer = dyn Fn(&Request<Body>, usize) -> Result<Response<Body>, CallError> + Send + Sync;

const BASE: &str = "[store]\nstate_file = \"\"\n[server]\npublic_url = \"https://proxy.example.com\"\nmax_request_body = \"1KiB\"\n\
                    [upstream]\nurl = \"https://api.dastra.eu\"\n";
const API_KEY: &str = "[credential]\napi_key_env = \"K\"\n";

type ProxyService =
    tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, std::convert::Infallible>;

struct Harness {
    app: Arc<App>,
    svc: ProxyService,
    seen: Seen,
}

fn harness(extra: &str, answer: Arc<Answer>) -> Harness {
    let text = format!("{BASE}{extra}");
    let env = SecretEnv::fixed([("K", "dastra-key"), ("PUB", "pub"), ("PRIV", "priv")]);
    let config = Config::parse_with(&text, std::path::Path::new("t.toml"), &env).unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let upstream = Upstream::new(tower::service_fn(move |req: Request<Body>| {
        let n = {
            let mut log = log.lock().unwrap();
            log.push((
                req.method().clone(),
                req.uri().to_string(),
                req.headers().clone(),
            ));
            log.len()
        };
        let answer = answer(&req, n);
        async move { answer }
    }));
    let app = App::with_upstream(config, Metrics::new(), upstream).unwrap();
    Harness {
        svc: ProxyService::new(stack(app.clone())),
        app,
        seen,
    }
}

fn ok(_: &Request<Body>, _: usize) -> Result<Response<Body>, CallError> {
    Ok(Response::new(Body::from("ok")))
}

fn req(method: Method, uri: &str, peer: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .extension(ConnInfo::new(peer.parse().unwrap(), false))
}

async fn send(h: &Harness, r: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let resp = h.svc.clone().oneshot(r).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(h: &Harness, uri: &str) -> (StatusCode, HeaderMap, String) {
    send(
        h,
        req(Method::GET, uri, "127.0.0.1:5000")
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

fn code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"]["code"].as_str().unwrap().to_owned()
}

fn rejected(h: &Harness, client: &str, code: &str) -> u64 {
    h.app
        .metrics
        .rejected_total
        .with_label_values(&[client, code])
        .get()
}

#[tokio::test]
async fn a_forwarded_call_has_its_headers_rewritten_both_ways() {
    let h = harness(
        API_KEY,
        Arc::new(|_, _| {
            Ok(Response::builder()
                .header("location", "https://api.dastra.eu/v1/x/2")
                .header("connection", "close, x-hop")
                .header("x-hop", "1")
                .body(Body::from("made"))
                .unwrap())
        }),
    );
    let r = req(Method::POST, "/v1/x?a=1&b=%20", "127.0.0.1:5000")
        .header("x-api-key", "callers-own")
        .header("connection", "x-private")
        .header("x-private", "1")
        .header("x-request-id", "req-1")
        .header("x-kept", "yes")
        .body(Body::from("{}"))
        .unwrap();
    let (status, headers, body) = send(&h, r).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "made"));
    assert_eq!(headers["location"], "https://proxy.example.com/v1/x/2");
    assert!(!headers.contains_key("x-hop") && !headers.contains_key("connection"));
    assert_eq!(headers["x-request-id"], "req-1");
    assert_eq!(
        headers["ratelimit"],
        "\"1m\";r=499;t=61, \"10m\";r=9999;t=601"
    );
    let seen = h.seen.lock().unwrap();
    let (method, uri, up) = &seen[0];
    assert_eq!(
        (method, uri.as_str()),
        (&Method::POST, "https://api.dastra.eu/v1/x?a=1&b=%20")
    );
    assert_eq!(up["x-api-key"], "dastra-key");
    assert!(up["x-api-key"].is_sensitive());
    assert_eq!(up["x-forwarded-for"], "127.0.0.1");
    assert_eq!(up["x-forwarded-proto"], "http");
    assert_eq!(up["x-request-id"], "req-1");
    assert_eq!(up["x-kept"], "yes");
    assert!(!up.contains_key("x-private") && !up.contains_key("connection"));
}

#[tokio::test]
async fn target_stage_refuses_connect_and_other_hosts() {
    let h = harness(API_KEY, Arc::new(ok));
    let r = req(Method::CONNECT, "evil.test:443", "127.0.0.1:5000")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&h, r).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    assert!(
        headers.contains_key("x-request-id"),
        "every answer carries an id"
    );
    let (status, _, _) = get(&h, "http://evil.test/v1/x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(h.seen.lock().unwrap().is_empty());
    assert_eq!(rejected(&h, "anonymous", "bad_request"), 2);
}

#[tokio::test]
async fn access_stage_refuses_strangers_and_missing_keys() {
    let extra = format!(
        "{API_KEY}[access]\nallow = [\"127.0.0.0/8\"]\n[[clients]]\nname = \"crm\"\nkey_sha256 = \"{}\"\n",
        hash_key("crm-key")
    );
    let h = harness(&extra, Arc::new(ok));
    let stranger = req(Method::GET, "/v1/x", "192.0.2.1:5000")
        .header("x-api-key", "crm-key")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(&h, stranger).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "ip_not_allowed")
    );
    let (status, _, body) = get(&h, "/v1/x").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let known = req(Method::GET, "/v1/x", "127.0.0.1:5000")
        .header("authorization", "Bearer crm-key")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h, known).await.0, StatusCode::OK);
    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].2.contains_key("authorization"),
        "the client key never goes upstream"
    );
}

#[tokio::test]
async fn guard_stage_refuses_past_the_clients_own_rate() {
    let extra = format!(
        "{API_KEY}[[clients]]\nname = \"crm\"\nkey_sha256 = \"{}\"\nrate = \"1/h\"\nburst = 2\n",
        hash_key("crm-key")
    );
    let h = harness(&extra, Arc::new(ok));
    let call = || {
        req(Method::GET, "/v1/x", "127.0.0.1:5000")
            .header("x-api-key", "crm-key")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&h, call()).await.0, StatusCode::OK);
    assert_eq!(send(&h, call()).await.0, StatusCode::OK);
    let (status, headers, body) = send(&h, call()).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "client_rate")
    );
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (3590..=3600).contains(&secs),
        "one cell of the hour: {secs}"
    );
    assert_eq!(rejected(&h, "crm", "client_rate"), 1);
    assert_eq!(h.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn body_stage_refuses_an_oversized_length_before_any_slot() {
    let h = harness(API_KEY, Arc::new(ok));
    let r = req(Method::POST, "/v1/x", "127.0.0.1:5000")
        .header("content-length", "2048")
        .body(Body::from(vec![b'x'; 2048]))
        .unwrap();
    let (status, _, body) = send(&h, r).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    assert!(h.seen.lock().unwrap().is_empty());
    let (status, headers, _) = get(&h, "/v1/x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["ratelimit"], "\"1m\";r=499;t=61, \"10m\";r=9999;t=601",
        "the refused call spent nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn admission_stage_refuses_with_exact_retry_after_and_fields() {
    let extra = format!(
        "{API_KEY}[[limits]]\nrequests = 1\nper = \"10s\"\n[admission]\non_limit = \"reject\"\nmargin = \"0ms\"\n"
    );
    let h = harness(&extra, Arc::new(ok));
    assert_eq!(get(&h, "/v1/x").await.0, StatusCode::OK);
    tokio::time::advance(Duration::from_millis(2500)).await;
    let (status, headers, body) = get(&h, "/v1/x").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exhausted")
    );
    assert_eq!(headers["retry-after"], "8");
    assert_eq!(headers["ratelimit-policy"], "\"10s\";q=1;w=10");
    assert_eq!(headers["ratelimit"], "\"10s\";r=0;t=8");
    assert_eq!(h.seen.lock().unwrap().len(), 1);
    // A refused call still answers with its (fresh) request id.
    assert_eq!(headers["x-request-id"].len(), 32);
}

#[tokio::test(start_paused = true)]
async fn upstream_failures_map_to_502_and_504_and_a_refused_connect_spends_nothing() {
    let extra = format!(
        "retries = 0\n{API_KEY}[[limits]]\nrequests = 1\nper = \"1h\"\n[admission]\non_limit = \"reject\"\n"
    );
    let refused_once = || -> Arc<Answer> {
        Arc::new(|_, n| match n {
            1 => Err(CallError::NotConnected("refused".into())),
            _ => Ok(Response::new(Body::empty())),
        })
    };
    // With retries (the default), the refused GET is sent again at once,
    // on the slot the refused attempt gave back.
    let retried = harness(&extra.replace("retries = 0\n", ""), refused_once());
    assert_eq!(get(&retried, "/v1/x").await.0, StatusCode::OK);
    assert_eq!(retried.seen.lock().unwrap().len(), 2);
    let h = harness(&extra, refused_once());
    let (status, _, body) = get(&h, "/v1/x").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::BAD_GATEWAY, "upstream_unreachable")
    );
    assert_eq!(
        get(&h, "/v1/x").await.0,
        StatusCode::OK,
        "the slot came back"
    );

    // A Dastra that never answers: 504 after upstream.timeout (paused clock).
    let slow = harness(API_KEY, Arc::new(ok));
    let never = Upstream::new(tower::service_fn(|_: Request<Body>| async {
        std::future::pending::<Result<Response<Body>, CallError>>().await
    }));
    let app = App::with_upstream(slow.app.config.clone(), Metrics::new(), never).unwrap();
    let h = Harness {
        svc: ProxyService::new(stack(app.clone())),
        app,
        seen: slow.seen,
    };
    let (status, _, body) = get(&h, "/v1/x").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
    );
}

#[tokio::test]
async fn a_401_is_replayed_once_with_a_fresh_token() {
    let extra =
        "[credential]\nkind = \"oauth2\"\ntoken_url = \"https://account.test/connect/token\"\n\
                 public_key_env = \"PUB\"\nprivate_key_env = \"PRIV\"\n";
    let tokens = Arc::new(Mutex::new(0u32));
    // Dastra takes tok-1 once, then no longer (revoked before its expiry).
    let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (t, r) = (tokens.clone(), revoked.clone());
    let h = harness(
        extra,
        Arc::new(move |req, _| {
            if req.uri().path() == "/connect/token" {
                let mut n = t.lock().unwrap();
                *n += 1;
                let body = format!(r#"{{"access_token":"tok-{n}","expires_in":3600}}"#);
                return Ok(Response::new(Body::from(body)));
            }
            let tok1 = req.headers()["authorization"] == "Bearer tok-1";
            let status = if tok1 && r.swap(true, std::sync::atomic::Ordering::SeqCst) {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            Ok(Response::builder()
                .status(status)
                .body(Body::empty())
                .unwrap())
        }),
    );
    let put = || {
        req(Method::PUT, "/v1/x", "127.0.0.1:5000")
            .header("content-length", "7")
            .body(Body::from("payload"))
            .unwrap()
    };
    assert_eq!(send(&h, put()).await.0, StatusCode::OK);
    assert_eq!(
        send(&h, put()).await.0,
        StatusCode::OK,
        "replayed after the 401"
    );
    assert_eq!(*tokens.lock().unwrap(), 2);
    let seen = h.seen.lock().unwrap();
    let api: Vec<_> = seen
        .iter()
        .filter(|(_, u, _)| u.starts_with("https://api.dastra.eu/"))
        .map(|(m, _, h)| (m.clone(), h["authorization"].to_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        api,
        [
            (Method::PUT, "Bearer tok-1".to_owned()),
            (Method::PUT, "Bearer tok-1".to_owned()),
            (Method::PUT, "Bearer tok-2".to_owned())
        ]
    );
    let snap = h
        .app
        .quotas
        .get(crate::credential::QuotaKey([0; 32]), None)
        .unwrap()
        .snapshot();
    assert_eq!(snap.windows[0].used, 3, "the replay took a slot of its own");
}

#[tokio::test]
async fn a_401_storm_costs_one_call_and_at_most_one_token_per_call() {
    let extra =
        "[credential]\nkind = \"oauth2\"\ntoken_url = \"https://account.test/connect/token\"\n\
                 public_key_env = \"PUB\"\nprivate_key_env = \"PRIV\"\n";
    let h = harness(
        extra,
        Arc::new(|req, _| {
            if req.uri().path() == "/connect/token" {
                let body = r#"{"access_token":"tok","expires_in":3600}"#;
                return Ok(Response::new(Body::from(body)));
            }
            Ok(Response::builder().status(401).body(Body::empty()).unwrap())
        }),
    );
    for _ in 0..3 {
        let r = req(Method::PUT, "/v1/x", "127.0.0.1:5000")
            .header("content-length", "2")
            .body(Body::from("{}"))
            .unwrap();
        assert_eq!(send(&h, r).await.0, StatusCode::UNAUTHORIZED);
    }
    let seen = h.seen.lock().unwrap();
    let (api, tokens): (Vec<_>, Vec<_>) = seen
        .iter()
        .partition(|(_, u, _)| u.starts_with("https://api.dastra.eu/"));
    // The first call's token was fetched for it: its 401 is passed on. Each
    // later call drops the cached token once and retries with a fresh one,
    // whose 401 is passed on: every token is refreshed at most once.
    assert_eq!((api.len(), tokens.len()), (5, 3));
}
