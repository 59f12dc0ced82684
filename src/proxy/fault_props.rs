//! A property over random fault sequences (#27): whatever Dastra does —
//! 5xx, unreachable, hanging past the timeout, a 429 with `Retry-After`, its
//! own "none left" headers — and whatever mix of calls arrives, with
//! retries, the breaker and adapting all on, no window ever holds more than
//! its limit on Dastra's own arrival log, and no POST reaches it twice.
//! The whole stack in process on tokio's paused clock, a `service_fn` for
//! Dastra.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::stack;
use crate::access::ConnInfo;
use crate::app::App;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::secret::SecretEnv;
use crate::upstream::{CallError, Upstream};

const LIMIT: usize = 4;
const PER: Duration = Duration::from_secs(1);
const CONFIG: &str = "[store]\nstate_file = \"\"\n[upstream]\nurl = \"https://api.dastra.eu\"\n\
     timeout = \"400ms\"\nretries = 2\nretry_budget = 1.0\nbreaker_failures = 3\nbreaker_open = \"300ms\"\n\
     [credential]\napi_key_env = \"K\"\n[[limits]]\nrequests = 4\nper = \"1s\"\n\
     [admission]\nmax_wait = \"20s\"\n";

#[derive(Debug, Clone, Copy)]
enum Fault {
    Ok,
    Status(u16),
    Unreachable,
    Hang,
    Throttled,
    NoneLeft,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => Just(Fault::Ok),
        2 => prop::sample::select(vec![502u16, 503, 504, 500]).prop_map(Fault::Status),
        1 => Just(Fault::Unreachable),
        1 => Just(Fault::Hang),
        1 => Just(Fault::Throttled),
        1 => Just(Fault::NoneLeft),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::DELETE,
        Method::PATCH,
    ])
}

/// One arrival at Dastra: when, and which call it belonged to.
type Log = Arc<Mutex<Vec<(Instant, Method, usize)>>>;

fn answer(f: Fault) -> Result<Response<Body>, CallError> {
    let status = |s: u16| Response::builder().status(s);
    match f {
        Fault::Ok | Fault::Hang => Ok(Response::new(Body::from("ok"))),
        Fault::Status(s) => Ok(status(s).body(Body::from("fault")).unwrap()),
        Fault::Unreachable => Err(CallError::NotConnected("refused".into())),
        Fault::Throttled => Ok(status(429)
            .header("retry-after", "1")
            .body(Body::empty())
            .unwrap()),
        Fault::NoneLeft => Ok(status(200)
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", "1")
            .body(Body::empty())
            .unwrap()),
    }
}

type Arrivals = Vec<(Instant, Method, usize)>;

/// Dastra's arrival log, and every attempt the proxy made (reached or not).
async fn run(calls: Vec<(Method, u16)>, faults: Vec<Fault>) -> (Arrivals, Vec<(Method, usize)>) {
    let env = SecretEnv::fixed([("K", "dastra-key")]);
    let config = Config::parse_with(CONFIG, std::path::Path::new("t.toml"), &env).unwrap();
    let log: Log = Arc::default();
    let attempts = Arc::new(Mutex::new(Vec::<(Method, usize)>::new()));
    let (seen, tried) = (log.clone(), attempts.clone());
    let upstream = Upstream::new(tower::service_fn(move |req: Request<Body>| {
        let id: usize = req.headers()["x-call"].to_str().unwrap().parse().unwrap();
        let n = {
            let mut t = tried.lock().unwrap();
            t.push((req.method().clone(), id));
            t.len() - 1
        };
        let f = faults[n % faults.len()];
        if !matches!(f, Fault::Unreachable) {
            seen.lock()
                .unwrap()
                .push((Instant::now(), req.method().clone(), id));
        }
        async move {
            if let Fault::Hang = f {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            answer(f)
        }
    }));
    let app = App::with_upstream(config, Metrics::new(), upstream).unwrap();
    let svc = stack(app);
    let mut tasks = Vec::new();
    for (id, (m, gap)) in calls.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(gap.into())).await;
        let r = Request::builder()
            .method(m)
            .uri(format!("/v1/ws/1/Things/{id}"))
            .header("x-call", id)
            .extension(ConnInfo::new("127.0.0.1:5000".parse().unwrap(), false))
            .body(Body::empty())
            .unwrap();
        tasks.push(tokio::spawn(svc.clone().oneshot(r)));
    }
    for t in tasks {
        let _ = t.await;
    }
    let tried = attempts.lock().unwrap().clone();
    let log = log.lock().unwrap().clone();
    (log, tried)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]
    #[test]
    fn no_fault_sequence_breaks_a_window_or_sends_a_post_twice(
        calls in prop::collection::vec((method(), 0u16..300), 1..24),
        faults in prop::collection::vec(fault(), 1..12),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let (log, tried) = rt.block_on(run(calls, faults));
        prop_assert!(log.len() <= tried.len());
        for (i, (at, _, _)) in log.iter().enumerate() {
            let within = log[..=i].iter().filter(|(t, _, _)| *at - *t < PER).count();
            prop_assert!(within <= LIMIT, "{} arrivals within {:?} ending at arrival {}: {:?}", within, PER, i, log);
        }
        for (m, id) in &tried {
            if *m == Method::POST || *m == Method::PATCH {
                let times = tried.iter().filter(|(_, other)| other == id).count();
                prop_assert_eq!(times, 1, "call {} ({}) was sent {} times", id, m, times);
            }
        }
    }
}
