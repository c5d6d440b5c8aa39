//! Byte-exact accounting of client sockets.
//!
//! [`MeteredStream`] wraps the accepted socket below hyper and
//! fastwebsockets, so it sees every byte that crosses the wire: request
//! heads, bodies, the upgrade handshake, frames, pings, close frames. Each
//! read or write costs one relaxed atomic add on a pre-resolved counter.
//!
//! It also holds HTTP answers to a write deadline: a write the socket does
//! not take for `limits.write_timeout` (and no drop in the socket's send
//! queue meanwhile) fails, and hyper closes the connection. The deadline
//! costs nothing while writes go through: its timer exists only while a
//! write is blocked. The same timer lets the output reaper abort a
//! connection stuck in a write ([`ConnMeter::kill`]).
//!
//! Attribution: a connection's bytes belong to the transport of the request
//! they are part of. Bytes read while no request is being handled (the head
//! of the next request on a keep-alive connection) are held as *pending*
//! until the router has classified that request, then credited to it.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;
use crate::metrics::SlowClose;
use crate::protocol::Transport;

/// Benchmarks only: counting can be switched off to measure what it costs
/// (`POLLBRIDGE_BENCH_NO_WIRE_METERING=1`). Always on otherwise.
static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Switches byte counting off (for the accounting-cost benchmark).
pub fn disable_counting_for_benchmarks() {
    COUNTING.store(false, Ordering::Relaxed);
}

/// Bit set in `state` while no request is in progress.
const IDLE: u8 = 0x80;

/// Bit set in `state` during a WebSocket upgrade (request head to 101):
/// those bytes are also counted as handshake bytes, so `/stats` can tell the
/// one-off cost of opening a connection from the cost of each message.
const HANDSHAKE: u8 = 0x40;

/// One client connection's attribution state, shared by the socket wrapper
/// (or both halves of a split socket) and the request handlers.
pub struct ConnMeter {
    metrics: Arc<Metrics>,
    /// Transport index, plus [`IDLE`] between requests.
    state: AtomicU8,
    /// Bytes read while idle, not yet attributed.
    pending_in: AtomicU64,
    /// The listener's open-connection count; decremented when the last
    /// reference (socket or session) goes away.
    open: Arc<AtomicUsize>,
    /// The per-address connection slot, released with the connection.
    _ip_slot: Option<super::limits::IpSlot>,
    /// Set by the output reaper: the next blocked write fails.
    killed: AtomicBool,
}

impl ConnMeter {
    pub fn new(
        metrics: Arc<Metrics>,
        open: Arc<AtomicUsize>,
        ip_slot: Option<super::limits::IpSlot>,
    ) -> Arc<ConnMeter> {
        Arc::new(ConnMeter {
            metrics,
            // Bytes that never become a routed request (garbage, a
            // half-sent head) are charged to the proxy, the default route.
            state: AtomicU8::new(IDLE | Transport::Proxy as u8),
            pending_in: AtomicU64::new(0),
            open,
            _ip_slot: ip_slot,
            killed: AtomicBool::new(false),
        })
    }

    fn transport(state: u8) -> Transport {
        Transport::ALL[(state & !(IDLE | HANDSHAKE)) as usize]
    }

