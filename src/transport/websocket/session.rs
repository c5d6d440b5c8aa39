//! A WebSocket session: one task per connection that reads the client's
//! frames, delivers queued messages, answers commands and control frames,
//! pings idle clients and closes with the right code.
//!
//! While the session waits with nothing queued it lends its socket to the
//! publishers ([`SubscriberQueue::enter_direct`]): live messages then go
//! from the publishing task straight to the socket, with no wake-up of
//! this task. Whenever this task wakes, for whatever reason, it first
//! takes the socket back (and learns what was written meanwhile), so
//! there is only ever one writer.
//!
//! This file is the session's life: its state, the wait for the next
//! wake-up, pings and idle and token expiry, shutdown, kicks and the
//! close. What the client sends is handled in [`commands`]; what goes to
//! it, in [`delivery`] (and [`vectored`], the socket writes).
//!
//! Every idle connection holds the session's future, so its size matters
//! (BENCHMARKS.md, "Idle WebSocket memory"; `sizes` pins it): the future
//! is the session's task itself (not boxed inside another), [`Session::run`]
//! returns an `async move` block, the wait is one poll function, pings and
//! idle checks ride a shared clock ([`super::ticks`]) instead of a timer per
//! connection, and all handling after a wake-up is boxed.

mod commands;
mod delivery;
mod input;
mod parking;
#[cfg(test)]
mod sizes;
mod subscriptions;
mod timers;
mod vectored;

use std::future::{poll_fn, Future};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::deflate::{ClientInflate, Deflate, DeflateContext};
use super::guard::CommandGuard;
use super::reader::{Decoder, Inbound};
use super::ticks::Tick;
use crate::auth::Credentials;
use crate::bus::{DirectReport, HistoryRead, QueueClosed, SubscriberQueue, Subscription};
use crate::gateway::Gateway;
use crate::protocol::channel::ChannelName;
use crate::protocol::ws_frame as frame;
use crate::protocol::{Message, Transport};
use crate::transport::throttle::Throttle;
pub use input::Input;
pub(super) use parking::{park_or_go_on, ParkedSession};
use subscriptions::Subscriptions;
pub use vectored::SendProgress;

/// Most messages taken from the queue for one write.
const BATCH: usize = 64;

/// How a session ends: the close frame to send, if any can be sent.
enum End {
    Close(u16, String),
    /// The socket is unusable (peer gone, write cut mid-frame): just drop it.
    Drop,
}

/// What the session does with the client's messages: the only difference
/// between a subscriber and the conformance echo endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// JSON commands (subscribe, unsubscribe, publish).
    Commands,
    /// Echo every message back (Autobahn conformance).
    Echo,
}

/// What a session starts with besides its socket.
pub struct Start {
    pub handler: Handler,
    /// What the client presented at the handshake; later subscribe
    /// commands are judged on it.
    pub credentials: Credentials,
    /// The client's address (backend auth checks are bounded per address).
    pub client: IpAddr,
    /// When its subscriber token expires, if a token was needed.
    pub expires: Option<SystemTime>,
    /// Subscriptions taken before the 101.
    pub initial: Vec<InitialSubscription>,
}

/// How [`Session::serve`] ends.
enum Served {
    End(End),
    /// Idle for `websocket.park_after`: park it.
    Park,
}

impl Served {
    fn into_end(self) -> End {
        match self {
            Served::End(end) => end,
            Served::Park => End::Drop,
        }
    }
}

/// What [`Session::serve`] does before its first wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum First {
    /// Wait for a wake-up (a new session).
    Wait,
    /// Handle [`Wake::Resumed`]: it was parked.
    Resumed,
    /// Handle a tick: it was parked and a ping or its idle timeout is due.
    Tick,
}

/// What woke the session.
enum Wake {
    /// It was parked and runs again: it only takes its socket back, and
    /// finds whatever woke it on its next wait.
    Resumed,
    Shutdown,
    Kick,
    Read(io::Result<usize>),
    /// What was queued (up to [`BATCH`] messages), or why the queue closed.
    Drained(Result<Vec<Arc<Message>>, QueueClosed>),
    Tick,
    Throttled,
    /// The subscriber token expired.
    TokenExpired,
}

