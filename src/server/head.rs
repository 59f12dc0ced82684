//! A request head that owns its bytes.
//!
//! hyper parses an HTTP/1 head in place: the URI and every header value are
//! slices of the connection's 8 KiB read buffer. While any of them lives,
//! hyper cannot reuse that buffer, and it reads again at once (a busy
//! connection is watched for a hang-up, which is how a caller leaving the
//! queue is noticed): that read allocates a second 8 KiB. A call waiting for
//! quota held both for as long as it waited. Copying the head's few hundred
//! bytes into one allocation of their own, before hyper reads again, lets it
//! reuse the buffer.

use bytes::{BufMut as _, Bytes, BytesMut};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Version};

/// Re-homes the URI and header values of an HTTP/1 request in one buffer of
/// their own. HTTP/2 heads come out of the HPACK decoder, not the read
/// buffer, and are left alone.
pub(super) fn detach(parts: &mut Parts) {
    if parts.version > Version::HTTP_11 {
        return;
    }
    // Origin-form (`/path?query`), nearly every call: the path and query is
    // the URI's only borrowed part. Other forms are rare and rebuilt from text.
    let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
    let uri_len = match (origin_form, parts.uri.path_and_query()) {
        (true, Some(pq)) => pq.as_str().len(),
        _ => 0,
    };
    let values: usize = parts.headers.values().map(|v| v.len()).sum();
    let mut buf = BytesMut::with_capacity(uri_len + values);
    if let (true, Some(pq)) = (origin_form, parts.uri.path_and_query()) {
        buf.put_slice(pq.as_str().as_bytes());
    }
    for v in parts.headers.values() {
        buf.put_slice(v.as_bytes());
    }
    let mut owned: Bytes = buf.freeze();
    if uri_len > 0 {
        if let Ok(pq) = PathAndQuery::from_maybe_shared(owned.split_to(uri_len)) {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(pq);
            if let Ok(u) = Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
    } else if !origin_form {
        if let Ok(u) = Uri::try_from(parts.uri.to_string()) {
            parts.uri = u;
        }
    }
    for v in parts.headers.values_mut() {
        let mine = owned.split_to(v.len());
        if let Ok(mut nv) = HeaderValue::from_maybe_shared(mine) {
            nv.set_sensitive(v.is_sensitive());
            *v = nv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head whose URI and values borrow from `read_buf`, as hyper builds it.
    fn borrowed(read_buf: &Bytes, version: Version) -> Parts {
        let text = std::str::from_utf8(read_buf).unwrap();
        let at = |s: &str| {
            let i = text.find(s).unwrap();
            read_buf.slice(i..i + s.len())
        };
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.version = version;
        parts.uri = Uri::from_maybe_shared(at("/v1/ws/1/Actors?page=2")).unwrap();
        for (name, value) in [("host", "proxy.test"), ("accept", "application/json")] {
            let v = HeaderValue::from_maybe_shared(at(value)).unwrap();
            parts.headers.append(name, v);
        }
        parts.headers.append(
            "accept",
            HeaderValue::from_maybe_shared(at("text/csv")).unwrap(),
        );
        parts
    }

    const HEAD: &[u8] = b"GET /v1/ws/1/Actors?page=2 HTTP/1.1\r\nhost: proxy.test\r\n\
                          accept: application/json\r\naccept: text/csv\r\n\r\n";

    #[test]
    fn an_http1_head_lets_go_of_the_read_buffer_and_keeps_its_meaning() {
        let read_buf = Bytes::from(HEAD.to_vec());
        let mut parts = borrowed(&read_buf, Version::HTTP_11);
        parts.headers.get_mut("host").unwrap().set_sensitive(true);
        assert!(!read_buf.is_unique());
        detach(&mut parts);
        assert!(
            read_buf.is_unique(),
            "nothing borrows the read buffer any more"
        );
        assert_eq!(parts.uri, "/v1/ws/1/Actors?page=2");
        assert_eq!(parts.headers["host"], "proxy.test");
        assert!(parts.headers["host"].is_sensitive());
        let accepts: Vec<_> = parts.headers.get_all("accept").iter().collect();
        assert_eq!(accepts, ["application/json", "text/csv"]);
    }

    #[test]
    fn an_absolute_form_uri_is_rehomed_too() {
        let read_buf = Bytes::from(b"http://proxy.test/v1/x?y=1".to_vec());
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.uri = Uri::from_maybe_shared(read_buf.clone()).unwrap();
        detach(&mut parts);
        assert!(read_buf.is_unique());
        assert_eq!(parts.uri, "http://proxy.test/v1/x?y=1");
    }

    #[test]
    fn an_http2_head_is_left_as_it_is() {
        let read_buf = Bytes::from(HEAD.to_vec());
        let mut parts = borrowed(&read_buf, Version::HTTP_2);
        detach(&mut parts);
        assert!(!read_buf.is_unique());
    }
}
