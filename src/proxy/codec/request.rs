//! Writing the request head and body as hyper's client encoder writes
//! them: `METHOD target HTTP/1.1`, the (already rewritten) headers in the
//! map's order as `name: value`, and the body framed as hyper's
//! `Client::set_length` frames it — a valid `Content-Length` the request
//! carries is used as is; a body of unknown length is chunked (and
//! `transfer-encoding: chunked` added), except for `GET`/`HEAD`/`CONNECT`,
//! which then go without a body; a body of known length gets its
//! `content-length`; an empty body goes without one. Request trailers are
//! not sent (the `Trailer` header that would allow them is hop-by-hop).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Uri};

/// How the request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Nothing after the head.
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// The request head, and how its body follows. `body`: `None` when the
/// body is empty from the start, else its exact length when known.
pub fn encode_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Option<Option<u64>>,
) -> (BytesMut, BodyFraming) {
    let declared = declared_length(headers);
    let (framing, add) = match body {
        None => (BodyFraming::None, Added::Nothing),
        Some(_) if declared.is_some() => {
            (BodyFraming::Length(declared.unwrap_or(0)), Added::Nothing)
        }
        Some(None) => match *method {
            Method::GET | Method::HEAD | Method::CONNECT => (BodyFraming::None, Added::Nothing),
            _ => (BodyFraming::Chunked, Added::Chunked),
        },
        Some(Some(len)) => (BodyFraming::Length(len), Added::Length(len)),
    };
    let target = uri.path_and_query().map(|pq| pq.as_str());
    let mut head = BytesMut::with_capacity(64 + headers.len() * 32);
    head.put_slice(method.as_str().as_bytes());
    head.put_u8(b' ');
    match target {
        Some(target) if uri.scheme().is_none() && uri.authority().is_none() => {
            head.put_slice(target.as_bytes())
        }
        _ => head.put_slice(uri.to_string().as_bytes()),
    }
    head.put_slice(b" HTTP/1.1\r\n");
    // A declared length that did not parse is dropped when the body goes
    // chunked (as hyper does).
    let skip_length = add == Added::Chunked && headers.contains_key(header::CONTENT_LENGTH);
    for (name, value) in headers {
        if skip_length && name == header::CONTENT_LENGTH {
            continue;
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    match add {
        Added::Nothing => {}
        Added::Chunked => head.put_slice(b"transfer-encoding: chunked\r\n"),
        Added::Length(len) => {
            head.put_slice(b"content-length: ");
            head.put_slice(itoa(len).as_bytes());
            head.put_slice(b"\r\n");
        }
    }
    head.put_slice(b"\r\n");
    (head, framing)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Added {
    Nothing,
    Chunked,
    Length(u64),
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// The request's own `Content-Length`, when every value agrees and parses
/// (hyper's `content_length_parse_all`).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().ok()?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = part.parse().ok()?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

/// The size line of a chunk of `len` bytes (hyper writes it in upper-case
/// hex).
pub fn chunk_size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:X}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Option<u64>>,
    ) -> (String, BodyFraming) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (bytes, framing) = encode_head(&method, &uri.parse().unwrap(), &map, body);
        (String::from_utf8(bytes.to_vec()).unwrap(), framing)
    }

    #[test]
    fn framing_follows_hyper() {
        assert_eq!(
            head(Method::GET, "/a?b", &[("host", "x")], None),
            (
                "GET /a?b HTTP/1.1\r\nhost: x\r\n\r\n".into(),
                BodyFraming::None
            )
        );
        assert_eq!(
            head(Method::POST, "/", &[("content-length", "3")], Some(Some(3))).1,
            BodyFraming::Length(3)
        );
        assert_eq!(
            head(Method::POST, "/", &[], Some(None)),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                BodyFraming::Chunked
            )
        );
        assert_eq!(
            head(Method::PUT, "/", &[("content-length", "x")], Some(None)),
            (
                "PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                BodyFraming::Chunked
            )
        );
        assert_eq!(head(Method::GET, "/", &[], Some(None)).1, BodyFraming::None);
        assert_eq!(
            head(Method::PATCH, "/", &[], Some(Some(7))),
            (
                "PATCH / HTTP/1.1\r\ncontent-length: 7\r\n\r\n".into(),
                BodyFraming::Length(7)
            )
        );
        assert_eq!(&chunk_size_line(26)[..], b"1A\r\n");
    }
}
