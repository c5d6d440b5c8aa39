//! Parked long-polls: a held poll on the lean HTTP/1.1 path is answered by
//! the publisher itself, as WebSocket direct mode is (`bus::queue`), and
//! waits without a subscription or a queue of its own.
//!
//! The connection offers the poll handler a [`ParkOffer`] (a request
//! extension). A poll that must wait, of the common shape — no CORS
//! origin, no compression for this client, no deltas, a connection that
//! stays open — is listed on its channel as a one-shot waiter
//! ([`crate::bus::WaitingPoll`]; the hub's `polls` module), atomically
//! with the history read that found nothing new. The next batch recorded
//! on the channel is offered to it on a fan-out shard: its answer is the
//! WHOLE HTTP/1.1 answer (head and body) carrying the batch's first new
//! message, pre-encoded once per message and shared
//! ([`Message::poll_http_answer`]), with the head the lean path writes
//! for the same answer ([`crate::http::h1::encode_head`]), written with one
//! non-blocking `send()`. Messages after it stay for the client's next poll
//! (history), as on the task path (the answer's `last_id` is the message
//! written). The answer is counted as the task path counts it.
//!
//! The poll is handed back to the connection as a [`Parked`]: the
//! connection's task then only waits for its socket (the client's next
//! request, or its close), the poll's deadline, the gateway's shutdown, or
//! an event only it can handle — a message of a new sequence (the answer
//! says `truncated`), a message too large to pre-encode, a socket that took
//! none or only part of the answer, the channel's data gone. Then it lets
//! the poll go ([`Parked::finish`]) and answers as the task path does.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::StatusCode;
use parking_lot::Mutex;

use crate::bus::hub::Offered;
use crate::bus::{Parking, PollRegistration, WaitingPoll};
use crate::gateway::Gateway;
use crate::http::encoding::vary_on_encoding;
use crate::http::h1::{encode_head, Framing};
use crate::http::{json, Response};
use crate::metrics::{ConnectionGuard, DeliveryTally, PollResult};
use crate::net::deadlines::Deadline;
use crate::net::meter::ConnMeter;
use crate::net::socket::DirectSend;
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::compress::Coding;
use crate::protocol::error::ApiError;
use crate::protocol::{Cursor, Message, Step, Transport};
use crate::transport::delta::DeltaTrack;
use crate::transport::replay::CHUNK;

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

/// A parked poll as its channel lists it ([`WaitingPoll`]): the shard
/// that runs the next batch of the channel offers it the batch, and it
/// writes its whole answer to the socket itself (see the module doc).
struct Waiter {
    send: DirectSend,
    gw: Arc<Gateway>,
    /// The head variant: with `vary: Accept-Encoding` (compression on).
    vary: bool,
    /// Under this lock the publisher writes, and the connection lets the
    /// poll go ([`WaitState::Gone`]): once it has, nothing more is written
    /// to a socket the connection may close.
    state: Mutex<WaitState>,
    /// The connection's task, woken when it must act.
    waker: AtomicWaker,
}

enum WaitState {
    /// Listed; its gauges (set once the poll is parked).
    Waiting(Option<Held>),
    /// The publisher wrote the answer; the tail the socket did not take.
    Answered(Option<Bytes>),
    /// The connection must answer, with these messages (none: the data the
    /// poll waited on is gone, so the answer is at its cursor).
    Woken(Vec<Arc<Message>>),
    /// Let go by the connection.
    Gone,
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

impl WaitingPoll for Waiter {
    fn offer(
        &self,
        msgs: &[Arc<Message>],
        cursor: Cursor,
        tally: &mut DeliveryTally<'_>,
    ) -> Offered {
        let mut state = self.state.lock();
        if !matches!(*state, WaitState::Waiting(_)) {
            return Offered::Taken;
        }
        // A shared bus may offer what the poll's history read already had.
        let known = msgs
            .iter()
            .take_while(|m| m.epoch == cursor.epoch && m.id <= cursor.id)
            .count();
        let fresh = &msgs[known..];
        let Some(first) = fresh.first() else {
            return Offered::NotForIt;
        };
        let next = if first.epoch == cursor.epoch {
            cursor.id + 1
        } else {
            1
        };
        if first.id != next {
            // Not the next one (of the cursor's sequence, or the first of
            // a new one): never answered past a message the poll was not
            // offered. The connection answers at the cursor; the client's
            // next poll reads on from history.
            *state = WaitState::Woken(Vec::new());
            drop(state);
            self.waker.wake();
            return Offered::Taken;
        }
        // A new sequence (the answer says `truncated`) or a message too
        // large to pre-encode (streamed from its envelope instead, as
        // `longpoll::respond` does) is the connection's to answer.
        if first.epoch == cursor.epoch && first.envelope.len() < CHUNK {
            let vary = self.vary;
            let answer = first.poll_http_answer(vary as usize, |len| answer_head(vary, len));
            // An error (peer gone) is the connection's to find.
            let sent = self.send.try_send(answer).unwrap_or(0);
            if sent > 0 {
                // The answer's `last_id` is this message's: what follows
                // it is the client's next poll's, from history.
                tally.record(Transport::LongPoll, std::slice::from_ref(first));
                self.gw.metrics.poll_answered(PollResult::Messages);
                let rest = (sent < answer.len()).then(|| answer.slice(sent..));
                let partial = rest.is_some();
                *state = WaitState::Answered(rest);
                drop(state);
                if partial {
                    self.waker.wake();
                }
                return Offered::Taken;
            }
        }
        *state = WaitState::Woken(fresh.to_vec());
        drop(state);
        self.waker.wake();
        Offered::Taken
    }

