//! A memory experiment, built only with the `park-experiment` feature:
//! what would an idle WebSocket connection cost without a tokio task and
//! without a tokio registration of its socket (issue 20, "sessions woken
//! from a readiness registry")?
//!
//! **Not a feature; never build it into a gateway that serves clients.**
//! A connection started here is "parked" from the first moment and never
//! unparked: it gets its `101` and the messages publishers write directly
//! (direct mode, as today), but nothing it sends is read, it is never
//! pinged, and it is only let go when its socket reports readable or
//! closed (whatever the client sends ends it). It exists to measure, with
//! the real gateway and `pollbridge-bench idle`, what a parked connection
//! holds against what a session holds today (BENCHMARKS.md, "Idle
//! WebSocket without a task").
//!
//! What a parked connection keeps, the same things a real parked session
//! would keep:
//! - one box the size of the session's state ([`Session`] as `size_of`
//!   reports it; a real parked session would box its `Session`), holding:
//! - its subscriptions (the hub entries) and its cursor list, lent to its
//!   queue as today's direct mode does,
//! - the queue and the byte meter,
//! - a direct sink holding the socket as a *std* socket (tokio's
//!   `ScheduledIo` dropped by `into_std`),
//! - an entry in one shared epoll set (kernel memory, not RSS) and a slot
//!   in the registry table.
//!
//! and no tokio task, no tokio registration, no slot in the ping clock.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::TcpStream as StdTcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

use super::deflate::{frame_for, record_compressed, Deflate};
use super::session::{InitialSubscription, Session, Start};
use super::socket::SocketWriter;
use super::Compression;
use crate::bus::{DirectReport, DirectSink, SubscriberQueue, Subscription};
use crate::gateway::Gateway;
use crate::net::meter::ConnMeter;
use crate::protocol::{Message, Transport};

/// What a real parked session would box: its `Session`.
const SESSION_BYTES: usize = std::mem::size_of::<Session<SocketWriter>>();

/// The socket of a parked connection, as publishers write to it: a std
/// socket (no tokio registration) written with a non-blocking `send()`,
/// exactly as [`super::socket::WsSocket`]'s direct path does.
struct ParkedSink {
    stream: StdTcpStream,
    meter: Arc<ConnMeter>,
    gw: Arc<Gateway>,
    deflate: Option<Deflate>,
}

impl DirectSink for ParkedSink {
    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes {
        frame_for(&self.gw, self.deflate, msg)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: a non-blocking sendmsg(2) on a socket `self` owns, from
        // live buffers (`IoSlice` is ABI-compatible with `iovec`).
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(
                self.stream.as_raw_fd(),
                &msg,
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

    fn delivered(&self, msgs: &[Arc<Message>]) {
        record_compressed(&self.gw, self.deflate, msgs);
    }
}

/// What a parked connection holds: the same fields a `Session` has for
/// them, padded to the session's size (so the box is what a boxed
/// `Session` would be).
struct Held {
    _subscriptions: Vec<(crate::protocol::channel::ChannelName, Subscription)>,
    queue: Arc<SubscriberQueue>,
    /// The cursor list, lent to the queue while parked; given back here.
    report: DirectReport,
    _sink: Arc<ParkedSink>,
    gw: Arc<Gateway>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.queue.leave_direct(&mut self.report);
        self.gw
            .metrics
            .transport(Transport::WebSocket)
            .connections
            .dec();
    }
}

/// Pads [`Held`] to the size of a `Session`.
const PAD: usize = SESSION_BYTES.saturating_sub(std::mem::size_of::<Held>());

/// One parked connection: one box the size of a session.
struct Parked {
    _held: Held,
    /// Written, so its bytes are touched as a session's would be.
    _pad: [u8; PAD],
}

/// The readiness registry: one epoll set, a table of parked connections by
/// token, and a thread that lets a connection go once its socket reports
/// anything.
struct Registry {
    epoll: i32,
    parked: Mutex<HashMap<u64, Box<Parked>>>,
    next: std::sync::atomic::AtomicU64,
}

fn registry() -> io::Result<&'static Registry> {
    static REGISTRY: OnceLock<&'static Registry> = OnceLock::new();
    if let Some(r) = REGISTRY.get() {
        return Ok(r);
    }
    // SAFETY: plain epoll_create1(2).
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    let registry: &'static Registry = Box::leak(Box::new(Registry {
        epoll,
        parked: Mutex::new(HashMap::new()),
        next: Default::default(),
    }));
    let registry = *REGISTRY.get_or_init(|| registry);
    std::thread::Builder::new()
        .name("pollbridge-ws-park-experiment".into())
        .spawn(move || registry.run())?;
    Ok(registry)
}

impl Registry {
    fn run(&self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: epoll_wait(2) into a live buffer of `events.len()`.
            let n = unsafe {
                libc::epoll_wait(self.epoll, events.as_mut_ptr(), events.len() as i32, -1)
            };
            for event in events.iter().take(n.max(0) as usize) {
                let token = event.u64;
                // Dropped outside the lock: it closes the socket and
                // leaves the hub.
                let gone = self.parked.lock().remove(&token);
                drop(gone);
            }
        }
    }
}

/// Parks a connection whose `101` has been written (see the module doc):
/// the experiment's stand-in for `spawn_on_socket`.
#[allow(clippy::boxed_local)] // taken as `spawn_on_socket` has it
pub(super) fn park_on_socket(
    gw: Arc<Gateway>,
    stream: tokio::net::TcpStream,
    meter: Arc<ConnMeter>,
    queue: Arc<SubscriberQueue>,
    start: Box<Start>,
    compression: Compression,
) {
    let registry = match registry() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "park experiment: no epoll");
            return;
        }
    };
    // Deregisters from tokio: no `ScheduledIo` from here on.
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "park experiment: into_std failed");
            return;
        }
    };
    gw.metrics.transport(Transport::WebSocket).connections.inc();
    let Start { initial, .. } = *start;
    let mut report = DirectReport::default();
    let mut subscriptions = Vec::with_capacity(initial.len());
    for InitialSubscription {
        channel,
        subscription,
        history,
        ..
    } in initial
    {
        report
            .written
            .push((channel.clone(), history.epoch, history.last_id));
        subscriptions.push((channel, subscription));
    }
    let fd = stream.as_raw_fd();
    let sink = Arc::new(ParkedSink {
        stream,
        meter,
        gw: gw.clone(),
        deflate: compression.0,
    });
    let direct: Arc<dyn DirectSink> = sink.clone();
    queue.enter_direct(&direct, &mut report);
    let token = registry
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let parked = Box::new(Parked {
        _held: Held {
            _subscriptions: subscriptions,
            queue,
            report,
            _sink: sink,
            gw,
        },
        _pad: [0xA5; PAD],
    });
    registry.parked.lock().insert(token, parked);
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
        u64: token,
    };
    // SAFETY: epoll_ctl(2) adding a live descriptor the parked entry owns.
    let rc = unsafe { libc::epoll_ctl(registry.epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "park experiment: epoll_ctl");
        drop(registry.parked.lock().remove(&token));
    }
}