/// One WebSocket connection's state, served by one task ([`Session::run`]).
/// A parked one is kept as a smaller [`ParkedSession`].
pub struct Session<W> {
    /// Counts the connection while it lives, running or parked.
    gw: Counted,
    input: Input,
    decoder: Decoder,
    /// `conflate_interval` on state channels.
    throttle: Throttle,
    handler: Handler,
    /// Boxed, and None for an anonymous client (most of them).
    credentials: Option<Box<Credentials>>,
    client: IpAddr,
    /// Command and publish rates; made on the first command, so an idle
    /// connection holds only the empty pointer.
    guard: Option<Box<CommandGuard>>,
    /// The operator's disconnect (and shutdown) token when the session
    /// started: cancelled by `POST /disconnect` and shutdown.
    kick: CancellationToken,
    /// Fires when the earliest subscriber token this session relies on
    /// expires (`exp + auth.leeway`): the session is closed then, not at the
    /// next ping tick. Armed only for sessions holding a token with `exp`,
    /// so an anonymous session pays one empty pointer for it.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    writer: W,
    queue: Arc<SubscriberQueue>,
    subscriptions: Subscriptions,
    /// When the client last sent anything (coarse: see [`timers::Heard`]).
    last_heard: timers::Heard,
    ping_sent: bool,
    /// permessage-deflate, if negotiated.
    deflate: Option<Deflate>,
    /// The connection's own compression state, if it uses context
    /// takeover (`websocket.deflate_context_takeover`): None for almost
    /// every connection.
    deflate_context: Option<Box<DeflateContext>>,
}

/// The session's gateway, counting the connection in the WebSocket
/// connections gauge for as long as it is held: by the session, then by
/// its parked record, then by the session again. (A field rather than
/// `Drop` on `Session`, so that parking can move the fields out; and the
/// gateway pointer itself, as a separate guard would be 8 more bytes.)
pub(super) struct Counted(Arc<Gateway>);

impl Counted {
    fn new(gw: Arc<Gateway>) -> Counted {
        gw.metrics.transport(Transport::WebSocket).connections.inc();
        Counted(gw)
    }
}

impl std::ops::Deref for Counted {
    type Target = Arc<Gateway>;

    fn deref(&self) -> &Arc<Gateway> {
        &self.0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .metrics
            .transport(Transport::WebSocket)
            .connections
            .dec();
    }
}

/// A subscription taken before the handshake answer, with its history.
pub struct InitialSubscription {
    pub channel: ChannelName,
    pub subscription: Subscription,
    pub history: HistoryRead,
    /// The handshake asked for deltas (`?delta=1`).
    pub delta: bool,
}

impl<W: AsyncWrite + SendProgress + Unpin> Session<W> {
    pub fn new(
        gw: Arc<Gateway>,
        input: Input,
        writer: W,
        queue: Arc<SubscriberQueue>,
        read_ahead: Vec<u8>,
        (deflate, deflate_context): (Option<Deflate>, Option<Box<DeflateContext>>),
    ) -> Self {
        let inflate = deflate.map(ClientInflate::new);
        let kick = gw.kick_token();
        Session {
            input,
            decoder: Decoder::new(gw.config.limits.max_message_bytes, read_ahead, inflate),
            deflate,
            deflate_context,
            throttle: Throttle::new(&gw.rules),
            gw: Counted::new(gw),
            handler: Handler::Commands,
            credentials: None,
            client: std::net::Ipv4Addr::UNSPECIFIED.into(),
            guard: None,
            kick,
            expiry: None,
            writer,
            queue,
            subscriptions: Subscriptions::default(),
            last_heard: timers::Heard::now(),
            ping_sent: false,
        }
    }

    /// Runs until the connection ends. `start` is boxed so that neither
    /// this future nor the task holding it keeps room for it afterwards.
    ///
    /// Every idle connection holds this future, so it is a plain function
    /// returning an `async move` block: an `async fn` would keep its
    /// parameters *and* a moved copy of `self` (328 bytes twice), and a
    /// destructured `Start` left its credentials (104 bytes) alive across
    /// every await. 1,288 → 592 bytes with the changes around it
    /// (`-Zprint-type-sizes`), i.e. jemalloc's 1,536-byte class → 640; then
    /// 632 → 488 (debug build) with the shared clock, the single poll
    /// function and the lazily boxed frame assembler, which lets the whole
    /// task fit where the future alone was.
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    pub fn run(mut self, start: Box<Start>) -> impl Future<Output = ()> + Send
    where
        W: Send + 'static,
    {
        async move {
            let initial = self.take_start(start);
            // Not a `match` around `serve()`: its scrutinee (32 bytes) would
            // be kept for the whole session.
            if let Err(end) = Box::pin(self.start(initial)).await {
                return Box::pin(self.finish(end)).await;
            }
            let end = self.serve(First::Wait).await;
            if let Served::Park = end {
                return W::park(self);
            }
            Box::pin(self.finish(end.into_end())).await;
        }
    }

