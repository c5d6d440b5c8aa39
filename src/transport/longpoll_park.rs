//! Parked long-polls: a held poll on the lean HTTP/1.1 path is answered by
//! the publisher itself, as WebSocket direct mode is (`bus::queue`).
//!
//! The connection offers the poll handler a [`ParkOffer`] (a request
//! extension). A poll that must wait, of the common shape — no CORS
//! origin, no compression for this client, no deltas, a connection that
//! stays open — lends its one-off queue a sink whose encoding of a message
//! is the WHOLE HTTP/1.1 answer (head and body) carrying that message,
//! pre-encoded once per message and shared
//! ([`Message::poll_http_answer`]), with the head the lean path writes
//! for the same answer ([`crate::http::h1::encode_head`]). The publisher
//! writes it with one non-blocking `send()` and the poll is answered: the
//! sink takes nothing more, and messages after it stay for the client's
//! next poll (history), as on the task path (the answer's `last_id` is the
//! message written). The answer is counted as the task path counts it.
//!
//! The poll is handed back to the connection as a [`Parked`]: the
//! connection's task then only waits for its socket (the client's next
//! request, or its close), the poll's deadline, the gateway's shutdown, or
//! an event only it can handle — a message of a new sequence (the answer
//! says `truncated`), a message too large to pre-encode, an answer the
//! socket took only in part. Then it takes direct mode back
//! ([`Parked::finish`]) and answers as the task path does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::StatusCode;
use parking_lot::Mutex;

use crate::bus::{DirectReport, DirectSink, SubscriberQueue, Subscription};
use crate::gateway::Gateway;
use crate::http::encoding::vary_on_encoding;
use crate::http::h1::{encode_head, Framing};
use crate::http::{json, Response};
use crate::metrics::{ConnectionGuard, PollResult};
use crate::net::deadlines::Deadline;
use crate::net::meter::ConnMeter;
use crate::net::socket::DirectSend;
use crate::protocol::channel::ChannelName;
use crate::protocol::compress::Coding;
use crate::protocol::error::ApiError;
use crate::protocol::{Cursor, Message, Step};
use crate::transport::delta::DeltaTrack;

/// What a connection that can hold polls itself offers the poll handler,
/// and where the handler leaves the poll it parked. One per connection.
#[derive(Clone)]
pub struct ParkOffer(Arc<Offer>);

struct Offer {
    parked: Mutex<Option<Parked>>,
    /// The connection's socket, as publishers reach it.
    fd: std::os::fd::RawFd,
    meter: Arc<ConnMeter>,
}

impl ParkOffer {
    /// Offers the socket `fd`, which the connection keeps open while a
    /// poll is parked (it takes the poll back with [`take`](Self::take)
    /// and drops it before closing the socket).
    pub fn new(fd: std::os::fd::RawFd, meter: Arc<ConnMeter>) -> ParkOffer {
        ParkOffer(Arc::new(Offer {
            parked: Mutex::new(None),
            fd,
            meter,
        }))
    }

    /// A sender on the connection's socket for a handler that streams its
    /// answer through the publisher (`transport::sse_direct`); the
    /// connection drops the response before it closes the socket.
    pub fn direct_send(&self) -> DirectSend {
        DirectSend::new(self.0.fd, self.0.meter.clone())
    }

    /// Whether the handler parked a poll here.
    ///
    /// The parked poll stays in the offer (which the connection holds
    /// anyway) rather than moving into the connection's future: every
    /// move of it there would keep a copy's storage in the task, which
    /// every parked poll pays for.
    pub fn is_parked(&self) -> bool {
        self.0.parked.lock().is_some()
    }

