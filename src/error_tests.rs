//! Every failure's status, code and message, and the headers it carries.

use super::*;

#[test]
fn the_body_is_the_json_error_envelope() {
    let r =
        ProxyError::Target(TargetError::OtherHost("a \"quoted\" host\n".into())).into_response();
    let body = futures_body(r);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("(a \"quoted\" host\n)"));
    let r = ProxyError::Refused(
        Refusal::QuotaExhausted {
            retry_at: Instant::now(),
        },
        Duration::from_secs(3),
    )
    .into_response();
    let v: serde_json::Value = serde_json::from_str(&futures_body(r)).unwrap();
    assert_eq!(v["error"]["code"], "quota_exhausted");
    assert!(v["error"]["type"]
        .as_str()
        .unwrap()
        .ends_with("#quota-exceeded"));
}

fn futures_body(r: Response<Body>) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = rt
        .block_on(http_body_util::BodyExt::collect(r.into_body()))
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn a_pre_encoded_refusal_says_what_its_log_line_says() {
    let at = Instant::now();
    for r in [
        Refusal::QuotaExhausted { retry_at: at },
        Refusal::QueueFull { retry_at: at },
        Refusal::TooManyKeys { retry_at: at },
        Refusal::ClientQuotaExhausted { retry_at: at },
        Refusal::ShuttingDown,
        Refusal::StoreUnavailable,
    ] {
        let e = ProxyError::Refused(r, Duration::from_millis(2_500));
        let (text, code) = (e.to_string(), e.code());
        let v: serde_json::Value = serde_json::from_str(&futures_body(e.into_response())).unwrap();
        assert_eq!(v["error"]["message"], text.as_str());
        assert_eq!(v["error"]["code"], code);
    }
    let shared = ProxyError::Shared(Arc::new(ProxyError::Refused(
        Refusal::QueueFull { retry_at: at },
        Duration::from_millis(2_500),
    )));
    let v: serde_json::Value = serde_json::from_str(&futures_body(shared.into_response())).unwrap();
    assert_eq!(
        v["error"]["message"],
        "too many calls are already waiting for quota; retry after 3 s"
    );
}

#[test]
fn a_refusal_waits_from_when_it_was_decided() {
    // Decided "later" than now: an implementation reading the clock again says 33.
    let at = Instant::now() + Duration::from_secs(30);
    let e = ProxyError::refused_at(
        Refusal::QuotaExhausted {
            retry_at: at + Duration::from_millis(2_500),
        },
        at,
    );
    assert_eq!(e.into_response().headers()["retry-after"], "3");
    let e = ProxyError::refused_at(Refusal::ShuttingDown, at);
    assert_eq!(e.status(), 503);
    assert!(e.into_response().headers().get("retry-after").is_none());
}

#[test]
fn retry_after_is_rounded_up_and_never_zero() {
    let r = ProxyError::Refused(
        Refusal::QuotaExhausted {
            retry_at: Instant::now(),
        },
        Duration::from_millis(16_001),
    )
    .into_response();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "17");
    let r = ProxyError::Refused(
        Refusal::QueueFull {
            retry_at: Instant::now(),
        },
        Duration::ZERO,
    )
    .into_response();
    assert_eq!(r.headers()["retry-after"], "1");
}

/// Every refusal's code has its series at 0 from start-up.
#[test]
fn every_refusal_code_is_listed() {
    let at = Instant::now();
    let all = [
        ProxyError::Refused(Refusal::QuotaExhausted { retry_at: at }, Duration::ZERO),
        ProxyError::Refused(Refusal::QueueFull { retry_at: at }, Duration::ZERO),
        ProxyError::Refused(Refusal::TooManyKeys { retry_at: at }, Duration::ZERO),
        ProxyError::Refused(
            Refusal::ClientQuotaExhausted { retry_at: at },
            Duration::ZERO,
        ),
        ProxyError::Refused(Refusal::ShuttingDown, Duration::ZERO),
        ProxyError::Refused(Refusal::StoreUnavailable, Duration::ZERO),
        ProxyError::Access(AccessError::Unauthenticated),
        ProxyError::Access(AccessError::IpNotAllowed),
        ProxyError::Access(AccessError::BadForwarded),
        ProxyError::Target(TargetError::Trace),
        ProxyError::Target(TargetError::Connect),
        ProxyError::Credential(CallerCredentialError::Ambiguous),
        ProxyError::Body(BodyError::TooLarge(1)),
        ProxyError::Body(BodyError::Stalled(Duration::ZERO)),
        ProxyError::Body(BodyError::Overloaded),
    ];
    for e in &all {
        assert!(
            REFUSAL_CODES.contains(&e.code()),
            "{} is not listed",
            e.code()
        );
    }
}

/// Every 429 a window decides says when to come back, the client's own
/// window's included.
#[test]
fn every_window_refusal_carries_retry_after() {
    let at = Instant::now();
    for r in [
        Refusal::QuotaExhausted { retry_at: at },
        Refusal::UpstreamThrottled { retry_at: at },
        Refusal::QueueFull { retry_at: at },
        Refusal::TooManyKeys { retry_at: at },
        Refusal::ClientQuotaExhausted { retry_at: at },
    ] {
        let resp = ProxyError::Refused(r, Duration::from_millis(2_500)).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }
}
