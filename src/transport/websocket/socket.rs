//! The client socket of an upgraded WebSocket, shared by the connection's
//! task and (in direct mode) the publishers, with nothing else held while
//! the connection is idle: no read buffer, no second task.
//!
//! Reads wait for readiness and only then borrow a buffer; writes are
//! non-blocking `write()`s the caller may retry when the socket is
//! writable. Every byte is counted on the connection's meter, as below
//! hyper.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::bus::DirectSink;

use super::deflate::{frame_for, record_compressed, Deflate};
use crate::gateway::Gateway;
use crate::net::meter::ConnMeter;
use crate::protocol::Message;

/// Bytes read per readiness event; a client sends commands and control
/// frames, rarely more.
const READ_CHUNK: usize = 4096;

pub struct WsSocket {
    stream: TcpStream,
    meter: Arc<ConnMeter>,
    gw: Arc<Gateway>,
    /// permessage-deflate, if negotiated: publishers write the shared
    /// compressed frames.
    deflate: Option<Deflate>,
}

impl WsSocket {
    /// Deliveries written through it are counted by the writer (the
    /// fan-out shard's tally, or the session's own accounting).
    pub fn new(
        stream: TcpStream,
        meter: Arc<ConnMeter>,
        gw: Arc<Gateway>,
        deflate: Option<Deflate>,
    ) -> WsSocket {
        WsSocket {
            stream,
            meter,
            gw,
            deflate,
        }
    }

    /// Once the client has sent something (or closed), appends it to `buf`
    /// and returns how many bytes came (0: end of stream). Nothing is
    /// consumed unless it returns `Ready`; `buf` grows only when the socket
    /// reports bytes, and an empty `buf` is let go again if that was a
    /// false alarm, so an idle connection holds no read buffer.
    pub fn poll_read_into(
        &self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        loop {
            // `poll_read_ready`, not `readable()`: it replaces the waker
            // hyper's connection task left in the socket's read slot, which
            // would otherwise keep that finished task's memory (~5 KiB)
            // allocated for the connection's life.
            ready!(self.stream.poll_read_ready(cx))?;
            buf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(buf) {
                Ok(n) => {
                    self.meter.on_read(n);
                    return Poll::Ready(Ok(n));
                }
                // A false alarm: tokio cleared its readiness, so the next
                // `poll_read_ready` (this loop's) registers the waker and
                // returns `Pending`.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if buf.is_empty() {
                        *buf = Vec::new();
                    }
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn try_write_counted(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // One buffer (the usual fan-out case): `send()`, which skips the
        // VFS layer `writev()` goes through (~10 % of a delivery's CPU in
        // `perf`: `vfs_writev`, `fdget_pos`).
        let n = match bufs {
            [one] => self.stream.try_write(one)?,
            _ => self.stream.try_write_vectored(bufs)?,
        };
        self.meter.on_write(n);
        Ok(n)
    }

    /// Bytes in the socket's send queue the peer has not acknowledged.
    pub fn unsent(&self) -> Option<u64> {
        crate::net::meter::unsent_bytes(self.stream.as_raw_fd())
    }
}

impl DirectSink for WsSocket {
    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes {
        frame_for(&self.gw, self.deflate, msg)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let [one] = bufs else {
            return self.try_write_counted(bufs);
        };
        // The fan-out's hot path: a plain `send()` on the descriptor,
        // without tokio's readiness bookkeeping around it (~4 % of a
        // delivery's CPU in `perf`). Safe to skip: a full socket ends
        // direct mode, and the session's own writes go through tokio,
        // whose first `EAGAIN` then clears its readiness as usual.
        // SAFETY: a non-blocking send(2) on a socket `self` owns, from a
        // live buffer of `one.len()` bytes.
        let n = unsafe {
            libc::send(
                self.stream.as_raw_fd(),
                one.as_ptr().cast(),
                one.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        self.meter.on_write(n);
        Ok(n)
    }

    fn encoded_delta<'m>(&self, msg: &'m Message, base: u64) -> Option<&'m Bytes> {
        // Plain, as the session sends deltas (they are small).
        msg.delta_after(base, msg.epoch).map(|d| d.ws_frame())
    }

    fn delivered(&self, msgs: &[Arc<Message>]) {
        // Deliveries are counted by the writer's tally; what compression
        // saved is this connection's to say.
        record_compressed(&self.gw, self.deflate, msgs);
    }

    fn delivered_deltas(&self, msgs: &[Arc<Message>]) {
        crate::transport::delta::record_direct_deltas(&self.gw.metrics.delta, msgs);
    }
}

/// The connection task's writing handle on a [`WsSocket`].
pub struct SocketWriter(pub Arc<WsSocket>);

impl SocketWriter {
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.stream.poll_write_ready(cx))?;
            match self.0.try_write_counted(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for SocketWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: a plain shutdown(2) of the write side of a socket we own.
        let rc = unsafe { libc::shutdown(self.0.stream.as_raw_fd(), libc::SHUT_WR) };
        if rc == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(io::Error::last_os_error()))
        }
    }
}

impl super::session::SendProgress for SocketWriter {
    fn unsent(&self) -> Option<u64> {
        self.0.unsent()
    }
}