    /// The parked poll's [`Parked::poll_event`]; ready at once if there
    /// is none.
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.parked.lock().as_mut() {
            Some(parked) => parked.poll_event(cx),
            None => Poll::Ready(()),
        }
    }

    /// Whether the publisher wrote (some of) the parked poll's answer.
    pub fn answered(&self) -> bool {
        self.0.parked.lock().as_ref().is_some_and(Parked::answered)
    }

    /// Finishes the parked poll and lets it go ([`Parked::finish`]); the
    /// publishers no longer reach the socket once this returns.
    pub fn finish(&self) -> Option<Finished> {
        let mut parked = self.0.parked.lock().take()?;
        Some(parked.finish())
    }
}

/// The sink a parked poll lends its queue: takes one message, writes its
/// whole answer (see the module doc).
struct PollSink {
    send: DirectSend,
    gw: Arc<Gateway>,
    /// The head variant: with `vary: Accept-Encoding` (compression on).
    vary: bool,
    /// A message was admitted: nothing more is.
    taken: AtomicBool,
    /// Some of the answer went out.
    answered: AtomicBool,
    /// The answer went out in part: the task must finish it.
    partial: AtomicBool,
    /// The connection's task, woken for a partial answer.
    waker: AtomicWaker,
    /// The poll's in-flight and parked gauges, let go once answered.
    in_flight: Mutex<Option<Held>>,
}

/// The head the lean path writes for a plain single-message answer of
/// `len` bytes (`longpoll::respond` without CORS and compression).
fn answer_head(vary: bool, len: usize) -> Bytes {
    let mut resp = json(StatusCode::OK, Bytes::new());
    if vary {
        vary_on_encoding(resp.headers_mut());
    }
    encode_head(
        StatusCode::OK,
        resp.headers(),
        Framing::Length(len as u64),
        false,
    )
}

impl DirectSink for PollSink {
    fn admit(&self, msg: &Message) -> bool {
        // A larger answer is streamed from the shared envelope by the task
        // instead of cached as a second copy (as `longpoll::respond` does).
        msg.envelope.len() < crate::transport::replay::CHUNK
            && !self.taken.swap(true, Ordering::Relaxed)
    }

    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes {
        let vary = self.vary;
        msg.poll_http_answer(vary as usize, |len| answer_head(vary, len))
    }

    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let Some(answer) = bufs.first() else {
            return Ok(0);
        };
        let n = self.send.try_send(answer)?;
        if n > 0 {
            self.answered.store(true, Ordering::Release);
        }
        if n < answer.len() {
            self.partial.store(true, Ordering::Release);
            self.waker.wake();
        }
        Ok(n)
    }

    fn delivered(&self, _msgs: &[Arc<Message>]) {
        // Deliveries are counted by the writer's tally.
        self.gw.metrics.poll_answered(PollResult::Messages);
        self.in_flight.lock().take();
    }
}

/// What a parked poll holds until it is answered: the in-flight gauge
/// (`pollbridge_connections{transport="longpoll"}`) and its place in
/// `pollbridge_longpoll_parked_polls`.
struct Held {
    _in_flight: Option<ConnectionGuard>,
    parked: prometheus::IntGauge,
}

