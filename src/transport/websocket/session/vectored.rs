//! The session's own socket writes: several frames per system call, with
//! a stall limit that tells a slow reader from a dead one.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// How much of what was written the peer has not acknowledged yet: lets a
/// blocked writer tell a slow reader (the queue drains) from a dead one.
pub trait SendProgress: Sized {
    /// Bytes in the socket's send queue, when known.
    fn unsent(&self) -> Option<u64>;

    /// The writer of a plain socket: its session may park when idle
    /// (see `websocket::park`).
    const PARKS: bool = false;

    /// The writer's socket can be lent to publishers (direct mode).
    const LENDS: bool = false;

    /// The socket as publishers write to it in direct mode; None when
    /// [`LENDS`](Self::LENDS) is false (e.g. TLS). Made when the session
    /// lends it, rather than kept in every session (16 bytes).
    fn direct_sink(&self) -> Option<std::sync::Arc<dyn crate::bus::DirectSink>> {
        None
    }

    /// Parks `session`; called only when [`PARKS`](Self::PARKS).
    fn park(session: super::Session<Self>) {
        tracing::error!("a websocket session that cannot park was parked: dropped");
        drop(session);
    }
}

impl<T> SendProgress for tokio::io::WriteHalf<T> {
    fn unsent(&self) -> Option<u64> {
        None
    }
}

/// Writes every byte of `frames`, several frames per system call.
///
/// `stall` bounds each system call, not the whole write: a client that
/// reads slowly but steadily is never cut off; one whose socket accepts
/// nothing for `stall` is (`TimedOut`).
pub(super) async fn write_all_vectored<W: AsyncWrite + SendProgress + Unpin>(
    writer: &mut W,
    frames: &[Bytes],
    stall: Duration,
) -> io::Result<()> {
    let mut index = 0; // first frame not completely written
    let mut offset = 0; // bytes of frames[index] already written
    while index < frames.len() {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity((frames.len() - index).min(64));
        slices.push(IoSlice::new(&frames[index][offset..]));
        for f in frames[index + 1..].iter().take(63) {
            slices.push(IoSlice::new(f));
        }
        // The socket can stay unwritable for a while although the peer
        // reads steadily (the kernel wakes writers only once a good part
        // of a large send buffer is free): what counts is whether the
        // queue drains.
        let mut queued = writer.unsent();
        let mut written = loop {
            match tokio::time::timeout(stall, writer.write_vectored(&slices)).await {
                Ok(result) => break result?,
                Err(_) => {
                    let now = writer.unsent();
                    if matches!((queued, now), (Some(before), Some(after)) if after < before) {
                        queued = now;
                        continue;
                    }
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let remaining = frames[index].len() - offset;
            if written >= remaining {
                written -= remaining;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    impl SendProgress for tokio::io::DuplexStream {
        fn unsent(&self) -> Option<u64> {
            None
        }
    }

    #[tokio::test]
    async fn a_writer_nobody_reads_times_out() {
        let (mut a, _b) = tokio::io::duplex(8);
        let frames = vec![Bytes::from_static(b"more than eight bytes")];
        let err = write_all_vectored(&mut a, &frames, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn vectored_write_survives_partial_writes() {
        let (mut a, mut b) = tokio::io::duplex(7); // tiny buffer forces partial writes
        let frames: Vec<Bytes> = (0..20)
            .map(|i| Bytes::from(format!("frame-{i};")))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all_vectored(&mut a, &frames, Duration::from_secs(5))
            .await
            .unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
