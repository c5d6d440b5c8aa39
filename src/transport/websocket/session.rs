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

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::command::{self, Command, CommandError};
use super::guard::{CommandGuard, Limit, Refusal};
use super::reader::{Decoder, Inbound};
use super::socket::WsSocket;
use crate::auth::Credentials;
use crate::bus::{
    Bus, DirectReport, DirectSink, HistoryRead, QueueClosed, SubscriberQueue, Subscription,
};
use crate::gateway::Gateway;
use crate::metrics::record_delivery;
use crate::protocol::channel::ChannelName;
use crate::protocol::ws_frame as frame;
use crate::protocol::{Cursor, Step, Transport};
use crate::protocol::{Message, Payload};
use crate::transport::throttle::Throttle;

/// Most messages taken from the queue for one write.
const BATCH: usize = 64;

/// The session's subscriptions: a few per connection (usually one), so a
/// vector searched in order, smaller than a hash map for every idle
/// connection.
#[derive(Default)]
struct Subscriptions(Vec<(ChannelName, Subscribed)>);

impl Subscriptions {
    fn get(&self, channel: &ChannelName) -> Option<&Subscribed> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, s)| s)
    }

    fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Subscribed> {
        self.0
            .iter_mut()
            .find(|(c, _)| c == channel)
            .map(|(_, s)| s)
    }

    fn insert(&mut self, channel: ChannelName, sub: Subscribed) {
        match self.get_mut(&channel) {
            Some(existing) => *existing = sub,
            None => self.0.push((channel, sub)),
        }
    }

    fn remove(&mut self, channel: &ChannelName) -> Option<Subscribed> {
        let pos = self.0.iter().position(|(c, _)| c == channel)?;
        Some(self.0.swap_remove(pos).1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&ChannelName, &Subscribed)> {
        self.0.iter().map(|(c, s)| (c, s))
    }
}

/// What an anonymous client presents.
static NO_CREDENTIALS: Credentials = Credentials {
    token: None,
    cookie: None,
    authorization: None,
};

/// A subscription the session holds, with the last id it delivered.
struct Subscribed {
    _subscription: Subscription,
    cursor: Cursor,
}

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

/// Where the session's inbound bytes come from.
pub enum Input {
    /// The raw TCP socket, shared with the writer and the publishers:
    /// waits for readiness and holds no buffer while idle.
    Socket(Arc<WsSocket>),
    /// Any other stream (TLS), read through the decoder's buffer.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl Input {
    /// Appends what the client sent to `buf`; 0 at end of stream. Nothing
    /// is consumed unless it returns `Ready`; on a plain socket an empty
    /// `buf` holds no allocation while this is pending.
    ///
    /// A poll function rather than an `async fn`: the session waits on it in
    /// a `select!` that every idle connection holds, and a future here would
    /// add its state (72 bytes) to that.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        match self {
            Input::Socket(socket) => socket.poll_read_into(cx, buf),
            Input::Stream(stream) => {
                // Kept while pending: this is polled on every wake-up, and
                // a TLS stream holds far larger buffers of its own anyway.
                buf.reserve(4096);
                tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
            }
        }
    }
}

/// What woke the session.
enum Wake {
    Shutdown,
    Kick,
    Read(io::Result<usize>),
    Drained(Result<(), QueueClosed>),
    Tick,
    Throttled,
    /// The subscriber token expired.
    TokenExpired,
}

pub struct Session<W> {
    gw: Arc<Gateway>,
    input: Input,
    decoder: Decoder,
    /// The socket as the publishers write to it in direct mode (None: this
    /// connection can't be shared, e.g. TLS).
    sink: Option<Arc<dyn DirectSink>>,
    /// Reused for what publishers report when the session takes the socket
    /// back.
    report: DirectReport,
    /// `conflate_interval` on state channels.
    throttle: Throttle,
    handler: Handler,
    /// Boxed, and None for an anonymous client (most of them).
    credentials: Option<Box<Credentials>>,
    client: IpAddr,
    /// Command and publish rates; made on the first command, so an idle
    /// connection holds only the empty pointer.
    guard: Option<Box<CommandGuard>>,
    /// Fires when the earliest subscriber token this session relies on
    /// expires (`exp + auth.leeway`): the session is closed then, not at the
    /// next ping tick. Armed only for sessions holding a token with `exp`,
    /// so an anonymous session pays one empty pointer for it.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    writer: W,
    queue: Arc<SubscriberQueue>,
    subscriptions: Subscriptions,
    last_heard: Instant,
    ping_sent: bool,
}