    fn cancel(&self) -> bool {
        let mut state = self.state.lock();
        let waiting = matches!(*state, WaitState::Waiting(_));
        if waiting {
            *state = WaitState::Gone;
        }
        waiting
    }

    fn wake(&self) {
        let mut state = self.state.lock();
        if matches!(*state, WaitState::Waiting(_)) {
            *state = WaitState::Woken(Vec::new());
            drop(state);
            self.waker.wake();
        }
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
    waiter: Arc<Waiter>,
    /// Its place on the channel's list; left when the poll is let go while
    /// still listed.
    registration: Option<PollRegistration>,
    /// Where the client is: what an answer without messages says.
    cursor: Cursor,
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

/// Parks a poll that found nothing after `cursor` on the offering
/// connection (see the module doc), or answers it from what the bus has
/// after all. `None`: parked (the connection answers, or the publisher).
pub(super) async fn park(
    gw: &Arc<Gateway>,
    offer: &ParkOffer,
    channel: &ChannelName,
    cursor: Since,
    timeout: Duration,
    in_flight: &mut Option<ConnectionGuard>,
) -> Result<Option<Response>, ApiError> {
    let waiter = Arc::new(Waiter {
        send: DirectSend::new(offer.0.fd, offer.0.meter.clone()),
        gw: gw.clone(),
        vary: gw.config.compression.enabled,
        state: Mutex::new(WaitState::Waiting(None)),
        waker: AtomicWaker::new(),
    });
    let poll: Arc<dyn WaitingPoll> = waiter.clone();
    let max = gw.config.longpoll.max_messages;
    let (registration, cursor) = match gw.park_poll(channel, cursor, &poll, max).await? {
        Parking::Parked(registration, cursor) => (Some(registration), cursor),
        Parking::Taken(cursor) => (None, cursor),
        Parking::Read(read) => {
            let at = Cursor::new(read.last_id, read.epoch);
            let resp = super::longpoll::respond(
                gw,
                &read.messages,
                at,
                read.truncated,
                read.conflated,
                None,
                None,
            )?;
            return Ok(Some(resp));
        }
    };
    if let WaitState::Waiting(held) = &mut *waiter.state.lock() {
        *held = Some(Held::new(gw, in_flight.take()));
    }
    let parked = Parked {
        gw: gw.clone(),
        waiter,
        registration,
        cursor,
        deadline: Deadline::after(timeout),
    };
    *offer.0.parked.lock() = Some(parked);
    Ok(None)
}

impl Parked {
    /// Ready when the connection's task must act: the deadline passed, or
    /// the publisher left it the answer (or its tail) to write.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.waiter.waker.register(cx.waker());
        match &*self.waiter.state.lock() {
            WaitState::Answered(Some(_)) | WaitState::Woken(_) | WaitState::Gone => {
                return Poll::Ready(())
            }
            WaitState::Waiting(_) | WaitState::Answered(None) => {}
        }
        self.deadline.poll_due(cx)
    }

    /// The publisher wrote (some of) the answer.
    fn answered(&self) -> bool {
        matches!(*self.waiter.state.lock(), WaitState::Answered(_))
    }

    /// Lets the poll go — the publisher writes nothing more — and leaves
    /// the channel's list if it is still on it; returns what it was.
    fn let_go(&mut self) -> WaitState {
        let was = std::mem::replace(&mut *self.waiter.state.lock(), WaitState::Gone);
        if let Some(registration) = self.registration.take() {
            if matches!(was, WaitState::Waiting(_)) {
                drop(registration);
            } else {
                // The batch or the reset that took it off the list did.
                registration.taken();
            }
        }
        was
    }

    /// Says what is left to do: the tail of the publisher's answer, or the
    /// whole answer (what the publisher left, or none at the deadline or
    /// shutdown) as the task path gives it.
    fn finish(&mut self) -> Finished {
        let mut drained = match self.let_go() {
            WaitState::Answered(rest) => return Finished::Answered(rest),
            WaitState::Woken(drained) => drained,
            WaitState::Waiting(_) | WaitState::Gone => Vec::new(),
        };
        let answer = answer_drained(&self.gw, &mut drained, self.cursor, (None, None));
        Finished::Respond(answer.unwrap_or_else(|e| crate::http::logged_error(&e)))
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        // Publishers must not write to the socket once the connection may
        // close it.
        self.let_go();
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
