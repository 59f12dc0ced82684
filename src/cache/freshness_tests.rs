use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

fn base() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(*k, HeaderValue::from_str(v).unwrap());
    }
    m
}

fn timing(delay: u64, now: Instant) -> Timing {
    Timing {
        sent: base() - Duration::from_secs(delay),
        received: base(),
        now,
    }
}

#[test]
fn dastras_word_capped_by_the_ttl_and_the_ttl_as_heuristic() {
    let now = Instant::now();
    let ttl = Duration::from_secs(30);
    let asks = directives::Request::default();
    let of = |pairs: &[(&'static str, String)], status: u16| {
        storable(
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            &asks,
            timing(0, now),
            ttl,
        )
        .map(|s| s.freshness.lifetime.as_secs())
    };
    let date = ("date", httpdate::fmt_http_date(base()));
    assert_eq!(of(&[("cache-control", "max-age=10".into())], 200), Some(10));
    assert_eq!(
        of(&[("cache-control", "max-age=100".into())], 200),
        Some(30)
    );
    assert_eq!(
        of(&[("cache-control", "s-maxage=5, max-age=20".into())], 200),
        Some(5)
    );
    let later = httpdate::fmt_http_date(base() + Duration::from_secs(12));
    assert_eq!(of(&[date.clone(), ("expires", later)], 200), Some(12));
    assert_eq!(
        of(&[date.clone(), ("expires", "0".into())], 200),
        Some(0),
        "invalid Expires is expired"
    );
    let two = [
        date.clone(),
        (
            "expires",
            httpdate::fmt_http_date(base() + Duration::from_secs(9)),
        ),
    ];
    assert_eq!(
        of(&[two[0].clone(), two[1].clone(), two[1].clone()], 200),
        Some(0),
        "two Expires: expired"
    );
    assert_eq!(of(&[], 200), Some(30), "no word from Dastra: the ttl");
    assert_eq!(of(&[], 500), None, "500 is not heuristically cacheable");
    assert_eq!(of(&[("cache-control", "max-age=9".into())], 500), Some(9));
    assert_eq!(of(&[("cache-control", "max-age=9".into())], 206), None);
    assert_eq!(of(&[("cache-control", "no-store".into())], 200), None);
    assert_eq!(of(&[("cache-control", "private".into())], 200), None);
    assert_eq!(of(&[("set-cookie", "a=b".into())], 200), None);
    assert_eq!(of(&[("vary", "Accept, *".into())], 200), None);
    assert_eq!(
        of(
            &[(
                "cache-control",
                "no-store, must-understand, max-age=5".into()
            )],
            200
        ),
        Some(5),
        "must-understand on a status we understand"
    );
    let omitted = storable(
        StatusCode::OK,
        &headers(&[("cache-control", "no-cache=\"x-a\", private=\"x-b\"".into())]),
        &asks,
        timing(0, now),
        ttl,
    )
    .unwrap();
    assert_eq!(omitted.omit, ["x-a", "x-b"]);
    assert!(
        !omitted.freshness.no_cache,
        "a listed no-cache is about its headers only"
    );
}

#[test]
fn age_counts_dastras_age_the_date_gap_and_the_flight() {
    let now = Instant::now();
    let asks = directives::Request::default();
    let ttl = Duration::from_secs(3600);
    let h = headers(&[
        ("cache-control", "max-age=100".into()),
        ("age", "30".into()),
        ("date", httpdate::fmt_http_date(base())),
    ]);
    let f = storable(StatusCode::OK, &h, &asks, timing(2, now), ttl)
        .unwrap()
        .freshness;
    assert_eq!(
        f.initial_age,
        Duration::from_secs(32),
        "Age plus the 2 s in flight"
    );
    let old = headers(&[
        ("cache-control", "max-age=100".into()),
        (
            "date",
            httpdate::fmt_http_date(base() - Duration::from_secs(50)),
        ),
    ]);
    let f = storable(StatusCode::OK, &old, &asks, timing(0, now), ttl)
        .unwrap()
        .freshness;
    assert_eq!(
        f.initial_age,
        Duration::from_secs(50),
        "Date 50 s before it arrived"
    );
    assert_eq!(f.age(now + Duration::from_secs(7)), Duration::from_secs(57));
    assert_eq!(
        f.left(now + Duration::from_secs(7)),
        Duration::from_secs(43),
        "Cache-Status ttl="
    );
    assert_eq!(f.left(now + Duration::from_secs(70)), Duration::ZERO);
    assert!(f.usable(&asks, now + Duration::from_secs(49)));
    assert!(
        !f.usable(&asks, now + Duration::from_secs(50)),
        "fresh while age < lifetime"
    );
}

#[test]
fn stale_while_revalidate_holds_only_inside_its_window_and_for_plain_asks() {
    let t0 = Instant::now();
    let f = Freshness {
        stored_at: t0,
        initial_age: Duration::ZERO,
        lifetime: Duration::from_secs(10),
        no_cache: false,
        strict: false,
        validators: true,
        behind: Duration::from_secs(5),
    };
    let plain = directives::Request::default();
    let at = |s: u64, ms: u64| t0 + Duration::from_secs(s) + Duration::from_millis(ms);
    let none = Duration::ZERO;
    assert!(
        !f.usable_behind(&plain, at(9, 999), none),
        "still fresh: a plain hit"
    );
    assert!(
        f.usable_behind(&plain, at(10, 0), none),
        "stale from its lifetime on"
    );
    assert!(f.usable_behind(&plain, at(14, 999), none));
    assert!(
        !f.usable_behind(&plain, at(15, 0), none),
        "the window is 5 s past freshness"
    );
    assert!(
        f.usable_behind(&plain, at(19, 0), Duration::from_secs(10)),
        "a longer allowance counts"
    );
    assert!(!f.usable_behind(&plain, at(21, 0), Duration::from_secs(10)));
    for (what, g) in [
        (
            "no-cache entry",
            Freshness {
                no_cache: true,
                ..f
            },
        ),
        ("must-revalidate entry", Freshness { strict: true, ..f }),
    ] {
        assert!(!g.usable_behind(&plain, at(11, 0), none), "{what}");
    }
    for ask in [
        directives::Request {
            no_cache: true,
            ..plain
        },
        directives::Request {
            max_age: Some(60),
            ..plain
        },
        directives::Request {
            min_fresh: Some(1),
            ..plain
        },
    ] {
        assert!(!f.usable_behind(&ask, at(11, 0), none), "{ask:?}");
    }
}

#[test]
fn validators_are_an_etag_or_a_last_modified_and_dates_in_any_case() {
    let now = Instant::now();
    let asks = directives::Request::default();
    let ttl = Duration::from_secs(60);
    let validators = |pairs: &[(&'static str, String)]| {
        storable(StatusCode::OK, &headers(pairs), &asks, timing(0, now), ttl)
            .unwrap()
            .freshness
            .validators
    };
    assert!(validators(&[("etag", "\"a\"".into())]));
    assert!(validators(&[(
        "last-modified",
        httpdate::fmt_http_date(base())
    )]));
    assert!(!validators(&[]));
    let at = parse_date("THU, 18 AUG 2050 02:01:18 GMT").unwrap();
    assert_eq!(Some(at), parse_date("Thu, 18 Aug 2050 02:01:18 GMT"));
    for bad in [
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu, 18 Aug 50 02:01:18 GMT",
        "soon",
    ] {
        assert_eq!(parse_date(bad), None, "{bad}");
    }
}

/// What a generated answer and request say, in plain numbers.
#[derive(Debug, Clone)]
struct Case {
    status: u16,
    s_maxage: Option<u64>,
    max_age: Option<u64>,
    /// Seconds after Date; `None` inside: an unparseable Expires.
    expires: Option<Option<i64>>,
    date_before: u64,
    age: Option<u64>,
    delay: u64,
    no_cache: bool,
    must_revalidate: bool,
    no_store: bool,
    shout: bool,
    ttl: u64,
    elapsed: u64,
    req_no_cache: bool,
    req_max_age: Option<u64>,
    req_min_fresh: Option<u64>,
    req_max_stale: Option<u64>,
}

fn case() -> impl Strategy<Value = Case> {
    let secs = || proptest::option::of(0u64..200);
    (
        (
            prop::sample::select(vec![200u16, 404, 299, 500]),
            secs(),
            secs(),
        ),
        (
            proptest::option::of(proptest::option::of(-100i64..200)),
            0u64..60,
            secs(),
            0u64..5,
        ),
        (
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.1),
            any::<bool>(),
        ),
        (1u64..300, 0u64..400),
        (prop::bool::weighted(0.1), secs(), secs(), secs()),
    )
        .prop_map(
            |(
                (status, s_maxage, max_age),
                (expires, date_before, age, delay),
                (no_cache, must_revalidate, no_store, shout),
                (ttl, elapsed),
                (rnc, rma, rmf, rms),
            )| Case {
                status,
                s_maxage,
                max_age,
                expires,
                date_before,
                age,
                delay,
                no_cache,
                must_revalidate,
                no_store,
                shout,
                ttl,
                elapsed,
                req_no_cache: rnc,
                req_max_age: rma,
                req_min_fresh: rmf,
                req_max_stale: rms,
            },
        )
}

/// RFC 9111 §4.2, written from the text, in whole seconds: `None` when
/// the answer may not be stored, else whether it may be used as it is.
fn model(c: &Case) -> Option<bool> {
    let heuristic = matches!(c.status, 200 | 404);
    let explicit = c
        .s_maxage
        .or(c.max_age)
        .map(|s| s as i64)
        .or(c.expires.map(|e| e.map_or(0, |e| e.max(0))));
    if c.no_store || (explicit.is_none() && !heuristic) {
        return None;
    }
    let initial = (c.date_before as i64).max(c.age.unwrap_or(0) as i64 + c.delay as i64);
    let lifetime = match explicit {
        Some(l) => l.min(initial + c.ttl as i64),
        None => initial + c.ttl as i64,
    };
    let age = initial + c.elapsed as i64;
    let strict = c.must_revalidate || c.s_maxage.is_some();
    let fresh = age < lifetime && c.req_min_fresh.is_none_or(|m| lifetime - age >= m as i64);
    let stale_ok =
        !strict && age >= lifetime && c.req_max_stale.is_some_and(|m| age - lifetime <= m as i64);
    Some(
        !c.no_cache
            && !c.req_no_cache
            && c.req_max_age.is_none_or(|m| age <= m as i64)
            && (fresh || stale_ok),
    )
}

fn render(c: &Case) -> (HeaderMap, HeaderMap) {
    let mut cc = Vec::new();
    if let Some(s) = c.s_maxage {
        cc.push(format!("s-maxage={s}"));
    }
    if let Some(s) = c.max_age {
        cc.push(format!("max-age={s}"));
    }
    if c.no_cache {
        cc.push("no-cache".into());
    }
    if c.must_revalidate {
        cc.push("must-revalidate".into());
    }
    if c.no_store {
        cc.push("no-store".into());
    }
    let date = base() - Duration::from_secs(c.date_before);
    let mut answer = vec![("date", httpdate::fmt_http_date(date))];
    if !cc.is_empty() {
        let line = cc.join(", ");
        answer.push((
            "cache-control",
            if c.shout { line.to_uppercase() } else { line },
        ));
    }
    if let Some(e) = c.expires {
        let v = match e {
            Some(e) if e >= 0 => httpdate::fmt_http_date(date + Duration::from_secs(e as u64)),
            Some(e) => httpdate::fmt_http_date(date - Duration::from_secs((-e) as u64)),
            None => "Thu, 18 Aug 2050 02:01:18 UTC".into(),
        };
        answer.push(("expires", v));
    }
    if let Some(a) = c.age {
        answer.push(("age", a.to_string()));
    }
    let mut rq = Vec::new();
    if c.req_no_cache {
        rq.push("no-cache".to_string());
    }
    if let Some(s) = c.req_max_age {
        rq.push(format!("max-age={s}"));
    }
    if let Some(s) = c.req_min_fresh {
        rq.push(format!("min-fresh={s}"));
    }
    if let Some(s) = c.req_max_stale {
        rq.push(format!("max-stale={s}"));
    }
    let request = match rq.is_empty() {
        true => vec![],
        false => vec![("cache-control", rq.join(", "))],
    };
    (headers(&answer), headers(&request))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Against the model: an entry is stored exactly when §3 allows, and
    /// used without asking Dastra exactly when §4.2 and the caller's
    /// directives allow — never when the model says it is stale.
    #[test]
    fn a_stored_answer_is_used_exactly_when_the_rfc_says_it_is_fresh(c in case()) {
        let (answer, request) = render(&c);
        let asks = directives::Request::of(&request);
        let t0 = Instant::now();
        let status = StatusCode::from_u16(c.status).unwrap();
        let ttl = Duration::from_secs(c.ttl);
        let got = storable(status, &answer, &asks, timing(c.delay, t0), ttl)
            .map(|s| s.freshness.usable(&asks, t0 + Duration::from_secs(c.elapsed)));
        prop_assert_eq!(got, model(&c), "{:?}\n{:?}", answer, request);
    }
}
