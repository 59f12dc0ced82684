//! The call's `X-Request-Id`: kept from the caller when it is sane for logs,
//! otherwise made here, unique per process without a syscall per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The call's `X-Request-Id`: the caller's own when it is sane for logs (1 to
/// 128 visible ASCII characters), otherwise a fresh one, and whether it is
/// fresh. A fresh one is not on the request yet: the forward stage writes it
/// (over an insane one), so a call answered before that never writes it.
/// The caller's is copied: the answer needs it after the call waited, and
/// the request's own value borrows hyper's read buffer (see `head`).
pub(crate) fn request_id(headers: &HeaderMap) -> (HeaderValue, bool) {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic) {
            if let Ok(mine) = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(b)) {
                return (mine, false);
            }
        }
    }
    (fresh_request_id(), true)
}

/// Unique ids without a syscall per call: a random prefix per process and a counter.
fn fresh_request_id() -> HeaderValue {
    // The prefix's text is made once; each id writes only its counter.
    static PREFIX: LazyLock<[u8; 16]> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        hex16(u64::from_le_bytes(b))
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&*PREFIX);
    id[16..].copy_from_slice(&hex16(n));
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// Hex by hand: `format!` was a visible share of the 429 path.
fn hex16(v: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        *o = b"0123456789abcdef"[((v >> (60 - 4 * j)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_32_hex_digits_and_unique() {
        let (a, b) = (fresh_request_id(), fresh_request_id());
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a[..16], b[..16], "one prefix per process");
        let (na, nb) = (
            u64::from_str_radix(&a[16..], 16).unwrap(),
            u64::from_str_radix(&b[16..], 16).unwrap(),
        );
        assert!(nb > na, "a counter (other tests draw ids too)");
    }

    #[test]
    fn insane_request_ids_are_replaced() {
        let kept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-request-id", HeaderValue::from_str(v).unwrap());
            let (id, fresh) = request_id(&h);
            assert_eq!(fresh, id != v, "fresh unless kept");
            id == v
        };
        assert!(kept("req-abc-123"));
        assert!(kept(&"x".repeat(128)));
        assert!(!kept("has space"));
        assert!(!kept(""));
        assert!(!kept(&"x".repeat(129)));
        let (id, fresh) = request_id(&HeaderMap::new());
        assert_eq!(id.len(), 32, "made when absent");
        assert!(fresh);
    }
}
