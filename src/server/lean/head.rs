//! Reading a request head for the lean path, and deciding whether the lean
//! path may answer it.
//!
//! The lean path takes a request only when it understands all of it: a
//! bodiless `GET` over HTTP/1.1 to a long-poll or SSE endpoint, every line
//! ended by CRLF, at most one `Content-Length` (and then `0`), exactly one
//! `Host`, `Connection` carrying only `keep-alive` / `close`, and none of
//! `Transfer-Encoding`, `Upgrade`, `Expect` or `TE`. Anything else —
//! every parse error, a head too large, any other method, path or version —
//! is handed to hyper with the bytes read so far, which answers it exactly
//! as it did before the lean path existed (docs/http.md).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;

use crate::transport::params::{endpoint, Endpoint};

/// hyper's default limit on the number of request headers (more: 431).
pub const MAX_HEADERS: usize = 100;
/// hyper's longest request target (longer: 414).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// A request head the lean path answers.
#[derive(Debug)]
pub struct Head {
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The client asked to close after the answer (`Connection: close`).
    pub close: bool,
    /// The head's length in the buffer it was parsed from.
    pub len: usize,
}

/// What to do with the bytes read so far.
#[derive(Debug)]
pub enum Decision {
    Lean(Head),
    /// Not the lean path's: hyper serves the connection from here on.
    HandOver,
    /// The head is not complete yet.
    NeedMore,
}

/// Decides on the bytes at the start of `buf` (`max_head`: the largest head
/// the gateway takes, `limits.max_header_bytes`).
pub fn decide(buf: &[u8], prefix: &str, max_head: usize) -> Decision {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Decision::NeedMore,
        // Too large (431), too many headers (431) or malformed (400):
        // hyper's answers.
        Ok(httparse::Status::Partial) | Err(_) => return Decision::HandOver,
    };
    if len > max_head || !strict_line_ends(&buf[..len]) {
        return Decision::HandOver;
    }
    if req.method != Some("GET") || req.version != Some(1) {
        return Decision::HandOver;
    }
    let Some(uri) = req.path.and_then(|path| origin_form(path, prefix)) else {
        return Decision::HandOver;
    };
    match understood_headers(req.headers) {
        Some((headers, close)) => Decision::Lean(Head {
            uri,
            headers,
            close,
            len,
        }),
        None => Decision::HandOver,
    }
}

/// Every line ends with CRLF: no bare LF (which hyper tolerates) and no
/// bare CR. (Jumping from one CR or LF to the next: a byte-by-byte loop
/// cost ~5 instructions per byte of the head, callgrind.)
fn strict_line_ends(head: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', head).all(|i| match head[i] {
        b'\r' => head.get(i + 1) == Some(&b'\n'),
        _ => i > 0 && head[i - 1] == b'\r',
    })
}

/// The target as an origin-form URI naming a poll or SSE endpoint.
fn origin_form(path: &str, prefix: &str) -> Option<Uri> {
    if !path.starts_with('/') || path.len() > MAX_URI_LEN {
        return None;
    }
    let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes())).ok()?;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return None;
    }
    match endpoint(prefix, uri.path())? {
        Endpoint::Poll(_) | Endpoint::Sse(_) => Some(uri),
        _ => None,
    }
}

/// The headers as a map, and whether the client asked to close; `None`
/// when one of them is beyond the lean path.
fn understood_headers(parsed: &[httparse::Header<'_>]) -> Option<(HeaderMap, bool)> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    let (mut hosts, mut lengths, mut close) = (0, 0, false);
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        match name {
            header::HOST => hosts += 1,
            header::CONTENT_LENGTH if value.as_bytes() == b"0" => lengths += 1,
            header::CONNECTION => close |= connection_close(&value)?,
            header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::UPGRADE
            | header::EXPECT
            | header::TE => return None,
            _ => {}
        }
        headers.append(name, value);
    }
    (hosts == 1 && lengths <= 1).then_some((headers, close))
}

/// `Some(true)` for a `Connection` value asking to close, `Some(false)`
/// for `keep-alive`; `None` for any other token.
fn connection_close(value: &HeaderValue) -> Option<bool> {
    let mut close = false;
    for token in value.to_str().ok()?.split(',') {
        let token = token.trim();
        if token.eq_ignore_ascii_case("close") {
            close = true;
        } else if !token.eq_ignore_ascii_case("keep-alive") {
            return None;
        }
    }
    Some(close)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lean(bytes: &[u8]) -> Option<Head> {
        match decide(bytes, "/rt", 16 * 1024) {
            Decision::Lean(head) => Some(head),
            _ => None,
        }
    }

    #[test]
    fn a_plain_poll_and_sse_are_lean() {
        let head = lean(b"GET /rt/poll/a?timeout=5 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\nrest")
            .expect("lean");
        assert_eq!(head.uri, "/rt/poll/a?timeout=5");
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.len, 59);
        assert!(!head.close);
        let head = lean(b"GET /rt/sse/a HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, close\r\nContent-Length: 0\r\n\r\n")
            .expect("lean");
        assert!(head.close);
    }

    #[test]
    fn anything_unusual_is_handed_over() {
        for bytes in [
            &b"GET /rt/ws HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD /rt/poll/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET http://x/rt/poll/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\nHost: x\n\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nX: a\0\r\n\r\n",
        ] {
            assert!(
                matches!(decide(bytes, "/rt", 16 * 1024), Decision::HandOver),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    proptest::proptest! {
        /// The jumping check agrees with the plain rule, byte by byte: an
        /// LF only after a CR, a CR only before an LF (on complete heads,
        /// which end with CRLF).
        #[test]
        fn line_ends_are_checked_as_the_plain_rule(
            body in proptest::collection::vec(proptest::sample::select(vec![b'\r', b'\n', b'a']), 0..40)
        ) {
            let mut head = body;
            head.extend_from_slice(b"\r\n");
            let mut prev = 0u8;
            let plain = head.iter().all(|&b| {
                let ok = (b == b'\n') == (prev == b'\r');
                prev = b;
                ok
            });
            proptest::prop_assert_eq!(strict_line_ends(&head), plain);
        }
    }

    #[test]
    fn a_partial_head_waits_until_it_would_be_too_large() {
        let partial = b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\n";
        assert!(matches!(decide(partial, "/rt", 1024), Decision::NeedMore));
        assert!(matches!(decide(partial, "/rt", 20), Decision::HandOver));
    }
}
