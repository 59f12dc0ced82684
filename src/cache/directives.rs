//! `Cache-Control` read as RFC 9111 §5.2 and the public cache test suite's
//! parse groups expect: split on commas outside quoted strings, names
//! case-insensitive, and of repeated directives the most restrictive wins.
//! A `max-age` / `s-maxage` that is not a number (a single-quoted, negative
//! or decimal one) makes the answer stale rather than being ignored: ignored,
//! the rule's ttl would become its heuristic freshness, the opposite of what
//! a malformed value can have meant (§4.2.1 "encouraged to consider …
//! invalid freshness information … stale").

use http::header::{self, HeaderMap, HeaderName};

/// Seconds a delta-seconds value saturates at (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 2_147_483_648;

/// A directive that may list header names (`no-cache="a, b"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Listed {
    #[default]
    No,
    /// Without a list: the whole answer.
    All,
    /// Only these headers (lower-case).
    Fields(Vec<String>),
}

impl Listed {
    fn add(&mut self, value: Option<&str>) {
        let names = value.map(|v| {
            v.split(',')
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
        });
        *self = match (std::mem::take(self), names) {
            (Listed::All, _) | (_, None) => Listed::All,
            (Listed::No, Some(n)) => Listed::Fields(n),
            (Listed::Fields(mut a), Some(n)) => {
                a.extend(n);
                Listed::Fields(a)
            }
        };
    }
}

/// A delta-seconds directive: absent, a number, or present but unusable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delta {
    #[default]
    Absent,
    Secs(u64),
    Invalid,
}

impl Delta {
    /// Adds an occurrence; the smaller (more restrictive) wins, and an
    /// invalid one is the most restrictive of all.
    fn add(&mut self, value: Option<&str>) {
        let next = value
            .and_then(delta_seconds)
            .map_or(Delta::Invalid, Delta::Secs);
        *self = match (*self, next) {
            (Delta::Invalid, _) | (_, Delta::Invalid) => Delta::Invalid,
            (Delta::Secs(a), Delta::Secs(b)) => Delta::Secs(a.min(b)),
            (Delta::Absent, n) => n,
            (s, Delta::Absent) => s,
        };
    }

    /// Seconds, with an invalid value read as 0 (stale at once).
    pub fn secs(self) -> Option<u64> {
        match self {
            Delta::Absent => None,
            Delta::Secs(s) => Some(s),
            Delta::Invalid => Some(0),
        }
    }
}

/// What an answer's `Cache-Control` says (§5.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub max_age: Delta,
    pub s_maxage: Delta,
    pub no_cache: Listed,
    pub private: Listed,
    pub no_store: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub public: bool,
    pub must_understand: bool,
    /// RFC 5861: served stale this long while revalidated behind.
    pub stale_while_revalidate: Delta,
}

impl Response {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut out = Self::default();
        each(headers, header::CACHE_CONTROL, |name, value| {
            match name.to_ascii_lowercase().as_str() {
                "max-age" => out.max_age.add(value),
                "s-maxage" => out.s_maxage.add(value),
                "no-cache" => out.no_cache.add(value),
                "private" => out.private.add(value),
                "no-store" => out.no_store = true,
                "must-revalidate" => out.must_revalidate = true,
                "proxy-revalidate" => out.proxy_revalidate = true,
                "public" => out.public = true,
                "must-understand" => out.must_understand = true,
                "stale-while-revalidate" => out.stale_while_revalidate.add(value),
                _ => {}
            }
        });
        out
    }

    /// Never served stale, not even when Dastra fails (§4.2.4).
    pub fn revalidate_when_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage != Delta::Absent
    }
}

/// What a caller's `Cache-Control` (or `Pragma: no-cache` without one) asks
/// of the cache (§5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `max-stale` without a value: any staleness.
    pub max_stale: Option<u64>,
}

impl Request {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut out = Self::default();
        let mut any = false;
        each(headers, header::CACHE_CONTROL, |name, value| {
            any = true;
            let secs = || value.and_then(delta_seconds);
            match name.to_ascii_lowercase().as_str() {
                "no-cache" => out.no_cache = true,
                "no-store" => out.no_store = true,
                "only-if-cached" => out.only_if_cached = true,
                // A malformed request max-age asks for a validated answer.
                "max-age" => {
                    out.max_age = Some(secs().unwrap_or(0).min(out.max_age.unwrap_or(u64::MAX)))
                }
                "min-fresh" => out.min_fresh = secs().or(out.min_fresh),
                "max-stale" => {
                    out.max_stale = Some(value.map_or(Some(MAX_DELTA), delta_seconds).unwrap_or(0))
                }
                _ => {}
            }
        });
        if !any {
            each(headers, header::PRAGMA, |name, _| {
                out.no_cache |= name.eq_ignore_ascii_case("no-cache");
            });
        }
        out
    }
}