    /// Unpacks what the handshake decided; the box and everything not kept
    /// are freed here, before the first await. (Taken boxed on purpose: a
    /// box moved out of in the async block would stay allocated until the
    /// block ends.)
    #[allow(clippy::boxed_local)]
    fn take_start(&mut self, start: Box<Start>) -> Vec<InitialSubscription> {
        let Start {
            handler,
            credentials,
            client,
            expires,
            initial,
        } = *start;
        self.handler = handler;
        self.client = client;
        self.credentials = credentials.is_present().then(|| Box::new(credentials));
        self.expire_at(expires);
        initial
    }

    /// Sends the close frame (if any) and waits briefly for the client's.
    async fn finish(&mut self, end: End) {
        // serve() took the socket back before returning; make sure no
        // publisher writes after the close frame.
        self.queue.leave_direct(&mut DirectReport::default());
        if let End::Close(code, ref reason) = end {
            let close = frame::close(code, reason);
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.writer.write_all(&close)).await;
            // Give the client a moment to answer the close, per the RFC's
            // handshake, without waiting on a peer that never will.
            if code != 1013 {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.await_close()).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
        tracing::debug!(code = ?match &end { End::Close(c, _) => Some(*c), End::Drop => None }, "websocket closed");
    }

    /// Reads until the client's close frame (or anything that ends the
    /// stream).
    async fn await_close(&mut self) {
        if self.decoder.is_ended() {
            // Its close (or the frame that broke the protocol) is already
            // in: waiting would only delay closing the TCP connection.
            return;
        }
        let mut events = Vec::new();
        while let Ok(n) = poll_fn(|cx| self.input.poll_read_into(cx, self.decoder.buffer())).await {
            if n == 0 {
                return;
            }
            let ended = self.decoder.decode(&mut events).await;
            if ended || events.iter().any(|e| matches!(e, Inbound::Close(_))) {
                return;
            }
            events.clear();
        }
    }

    async fn start(&mut self, initial: Vec<InitialSubscription>) -> Result<(), End> {
        for sub in initial {
            self.adopt(sub.channel, sub.subscription, sub.history, sub.delta)
                .await?;
        }
        Ok(())
    }

    /// Serves until the session ends or parks. `first`: what to do before
    /// the first wait (a session that was parked takes its socket back
    /// first).
    async fn serve(&mut self, mut first: First) -> Served {
        // Registered once per run, not on every wake-up; cancelled by
        // shutdown too (a child of the shutdown token). The session's own
        // token, taken when it started: a kick while it was parked is not
        // missed.
        let kick_token = self.kick.clone();
        let kick = kick_token.cancelled();
        tokio::pin!(kick);
        // The shared clock, not a timer of its own (see `ticks`).
        let mut tick = match Tick::register(self.tick_period()) {
            Ok(tick) => tick,
            Err(e) => {
                tracing::error!(error = %e, "websocket ping clock unavailable");
                return Served::End(End::Close(
                    1013,
                    "server overloaded; try again later".into(),
                ));
            }
        };
        // Park (if it may) rather than wait: a new session as soon as it
        // has nothing to do (its task's memory is then reused by the next
        // connection's, rather than every idle connection's task being
        // allocated at once), one that ran again once a whole tick period
        // (at most `park_after`) went by with no other wake-up.
        let (mut quiet, mut park) = (false, first == First::Wait);
        loop {
            let wake = match std::mem::replace(&mut first, First::Wait) {
                First::Resumed => Wake::Resumed,
                First::Tick => Wake::Tick,
                First::Wait => {
                    let lent = self.lend_socket();
                    if park && lent && W::PARKS && self.may_park() {
                        return Served::Park;
                    }
                    // Boxed, and only while something is held back: a
                    // timer inline here would be part of every idle
                    // connection's memory.
                    let mut throttled = self
                        .throttle
                        .deadline()
                        .map(|at| Box::pin(tokio::time::sleep_until(at.into())));
                    poll_fn(|cx| self.poll_wake(cx, kick.as_mut(), &mut tick, &mut throttled)).await
                }
            };
            let ticked = matches!(wake, Wake::Tick);
            // Everything after a wake-up is boxed: the session future's
            // size is what each idle connection holds, and wake-ups are rare
            // while publishers write directly.
            let step = Box::pin(self.on_wake(wake)).await;
            if let Err(end) = step {
                return Served::End(end);
            }
            park = ticked && quiet;
            quiet = ticked;
        }
    }