/// A subscription taken before the handshake answer, with its history.
pub struct InitialSubscription {
    pub channel: ChannelName,
    pub subscription: Subscription,
    pub history: HistoryRead,
}

impl<W: AsyncWrite + SendProgress + Unpin> Session<W> {
    pub fn new(
        gw: Arc<Gateway>,
        input: Input,
        writer: W,
        sink: Option<Arc<dyn DirectSink>>,
        queue: Arc<SubscriberQueue>,
        read_ahead: Vec<u8>,
    ) -> Self {
        Session {
            input,
            decoder: Decoder::new(gw.config.limits.max_message_bytes, read_ahead),
            sink,
            report: DirectReport::default(),
            throttle: Throttle::new(&gw.rules),
            gw,
            handler: Handler::Commands,
            credentials: None,
            client: std::net::Ipv4Addr::UNSPECIFIED.into(),
            guard: None,
            expiry: None,
            writer,
            queue,
            subscriptions: Subscriptions::default(),
            last_heard: Instant::now(),
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
    /// (`-Zprint-type-sizes`), i.e. jemalloc's 1,536-byte class → 640.
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    pub fn run(mut self, start: Box<Start>) -> impl Future<Output = ()> + Send
    where
        W: Send,
    {
        async move {
            let initial = self.take_start(start);
            // Not a `match` around `serve()`: its scrutinee (32 bytes) would
            // be kept for the whole session.
            if let Err(end) = Box::pin(self.start(initial)).await {
                return Box::pin(self.finish(end)).await;
            }
            let end = self.serve().await;
            Box::pin(self.finish(end)).await;
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
        self.queue.leave_direct(&mut self.report);
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
            self.adopt(sub.channel, sub.subscription, sub.history)
                .await?;
        }
        Ok(())
    }

    /// Records a subscription and sends its ack and replayed history.
    async fn adopt(
        &mut self,
        channel: ChannelName,
        subscription: Subscription,
        history: HistoryRead,
    ) -> Result<(), End> {
        let ack = subscribed_ack(
            &channel,
            Cursor::new(history.last_id, history.epoch),
            history.truncated,
            history.conflated,
        );
        // The cursor starts just before the replay; write_messages moves it.
        let cursor = Cursor::new(
            history
                .messages
                .first()
                .map(|m| m.id - 1)
                .unwrap_or(history.last_id),
            history.epoch,
        );
        self.send_text(&serde_json::to_vec(&ack).expect("json"))
            .await?;
        self.subscriptions.insert(
            channel,
            Subscribed {
                _subscription: subscription,
                cursor,
            },
        );
        self.write_messages(&history.messages).await
    }

    async fn serve(&mut self) -> End {
        let cfg = &self.gw.config.websocket;
        let (ping_interval, idle_timeout) = (cfg.ping_interval, cfg.idle_timeout);
        // Registered once for the session, not on every wake-up; cancelled
        // by shutdown too (a child of the shutdown token).
        let kick_token = self.gw.kick_token();
        let kick = kick_token.cancelled();
        tokio::pin!(kick);
        let mut ticker = tokio::time::interval(
            ping_interval
                .min(idle_timeout / 2)
                .max(Duration::from_millis(100)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Grows on first use: an idle connection holds no batch buffer.
        let mut batch: Vec<Arc<Message>> = Vec::new();
        loop {
            // Nothing queued: let publishers write to the socket themselves
            // (refused, harmlessly, while something is queued). Throttled
            // channels hold messages back, which only this task can do.
            if let Some(sink) = &self.sink {
                if !self.throttle.is_enabled() {
                    let cursors = self
                        .subscriptions
                        .iter()
                        .map(|(c, s)| (c.clone(), s.cursor.epoch, s.cursor.id));
                    self.report.written.clear();
                    self.report.written.extend(cursors);
                    self.queue.enter_direct(sink, &mut self.report);
                }
            }
            let queue = self.queue.clone();
            // Boxed, and only while something is held back: a timer inline
            // here would be part of every idle connection's memory.
            let mut throttled = self
                .throttle
                .deadline()
                .map(|at| Box::pin(tokio::time::sleep_until(at.into())));
            let wake = tokio::select! {
                biased;
                _ = &mut kick => match self.gw.shutdown.is_cancelled() {
                    true => Wake::Shutdown,
                    false => Wake::Kick,
                },
                // Poll functions, not futures: their state would be part of
                // every idle connection's memory (136 bytes more).
                read = poll_fn(|cx| self.input.poll_read_into(cx, self.decoder.buffer())) => Wake::Read(read),
                drained = poll_fn(|cx| queue.poll_drain(cx, &mut batch, BATCH)) => Wake::Drained(drained),
                _ = poll_fn(|cx| ticker.poll_tick(cx)) => Wake::Tick,
                _ = poll_fn(|cx| throttled.as_mut().expect("guarded").as_mut().poll(cx)), if throttled.is_some() => Wake::Throttled,
                _ = poll_fn(|cx| self.expiry.as_mut().expect("guarded").as_mut().poll(cx)), if self.expiry.is_some() => Wake::TokenExpired,
            };
            // Everything after a wake-up is boxed: the session future's
            // size is what each idle connection holds, and wake-ups are rare
            // while publishers write directly.
            let step = Box::pin(self.on_wake(wake, &mut batch)).await;
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Handles one wake-up of [`serve`](Self::serve); `Err` ends the session.
    async fn on_wake(&mut self, wake: Wake, batch: &mut Vec<Arc<Message>>) -> Result<(), End> {
        self.take_back_socket().await?;
        match wake {
            Wake::Shutdown => Err(self.going_away(1001, "server shutting down")),
            Wake::Kick => Err(self.going_away(1012, "disconnected by the operator")),
            // The peer went away without a close frame.
            Wake::Read(Ok(0) | Err(_)) => Err(End::Drop),
            Wake::Read(Ok(_)) => {
                self.last_heard = Instant::now();
                self.ping_sent = false;
                // Boxed: bigger than the other arms, and on_wake is
                // allocated on every wake-up.
                Box::pin(self.on_bytes()).await
            }
            Wake::Drained(Ok(())) => {
                let result = self.write_messages(batch).await;
                batch.clear();
                result
            }
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

    /// Ends direct mode: from here on this task is the socket's only
    /// writer. Catches the cursors up with what publishers wrote and
    /// finishes a frame they wrote in part.
    async fn take_back_socket(&mut self) -> Result<(), End> {
        if self.sink.is_none() {
            return Ok(());
        }
        self.queue.leave_direct(&mut self.report);
        for (channel, epoch, id) in self.report.written.drain(..) {
            if let Some(sub) = self.subscriptions.get_mut(&channel) {
                // Publishers write only in the cursor's own epoch.
                if sub.cursor.epoch == epoch && id > sub.cursor.id {
                    sub.cursor.id = id;
                }
            }
        }
        match self.report.remainder.take() {
            Some(rest) => Box::pin(self.write_frames(&[rest])).await,
            None => Ok(()),
        }
    }

    /// Handles what the client sent: every complete frame, in order.
    async fn on_bytes(&mut self) -> Result<(), End> {
        let mut events = Vec::new();
        self.decoder.decode(&mut events).await;
        for event in events {
            self.on_inbound(event).await?;
        }
        Ok(())
    }

    /// A close that asks the client to come back later: the reason carries
    /// `retry=<ms>`, spread over the reconnect window.
    fn going_away(&self, code: u16, why: &str) -> End {
        let delay = self.gw.reconnect_delay().as_millis();
        End::Close(code, format!("{why}; reconnect and resume; retry={delay}"))
    }

    async fn on_tick(&mut self) -> Result<(), End> {
        let cfg = &self.gw.config.websocket;
        let (ping_interval, idle_timeout) = (cfg.ping_interval, cfg.idle_timeout);
        let silent = self.last_heard.elapsed();
        if silent >= idle_timeout {
            return Err(End::Close(1001, "no answer to ping".into()));
        }
        if silent >= ping_interval && !self.ping_sent {
            self.ping_sent = true;
            self.write_frames(&[frame::encode(frame::OP_PING, b"")])
                .await?;
        }
        Ok(())
    }

    async fn on_inbound(&mut self, event: Inbound) -> Result<(), End> {
        match event {
            Inbound::Text(text) => match self.handler {
                Handler::Commands => self.on_command(&text).await,
                Handler::Echo => self.send_text(text.as_bytes()).await,
            },
            Inbound::Binary(data) => match self.handler {
                Handler::Commands => {
                    let err = CommandError::new(
                        "binary_not_supported",
                        "send commands as JSON text frames",
                    );
                    self.send_text(&err.to_json()).await
                }
                Handler::Echo => {
                    self.write_frames(&[frame::encode(frame::OP_BINARY, &data)])
                        .await
                }
            },
            Inbound::Ping(payload) => {
                self.write_frames(&[frame::encode(frame::OP_PONG, &payload)])
                    .await
            }
            Inbound::Pong => Ok(()),
            Inbound::Close(code) => {
                // Echo the client's code (RFC 6455 §5.5.1), then we're done.
                let _ = self.write_frames(&[frame::close(code, "")]).await;
                Err(End::Drop)
            }
            Inbound::Violation(code, reason) => Err(End::Close(code, reason.into())),
        }
    }

    async fn on_command(&mut self, text: &str) -> Result<(), End> {
        let now = Instant::now();
        let limits = &self.gw.config.limits.ws;
        let guard = self
            .guard
            .get_or_insert_with(|| Box::new(CommandGuard::new(limits, now)));
        if let Err(refusal) = guard.command(now, &self.gw.metrics.floods) {
            return self.refused(refusal).await;
        }
        let result = match command::parse(text) {
            Ok(Command::Subscribe { channel, since }) => self.subscribe(channel, since).await,
            Ok(Command::Unsubscribe { channel }) => self.unsubscribe(channel).await,
            Ok(Command::Publish { channel, payload }) => self.publish(channel, payload).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(result) => result,
            Err(e) => self.send_text(&e.to_json()).await,
        }
    }

    /// Answers a command refused by a rate limit, or ends the session
    /// when the client has had too many refusals.
    async fn refused(&mut self, refusal: Refusal) -> Result<(), End> {
        match refusal {
            Refusal::Answer(e) => self.send_text(&e.to_json()).await,
            Refusal::Close(reason) => Err(End::Close(1008, reason)),
        }
    }

    async fn subscribe(
        &mut self,
        channel: ChannelName,
        since: Option<crate::protocol::channel::Since>,
    ) -> Result<Result<(), End>, CommandError> {
        if let Some(existing) = self.subscriptions.get(&channel) {
            let ack = subscribed_ack(&channel, existing.cursor, false, false);
            return Ok(self
                .send_text(&serde_json::to_vec(&ack).expect("json"))
                .await);
        }
        let max = self.gw.config.limits.max_subscriptions_per_connection;
        if self.subscriptions.len() >= max {
            return Err(CommandError::new(
                "too_many_subscriptions",
                format!("a connection may subscribe to at most {max} channels"),
            )
            .on(channel.as_str()));
        }
        self.authorize(&channel).await?;
        let limit = self.gw.config.history.size;
        let (subscription, history) = self
            .gw
            .subscribe(&channel, since, &self.queue, limit)
            .await
            .map_err(|e| {
                CommandError::new("bus_unavailable", e.to_string()).on(channel.as_str())
            })?;
        Ok(self.adopt(channel, subscription, history).await)
    }

    /// The channel's rule lets this client read it (keeps the earliest
    /// token expiry: the session ends then).
    async fn authorize(&mut self, channel: &ChannelName) -> Result<(), CommandError> {
        let grant = self
            .gw
            .auth
            .may_subscribe(
                channel,
                self.credentials.as_deref().unwrap_or(&NO_CREDENTIALS),
                self.client,
            )
            .await
            .map_err(|e| CommandError::new(e.code(), e.to_string()).on(channel.as_str()))?;
        self.expire_at(grant.expires);
        Ok(())
    }

    /// Closes the session at `at` at the latest (an earlier deadline
    /// already armed stays). A deadline the clock cannot reach is none.
    fn expire_at(&mut self, at: Option<SystemTime>) {
        let Some(at) = at else { return };
        let left = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let Some(deadline) = tokio::time::Instant::now().checked_add(left) else {
            return;
        };
        match &mut self.expiry {
            Some(armed) if armed.deadline() <= deadline => {}
            Some(armed) => armed.as_mut().reset(deadline),
            None => self.expiry = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    async fn unsubscribe(&mut self, channel: ChannelName) -> Result<Result<(), End>, CommandError> {
        if self.subscriptions.remove(&channel).is_none() {
            return Err(
                CommandError::new("not_subscribed", "not subscribed to this channel")
                    .on(channel.as_str()),
            );
        }
        let ack = serde_json::json!({"type": "unsubscribed", "channel": channel.as_str()});
        Ok(self
            .send_text(&serde_json::to_vec(&ack).expect("json"))
            .await)
    }

    async fn publish(
        &mut self,
        channel: ChannelName,
        payload: Payload,
    ) -> Result<Result<(), End>, CommandError> {
        if !self.gw.rules.resolve(channel.as_str()).allow_client_publish {
            return Err(
                CommandError::new("forbidden", "clients may not publish on this channel")
                    .on(channel.as_str()),
            );
        }
        let size = payload.to_json_bytes().len();
        let now = Instant::now();
        if let Some(guard) = self.guard.as_deref_mut() {
            match guard.publish(size, now, &self.gw.metrics.floods) {
                Ok(()) => {}
                Err(Refusal::Answer(e)) => return Err(e.on(channel.as_str())),
                Err(Refusal::Close(reason)) => return Ok(Err(End::Close(1008, reason))),
            }
        }
        // Only a client allowed to read a channel may write to it.
        self.authorize(&channel).await?;
        if let Err(cap) = self.gw.client_channels.admit(&channel, now) {
            self.gw.metrics.floods.commands_refused[Limit::ClientChannels as usize].inc();
            return Err(CommandError::new(
                "too_many_channels",
                format!(
                    "clients may publish on at most {} channels (limits.ws.max_client_channels); not published",
                    cap.0
                ),
            )
            .on(channel.as_str()));
        }
        let published = self.gw.bus.publish(&channel, &payload).await.map_err(|e| {
            CommandError::new("bus_unavailable", e.to_string()).on(channel.as_str())
        })?;
        self.gw
            .metrics
            .transport(Transport::WebSocket)
            .payload_in
            .inc_by(size as u64);
        let ack = serde_json::json!({"type": "published", "channel": channel.as_str(), "id": published.id});
        Ok(self
            .send_text(&serde_json::to_vec(&ack).expect("json"))
            .await)
    }

    async fn send_text(&mut self, json: &[u8]) -> Result<(), End> {
        self.write_frames(&[frame::encode_text(json)]).await
    }

    /// Writes the messages this client hasn't had yet, in one vectored write.
    async fn write_messages(&mut self, messages: &[Arc<Message>]) -> Result<(), End> {
        if !self.throttle.is_enabled() {
            return self.write_now(messages).await;
        }
        let mut batch = messages.to_vec();
        let metrics = self.gw.metrics.transport(Transport::WebSocket);
        self.throttle
            .admit(&self.gw.rules, &mut batch, Instant::now(), metrics);
        self.write_now(&batch).await
    }

    /// Writes the messages this client hasn't had yet, now (no throttle).
    async fn write_now(&mut self, messages: &[Arc<Message>]) -> Result<(), End> {
        // Allocated per batch rather than kept: this is the slow path (the
        // socket was full or the session was busy), and kept buffers would
        // be part of every idle connection's memory.
        let mut frames = Vec::with_capacity(messages.len());
        let mut fresh = Vec::with_capacity(messages.len());
        for msg in messages {
            // A message for a channel we just left may still be queued.
            let Some(sub) = self.subscriptions.get_mut(&msg.channel) else {
                continue;
            };
            match sub.cursor.step(msg) {
                Step::Duplicate => continue,
                Step::Next => {}
                Step::Restarted => frames.push(truncated_notice(msg)),
            }
            frames.push(msg.ws_frame().clone());
            fresh.push(msg.clone());
        }
        let result = if frames.is_empty() {
            Ok(())
        } else {
            let written = self.write_frames(&frames).await;
            if written.is_ok() {
                record_delivery(&self.gw.metrics, Transport::WebSocket, &fresh);
            }
            written
        };
        result
    }

    /// Writes whole frames. Gives up when the client accepts nothing for
    /// `write_timeout`, or when its queue overflows meanwhile (it is too
    /// slow: waiting longer only delays the disconnect).
    async fn write_frames(&mut self, frames: &[Bytes]) -> Result<(), End> {
        let stall = self.gw.config.websocket.write_timeout;
        let queue = self.queue.clone();
        let (gw, subscriptions) = (&self.gw, &self.subscriptions);
        let write = write_all_vectored(&mut self.writer, frames, stall);
        tokio::pin!(write);
        let mut lagging = false;
        loop {
            tokio::select! {
                // Includes the stall limit: no progress for write_timeout.
                result = &mut write => return result.map_err(|_| End::Drop),
                closed = queue.overflowed(), if !lagging => {
                    // Dropped for its output limit: no waiting for history.
                    if closed == QueueClosed::OutputLimit {
                        return Err(End::Drop);
                    }
                    lagging = true;
                }
                // Behind, and the socket takes nothing: once history can no
                // longer cover what this client has missed, waiting is
                // pointless. (A frame may be half written: no close frame.)
                _ = tokio::time::sleep(LAG_CHECK), if lagging => {
                    if let Some(missed) = beyond_history(gw, subscriptions) {
                        count_dropped(gw, missed);
                        return Err(End::Drop);
                    }
                }
            }
        }
    }

    /// The subscriber queue overflowed: the client fell behind by more than
    /// `limits.queue_length` messages. Catch it up from history and carry on;
    /// if history no longer reaches back to where it is, it has lost
    /// messages and is disconnected (1013).
    async fn catch_up(&mut self) -> Result<(), End> {
        if let Some(missed) = beyond_history(&self.gw, &self.subscriptions) {
            count_dropped(&self.gw, missed);
            return Err(slow_consumer());
        }
        let queue = SubscriberQueue::for_client(
            self.gw.config.limits.queue_length,
            Transport::WebSocket,
            &self.gw.output,
        );
        let channels: Vec<ChannelName> =
            self.subscriptions.iter().map(|(c, _)| c.clone()).collect();
        let mut backlog = Vec::new();
        for channel in channels {
            let cursor = self
                .subscriptions
                .get(&channel)
                .expect("listed above")
                .cursor;
            let (subscription, history) = self
                .gw
                .subscribe(
                    &channel,
                    Some(cursor.since()),
                    &queue,
                    self.gw.config.history.size,
                )
                .await
                .map_err(|e| End::Close(1011, format!("bus unavailable: {e}")))?;
            if history.truncated {
                count_dropped(
                    &self.gw,
                    self.gw
                        .bus
                        .hub()
                        .last_id(&channel)
                        .saturating_sub(cursor.id),
                );
                return Err(slow_consumer());
            }
            let entry = self.subscriptions.get_mut(&channel).expect("listed above");
            entry._subscription = subscription;
            backlog.extend(history.messages);
        }
        self.queue = queue;
        self.write_messages(&backlog).await
    }
}

/// How often a blocked writer that has fallen behind checks whether
/// history still covers it.
const LAG_CHECK: Duration = Duration::from_millis(250);

/// Messages a client has missed beyond what history still holds, if any:
/// then it can never catch up.
fn beyond_history(gw: &Gateway, subscriptions: &Subscriptions) -> Option<u64> {
    let hub = gw.bus.hub();
    let mut missed = 0;
    let mut hopeless = false;
    for (channel, sub) in subscriptions.iter() {
        let read = hub.read(channel, Some(sub.cursor.since()), 0);
        if read.truncated {
            hopeless = true;
        }
        missed += hub.last_id(channel).saturating_sub(sub.cursor.id);
    }
    hopeless.then_some(missed)
}

/// `{"type":"subscribed",…}`: where the client now is on `channel`, with
/// the cursor (`N-E`) to resume from.
fn subscribed_ack(
    channel: &ChannelName,
    at: Cursor,
    truncated: bool,
    conflated: bool,
) -> serde_json::Value {
    serde_json::json!({
        "type": "subscribed",
        "channel": channel.as_str(),
        "last_id": at.id,
        // null while the channel has no sequence yet.
        "epoch": (!at.epoch.is_none()).then(|| at.epoch.to_string()),
        "cursor": at.text(),
        "truncated": truncated,
        "conflated": conflated,
    })
}

/// `{"type":"truncated",…}`, sent before the first message of a new
/// sequence of `msg`'s channel: the bus lost the channel's data, ids start
/// again in `epoch`.
fn truncated_notice(msg: &Message) -> Bytes {
    let notice = serde_json::json!({
        "type": "truncated",
        "channel": msg.channel.as_str(),
        "epoch": msg.epoch.to_string(),
    });
    frame::encode_text(&serde_json::to_vec(&notice).expect("json"))
}

fn count_dropped(gw: &Gateway, missed: u64) {
    gw.metrics
        .transport(Transport::WebSocket)
        .dropped_slow_consumer
        .inc_by(missed);
}

fn slow_consumer() -> End {
    End::Close(1013, "slow consumer: message queue overflowed".into())
}

/// How much of what was written the peer has not acknowledged yet: lets a
/// blocked writer tell a slow reader (the queue drains) from a dead one.
pub trait SendProgress {
    /// Bytes in the socket's send queue, when known.
    fn unsent(&self) -> Option<u64>;
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
async fn write_all_vectored<W: AsyncWrite + SendProgress + Unpin>(
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
