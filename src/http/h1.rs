//! HTTP/1.1 heads as hyper's encoder writes them: the same status line,
//! the headers in the map's order with lowercase names, `connection:
//! close` where hyper adds it, then `content-length` for a body of known
//! size or `transfer-encoding: chunked` for a stream. The lean HTTP/1.1
//! path writes every head with it, and a parked long-poll's answer
//! (written whole by the publisher, `transport::longpoll_park`) is
//! pre-encoded with it, so both are the same bytes.

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::StatusCode;

/// How the body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `content-length: n`, then n bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// A status that has no body (1xx, 204, 304).
    NoBody,
}

impl Framing {
    /// The framing hyper chooses for `status` and a body's exact size.
    pub fn of(status: StatusCode, exact: Option<u64>) -> Framing {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Framing::NoBody;
        }
        exact.map_or(Framing::Chunked, Framing::Length)
    }
}

/// The status line and headers, as hyper writes them.
pub fn encode_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
) -> Bytes {
    let mut out = Vec::with_capacity(64 + headers.len() * 40);
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        // hyper's placeholder for a status without a reason.
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut wrote_connection = false;
    let mut wrote_length = false;
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        match *name {
            // One line, values joined; `close` appended when closing.
            header::CONNECTION => {
                let mut line = Vec::new();
                let mut says_close = false;
                for v in values {
                    if !line.is_empty() {
                        line.extend_from_slice(b", ");
                    }
                    line.extend_from_slice(v.as_bytes());
                    says_close |= v.as_bytes().eq_ignore_ascii_case(b"close");
                }
                if close && !says_close {
                    line.extend_from_slice(b", close");
                }
                push_line(&mut out, b"connection", &line);
                wrote_connection = true;
            }
            // The body's own length is the one that counts; hyper keeps
            // the handler's first value for a body of known length.
            header::CONTENT_LENGTH => {
                if let (Framing::Length(_), Some(v)) = (framing, values.next()) {
                    push_line(&mut out, b"content-length", v.as_bytes());
                    wrote_length = true;
                }
            }
            // The framing is ours to choose (no handler sets these).
            header::TRANSFER_ENCODING | header::TRAILER => {}
            _ => {
                for v in values {
                    push_line(&mut out, name.as_str().as_bytes(), v.as_bytes());
                }
            }
        }
    }
    if close && !wrote_connection {
        out.extend_from_slice(b"connection: close\r\n");
    }
    match framing {
        Framing::Length(n) if !wrote_length => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(_) | Framing::NoBody => {}
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line (hyper writes the size in upper-case hex).
pub fn chunk_size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:X}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn heads_as_hyper_writes_them() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        let head = encode_head(StatusCode::OK, &h, Framing::Length(5), false);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvary: Accept-Encoding\r\nvary: Origin\r\ncontent-length: 5\r\n\r\n"
        );
        let head = encode_head(StatusCode::TOO_MANY_REQUESTS, &h, Framing::Chunked, true);
        assert!(head.starts_with(b"HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(head
            .ends_with(b"vary: Origin\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let head = encode_head(StatusCode::NO_CONTENT, &h, Framing::NoBody, true);
        assert!(
            head.ends_with(b"connection: keep-alive, close\r\n\r\n"),
            "{head:?}"
        );
    }
}
