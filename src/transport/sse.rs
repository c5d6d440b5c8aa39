//! Server-sent events: `GET {prefix}/sse/{channel}`, resumable with
//! `Last-Event-ID` (what browsers send on reconnect) or `?since=`.
//!
//! The response body *is* the subscriber: hyper polls [`SseBody`], which
//! drains the subscriber queue directly, so an SSE stream costs no task or
//! channel of its own.
//!
//! The replayed history is written as the socket drains, a chunk at a time,
//! from the messages' shared envelopes ([`Replay`]), never assembled whole;
//! live messages queued meanwhile count against the client's output limits
//! ([`crate::net::output`]).

mod events;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::delta::DeltaTrack;
use crate::bus::{HistoryRead, QueueClosed, SubscriberQueue, Subscription};

use crate::config::ChannelRules;
use crate::gateway::Gateway;
use crate::http::encoding::{set_content_encoding, vary_on_encoding, Compression, ANSWER_CODINGS};
use crate::http::{Body, BoxError, Request, Response};
use crate::metrics::Metrics;
use crate::metrics::{record_delivery, ConnectionGuard};
use crate::net::meter::ConnMeter;
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::error::ApiError;
use crate::protocol::Message;
use crate::protocol::{Cursor, Step, Transport};
use crate::transport::longpoll_park::ParkOffer;
use crate::transport::replay::{Framing, Replay};
use crate::transport::sse_compressed::{wire, SseEvent};
use crate::transport::sse_direct::DirectLease;
use crate::transport::stitch::Stitcher;
use crate::transport::throttle::Throttle;

/// Most messages written in one chunk.
const BATCH: usize = 256;

