//! JSON bodies for the answers hyper writes on its own.
//!
//! A request hyper cannot parse (a head over `limits.max_header_bytes` or
//! with too many headers, a malformed request line or header, a target
//! over 64 KiB) never reaches a handler: hyper answers it itself, with an
//! empty body, and closes the connection. Every gateway error is a JSON
//! body (docs/protocol.md), so [`JsonAutoErrors`] sits between hyper and
//! the socket and swaps exactly those answers — recognised by their exact
//! bytes, which hyper builds from a fixed status and no headers of ours —
//! for the same status with the gateway's JSON error body.
//!
//! An upstream answer could only look the same if it had no header but
//! `Content-Length: 0` and an error status; it would then get a JSON body
//! saying what its status says, which does no harm.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

use crate::protocol::error::ApiError;

/// What hyper writes for a request it could not parse (hyper 1.x,
/// `Server::on_error`, with the Date header switched off).
const HYPER_ANSWERS: [&[u8]; 3] = [
    b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
];

/// The gateway's answers in their place, built once.
fn replacements() -> &'static [Vec<u8>; 3] {
    static ANSWERS: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    ANSWERS.get_or_init(|| {
        [
            ApiError::BadRequest(
                "malformed request: the request line or a header could not be parsed".into(),
            ),
            ApiError::UriTooLong,
            ApiError::HeadTooLarge,
        ]
        .map(|err| {
            let status = err.status();
            let body = err.body();
            let mut out = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        })
    })
}

/// The gateway's answer for bytes hyper is about to write, if they are one
/// of its automatic error answers.
fn replacement_for(bytes: &[u8]) -> Option<&'static [u8]> {
    let index = HYPER_ANSWERS.iter().position(|a| *a == bytes)?;
    Some(&replacements()[index])
}

/// An I/O stream for hyper whose automatic error answers carry JSON.
pub struct JsonAutoErrors<I> {
    inner: I,
    /// What is left to write of a replacement answer.
    pending: Option<&'static [u8]>,
}

impl<I> JsonAutoErrors<I> {
    pub fn new(inner: I) -> Self {
        JsonAutoErrors {
            inner,
            pending: None,
        }
    }

    pub fn into_inner(self) -> I {
        self.inner
    }
}

impl<I: Write + Unpin> JsonAutoErrors<I> {
    /// Writes what is left of a replacement; `Ready(Ok)` once it is all out.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.pending {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending = (n < rest.len()).then(|| &rest[n..]);
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `bytes` as written when they are an automatic answer: the
    /// replacement goes out instead (now, or on the next write or flush).
    fn substitute(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        let replacement = replacement_for(bytes)?;
        self.pending = Some(replacement);
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Written or queued: hyper's bytes count as taken either way;
            // flush and shutdown finish a queued rest.
            _ => Poll::Ready(Ok(bytes.len())),
        })
    }
}

impl<I: Read + Unpin> Read for JsonAutoErrors<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for JsonAutoErrors<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(done) = this.substitute(cx, buf) {
            return done;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (non_empty.next(), non_empty.next()) {
            if let Some(done) = this.substitute(cx, only) {
                return done;
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_automatic_answer_has_a_json_twin_with_its_status() {
        for (hyper, ours) in HYPER_ANSWERS.iter().zip(replacements()) {
            let status = &hyper[..12];
            assert_eq!(&ours[..12], status);
            let text = std::str::from_utf8(ours).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains("content-type: application/json"), "{head}");
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
        }
        assert!(replacement_for(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }

    /// Through a pipe that takes a few bytes at a time: hyper's bytes
    /// count as written at once, the rest of the replacement goes out on
    /// flush, and other writes pass through untouched.
    #[tokio::test]
    async fn a_replacement_larger_than_the_socket_takes_is_finished_on_flush() {
        use hyper_util::rt::TokioIo;
        use std::future::poll_fn;
        use tokio::io::AsyncReadExt;

        let (near, mut far) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut io = JsonAutoErrors::new(TokioIo::new(near));
        let hyper_431 = HYPER_ANSWERS[2];
        let n = poll_fn(|cx| Pin::new(&mut io).poll_write(cx, hyper_431))
            .await
            .unwrap();
        assert_eq!(n, hyper_431.len());
        assert!(io.pending.is_some(), "the pipe took only part of it");
        poll_fn(|cx| Pin::new(&mut io).poll_flush(cx))
            .await
            .unwrap();
        let other = b"other bytes";
        let mut sent = 0;
        while sent < other.len() {
            sent += poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &other[sent..]))
                .await
                .unwrap();
        }
        poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx))
            .await
            .unwrap();
        drop(io);
        let mut expected = replacements()[2].clone();
        expected.extend_from_slice(other);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
