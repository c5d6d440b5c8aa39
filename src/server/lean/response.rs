//! Writing an answer on the lean path: the head as hyper's HTTP/1.1
//! encoder writes it ([`crate::http::h1`], shared with the answers
//! publishers write to parked polls), then the body from its shared
//! `Bytes` with vectored writes, never copied into a write buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

pub use crate::http::h1::{chunk_size_line, encode_head, Framing};

/// Writes every part, in order, with as few (vectored) writes as the
/// socket allows.
pub async fn write_parts<W: AsyncWrite + Unpin>(
    out: &mut W,
    parts: &mut [Bytes],
) -> io::Result<()> {
    let mut first = 0;
    while first < parts.len() {
        if parts[first].is_empty() {
            first += 1;
            continue;
        }
        let n = std::future::poll_fn(|cx| {
            let slices: [IoSlice<'_>; 4] = std::array::from_fn(|i| {
                IoSlice::new(parts.get(first + i).map_or(&[][..], |b| &b[..]))
            });
            Pin::new(&mut *out).poll_write_vectored(cx, &slices)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let part = &mut parts[first];
            let take = left.min(part.len());
            part.advance(take);
            left -= take;
            if part.is_empty() {
                first += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parts_go_out_whole_through_a_narrow_pipe() {
        use tokio::io::AsyncReadExt;
        let (mut near, mut far) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut parts = [
            Bytes::from_static(b"head "),
            Bytes::new(),
            Bytes::from_static(b"body of the answer"),
            chunk_size_line(26),
            Bytes::from_static(b"\r\n"),
        ];
        write_parts(&mut near, &mut parts).await.unwrap();
        drop(near);
        assert_eq!(reader.await.unwrap(), b"head body of the answer1A\r\n\r\n");
    }
}