/// Handles `GET {prefix}/sse/{channel}`.
pub async fn handle(
    gw: &Arc<Gateway>,
    req: &Request,
    channel: &str,
    peer: std::net::SocketAddr,
) -> Result<Response, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    let channel = ChannelName::new(channel)?;
    gw.auth.check_origin(req.headers())?;
    let grant = gw
        .auth
        .may_subscribe_request(
            &channel,
            req.headers(),
            req.uri().query(),
            gw.ip_limits.client_ip(peer.ip(), req.headers()),
        )
        .await?;
    super::admit(gw, Transport::Sse)?;
    let since = super::params::sse_since(req.headers().get("last-event-id"), req.uri().query())?;
    if gw.shutdown.is_cancelled() {
        return Err(gw.shutting_down());
    }
    let queue =
        SubscriberQueue::for_client(gw.config.limits.queue_length, Transport::Sse, &gw.output);
    let (subscription, history) = gw
        .subscribe(&channel, since, &queue, gw.config.history.size)
        .await?;
    let compression = Compression::new(&gw.config.compression);
    let coding = compression.accepted(req.headers(), &ANSWER_CODINGS);
    let mut body = SseBody::new(gw, channel.clone(), since, queue, subscription, history);
    body.gzip = coding.map(|c| Stitcher::new(c, compression, gw.metrics.clone(), Transport::Sse));
    if super::delta::wants_delta(req.uri().query()) {
        body.delta = Some(DeltaTrack::default());
    }
    let plain = body.gzip.is_none() && body.delta.is_none() && !body.throttle.is_enabled();
    if let (true, Some(offer)) = (plain, req.extensions().get::<ParkOffer>()) {
        // The lean path's socket: the publisher may write to it.
        body.direct = Some(DirectLease::new(
            offer.direct_send(),
            body.queue.clone(),
            channel,
        ));
    }
    if let Some(expires) = grant.expires {
        // The stream ends when the subscriber token does.
        let left = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        body.token_expiry = Some(Box::pin(tokio::time::sleep(left)));
    }
    let mut resp = hyper::Response::new(Body::stream(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if compression.enabled {
        vary_on_encoding(h);
    }
    if let Some(coding) = coding {
        set_content_encoding(h, coding);
    }
    super::cors::cors(gw, req.headers(), resp.headers_mut());
    Ok(resp)
}

/// An event stream fed by one subscription.
pub struct SseBody {
    metrics: Arc<Metrics>,
    queue: Arc<SubscriberQueue>,
    _subscription: Subscription,
    _connection: ConnectionGuard,
    cursor: Cursor,
    /// `retry:`, any truncation notice and the replayed history.
    prelude: Option<(Bytes, Vec<Arc<Message>>)>,
    /// The prelude being written, chunk by chunk.
    replay: Option<Box<Replay>>,
    keepalive_every: Duration,
    keepalive: Pin<Box<tokio::time::Sleep>>,
    /// When the last chunk went out. The keepalive timer is re-armed from
    /// it when it fires, not on every event: moving a timer costs more
    /// than the rest of an event's bookkeeping.
    last_sent: tokio::time::Instant,
    /// Scratch for the events of one chunk, kept so a delivery allocates
    /// nothing.
    fresh: Vec<Arc<Message>>,
    /// Scratch for the events of `fresh` (whole or delta), same reason.
    events: Vec<SseEvent>,
    /// Set when the client asked for deltas (`?delta=1`).
    delta: Option<DeltaTrack>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The operator's "disconnect everyone" (admin `POST /disconnect`).
    kick: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Sent as `retry:` when the gateway ends the stream (drain, operator
    /// disconnect): spread over the reconnect window.
    farewell_retry: Duration,
    /// Set when reading needed a token: the stream ends when it expires.
    token_expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    batch: Vec<Arc<Message>>,
    ended: bool,
    /// `conflate_interval` on state channels, and its timer.
    throttle: Throttle,
    throttle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    rules: ChannelRules,
    /// Set when the stream is compressed, gzip or brotli ([`Stitcher`]).
    gzip: Option<Stitcher>,
    /// Set on a plain stream of the lean path: the socket the publisher
    /// may write to while the stream is idle ([`crate::transport::sse_direct`]).
    /// It takes direct mode back when dropped, and the connection drops
    /// the body before it closes the socket.
    direct: Option<DirectLease>,
    /// A chunk was yielded: the response head is on the wire once the
    /// body is polled again.
    yielded: bool,
    /// The last frame yielded is already chunk-framed (the unsent tail of
    /// a chunk the publisher wrote in part).
    prechunked: bool,
}

impl SseBody {
    fn new(
        gw: &Arc<Gateway>,
        channel: ChannelName,
        since: Option<Since>,
        queue: Arc<SubscriberQueue>,
        subscription: Subscription,
        history: HistoryRead,
    ) -> SseBody {
        let mut head = BytesMut::new();
        head.put_slice(format!("retry: {}\n\n", gw.config.sse.retry.as_millis()).as_bytes());
        if history.truncated || history.conflated {
            let event = if history.truncated {
                "truncated"
            } else {
                "conflated"
            };
            let data =
                serde_json::json!({"channel": channel.as_str(), "since": since.map(|s| s.id)});
            head.put_slice(format!("event: {event}\ndata: {data}\n\n").as_bytes());
        }
        let start = history
            .messages
            .first()
            .map(|m| m.id - 1)
            .unwrap_or(history.last_id);
        let keepalive_every = gw.config.sse.keepalive_interval;
        SseBody {
            metrics: gw.metrics.clone(),
            queue,
            _subscription: subscription,
            _connection: ConnectionGuard::new(&gw.metrics, Transport::Sse),
            cursor: Cursor::new(start, history.epoch),
            prelude: Some((head.freeze(), history.messages)),
            replay: None,
            keepalive_every,
            keepalive: Box::pin(tokio::time::sleep(keepalive_every)),
            last_sent: tokio::time::Instant::now(),
            fresh: Vec::new(),
            events: Vec::new(),
            delta: None,
            shutdown: Box::pin(gw.shutdown.clone().cancelled_owned()),
            kick: Box::pin(gw.kick_token().cancelled_owned()),
            token_expiry: None,
            farewell_retry: gw.reconnect_delay(),
            batch: Vec::with_capacity(BATCH),
            ended: false,
            throttle: Throttle::new(&gw.rules),
            throttle_timer: None,
            rules: gw.rules.clone(),
            gzip: None,
            direct: None,
            yielded: false,
            prechunked: false,
        }
    }

    /// Lets the output reaper abort the connection of a dropped client
    /// (the stream's output account is made now for it).
    pub fn attach_meter(&self, meter: &Arc<ConnMeter>) {
        if let Some(account) = self.queue.output() {
            account.attach_meter(meter);
        }
    }

    /// The prelude as a [`Replay`]: the events of the history this client
    /// may have (throttled channels' extra updates are held), counted as
    /// delivered now.
    fn start_replay(&mut self, head: Bytes, mut history: Vec<Arc<Message>>) -> Replay {
        if self.throttle.is_enabled() {
            self.hold_throttled(&mut history);
        }
        let cursor = &mut self.cursor;
        // The history is of the cursor's own sequence (it starts in the
        // read's epoch), so no message here is a restart.
        history.retain(|m| cursor.step(m) != Step::Duplicate);
        record_delivery(&self.metrics, Transport::Sse, &history);
        if let Some(delta) = &mut self.delta {
            // Replayed whole: the client's first value after a (re)connect.
            for m in &history {
                delta.sent_whole(m, Transport::Sse, &self.metrics.delta);
            }
        }
        Replay::new(Framing::SseEvents, head, history, Bytes::new())
    }

    /// A chunk is going out: the keepalive counts from now.
    fn note_sent(&mut self) {
        self.last_sent = tokio::time::Instant::now();
    }

    /// True when the stream has been silent for a keepalive interval. The
    /// timer is only moved here, once per interval at most.
    fn poll_keepalive_due(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.keepalive.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last_sent + self.keepalive_every;
            if tokio::time::Instant::now() >= due {
                return true;
            }
            // Something went out since the timer was set: wait the rest.
            self.keepalive.as_mut().reset(due);
        }
    }
}

impl crate::http::StreamBody for SseBody {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        HttpBody::poll_frame(self, cx)
    }

    fn remaining(&self) -> Option<usize> {
        None
    }

    fn attach_meter(&self, meter: &Arc<ConnMeter>) {
        SseBody::attach_meter(self, meter)
    }

    fn watch_stalls(&self) {
        if let Some(account) = self.queue.output() {
            account.watch_stalls();
        }
    }

    fn prechunked(&self) -> bool {
        self.prechunked
    }
}