    #[inline]
    pub(crate) fn on_read(&self, n: usize) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        let state = self.state.load(Ordering::Relaxed);
        if state & IDLE != 0 {
            self.pending_in.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            self.metrics
                .transport(Self::transport(state))
                .wire_in
                .inc_by(n as u64);
            if state & HANDSHAKE != 0 {
                self.metrics.ws_handshake_bytes.inc_by(n as u64);
            }
        }
    }

    #[inline]
    pub(crate) fn on_write(&self, n: usize) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        let state = self.state.load(Ordering::Relaxed);
        self.metrics
            .transport(Self::transport(state))
            .wire_out
            .inc_by(n as u64);
        if state & HANDSHAKE != 0 {
            self.metrics.ws_handshake_bytes.inc_by(n as u64);
        }
    }

    /// The current request was classified: it and its pending head bytes
    /// belong to `transport`.
    pub fn begin_request(&self, transport: Transport) {
        let upgrade = transport == Transport::WebSocket;
        let flag = if upgrade { HANDSHAKE } else { 0 };
        self.state.store(transport as u8 | flag, Ordering::Relaxed);
        let pending = self.flush_pending(transport);
        if upgrade && COUNTING.load(Ordering::Relaxed) {
            self.metrics.ws_handshakes.inc();
            self.metrics.ws_handshake_bytes.inc_by(pending);
        }
    }

    /// The response is finished; bytes read from now on wait for the next
    /// request. Writes keep going to the last transport (the response's tail).
    pub fn response_done(&self) {
        self.state.fetch_or(IDLE, Ordering::Relaxed);
    }

    /// The transport of the request in progress (or the last one).
    pub fn current_transport(&self) -> Transport {
        Self::transport(self.state.load(Ordering::Relaxed))
    }

    /// Aborts the connection at its next blocked write (within a second):
    /// the output reaper dropping a slow client.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Resolves once the connection is [killed](Self::kill), looking once
    /// a second. For HTTP/2, where the kill cannot wait for a blocked
    /// write: a stream stalled by the client's flow control blocks none.
    pub async fn until_killed(&self) {
        loop {
            tokio::time::sleep(STALL_TICK).await;
            if self.is_killed() {
                return;
            }
        }
    }

    /// The upgrade is complete (hyper has written the 101 and let go of the
    /// socket): from now on the connection's bytes are messages, not
    /// handshake. (Not at [`response_done`](Self::response_done): hyper
    /// drops a 101's empty body before it writes the head.) A refused
    /// upgrade stays handshake until the connection's next request.
    pub fn handshake_done(&self) {
        self.state.fetch_and(!HANDSHAKE, Ordering::Relaxed);
    }

    /// Credits the pending bytes to `transport`; returns how many there were.
    fn flush_pending(&self, transport: Transport) -> u64 {
        let pending = self.pending_in.swap(0, Ordering::Relaxed);
        if pending > 0 {
            self.metrics.transport(transport).wire_in.inc_by(pending);
        }
        pending
    }
}

impl Drop for ConnMeter {
    fn drop(&mut self) {
        let state = self.state.load(Ordering::Relaxed);
        self.flush_pending(Self::transport(state));
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes in a socket's send queue the peer has not acknowledged (SIOCOUTQ).
pub fn unsent_bytes(fd: RawFd) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is a live socket of the caller; the kernel writes one
    // int through the pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then_some(queued.max(0) as u64)
}

/// A stream that can tell how much it has sent but the peer not yet
/// acknowledged: a write blocked while that shrinks is making progress.
pub trait SendQueue {
    fn unsent(&self) -> Option<u64>;
}

impl SendQueue for tokio::net::TcpStream {
    fn unsent(&self) -> Option<u64> {
        unsent_bytes(self.as_raw_fd())
    }
}

/// How often a blocked write looks again: for a connection the reaper
/// aborted, and for progress.
const STALL_TICK: Duration = Duration::from_secs(1);

/// A blocked write: since when no progress, and the timer that wakes it.
struct Stall {
    timer: Pin<Box<Sleep>>,
    deadline: Instant,
    unsent: Option<u64>,
}

pin_project_lite::pin_project! {
    /// A socket (or socket half) that counts what crosses it. Its
    /// `write_timeout` is `limits.write_timeout` (zero: none); `stall` is
    /// set while a write is blocked.
    #[project = MeteredStreamProj]
    pub struct MeteredStream<S> {
        #[pin]
        inner: S,
        meter: Arc<ConnMeter>,
        write_timeout: Duration,
        stall: Option<Box<Stall>>,
        // Bytes already read (and counted) that reads yield again first:
        // how the lean HTTP/1.1 path hands a connection to hyper. Kept in
        // the stream itself, not a wrapper, so an upgraded WebSocket still
        // finds its socket by type (direct mode). Boxed: rare.
        rewound: Option<Box<Bytes>>,
    }
}

impl<S> MeteredStream<S> {
    pub fn new(inner: S, meter: Arc<ConnMeter>) -> Self {
        MeteredStream {
            inner,
            meter,
            write_timeout: Duration::ZERO,
            stall: None,
            rewound: None,
        }
    }