    /// What woke the session, first one first (shutdown and kicks before
    /// anything the client sent, that before deliveries, then timers).
    ///
    /// One poll function over the sources rather than a `select!` of
    /// futures: the wait is what every idle connection holds, and each
    /// future (or closure capturing its own references) would add its
    /// state to it.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        kick: Pin<&mut WaitForCancellationFuture<'_>>,
        tick: &mut Tick,
        throttled: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    ) -> Poll<Wake> {
        if kick.poll(cx).is_ready() {
            return Poll::Ready(match self.gw.shutdown.is_cancelled() {
                true => Wake::Shutdown,
                false => Wake::Kick,
            });
        }
        if let Poll::Ready(read) = self.input.poll_read_into(cx, self.decoder.buffer()) {
            return Poll::Ready(Wake::Read(read));
        }
        // Grows only once something is queued: an idle connection holds no
        // batch buffer.
        let mut batch = Vec::new();
        if let Poll::Ready(drained) = self.queue.poll_drain(cx, &mut batch, BATCH) {
            return Poll::Ready(Wake::Drained(drained.map(|()| batch)));
        }
        if tick.poll_tick(cx).is_ready() {
            return Poll::Ready(Wake::Tick);
        }
        if let Some(sleep) = throttled {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Throttled);
            }
        }
        if let Some(expiry) = &mut self.expiry {
            if expiry.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::TokenExpired);
            }
        }
        Poll::Pending
    }

    /// Handles one wake-up of [`serve`](Self::serve); `Err` ends the session.
    async fn on_wake(&mut self, wake: Wake) -> Result<(), End> {
        self.take_back_socket().await?;
        match wake {
            Wake::Resumed => Ok(()),
            Wake::Shutdown => Err(self.going_away(1001, "server shutting down")),
            Wake::Kick => Err(self.going_away(1012, "disconnected by the operator")),
            // The peer went away without a close frame.
            Wake::Read(Ok(0) | Err(_)) => Err(End::Drop),
            Wake::Read(Ok(_)) => {
                self.last_heard = timers::Heard::now();
                self.ping_sent = false;
                // Boxed: bigger than the other arms, and on_wake is
                // allocated on every wake-up.
                Box::pin(self.on_bytes()).await
            }
            Wake::Drained(Ok(batch)) => self.write_messages(&batch).await,
            Wake::Drained(Err(QueueClosed::Overflow)) => Box::pin(self.catch_up()).await,
            Wake::Drained(Err(QueueClosed::Shutdown)) => {
                Err(self.going_away(1001, "server shutting down"))
            }
            Wake::Drained(Err(QueueClosed::OutputLimit)) => Err(End::Close(
                1013,
                "slow consumer: output limit exceeded; reconnect and resume".into(),
            )),
            Wake::Tick => self.on_tick().await,
            Wake::TokenExpired => Err(End::Close(
                1008,
                "subscriber token expired: reconnect with a new one".into(),
            )),
            Wake::Throttled => {
                let mut due = Vec::new();
                self.throttle.release(Instant::now(), &mut due);
                self.write_now(&due).await
            }
        }
    }

    /// A close that asks the client to come back later: the reason carries
    /// `retry=<ms>`, spread over the reconnect window.
    fn going_away(&self, code: u16, why: &str) -> End {
        let delay = self.gw.reconnect_delay().as_millis();
        End::Close(code, format!("{why}; reconnect and resume; retry={delay}"))
    }
}
