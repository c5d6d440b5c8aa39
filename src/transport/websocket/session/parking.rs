//! The session's side of parking ([`super::super::park`]): when it may
//! park, what the registry needs of it, and how it runs again.

use std::future::Future;
use std::os::fd::RawFd;
use std::task::Context;
use std::time::{Duration, Instant};

use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::super::park::{self, Parked, Why};
use super::super::socket::SocketWriter;
use super::{First, Handler, Input, SendProgress, Served, Session};

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
    pub(in super::super) fn park_due(&self) -> Instant {
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

impl Session<SocketWriter> {
    pub(in super::super) fn parked_fd(&self) -> Option<RawFd> {
        match &self.input {
            Input::Socket(socket) => Some(socket.raw_fd()),
            Input::Stream(_) => None,
        }
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

    pub(in super::super) fn kick_token(&self) -> tokio_util::sync::CancellationToken {
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
    /// before.
    #[allow(clippy::manual_async_fn)] // as `Session::run`: nothing kept twice
    pub(in super::super) fn resume(self: Box<Self>, why: Why) -> impl Future<Output = ()> + Send {
        async move {
            let mut session = self;
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
pub(in super::super) fn park_or_go_on(session: Parked) {
    if let Input::Socket(socket) = &session.input {
        socket.deregister();
    }
    let due = session.park_due();
    if let Err(session) = park::park(session, due) {
        let tasks = session.tasks();
        tasks.spawn(session.resume(Why::Queue));
    }
}