    /// Makes the next reads yield `bytes` (already read and counted)
    /// before anything new from the socket.
    pub fn rewind(&mut self, bytes: Bytes) {
        self.rewound = (!bytes.is_empty()).then(|| Box::new(bytes));
    }

    /// What is left of [`rewind`](Self::rewind)'s bytes.
    pub fn take_rewound(&mut self) -> Option<Bytes> {
        self.rewound.take().map(|b| *b)
    }

    /// Fails a write the socket takes nothing of for `timeout`.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    pub fn meter(&self) -> &Arc<ConnMeter> {
        &self.meter
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn into_parts(self) -> (S, Arc<ConnMeter>) {
        (self.inner, self.meter)
    }
}

impl<S: AsyncRead> AsyncRead for MeteredStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(rewound) = this.rewound {
            let n = rewound.len().min(buf.remaining());
            buf.put_slice(&rewound[..n]);
            bytes::Buf::advance(&mut **rewound, n);
            if rewound.is_empty() {
                *this.rewound = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.meter.on_read(n);
        }
        res
    }
}

/// A write returned `Pending`: arms (or checks) the write deadline.
/// WebSocket sessions keep their own (`websocket.write_timeout`).
fn blocked<S: SendQueue>(
    inner: &S,
    meter: &ConnMeter,
    write_timeout: Duration,
    stall: &mut Option<Box<Stall>>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let aborted = || {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "dropped: output limit",
        )))
    };
    if meter.is_killed() {
        return aborted();
    }
    if write_timeout.is_zero() || meter.current_transport() == Transport::WebSocket {
        return Poll::Pending;
    }
    let stall = stall.get_or_insert_with(|| {
        let now = Instant::now();
        Box::new(Stall {
            timer: Box::pin(tokio::time::sleep_until(
                now + STALL_TICK.min(write_timeout),
            )),
            deadline: now + write_timeout,
            unsent: inner.unsent(),
        })
    });
    loop {
        if stall.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if meter.is_killed() {
            return aborted();
        }
        let now = Instant::now();
        if now >= stall.deadline {
            // The kernel wakes writers only once much of a large send
            // buffer is free: a queue that shrinks is a reader, slow or not.
            let unsent = inner.unsent();
            if !matches!((stall.unsent, unsent), (Some(before), Some(after)) if after < before) {
                meter
                    .metrics
                    .slow_client_closed(meter.current_transport(), SlowClose::WriteTimeout);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write deadline: the client took nothing",
                )));
            }
            stall.unsent = unsent;
            stall.deadline = now + write_timeout;
        }
        let next = (now + STALL_TICK).min(stall.deadline);
        stall.timer.as_mut().reset(next);
    }
}

impl<S: AsyncWrite + SendQueue> MeteredStreamProj<'_, S> {
    /// Counts what a write took, or arms the write deadline when it took
    /// nothing: the one place both write paths report to.
    fn account(
        &mut self,
        written: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                self.meter.on_write(n);
                *self.stall = None;
                Poll::Ready(Ok(n))
            }
            Poll::Pending => blocked(
                self.inner.as_ref().get_ref(),
                self.meter,
                *self.write_timeout,
                self.stall,
                cx,
            ),
            error => error,
        }
    }
}