impl Held {
    fn new(gw: &Gateway, in_flight: Option<ConnectionGuard>) -> Held {
        let parked = gw.metrics.longpoll_parked.clone();
        parked.inc();
        Held {
            _in_flight: in_flight,
            parked,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.parked.dec();
    }
}

/// A poll parked on its connection (see the module doc).
struct Parked {
    gw: Arc<Gateway>,
    queue: Arc<SubscriberQueue>,
    _subscription: Subscription,
    sink: Arc<PollSink>,
    /// Where the client is: what an answer without messages says.
    cursor: Cursor,
    report: DirectReport,
    drained: Vec<Arc<Message>>,
    /// The poll's timeout, on the shared wheel (`net::deadlines`).
    deadline: Deadline,
}

/// How the connection finishes a parked poll.
pub enum Finished {
    /// The publisher wrote the answer; the unsent tail of it, if any, is
    /// the connection's to write.
    Answered(Option<Bytes>),
    /// The connection answers.
    Respond(Response),
}

/// What [`park`] needs of the poll.
pub(super) struct ToPark {
    pub channel: ChannelName,
    pub queue: Arc<SubscriberQueue>,
    pub subscription: Subscription,
    pub cursor: Cursor,
    pub timeout: Duration,
    pub in_flight: Option<ConnectionGuard>,
}

/// Parks the poll on the offering connection (see the module doc).
pub(super) fn park(gw: &Arc<Gateway>, offer: &ParkOffer, poll: ToPark) {
    let sink = Arc::new(PollSink {
        send: DirectSend::new(offer.0.fd, offer.0.meter.clone()),
        gw: gw.clone(),
        vary: gw.config.compression.enabled,
        taken: AtomicBool::new(false),
        answered: AtomicBool::new(false),
        partial: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        in_flight: Mutex::new(Some(Held::new(gw, poll.in_flight))),
    });
    let mut report = DirectReport::default();
    report
        .written
        .push((poll.channel, poll.cursor.epoch, poll.cursor.id));
    let dyn_sink: Arc<dyn DirectSink> = sink.clone();
    // Refused if something was queued since the subscription: then the
    // task answers it at once (`poll_event` is ready).
    poll.queue.enter_direct(&dyn_sink, &mut report);
    let parked = Parked {
        gw: gw.clone(),
        queue: poll.queue,
        _subscription: poll.subscription,
        sink,
        cursor: poll.cursor,
        report,
        drained: Vec::new(),
        deadline: Deadline::after(poll.timeout),
    };
    *offer.0.parked.lock() = Some(parked);
}

impl Parked {
    /// Ready when the connection's task must act: the deadline passed,
    /// something was queued (or the queue closed), or the answer went out
    /// in part.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sink.waker.register(cx.waker());
        if self.sink.partial.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let max = self.gw.config.longpoll.max_messages;
        if self.queue.poll_drain(cx, &mut self.drained, max).is_ready() {
            return Poll::Ready(());
        }
        self.deadline.poll_due(cx)
    }

    /// The publisher wrote (some of) the answer.
    fn answered(&self) -> bool {
        self.sink.answered.load(Ordering::Acquire)
    }

    /// Takes direct mode back and says what is left to do: the tail of
    /// the publisher's answer, or the whole answer (what was queued, or
    /// none at the deadline or shutdown) as the task path gives it.
    fn finish(&mut self) -> Finished {
        self.queue.leave_direct(&mut self.report);
        if self.answered() {
            return Finished::Answered(self.report.take_remainder());
        }
        let max = self.gw.config.longpoll.max_messages;
        let _ = self.queue.try_drain(&mut self.drained, max);
        let in_flight = self.sink.in_flight.lock().take();
        let answer = answer_drained(&self.gw, &mut self.drained, self.cursor, (None, None));
        drop(in_flight);
        Finished::Respond(answer.unwrap_or_else(|e| crate::http::logged_error(&e)))
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        // Publishers must not write to the socket once the connection may
        // close it.
        self.queue.leave_direct(&mut self.report);
    }
}

/// The answer to a held poll from what its queue held (`drained`, left
/// filtered): a shared bus may hand it live copies of what history
/// already had, and a message of another epoch starts a new sequence (the
/// answer says `truncated`). No message: the answer at `cursor`.
pub(super) fn answer_drained(
    gw: &Gateway,
    drained: &mut Vec<Arc<Message>>,
    cursor: Cursor,
    (accepted, delta): (Option<Coding>, Option<DeltaTrack>),
) -> Result<Response, ApiError> {
    let mut seen = cursor;
    let mut truncated = false;
    let mut kept = 0;
    for i in 0..drained.len() {
        match seen.step(&drained[i]) {
            Step::Duplicate => continue,
            Step::Next => {}
            // What came before belongs to the lost sequence.
            Step::Restarted => (truncated, kept) = (true, 0),
        }
        drained.swap(kept, i);
        kept += 1;
    }
    drained.truncate(kept);
    super::longpoll::respond(gw, drained, seen, truncated, false, accepted, delta)
}
