//! Whether an answer may be stored, and for how long a stored one may be
//! used without asking Dastra (RFC 9111 §3, §4.2). Dastra's word wins,
//! capped by the rule's `ttl`; the `ttl` is the heuristic freshness of an
//! answer that names none. Pure functions of the headers and two clocks, so
//! the proptest in `tests` checks them against a model of §4.2.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::StatusCode;
use tokio::time::Instant;

use super::directives::{self, Listed};

/// Statuses cacheable by heuristic freshness (RFC 9110 §15.1), less 206: a
/// range is a caller's own (SPEC §9.1).
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// How a stored answer ages. `Copy`: it is read on every hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// When it was stored (this process's clock).
    pub stored_at: Instant,
    /// Its age then: Dastra's `Age` or the `Date` gap, plus the time the
    /// call was in flight (§4.2.3's corrected initial age).
    pub initial_age: Duration,
    pub lifetime: Duration,
    /// `no-cache`: every use is validated first.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub strict: bool,
    /// It has an `ETag` or a `Last-Modified` to revalidate with.
    pub validators: bool,
    /// Dastra's `stale-while-revalidate`.
    pub behind: Duration,
}

/// The times of the call that brought an answer, for its age.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// When the call left (wall clock, to compare with Dastra's `Date`).
    pub sent: SystemTime,
    pub received: SystemTime,
    pub now: Instant,
}

/// A storable answer: how it ages, and the headers its `no-cache="…"` or
/// `private="…"` keep out of the stored copy.
#[derive(Debug)]
pub struct Storable {
    pub freshness: Freshness,
    pub omit: Vec<String>,
}

impl Freshness {
    /// How old the stored answer is at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// Until when it is fresh.
    pub fn fresh_until(&self) -> Instant {
        self.stored_at + self.lifetime.saturating_sub(self.initial_age)
    }

    /// The freshness it has left at `now` (zero when stale).
    pub fn left(&self, now: Instant) -> Duration {
        self.lifetime.saturating_sub(self.age(now))
    }

    /// Whether it may answer a request with directives `req` at `now`
    /// without asking Dastra (§4, §5.2.1).
    pub fn usable(&self, req: &directives::Request, now: Instant) -> bool {
        let age = self.age(now);
        if self.no_cache || req.no_cache || req.max_age.is_some_and(|m| age > secs(m)) {
            return false;
        }
        if age < self.lifetime {
            return req.min_fresh.is_none_or(|m| self.lifetime - age >= secs(m));
        }
        !self.strict
            && req
                .max_stale
                .is_some_and(|m| age - self.lifetime <= secs(m))
    }

    /// Whether, stale, it may still answer while one revalidation runs
    /// behind it (RFC 5861): within `allowance` (or Dastra's own window,
    /// when longer) past its freshness, and nobody asked for better.
    pub fn usable_behind(
        &self,
        req: &directives::Request,
        now: Instant,
        allowance: Duration,
    ) -> bool {
        let age = self.age(now);
        let window = self.behind.max(allowance);
        !self.no_cache
            && !self.strict
            && !req.no_cache
            && req.max_age.is_none()
            && req.min_fresh.is_none()
            && age >= self.lifetime
            && age - self.lifetime < window
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Whether `status` with `headers`, answering a request with directives
/// `req`, may be stored, and how it ages (§3, §4.2.1–4.2.3).
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    req: &directives::Request,
    timing: Timing,
    ttl: Duration,
) -> Option<Storable> {
    let code = status.as_u16();
    // 206 is a range, 304 an answer to a precondition, 429 the quota's
    // business (admission pauses on it); 1xx never reach here.
    if req.no_store || matches!(code, 206 | 304 | 429) || code < 200 {
        return None;
    }
    let cc = directives::Response::of(headers);
    // SPEC §9.1: a cookie-setting answer is one caller's (a departure from
    // §3.5's permission, in the README's design notes).
    let understood = HEURISTIC.contains(&code) || matches!(code, 302 | 303 | 307);
    if (cc.no_store && !(cc.must_understand && understood))
        || cc.private == Listed::All
        || headers.contains_key(header::SET_COOKIE)
        || vary_star(headers)
    {
        return None;
    }
    let date = http_date(headers, header::DATE).unwrap_or(timing.received);
    let explicit = cc
        .s_maxage
        .secs()
        .or(cc.max_age.secs())
        .map(secs)
        .or_else(|| expires(headers).map(|e| e.duration_since(date).unwrap_or(Duration::ZERO)));
    // In whole seconds, as `Date` is: an answer dated this second is 0 s old.
    let received = timing
        .received
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let received = SystemTime::UNIX_EPOCH + secs(received.as_secs());
    let apparent = received.duration_since(date).unwrap_or(Duration::ZERO);
    let in_flight = timing
        .received
        .duration_since(timing.sent)
        .unwrap_or(Duration::ZERO);
    let corrected = secs(directives::age(headers)) + in_flight;
    let initial_age = apparent.max(corrected);
    // The ttl bounds how long it is used from here, whatever its age; it is
    // the whole freshness of an answer that names none (§4.2.2).
    let lifetime = match explicit {
        Some(l) => l.min(initial_age + ttl),
        None if HEURISTIC.contains(&code) || cc.public => initial_age + ttl,
        None => return None,
    };
    let mut omit = Vec::new();
    for listed in [&cc.no_cache, &cc.private] {
        if let Listed::Fields(f) = listed {
            omit.extend(f.iter().cloned());
        }
    }
    Some(Storable {
        freshness: Freshness {
            stored_at: timing.now,
            initial_age,
            lifetime,
            no_cache: cc.no_cache == Listed::All,
            strict: cc.revalidate_when_stale(),
            validators: headers.contains_key(header::ETAG)
                || headers.contains_key(header::LAST_MODIFIED),
            behind: cc
                .stale_while_revalidate
                .secs()
                .map_or(Duration::ZERO, secs),
        },
        omit,
    })
}

/// An HTTP date (RFC 9110 §5.6.7), its names in any case: `THU, 18 AUG`.
pub fn parse_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s).ok().or_else(|| {
        // Title-case each word (weekday, month), `GMT` upper-case.
        let mut fixed = String::with_capacity(s.len());
        let mut first = true;
        for c in s.chars() {
            fixed.push(if first {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            first = !c.is_ascii_alphabetic();
        }
        let fixed = fixed.strip_suffix("Gmt").map(|f| format!("{f}GMT"))?;
        httpdate::parse_http_date(&fixed).ok()
    })
}

/// `Expires` as a time: one valid HTTP date, else already expired (§5.3).
fn expires(headers: &HeaderMap) -> Option<SystemTime> {
    let mut lines = headers.get_all(header::EXPIRES).iter();
    let first = lines.next()?;
    if lines.next().is_some() {
        return Some(SystemTime::UNIX_EPOCH);
    }
    Some(
        first
            .to_str()
            .ok()
            .and_then(parse_date)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_date)
}

/// `Vary: *`: no request can be known to match.
fn vary_star(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|s| s.split(',').any(|n| n.trim() == "*"))
}

#[cfg(test)]
#[path = "freshness_tests.rs"]
mod tests;
