//! Passthrough's quota key: the caller's credential as Dastra reads it, so
//! one credential is one quota however it is spelled (SPEC §9.1).

use http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use super::QuotaKey;

/// A caller credential the proxy cannot key a quota on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerCredentialError {
    /// Two credentials (both headers, or one header twice): which one Dastra
    /// would count is not ours to guess, and each would be a fresh quota key.
    #[error("send one credential: X-API-Key or Authorization, once")]
    Ambiguous,
}

/// The digest of the one credential the caller sent: the scheme of an
/// `Authorization` case-insensitive, whitespace around the token trimmed.
/// No credential at all is one key too (Dastra answers those 401).
pub(super) fn quota_key(headers: &HeaderMap) -> Result<QuotaKey, CallerCredentialError> {
    let mut api_key = headers.get_all("x-api-key").iter();
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let (kind, scheme, token) = match (api_key.next(), auth.next()) {
        (Some(_), Some(_)) => return Err(CallerCredentialError::Ambiguous),
        (Some(k), None) => (1u8, &b""[..], trim(k.as_bytes())),
        (None, Some(a)) => {
            let a = trim(a.as_bytes());
            let split = a.iter().position(|b| *b == b' ' || *b == b'\t');
            match split {
                Some(i) => (2, &a[..i], trim(&a[i..])),
                None => (2, a, &b""[..]),
            }
        }
        (None, None) => (0, &b""[..], &b""[..]),
    };
    if api_key.next().is_some() || auth.next().is_some() {
        return Err(CallerCredentialError::Ambiguous);
    }
    let mut h = Sha256::new();
    h.update([kind]);
    h.update(scheme.to_ascii_lowercase());
    h.update([0]);
    h.update(token);
    Ok(QuotaKey(h.finalize().into()))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pairs: &[(&'static str, &'static str)]) -> Result<QuotaKey, CallerCredentialError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        quota_key(&h)
    }

    #[test]
    fn one_credential_is_one_key_however_it_is_spelled() {
        let want = key(&[("authorization", "Bearer T")]).unwrap();
        for spelling in [
            "bearer T",
            "BEARER T",
            "Bearer  T",
            "Bearer\tT ",
            " Bearer T",
        ] {
            assert_eq!(
                key(&[("authorization", spelling)]).unwrap(),
                want,
                "{spelling:?}"
            );
        }
        assert_ne!(
            key(&[("authorization", "Bearer t")]).unwrap(),
            want,
            "tokens are case-sensitive"
        );
        assert_ne!(key(&[("authorization", "Basic T")]).unwrap(), want);
        assert_ne!(
            key(&[("x-api-key", "T")]).unwrap(),
            want,
            "an API key is another credential"
        );
        assert_eq!(
            key(&[("x-api-key", " K ")]).unwrap(),
            key(&[("x-api-key", "K")]).unwrap()
        );
        assert_ne!(key(&[]).unwrap(), key(&[("x-api-key", "")]).unwrap());
    }

    #[test]
    fn two_credentials_are_ambiguous() {
        for pairs in [
            &[("x-api-key", "junk"), ("authorization", "Bearer T")][..],
            &[("x-api-key", "a"), ("x-api-key", "b")][..],
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")][..],
        ] {
            assert_eq!(
                key(pairs),
                Err(CallerCredentialError::Ambiguous),
                "{pairs:?}"
            );
        }
    }
}
