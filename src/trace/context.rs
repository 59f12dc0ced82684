//! W3C Trace Context (`traceparent`, <https://www.w3.org/TR/trace-context/>):
//! reading a caller's, writing ours to Dastra, and making ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use http::HeaderValue;

pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// A trace's id: 16 bytes, never all zero.
pub type TraceId = [u8; 16];
/// A span's id: 8 bytes, never all zero.
pub type SpanId = [u8; 8];

/// What a caller's `traceparent` says: the trace it is part of, the caller's
/// span (our call span's parent) and whether the caller records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// Reads `traceparent` as the spec's processing rules say: lower-case hex,
/// version `ff` and all-zero ids invalid, a later version read by its
/// version-00 prefix. `None` for anything else: the call then starts a trace.
pub fn parse(v: &HeaderValue) -> Option<Parent> {
    let b = v.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex_byte(&b[0..2])?;
    match version {
        0xff => return None,
        0 if b.len() != 55 => return None,
        _ if b.len() > 55 && b[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    for (i, t) in trace_id.iter_mut().enumerate() {
        *t = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span_id = [0u8; 8];
    for (i, s) in span_id.iter_mut().enumerate() {
        *s = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&b[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// `00-<trace>-<span>-<flags>`, for Dastra.
pub(crate) fn header(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> HeaderValue {
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    hex_into(trace_id, &mut out[3..35]);
    out[35] = b'-';
    hex_into(span_id, &mut out[36..52]);
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
}

/// Lower-case hex, as logs and trace viewers show ids.
pub fn hex(id: &[u8]) -> String {
    hex::encode(id)
}

fn hex_into(id: &[u8], out: &mut [u8]) {
    hex::encode_to_slice(id, out).expect("two hex digits per byte");
}

/// Lower-case only: the spec makes upper-case hex invalid.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(two[0])? << 4 | d(two[1])?)
}

/// Ids without a syscall per call: a process-random seed and a counter, mixed
/// by SplitMix64 (a bijection, so two calls never share an id in one
/// process; random-looking, so replicas and restarts do not collide).
fn next() -> u64 {
    static SEED: LazyLock<u64> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut z = SEED.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn new_span_id() -> SpanId {
    loop {
        let id = next().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

pub(crate) fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next().to_be_bytes());
    id[8..].copy_from_slice(&new_span_id());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Parent> {
        parse(&HeaderValue::from_str(s).unwrap())
    }

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_the_same() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = p(s).unwrap();
        assert!(parent.sampled);
        assert_eq!(hex(&parent.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent.span_id), "00f067aa0ba902b7");
        assert_eq!(header(&parent.trace_id, &parent.span_id, true), s);
        let unsampled = p("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        // A later version is read by its version-00 fields.
        assert!(p("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_some());
    }

    #[test]
    fn ids_are_distinct_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = new_trace_id();
            assert_ne!(t, [0; 16]);
            assert!(seen.insert(t));
        }
    }
}
