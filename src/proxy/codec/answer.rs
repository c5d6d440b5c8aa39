//! Reading the upstream's answer head: `httparse` with hyper's client
//! defaults (no obs-fold, no bare CR, at most 100 headers, a head of at
//! most [`MAX_HEAD`]), informational answers skipped, and the body's
//! framing decided as hyper's client decides it (RFC 9112 §6.3) — except
//! that the ambiguous shapes hyper tolerates are refused here: a
//! `Transfer-Encoding` that is not exactly `chunked`, `Transfer-Encoding`
//! beside `Content-Length`, more than one `Content-Length` (even equal),
//! a list in it, and `101` (upgrades never take this path).
//!
//! A refused answer is never relayed in part: the proxy answers 502 and
//! closes the connection.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// hyper's client read-buffer limit, the largest head it can read.
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// hyper's default limit on the number of headers.
const MAX_HEADERS: usize = 100;

/// Room left in the answer's header map (see [`build`]).
const SPARE_HEADERS: usize = 12;

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// An answer head the codec relays.
#[derive(Debug)]
pub struct AnswerHead {
    pub parts: http::response::Parts,
    pub framing: Framing,
    /// The connection may carry another request after this answer.
    pub keep_alive: bool,
    /// A hop-by-hop header name was seen (the proxy strips them).
    pub has_hop_by_hop: bool,
}

/// Parses the answer head at the front of `buf` (taking it, and any
/// informational answers before it, out of the buffer). `Ok(None)`: not
/// complete yet.
pub fn parse(buf: &mut BytesMut, method: &Method) -> Result<Option<AnswerHead>, &'static str> {
    loop {
        // Left uninitialised: zeroing 100 header slots and 100 offsets
        // cost ~3k instructions per answer (callgrind), more than parsing.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => return Err("answer head too large"),
            Err(_) => return Err("malformed answer head"),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
        match code {
            101 => return Err("101 Switching Protocols to a request that asked no upgrade"),
            100..=199 => {
                // Skipped, as hyper's client skips them.
                let _ = buf.split_to(len);
                if buf.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            _ => {}
        }
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let reason = res
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .map(|r| Bytes::copy_from_slice(r.as_bytes()));
        // Offsets, so the values can be slices of the frozen head.
        let mut fields = [const { MaybeUninit::<Field>::uninit() }; MAX_HEADERS];
        let count = res.headers.len();
        let base = buf.as_ptr() as usize;
        for (field, h) in fields.iter_mut().zip(res.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            field.write((name, name + h.name.len(), value, value + h.value.len()));
        }
        // SAFETY: the first `count` offsets were written just above.
        let fields: &[Field] =
            unsafe { std::slice::from_raw_parts(fields.as_ptr().cast::<Field>(), count) };
        let head = buf.split_to(len).freeze();
        return build(head, fields, status, version, reason, method).map(Some);
    }
}

/// Where a header's name and value are in the head: name start and end,
/// value start and end.
type Field = (usize, usize, usize, usize);

fn build(
    head: Bytes,
    fields: &[Field],
    status: StatusCode,
    version: Version,
    reason: Option<Bytes>,
    method: &Method,
) -> Result<AnswerHead, &'static str> {
    // hyper's server keeps the answer's map for the connection's next
    // request head, to which the proxy adds its forwarding headers: room
    // for them now saves a rehash then.
    let mut headers = HeaderMap::with_capacity(fields.len() + SPARE_HEADERS);
    let mut keep_alive = version == Version::HTTP_11;
    let mut saw_close = false;
    let (mut lengths, mut encodings) = (0, 0);
    let mut has_hop_by_hop = false;
    for &(n0, n1, v0, v1) in fields {
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| "invalid header name")?;
        // SAFETY-free: httparse checked the value's bytes; `from_maybe_shared`
        // checks again (cheap) rather than trusting it unchecked.
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| "invalid header value")?;
        has_hop_by_hop |= super::super::headers::is_hop_by_hop(&name);
        match name {
            header::CONNECTION => {
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            header::CONTENT_LENGTH => lengths += 1,
            header::TRANSFER_ENCODING => encodings += 1,
            _ => {}
        }
        headers.append(name, value);
    }
    let framing = framing(&headers, status, version, method, lengths, encodings)?;
    if framing == Framing::Close {
        keep_alive = false;
    }
    let mut resp = http::Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    if let Some(reason) = reason {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
            resp.extensions_mut().insert(reason);
        }
    }
    let (parts, ()) = resp.into_parts();
    Ok(AnswerHead {
        parts,
        framing,
        keep_alive,
        has_hop_by_hop,
    })
}

/// The body's framing (RFC 9112 §6.3, as hyper's client reads it, with the
/// ambiguous cases refused).
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    version: Version,
    method: &Method,
    lengths: usize,
    encodings: usize,
) -> Result<Framing, &'static str> {
    if matches!(status.as_u16(), 204 | 304) || method == Method::HEAD {
        return Ok(Framing::Empty);
    }
    if encodings > 0 {
        if version == Version::HTTP_10 {
            return Err("Transfer-Encoding in an HTTP/1.0 answer");
        }
        if lengths > 0 {
            return Err("both Transfer-Encoding and Content-Length");
        }
        let chunked = encodings == 1
            && headers
                .get(header::TRANSFER_ENCODING)
                .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return if chunked {
            Ok(Framing::Chunked)
        } else {
            Err("a Transfer-Encoding other than chunked")
        };
    }
    match lengths {
        0 => Ok(Framing::Close),
        1 => headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| digits(v.as_bytes().trim_ascii()))
            .map(Framing::Length)
            .ok_or("invalid Content-Length"),
        _ => Err("more than one Content-Length"),
    }
}

/// A decimal number of at most 19 digits (no sign, no list).
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The comma-separated value carries `token` (any case).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str, method: Method) -> Result<Option<AnswerHead>, &'static str> {
        parse(&mut BytesMut::from(wire.as_bytes()), &method)
    }

    fn framing_of(wire: &str) -> Result<Framing, &'static str> {
        head(wire, Method::GET).map(|h| h.expect("complete").framing)
    }

    #[test]
    fn framings() {
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::Close));
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\n\r\n"),
            Ok(Framing::Empty)
        );
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for wire in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(framing_of(wire).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn informational_answers_are_skipped_and_keep_alive_follows_hyper() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.0 200 Fine\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"[..]);
        let h = parse(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(h.parts.status, 200);
        assert_eq!(h.parts.version, Version::HTTP_10);
        assert!(h.keep_alive);
        assert!(h.has_hop_by_hop);
        assert!(h
            .parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .is_some());
        assert_eq!(&buf[..], b"ok");
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", Method::GET).unwrap().unwrap();
        assert!(!h.keep_alive);
        assert!(head("HTTP/1.1 100 Continue\r\n\r\n", Method::GET)
            .unwrap()
            .is_none());
        assert!(head("HTTP/1.1 200 OK\r\n", Method::GET).unwrap().is_none());
    }
}