/// Calls `f(name, value)` for each directive of every line of `header`,
/// the value unquoted.
fn each(headers: &HeaderMap, header: HeaderName, mut f: impl FnMut(&str, Option<&str>)) {
    for line in headers.get_all(header) {
        let Ok(line) = line.to_str() else { continue };
        for item in split(line) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(unquote(v))),
                None => (item, None),
            };
            if !name.is_empty() {
                f(name, value);
            }
        }
    }
}

/// Splits on commas that are not inside a quoted string; items trimmed.
fn split(line: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (i, b) in line.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                cuts.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    cuts.push(&line[start..]);
    cuts.into_iter().map(str::trim).filter(|s| !s.is_empty())
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Digits only (leading zeros fine), saturating at 2^31.
fn delta_seconds(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA)))
}

/// The `Age` an answer arrived with: the first value of the first line
/// when it is a whole number; anything else counts as no `Age`.
pub fn age(headers: &HeaderMap) -> u64 {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| delta_seconds(s.split(',').next().unwrap_or("").trim()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(lines: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for l in lines {
            m.append(header::CACHE_CONTROL, l.parse().unwrap());
        }
        m
    }

    #[test]
    fn parses_as_the_suite_expects() {
        assert_eq!(
            Response::of(&h(&["max-age=003600"])).max_age,
            Delta::Secs(3600)
        );
        assert_eq!(
            Response::of(&h(&["max-age=\"3600\""])).max_age,
            Delta::Secs(3600)
        );
        for bad in ["max-age='3600'", "max-age=-1", "max-age=3600.0", "max-age"] {
            assert_eq!(Response::of(&h(&[bad])).max_age, Delta::Invalid, "{bad}");
        }
        let quoted = Response::of(&h(&["extension=\"max-age=3600, no-store\", max-age=1"]));
        assert_eq!((quoted.max_age, quoted.no_store), (Delta::Secs(1), false));
        let twice = Response::of(&h(&["max-age=1800", "MAX-AGE=1, public"]));
        assert_eq!((twice.max_age, twice.public), (Delta::Secs(1), true));
        assert_eq!(
            Response::of(&h(&["max-age=99999999999999999999999"])).max_age,
            Delta::Secs(MAX_DELTA)
        );
        let listed = Response::of(&h(&["no-cache=\"a, B\", private=x"]));
        assert_eq!(
            listed.no_cache,
            Listed::Fields(vec!["a".into(), "b".into()])
        );
        assert_eq!(listed.private, Listed::Fields(vec!["x".into()]));
        assert_eq!(
            Response::of(&h(&["no-cache=a, no-cache"])).no_cache,
            Listed::All
        );
    }

    #[test]
    fn request_directives_and_pragma() {
        let r = Request::of(&h(&["max-age=5, min-fresh=2, only-if-cached, max-stale"]));
        assert_eq!(
            (r.max_age, r.min_fresh, r.only_if_cached, r.max_stale),
            (Some(5), Some(2), true, Some(MAX_DELTA))
        );
        let mut p = HeaderMap::new();
        p.insert(header::PRAGMA, "no-cache".parse().unwrap());
        assert!(Request::of(&p).no_cache);
        p.insert(header::CACHE_CONTROL, "max-age=9".parse().unwrap());
        assert!(
            !Request::of(&p).no_cache,
            "Pragma counts only without Cache-Control"
        );
    }

    /// Each directive reaches its own field, and quoting follows RFC 9110
    /// §5.6.4: a backslash escapes only inside a quoted string (the cases
    /// cargo-mutants found unpinned).
    #[test]
    fn every_directive_is_read_and_quoted_pairs_hide_commas() {
        let r = Response::of(&h(&["proxy-revalidate, stale-while-revalidate=30"]));
        assert!(r.proxy_revalidate && r.revalidate_when_stale());
        assert_eq!(r.stale_while_revalidate, Delta::Secs(30));
        assert!(!Response::of(&h(&["public"])).revalidate_when_stale());
        assert!(Request::of(&h(&["no-store"])).no_store);
        assert!(!Request::of(&h(&["no-cache"])).no_store);
        // An escaped quote does not end the quoted string.
        let escaped = Response::of(&h(&["ext=\"a \\\", no-store\", max-age=1"]));
        assert_eq!((escaped.no_store, escaped.max_age), (false, Delta::Secs(1)));
        // Outside quotes a backslash is a plain character: the comma splits.
        let bare = Response::of(&h(&["max-age=1, a\\,no-store"]));
        assert!(bare.no_store);
    }

    #[test]
    fn age_is_the_first_whole_number() {
        let a = |lines: &[&str]| {
            let mut m = HeaderMap::new();
            for l in lines {
                m.append(header::AGE, l.parse().unwrap());
            }
            age(&m)
        };
        assert_eq!(a(&["7200, 0"]), 7200);
        assert_eq!(a(&["0, 7200"]), 0);
        assert_eq!(a(&["7200", "0"]), 7200);
        assert_eq!(a(&["7200.0"]), 0);
        assert_eq!(a(&["-7200"]), 0);
        assert_eq!(a(&["2147483649"]), MAX_DELTA);
    }
}