impl HttpBody for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    /// The stream's chunks; a compressed stream's trailer after the last.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.prechunked = false;
        match this.poll_chunk(cx) {
            Poll::Ready(Some(chunk)) => {
                this.yielded = true;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(None) => {
                this.ended = true;
                let tail = this.gzip.as_mut().and_then(Stitcher::finish);
                Poll::Ready(tail.map(|t| Ok(Frame::data(t))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.gzip.as_ref().is_none_or(Stitcher::is_finished)
    }
}

impl SseBody {
    /// The stream's next chunk (compressed when the stream is), `None` at
    /// its end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self;
        if this.ended {
            return Poll::Ready(None);
        }
        // Whatever woke the stream, the task writes next: the socket is
        // taken back from the publisher first.
        if let Some(direct) = this.direct.as_mut() {
            if let Some(tail) = direct.take_back(&mut this.cursor, &mut this.last_sent) {
                this.prechunked = true;
                return Poll::Ready(Some(tail));
            }
        }
        if let Some((head, history)) = this.prelude.take() {
            this.replay = Some(Box::new(this.start_replay(head, history)));
        }
        // The replay goes first, as the socket takes it (compressed from
        // the messages' shared pieces on a compressed stream).
        if let Some(replay) = this.replay.as_mut() {
            let chunk = match this.gzip.as_mut() {
                Some(stitcher) => replay.next_coded(stitcher),
                None => replay.next_chunk(),
            };
            match chunk {
                Some(chunk) => {
                    this.note_sent();
                    return Poll::Ready(Some(chunk));
                }
                None => this.replay = None,
            }
        }
        let expired = this
            .token_expiry
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if expired {
            this.ended = true;
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() || this.kick.as_mut().poll(cx).is_ready() {
            // Ending the stream makes the browser reconnect (to another
            // node, or this one once it is back) after `retry`: a delay
            // spread over the reconnect window, so they don't all come at once.
            this.ended = true;
            let retry = format!("retry: {}\n\n", this.farewell_retry.as_millis().max(1));
            return Poll::Ready(Some(wire(&mut this.gzip, Bytes::from(retry))));
        }
        if let Poll::Ready(chunk) = this.poll_queue(cx) {
            return Poll::Ready(chunk);
        }
        if let Some(chunk) = this.poll_throttled(cx) {
            this.note_sent();
            return Poll::Ready(Some(chunk));
        }
        if this.poll_keepalive_due(cx) {
            this.note_sent();
            let next = this.last_sent + this.keepalive_every;
            this.keepalive.as_mut().reset(next);
            let keepalive = Bytes::from_static(b":\n\n");
            return Poll::Ready(Some(wire(&mut this.gzip, keepalive)));
        }
        // Idle and live (the replay and the head written): the publisher
        // may write the next events itself. Refused when something was
        // queued meanwhile; its push woke the stream.
        if let (Some(direct), true) = (this.direct.as_mut(), this.yielded) {
            if this.replay.is_none() {
                direct.lend(this.cursor);
            }
        }
        Poll::Pending
    }

    /// The next chunk of what is queued (`None`: the queue closed, the
    /// stream ends); pending when nothing is.
    fn poll_queue(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self;
        loop {
            let queue = this.queue.clone();
            match queue.poll_drain(cx, &mut this.batch, BATCH) {
                Poll::Ready(Ok(())) => {
                    let batch = std::mem::take(&mut this.batch);
                    let chunk = this.encode(&batch);
                    this.batch = batch;
                    this.batch.clear();
                    if let Some(chunk) = chunk {
                        this.note_sent();
                        return Poll::Ready(Some(chunk));
                    }
                }
                Poll::Ready(Err(reason)) => {
                    // A slow consumer's stream ends; the browser reconnects
                    // with Last-Event-ID and resumes from history.
                    if reason == QueueClosed::Overflow {
                        this.metrics
                            .transport(Transport::Sse)
                            .dropped_slow_consumer
                            .inc_by(this.queue.overflow_dropped() as u64);
                    }
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