impl<S: AsyncWrite + SendQueue> AsyncWrite for MeteredStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let written = this.inner.as_mut().poll_write(cx, buf);
        this.account(written, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let written = this.inner.as_mut().poll_write_vectored(cx, bufs);
        this.account(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    impl SendQueue for tokio::io::DuplexStream {
        fn unsent(&self) -> Option<u64> {
            None
        }
    }

    #[tokio::test]
    async fn a_write_nobody_takes_fails_at_the_deadline_and_is_counted() {
        let metrics = Arc::new(Metrics::new());
        let meter = ConnMeter::new(metrics.clone(), Arc::new(AtomicUsize::new(1)), None);
        meter.begin_request(Transport::Sse);
        let (server, _client) = tokio::io::duplex(16);
        let mut server = MeteredStream::new(server, meter.clone())
            .with_write_timeout(Duration::from_millis(100));
        let err = tokio::time::timeout(Duration::from_secs(5), server.write_all(&[0u8; 64]))
            .await
            .expect("the deadline ends the write")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            metrics.slow_closed_count(Transport::Sse, SlowClose::WriteTimeout),
            1
        );
    }

    /// Rewound bytes come first and are not counted twice.
    #[tokio::test]
    async fn rewound_bytes_are_read_first_and_counted_once() {
        let metrics = Arc::new(Metrics::new());
        let meter = ConnMeter::new(metrics, Arc::new(AtomicUsize::new(1)), None);
        let (server, mut client) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut server = MeteredStream::new(server, meter);
        server.rewind(Bytes::from_static(b"hello"));
        let mut got = String::new();
        server.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");
        assert!(server.take_rewound().is_none());
        assert_eq!(server.meter().pending_in.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn a_killed_connection_fails_its_blocked_write() {
        let metrics = Arc::new(Metrics::new());
        let meter = ConnMeter::new(metrics, Arc::new(AtomicUsize::new(1)), None);
        meter.begin_request(Transport::LongPoll);
        let (server, _client) = tokio::io::duplex(16);
        let mut server =
            MeteredStream::new(server, meter.clone()).with_write_timeout(Duration::from_secs(3600));
        let killer = meter.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            killer.kill();
        });
        let err = tokio::time::timeout(Duration::from_secs(5), server.write_all(&[0u8; 64]))
            .await
            .expect("the kill ends the write")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn vectored_writes_reach_a_tcp_peer_whole_in_order_and_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let (socket, _) = listener.accept().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let meter = ConnMeter::new(metrics.clone(), Arc::new(AtomicUsize::new(1)), None);
        meter.begin_request(Transport::LongPoll);
        let mut server = MeteredStream::new(socket, meter.clone());
        // Far more than the socket buffers hold, so writes come back short
        // and have to wait for the reader: every byte counted once.
        let head: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let tail = b"-and-the-tail".to_vec();
        let total = head.len() + tail.len();
        let mut written = 0;
        let mut calls = 0;
        while written < total {
            let (h, t) = if written < head.len() {
                (&head[written..], &tail[..])
            } else {
                (&head[..0], &tail[written - head.len()..])
            };
            let n = server
                .write_vectored(&[io::IoSlice::new(h), io::IoSlice::new(t)])
                .await
                .unwrap();
            assert!(n > 0);
            written += n;
            calls += 1;
        }
        assert!(
            calls > 1,
            "one call took {total} bytes: the test wants short writes"
        );
        server.shutdown().await.unwrap();
        drop(server);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), total);
        assert!(
            got[..head.len()] == head[..],
            "bytes reordered or corrupted"
        );
        assert!(got.ends_with(&tail));
        assert_eq!(
            metrics.transport(Transport::LongPoll).wire_out.get(),
            total as u64
        );
    }

    #[tokio::test]
    async fn bytes_are_attributed_to_the_request_they_belong_to() {
        let metrics = Arc::new(Metrics::new());
        let open = Arc::new(AtomicUsize::new(1));
        let meter = ConnMeter::new(metrics.clone(), open.clone(), None);
        let (client, server) = tokio::io::duplex(1024);
        let mut server = MeteredStream::new(server, meter.clone());
        let mut client = client;

        // A request head arrives before routing: pending.
        client
            .write_all(b"GET /rt/poll/x HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(metrics.transport(Transport::LongPoll).wire_in.get(), 0);
        meter.begin_request(Transport::LongPoll);
        assert_eq!(
            metrics.transport(Transport::LongPoll).wire_in.get(),
            n as u64
        );
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        meter.response_done();
        assert_eq!(metrics.transport(Transport::LongPoll).wire_out.get(), 19);

        // The next request on the connection is a proxied one.
        client.write_all(b"GET /x HTTP/1.1\r\n\r\n").await.unwrap();
        let n2 = server.read(&mut buf).await.unwrap();
        meter.begin_request(Transport::Proxy);
        assert_eq!(metrics.transport(Transport::Proxy).wire_in.get(), n2 as u64);
        assert_eq!(
            metrics.transport(Transport::LongPoll).wire_in.get(),
            n as u64
        );

        drop(server);
        drop(meter);
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }
}
