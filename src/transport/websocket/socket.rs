//! The client socket of an upgraded WebSocket, shared by the connection's
//! task and (in direct mode) the publishers, with nothing else held while
//! the connection is idle: no read buffer, no second task.
//!
//! Reads wait for readiness and only then borrow a buffer; writes are
//! non-blocking `send()`s the caller may retry when the socket is
//! writable. Every byte is counted on the connection's meter, as below
//! hyper.
//!
//! The descriptor is owned as a std socket and tokio's readiness
//! registration is separate ([`WsSocket::register`]): a session that parks
//! (see [`super::park`]) drops the registration and keeps the socket, which
//! publishers go on writing to directly.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

use crate::bus::DirectSink;

use super::deflate::{frame_for, record_compressed, Deflate};
use crate::gateway::Gateway;
use crate::net::meter::ConnMeter;
use crate::net::socket::{recv_into, send_vectored};
use crate::protocol::Message;

/// Bytes read per readiness event; a client sends commands and control
/// frames, rarely more.
const READ_CHUNK: usize = 4096;

/// The descriptor as tokio's registration sees it: borrowed, never closed
/// by it ([`WsSocket`] owns it and drops the registration first).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

pub struct WsSocket {
    /// tokio's readiness registration (a `ScheduledIo`, 256 bytes in the
    /// driver), while a task serves the connection; None while it is
    /// parked. Only the session's own task locks it, so it is never
    /// contended. Declared before `stream`: dropped before the descriptor
    /// is closed. Boxed: a parked connection holds the empty pointer, and
    /// the 24 bytes inline would put this socket's `Arc` in the 80-byte
    /// class instead of 64 (`per_connection_structs_stay_small`).
    io: Mutex<Option<Box<AsyncFd<Fd>>>>,
    stream: std::net::TcpStream,
    meter: Arc<ConnMeter>,
    gw: Arc<Gateway>,
    /// permessage-deflate, if negotiated: publishers write the shared
    /// compressed frames.
    deflate: Option<Deflate>,
}

fn not_registered() -> io::Error {
    io::Error::other("websocket socket used while parked")
}

impl WsSocket {
    /// Takes the socket out of tokio and registers it again on its own
    /// (see the module doc). Deliveries written through it are counted by
    /// the writer (the fan-out shard's tally, or the session's own
    /// accounting). Must run on the runtime.
    pub fn new(
        stream: TcpStream,
        meter: Arc<ConnMeter>,
        gw: Arc<Gateway>,
        deflate: Option<Deflate>,
    ) -> io::Result<WsSocket> {
        let socket = WsSocket {
            io: Mutex::new(None),
            stream: stream.into_std()?,
            meter,
            gw,
            deflate,
        };
        socket.register()?;
        Ok(socket)
    }

    /// Registers the socket with the current runtime's I/O driver (a
    /// session task is about to serve it); nothing if it is already.
    pub fn register(&self) -> io::Result<()> {
        let mut io = self.io.lock();
        if io.is_none() {
            let fd = Fd(self.stream.as_raw_fd());
            // SAFETY: the descriptor is `self.stream`'s, open for as long
            // as `self` lives, and the registration is dropped before it
            // closes (field order and `Drop`).
            let registered = unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
            };
            *io = Some(Box::new(registered?));
        }
        Ok(())
    }

    /// Drops the registration (the session parks): nothing of tokio's is
    /// held for the socket until [`register`](Self::register).
    pub fn deregister(&self) {
        let io = self.io.lock().take();
        drop(io);
    }

    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
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
        let io = self.io.lock();
        let Some(io) = io.as_ref() else {
            return Poll::Ready(Err(not_registered()));
        };
        loop {
            let mut ready = ready!(io.poll_read_ready(cx))?;
            buf.reserve(READ_CHUNK);
            match recv_into(self.stream.as_raw_fd(), buf) {
                Ok(n) => {
                    self.meter.on_read(n);
                    return Poll::Ready(Ok(n));
                }
                // A false alarm: clear the readiness, so the next
                // `poll_read_ready` (this loop's) registers the waker and
                // returns `Pending`.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
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
        let n = send_vectored(self.stream.as_raw_fd(), bufs)?;
        self.meter.on_write(n);
        Ok(n)
    }

    /// Bytes in the socket's send queue the peer has not acknowledged.
    pub fn unsent(&self) -> Option<u64> {
        crate::net::meter::unsent_bytes(self.stream.as_raw_fd())
    }
}

impl Drop for WsSocket {
    fn drop(&mut self) {
        // Before the descriptor closes: tokio deregisters it by number.
        self.io.get_mut().take();
    }
}

impl DirectSink for WsSocket {
    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes {
        frame_for(&self.gw, self.deflate, msg)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // The fan-out's hot path: a plain `send()` on the descriptor,
        // without tokio's readiness bookkeeping around it (~4 % of a
        // delivery's CPU in `perf`). Safe to skip: a full socket ends
        // direct mode, and the session's own writes clear the readiness
        // at their first `EAGAIN`, as usual.
        self.try_write_counted(bufs)
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
        let io = self.0.io.lock();
        let Some(io) = io.as_ref() else {
            return Poll::Ready(Err(not_registered()));
        };
        loop {
            let mut ready = ready!(io.poll_write_ready(cx))?;
            match self.0.try_write_counted(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
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

    const PARKS: bool = true;

    const LENDS: bool = true;

    fn direct_sink(&self) -> Option<Arc<dyn DirectSink>> {
        Some(self.0.clone())
    }

    fn park(session: super::session::Session<Self>) {
        super::session::park_or_go_on(session);
    }
}
