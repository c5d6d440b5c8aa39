//! The session's side of parking ([`super::super::park`]): when it may
//! park, what it keeps while parked ([`ParkedSession`]), what the registry
//! needs of it, and how it runs again.

use std::future::Future;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::task::Context;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::super::deflate::{ClientInflate, Deflate, DeflateContext};
use super::super::guard::CommandGuard;
use super::super::park::{self, Why};
use super::super::reader::Decoder;
use super::super::socket::{SocketWriter, WsSocket};
use super::subscriptions::Subscriptions;
use super::timers::Heard;
use super::{Counted, First, Handler, Input, SendProgress, Served, Session};
use crate::auth::Credentials;
use crate::bus::SubscriberQueue;
use crate::transport::throttle::Throttle;

impl<W: tokio::io::AsyncWrite + SendProgress + Unpin> Session<W> {
    /// Nothing but the socket and the queue can give this session work:
    /// parking is on, it reads a plain socket it has lent to the
    /// publishers (checked by the caller), no frame is half read, and no
    /// timer of its own is armed (token expiry, a throttled channel).
    pub(super) fn may_park(&self) -> bool {
        !self.gw.config.websocket.park_after.is_zero()
            && matches!(self.input, Input::Socket(_))
            && self.handler == Handler::Commands
            && self.expiry.is_none()
            && self.throttle.deadline().is_none()
            && self.decoder.is_idle()
    }

    /// When a parked session must run again for its ping or idle timeout.
    fn park_due(&self) -> Instant {
        let cfg = &self.gw.config.websocket;
        let wait = match self.ping_sent {
            true => cfg.idle_timeout,
            false => cfg.ping_interval,
        };
        self.last_heard
            .instant()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }
}

/// What a parked session keeps: the session less everything that is empty,
/// fixed or implied while it is parked (the decoder but its inflater, the
/// handler, the token-expiry timer, the socket's second and third
/// handle). 128 bytes (jemalloc's 128-byte class) instead of the whole
/// `Session`'s 192, in every parked connection (`sizes`).
pub(in super::super) struct ParkedSession {
    gw: Counted,
    socket: Arc<WsSocket>,
    inflate: Option<Box<ClientInflate>>,
    throttle: Throttle,
    credentials: Option<Box<Credentials>>,
    client: IpAddr,
    guard: Option<Box<CommandGuard>>,
    kick: CancellationToken,
    queue: Arc<SubscriberQueue>,
    subscriptions: Subscriptions,
    last_heard: Heard,
    ping_sent: bool,
    deflate: Option<Deflate>,
    deflate_context: Option<Box<DeflateContext>>,
}

impl Session<SocketWriter> {
    /// Keeps what a parked session needs (it [may park](Self::may_park)).
    fn into_parked(self) -> ParkedSession {
        let Session {
            gw,
            input,
            decoder,
            throttle,
            handler,
            credentials,
            client,
            guard,
            kick,
            expiry,
            writer,
            queue,
            subscriptions,
            last_heard,
            ping_sent,
            deflate,
            deflate_context,
        } = self;
        // Implied while parked: rebuilt by `into_session`.
        debug_assert!(handler == Handler::Commands && expiry.is_none());
        debug_assert!(matches!(input, Input::Socket(_)));
        drop((input, expiry));
        ParkedSession {
            gw,
            socket: writer.0,
            inflate: decoder.into_parked(),
            throttle,
            credentials,
            client,
            guard,
            kick,
            queue,
            subscriptions,
            last_heard,
            ping_sent,
            deflate,
            deflate_context,
        }
    }
}

impl ParkedSession {
    /// The session again, as it was parked.
    fn into_session(self) -> Session<SocketWriter> {
        let ParkedSession {
            gw,
            socket,
            inflate,
            throttle,
            credentials,
            client,
            guard,
            kick,
            queue,
            subscriptions,
            last_heard,
            ping_sent,
            deflate,
            deflate_context,
        } = self;
        let decoder = Decoder::unparked(gw.config.limits.max_message_bytes, inflate);
        Session {
            gw,
            input: Input::Socket(socket.clone()),
            decoder,
            throttle,
            handler: Handler::Commands,
            credentials,
            client,
            guard,
            kick,
            expiry: None,
            writer: SocketWriter(socket),
            queue,
            subscriptions,
            last_heard,
            ping_sent,
            deflate,
            deflate_context,
        }
    }

    pub(in super::super) fn parked_fd(&self) -> RawFd {
        self.socket.raw_fd()
    }

    /// Leaves `waker` in the queue (it unparks); false if the queue has
    /// something already (or closed): the session must keep running.
    pub(in super::super) fn register_park_waker(&self, cx: &mut Context<'_>) -> bool {
        self.queue.poll_drain(cx, &mut Vec::new(), 0).is_pending()
    }

    pub(in super::super) fn parked_gauge(&self) -> &prometheus::IntGauge {
        &self.gw.metrics.ws_parked
    }

    /// Cancelled by the operator's disconnect and by shutdown.
    pub(in super::super) fn is_kicked(&self) -> bool {
        self.kick.is_cancelled()
    }

    pub(in super::super) fn kick_token(&self) -> CancellationToken {
        self.kick.clone()
    }

    pub(in super::super) fn tracker_token(&self) -> TaskTrackerToken {
        self.gw.tasks.token()
    }

    pub(in super::super) fn tasks(&self) -> TaskTracker {
        self.gw.tasks.clone()
    }

    /// Runs a parked session again, on a task of its own: its socket is
    /// registered with the runtime again, it takes the socket back from
    /// the publishers (and pings, if that is why it runs), then serves as
    /// before. The session is rebuilt here, outside the future: a box
    /// moved out of inside it would stay allocated until it ends.
    #[allow(clippy::boxed_local)] // as the park table holds it; freed here
    pub(in super::super) fn resume(self: Box<Self>, why: Why) -> impl Future<Output = ()> + Send {
        let session = (*self).into_session();
        async move {
            let mut session = session;
            if let Input::Socket(socket) = &session.input {
                if let Err(e) = socket.register() {
                    tracing::warn!(error = %e, "websocket: cannot register a parked socket again");
                    return;
                }
            }
            let first = match why {
                Why::Due => First::Tick,
                Why::Readable | Why::Queue | Why::Kick => First::Resumed,
            };
            match session.serve(first).await {
                Served::End(end) => Box::pin(session.finish(end)).await,
                Served::Park => park_or_go_on(session),
            }
        }
    }
}

/// Parks the session, or (if something came in meanwhile) goes on serving
/// it on a new task. Its tokio registration is let go first.
pub(in super::super) fn park_or_go_on(session: Session<SocketWriter>) {
    if let Input::Socket(socket) = &session.input {
        socket.deregister();
    }
    let due = session.park_due();
    if let Err(parked) = park::park(Box::new(session.into_parked()), due) {
        let tasks = parked.tasks();
        tasks.spawn(parked.resume(Why::Queue));
    }
}
