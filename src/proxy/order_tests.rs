//! The stack's order is a contract: a stage put before the stage that writes
//! a fact it needs answers `internal` naming that fact, never a default (the
//! guard used to let every call through when it found no caller).

use std::sync::Arc;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer as _, ServiceExt as _};

use super::check::CheckLayer;
use super::facts::Facts;
use super::layer::AppLayer;
use super::stages::{AccessStage, BodyLimitStage, GuardStage, TargetStage};
use crate::access::ConnInfo;
use crate::app::App;
use crate::config::Config;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::secret::SecretEnv;
use crate::upstream::Upstream;

const CONFIG: &str = "[store]\nstate_file = \"\"\n[upstream]\nurl = \"https://api.dastra.eu\"\n\
                      [credential]\nkind = \"api_key\"\napi_key_env = \"KEY\"\n\
                      [[clients]]\nname = \"crm\"\nrate = \"1/h\"\nburst = 1\n";

fn app() -> Arc<App> {
    let env = SecretEnv::fixed([("KEY", "dastra-key")]);
    let text = format!(
        "{CONFIG}key_sha256 = \"{}\"\n",
        crate::access::hash_key("crm-key")
    );
    let config = Config::parse_with(&text, std::path::Path::new("t.toml"), &env).unwrap();
    let upstream = Upstream::new(tower::service_fn(|_: Request<Body>| async {
        Ok(Response::new(Body::empty()))
    }));
    App::with_upstream(config, Metrics::new(), upstream).unwrap()
}

/// A call as the observe stage hands it on (with its facts), or without them.
fn call(with_facts: bool) -> Request<Body> {
    let mut req = Request::get("/v1/datasubjects")
        .header("x-api-key", "crm-key")
        .extension(ConnInfo::new("127.0.0.1:5000".parse().unwrap(), false))
        .body(Body::empty())
        .unwrap();
    if with_facts {
        let facts = Facts::new(HeaderValue::from_static("id"), false);
        req.extensions_mut().insert(Arc::new(facts));
    }
    req
}

fn ok() -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = ProxyError,
    Future = impl Send,
> + Clone {
    tower::service_fn(|_: Request<Body>| async { Ok(Response::new(Body::empty())) })
}

fn misordered(r: Result<Response<Body>, ProxyError>) -> &'static str {
    match r {
        Err(ProxyError::Misordered(what)) => what,
        other => panic!("expected a misordered stack, got {other:?}"),
    }
}

#[tokio::test]
async fn the_guard_before_access_fails_the_call_instead_of_passing_it() {
    let app = app();
    let body = BodyLimitStage {
        limit: 1024,
        timeout: std::time::Duration::from_secs(1),
    };
    let right = (
        TargetStage(app.target.clone()),
        AccessStage(app.policies()),
        GuardStage,
        body.clone(),
    );
    // The client's burst is 1: in the right order its second call is the
    // guard's to refuse.
    let svc = CheckLayer(right).layer(ok());
    assert!(svc.clone().oneshot(call(true)).await.is_ok());
    assert!(matches!(
        svc.oneshot(call(true)).await,
        Err(ProxyError::Guard(_))
    ));
    let wrong = (
        TargetStage(app.target.clone()),
        GuardStage,
        AccessStage(app.policies()),
        body,
    );
    let svc = CheckLayer(wrong).layer(ok());
    assert_eq!(
        misordered(svc.oneshot(call(true)).await),
        "the caller (access stage)"
    );
}

#[tokio::test]
async fn admission_and_forward_before_access_fail_the_call() {
    let app = app();
    let admit = AppLayer::<super::admit::Admit>::new(app.clone()).layer(ok());
    assert_eq!(
        misordered(admit.oneshot(call(true)).await),
        "the caller (access stage)"
    );
    let forward = super::forward::Forward::new(app.clone(), app.upstream.clone());
    assert_eq!(
        misordered(forward.oneshot(call(true)).await),
        "the caller (access stage)"
    );
}

#[tokio::test]
async fn a_stack_without_the_observe_stage_answers_internal() {
    let app = app();
    let svc = super::rescue::RescueLayer.layer(
        CheckLayer((
            TargetStage(app.target.clone()),
            AccessStage(app.policies()),
            GuardStage,
            BodyLimitStage {
                limit: 1024,
                timeout: std::time::Duration::from_secs(1),
            },
        ))
        .layer(ok()),
    );
    let resp = svc.clone().oneshot(call(false)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(r#""code":"internal""#) && text.contains("observe stage"),
        "{text}"
    );
    // With its facts, the same call goes through.
    let resp = svc.oneshot(call(true)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
