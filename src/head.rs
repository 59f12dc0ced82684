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
//!
//! Only a call that can wait pays for the copy: [`detach`] is called where a
//! call may first go pending with its head (a body to read, a flight to
//! follow, a quota slot, an OAuth2 token, an upstream connection to open or
//! to free). A call answered at once (a refusal, a 429 in reject mode, a
//! cached answer) drops its head before hyper reads again, and so does one
//! sent at once: the upstream connection encodes the head and drops it, and
//! only the answer is waited for.

use bytes::{BufMut as _, Bytes, BytesMut};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Version};

/// Re-homes the URI and header values of an HTTP/1 request in one buffer of
/// their own. HTTP/2 heads come out of the HPACK decoder, not the read
/// buffer, and are left alone.
pub(crate) fn detach<B>(req: &mut Request<B>) {
    if req.version() > Version::HTTP_11 {
        return;
    }
    // Origin-form (`/path?query`), nearly every call: the path and query is
    // the URI's only borrowed part. Other forms are rare and rebuilt from text.
    let origin_form = req.uri().scheme().is_none() && req.uri().authority().is_none();
    let uri_len = match (origin_form, req.uri().path_and_query()) {
        (true, Some(pq)) => pq.as_str().len(),
        _ => 0,
    };
    let values: usize = req.headers().values().map(|v| v.len()).sum();
    let mut buf = BytesMut::with_capacity(uri_len + values);
    if let (true, Some(pq)) = (origin_form, req.uri().path_and_query()) {
        buf.put_slice(pq.as_str().as_bytes());
    }
    for v in req.headers().values() {
        buf.put_slice(v.as_bytes());
    }
    let mut owned: Bytes = buf.freeze();
    if uri_len > 0 {
        if let Ok(pq) = PathAndQuery::from_maybe_shared(owned.split_to(uri_len)) {
            let mut uri = std::mem::take(req.uri_mut()).into_parts();
            uri.path_and_query = Some(pq);
            if let Ok(u) = Uri::from_parts(uri) {
                *req.uri_mut() = u;
            }
        }
    } else if !origin_form {
        if let Ok(u) = Uri::try_from(req.uri().to_string()) {
            *req.uri_mut() = u;
        }
    }
    for v in req.headers_mut().values_mut() {
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
    fn borrowed(read_buf: &Bytes, version: Version) -> Request<()> {
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
        Request::from_parts(parts, ())
    }

    const HEAD: &[u8] = b"GET /v1/ws/1/Actors?page=2 HTTP/1.1\r\nhost: proxy.test\r\n\
                          accept: application/json\r\naccept: text/csv\r\n\r\n";

    #[test]
    fn an_http1_head_lets_go_of_the_read_buffer_and_keeps_its_meaning() {
        let read_buf = Bytes::from(HEAD.to_vec());
        let mut req = borrowed(&read_buf, Version::HTTP_11);
        req.headers_mut()
            .get_mut("host")
            .unwrap()
            .set_sensitive(true);
        assert!(!read_buf.is_unique());
        detach(&mut req);
        assert!(
            read_buf.is_unique(),
            "nothing borrows the read buffer any more"
        );
        assert_eq!(req.uri(), "/v1/ws/1/Actors?page=2");
        assert_eq!(req.headers()["host"], "proxy.test");
        assert!(req.headers()["host"].is_sensitive());
        let accepts: Vec<_> = req.headers().get_all("accept").iter().collect();
        assert_eq!(accepts, ["application/json", "text/csv"]);
    }

    #[test]
    fn an_absolute_form_uri_is_rehomed_too() {
        let read_buf = Bytes::from(b"http://proxy.test/v1/x?y=1".to_vec());
        let mut req = Request::new(());
        *req.uri_mut() = Uri::from_maybe_shared(read_buf.clone()).unwrap();
        detach(&mut req);
        assert!(read_buf.is_unique());
        assert_eq!(req.uri(), "http://proxy.test/v1/x?y=1");
    }

    #[test]
    fn an_http2_head_is_left_as_it_is() {
        let read_buf = Bytes::from(HEAD.to_vec());
        let mut req = borrowed(&read_buf, Version::HTTP_2);
        detach(&mut req);
        assert!(!read_buf.is_unique());
    }
}
