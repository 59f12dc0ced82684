//! tower's readiness contract, held by every stage: a stock
//! `ConcurrencyLimit` sits inside the stack (between the credential and the
//! forward stages), and its `call` panics unless the very service it is was
//! polled ready first. Every stage's way of calling its inner service goes
//! through it: straight through, after a wait for quota, the buffer stage's
//! OAuth2 replay, the credential stage after a token fetch, a retry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};
use tower::limit::ConcurrencyLimitLayer;
use tower::ServiceExt as _;

use super::stack_with;
use crate::access::ConnInfo;
use crate::app::App;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::secret::SecretEnv;
use crate::upstream::Upstream;

const BASE: &str = "[store]\nstate_file = \"\"\n[upstream]\nurl = \"https://api.dastra.eu\"\n\
                    retries = 1\nretry_budget = 1.0\n[[limits]]\nrequests = 2\nper = \"100ms\"\n\
                    [admission]\nmax_wait = \"10s\"\n\
                    [credential]\nkind = \"oauth2\"\ntoken_url = \"https://account.test/connect/token\"\n\
                    public_key_env = \"PUB\"\nprivate_key_env = \"PRIV\"\n";

fn call(method: Method, path: &str, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-length", body.len())
        .extension(ConnInfo::new("127.0.0.1:5000".parse().unwrap(), false))
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_polls_its_inner_service_ready_before_calling_it() {
    let env = SecretEnv::fixed([("PUB", "pub"), ("PRIV", "priv")]);
    let config = Config::parse_with(BASE, std::path::Path::new("t.toml"), &env).unwrap();
    let tokens = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (t, n, f) = (tokens.clone(), sent.clone(), failed.clone());
    let upstream = Upstream::new(tower::service_fn(move |req: Request<Body>| {
        let (t, n, f) = (t.clone(), n.clone(), f.clone());
        async move {
            if req.uri().path() == "/connect/token" {
                let k = t.fetch_add(1, Ordering::SeqCst) + 1;
                let body = format!(r#"{{"access_token":"tok-{k}","expires_in":3600}}"#);
                return Ok(Response::new(Body::from(body)));
            }
            n.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let status = match req.uri().path() {
                // The first token is revoked: its 401 is replayed with a fresh one.
                "/v1/revoked" if req.headers()["authorization"] == "Bearer tok-1" => 401,
                // Dastra fails once: the GET is retried on a slot of its own.
                "/v1/flaky" if !f.swap(true, Ordering::SeqCst) => 503,
                _ => 200,
            };
            Ok(Response::builder()
                .status(status)
                .body(Body::empty())
                .unwrap())
        }
    }));
    let app = App::with_upstream(config, Metrics::new(), upstream).unwrap();
    let svc = stack_with(app, ConcurrencyLimitLayer::new(1));
    // A stage that calls a copy instead of the service it polled ready
    // either panics (no permit) or leaves the permit taken and the next
    // call waiting for ever: bounded here, so that fails too.
    tokio::time::timeout(Duration::from_secs(30), exercise(svc, tokens))
        .await
        .expect("every call ends: no stage keeps a readiness permit it never used");
}

async fn exercise<S>(svc: S, tokens: Arc<AtomicUsize>)
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    // Straight through, then several at once: they queue for the 2 per
    // 100 ms quota and each goes after its wait.
    let ok = svc
        .clone()
        .oneshot(call(Method::GET, "/v1/a", ""))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let path = format!("/v1/many/{i}");
                let req = call(Method::GET, &path, "");
                svc.oneshot(req).await.unwrap().status()
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), StatusCode::OK);
    }
    // The buffer stage's replay of a small body after a revoked token's 401.
    let put = svc
        .clone()
        .oneshot(call(Method::PUT, "/v1/revoked", "payload"))
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK, "replayed with a fresh token");
    assert_eq!(tokens.load(Ordering::SeqCst), 2);
    // A retry after a 503 (upstream.retries = 1).
    let flaky = svc
        .clone()
        .oneshot(call(Method::GET, "/v1/flaky", ""))
        .await
        .unwrap();
    assert_eq!(flaky.status(), StatusCode::OK, "retried after the 503");
}
