//! Long-poll and plain Ajax polling: `GET {prefix}/poll/{channel}?since=&timeout=`.
//!
//! Stateless between requests (the cursor is the client's `since`), so any
//! node can answer any poll and no sticky sessions are needed. A poll with
//! nothing new is held on a one-off subscription until a message arrives,
//! its timeout ends or the gateway shuts down.
//!
//! Every delivery is one poll, so the per-poll path is kept lean: the query
//! is read without allocating (names and values are borrowed unless they
//! need decoding), credentials are only gathered for channels that need
//! them, a poll whose cursor is behind is answered from history without
//! subscribing, and the answer to a single new message — what a fan-out's
//! polls all get — is encoded once per message and shared.
//!
//! An answer holds as many whole messages as fit in
//! `longpoll.max_answer_bytes` (at least one); its `last_id` is the last one
//! included, so the client's next poll pages on from there. A large answer
//! is not assembled: it is produced chunk by chunk from the messages'
//! shared envelopes as the socket drains ([`crate::transport::replay`]),
//! and counted against the gateway's output budget while it is unsent.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::cors::{allowed_origin, cors_headers, preflight};
use super::delta::DeltaTrack;
use crate::protocol::poll_answer::{encode_answer, put_closing};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::bus::{Bus, SubscriberQueue};
use crate::gateway::Gateway;
use crate::http::encoding::{
    compressed_body, set_content_encoding, vary_on_encoding, Compression, ANSWER_CODINGS,
};
use crate::http::{json, Body, Request, Response};
use crate::metrics::PollResult;
use crate::metrics::{record_delivery, ConnectionGuard};
use crate::migration;
use crate::net::output::standalone_account;
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::compress::{self, Coding};
use crate::protocol::error::ApiError;
use crate::protocol::{Cursor, Transport};
use crate::protocol::{Epoch, Message};
use crate::transport::replay::{self, Framing, Replay, ReplayBody};
use crate::transport::stitch::Stitcher;

use super::longpoll_park::ParkOffer;

/// Per worker thread scratch space, so the common poll allocates nothing of
/// its own. Only borrowed inside synchronous sections, never across an
/// `.await`.
struct Scratch {
    /// The channel of the last poll on this thread (already validated):
    /// polls of the same channel share its name instead of allocating one.
    channel: Option<ChannelName>,
    /// Where a held poll's queue is drained into, then emptied.
    drained: Vec<Arc<Message>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            channel: None,
            drained: Vec::new(),
        })
    };
}

/// The channel name, validated once per run of polls of the same channel
/// on this thread.
fn channel_name(name: &str) -> Result<ChannelName, ApiError> {
    SCRATCH.with_borrow_mut(|scratch| {
        if let Some(last) = &scratch.channel {
            if last.as_str() == name {
                return Ok(last.clone());
            }
        }
        let channel = ChannelName::new(name)?;
        scratch.channel = Some(channel.clone());
        Ok(channel)
    })
}

/// Handles one poll.
///
/// Once the poll is admitted, the request's URI and headers are let go
/// (replaced by empty ones): they are slices of the 8 KiB read buffer the
/// request came in, which hyper has already replaced with a fresh one for
/// the connection's next read, so while any of them lives a held poll keeps
/// two. What the answer still needs (the channel, cursor, timeout and CORS
/// origin) is taken out first. The rest of the request (method, body,
/// extensions) is left as it was.
pub async fn handle(
    gw: &Arc<Gateway>,
    req: &mut Request,
    channel: &str,
    peer: std::net::SocketAddr,
) -> Result<Response, ApiError> {
    let park = req.extensions_mut().remove::<ParkOffer>();
    let mut poll = match admit(gw, req, channel, peer).await {
        Ok(Admitted::Answered(resp)) => return Ok(resp),
        Ok(Admitted::Poll(poll)) => poll,
        Err(e) => return Ok(refused(&e, allowed_origin(gw, req.headers()))),
    };
    *req.uri_mut() = http::Uri::default();
    *req.headers_mut() = HeaderMap::new();
    match poll.answer(gw, park).await {
        Ok(resp) => Ok(resp),
        Err(e) => Ok(refused(&e, poll.origin.as_ref())),
    }
}

/// A refused poll's answer, with the CORS headers an allowed origin gets:
/// a page on another origin can read a 429's or 503's `Retry-After` only
/// if it may read the answer.
fn refused(e: &ApiError, origin: Option<&HeaderValue>) -> Response {
    let mut resp = crate::http::logged_error(e);
    if let Some(origin) = origin {
        cors_headers(origin.clone(), resp.headers_mut());
    }
    resp
}

/// What [`admit`] decided.
enum Admitted {
    /// Answered without polling (a CORS preflight).
    Answered(Response),
    /// A poll to answer.
    Poll(AdmittedPoll),
}

/// An admitted poll: all it needs of its request.
struct AdmittedPoll {
    channel: ChannelName,
    since: Option<Since>,
    timeout: Duration,
    /// The request's origin when it is allowed, echoed in the CORS headers.
    origin: Option<HeaderValue>,
    /// The coding the client's `Accept-Encoding` prefers, if compression is on.
    accepted: Option<Coding>,
    /// `?delta=1` with a cursor naming its epoch: the client holds the
    /// value at `since` and may get a delta against it.
    delta: Option<DeltaTrack>,
    /// The in-flight gauge, handed to a parked poll.
    in_flight: Option<ConnectionGuard>,
}

/// The checks, limits and bookkeeping of a poll before it reads the
/// channel, in the order they have always run.
async fn admit(
    gw: &Arc<Gateway>,
    req: &Request,
    channel: &str,
    peer: std::net::SocketAddr,
) -> Result<Admitted, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(Admitted::Answered(preflight(gw, req.headers())));
    }
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    let channel = channel_name(channel)?;
    let lp = &gw.config.longpoll;
    let query = super::params::poll_params(req.uri().query(), lp.default_timeout, lp.max_timeout)?;
    let client = gw.ip_limits.client_ip(peer.ip(), req.headers());
    gw.ip_limits
        .allow_poll(client)
        .map_err(|limited| ApiError::RateLimited(limited.retry_after))?;
    gw.auth.check_origin(req.headers())?;
    gw.auth
        .may_subscribe_request(&channel, req.headers(), req.uri().query(), client)
        .await?;
    if gw.shutdown.is_cancelled() {
        return Err(gw.shutting_down());
    }
    let in_flight = ConnectionGuard::new(&gw.metrics, Transport::LongPoll);
    if let Some(reason) = &query.fallback {
        gw.metrics.fallback(reason);
    }
    gw.migration.record_poll(
        "longpoll",
        channel.as_str(),
        migration::client_key(client, req.headers(), query.client_id.as_deref()),
        migration::referer_path(req.headers()).as_deref(),
    );
    // A copy, not a clone: a clone would share the read buffer.
    let origin = allowed_origin(gw, req.headers()).map(|origin| {
        HeaderValue::from_bytes(origin.as_bytes()).unwrap_or_else(|_| origin.clone())
    });
    Ok(Admitted::Poll(AdmittedPoll {
        channel,
        since: query.since,
        timeout: query.timeout,
        origin,
        accepted: Compression::new(&gw.config.compression).accepted(req.headers(), &ANSWER_CODINGS),
        delta: super::delta::wants_delta(req.uri().query())
            .then_some(query.since)
            .flatten()
            .and_then(|s| Some(DeltaTrack::holding(Cursor::new(s.id, s.epoch?)))),
        in_flight: Some(in_flight),
    }))
}

impl AdmittedPoll {
    /// Reads the channel and answers, holding the poll when nothing is new.
    ///
    /// A poll that must wait is parked on the connection if it `park`s
    /// and the answer is of the common shape ([`super::longpoll_park`]).
    async fn answer(
        &mut self,
        gw: &Arc<Gateway>,
        park: Option<ParkOffer>,
    ) -> Result<Response, ApiError> {
        let plain = self.origin.is_none() && self.accepted.is_none() && self.delta.is_none();
        let park = park.filter(|_| plain && !self.timeout.is_zero());
        if let (Some(since), Some(offer)) = (self.since, &park) {
            // Parking reads the channel itself, atomically with listing
            // the poll, and a client that is behind is answered from that
            // read: one read per poll, not two. (Plain: no CORS headers.)
            let park = Some((offer.clone(), &mut self.in_flight));
            return wait(gw, &self.channel, since, self.timeout, (None, None), park).await;
        }
        let limit = gw.config.longpoll.max_messages;
        let read = gw.bus.history(&self.channel, self.since, limit).await?;
        // No `since`: the client wants what comes next, after the current
        // last id. Either way the wait is in the sequence just read.
        let cursor = Since::at(self.since.map_or(read.last_id, |s| s.id), read.epoch);
        let mut resp = if self.since.is_some()
            && (!read.messages.is_empty() || read.truncated || read.conflated)
        {
            // Behind: answered from history, no subscription.
            respond(
                gw,
                &read.messages,
                Cursor::new(read.last_id, read.epoch),
                read.truncated,
                read.conflated,
                self.accepted,
                self.delta,
            )?
        } else if self.timeout.is_zero() {
            let at = Cursor::new(cursor.id, read.epoch);
            respond(gw, &[], at, false, false, self.accepted, None)?
        } else {
            drop(read);
            let wants = (self.accepted, self.delta);
            let park = park.map(|offer| (offer, &mut self.in_flight));
            wait(gw, &self.channel, cursor, self.timeout, wants, park).await?
        };
        if let Some(origin) = &self.origin {
            cors_headers(origin.clone(), resp.headers_mut());
        }
        Ok(resp)
    }
}

/// Holds the poll until something after `cursor` is published, its timeout
/// ends or the gateway shuts down, and answers it.
///
/// A message of another epoch while held means the bus lost the channel's
/// data: the answer says `truncated` and carries the new sequence's
/// messages and cursor (whether or not the client's cursor had an epoch).
async fn wait(
    gw: &Arc<Gateway>,
    channel: &ChannelName,
    cursor: Since,
    timeout: Duration,
    (accepted, delta): (Option<Coding>, Option<DeltaTrack>),
    park: Option<(ParkOffer, &mut Option<ConnectionGuard>)>,
) -> Result<Response, ApiError> {
    if let Some((offer, in_flight)) = park {
        let parked = super::longpoll_park::park(gw, &offer, channel, cursor, timeout, in_flight);
        // `None`: parked; the connection answers (or the publisher does).
        let answer = parked.await?;
        return Ok(answer.unwrap_or_else(|| Response::new(crate::http::Body::empty())));
    }
    let max = gw.config.longpoll.max_messages;
    let queue = SubscriberQueue::new(max, Transport::LongPoll);
    let (subscription, read) = gw.subscribe(channel, Some(cursor), &queue, max).await?;
    if !read.messages.is_empty() || read.truncated || read.conflated {
        return respond(
            gw,
            &read.messages,
            Cursor::new(read.last_id, read.epoch),
            read.truncated,
            read.conflated,
            accepted,
            delta,
        );
    }
    let cursor = Cursor::new(cursor.id, read.epoch);
    drop(read);
    let _subscription = subscription;
    let mut sleep = pin!(tokio::time::sleep(timeout));
    let mut shutdown = pin!(gw.shutdown.cancelled());
    // The queue is looked at first: messages that arrive in the same turn
    // as the timeout or the shutdown are still delivered.
    poll_fn(|cx| {
        let drained = SCRATCH.with_borrow_mut(|scratch| {
            let drained = &mut scratch.drained;
            drained.clear();
            let ready = queue.poll_drain(cx, drained, max).is_ready();
            let resp = ready.then(|| {
                super::longpoll_park::answer_drained(gw, drained, cursor, (accepted, delta))
            });
            drained.clear();
            resp
        });
        if let Some(resp) = drained {
            return Poll::Ready(resp);
        }
        if shutdown.as_mut().poll(cx).is_ready() || sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(respond(gw, &[], cursor, false, false, accepted, None));
        }
        Poll::Pending
    })
    .await
}

/// The first messages that fit in `max_bytes` (envelopes and separators),
/// at least one.
fn page(messages: &[Arc<Message>], max_bytes: usize) -> &[Arc<Message>] {
    let mut total = 0;
    let fit = messages
        .iter()
        .take_while(|m| {
            total += m.envelope.len() + 1;
            total <= max_bytes
        })
        .count();
    &messages[..fit.max(1).min(messages.len())]
}

/// The answer to a poll: `{"messages":[…],"last_id":N,"truncated":false,
/// "cursor":"N-E"}`, at most one page of `messages`; `position` is where the
/// client is when no message is returned. A large answer is streamed; `503`
/// when the output budget has no room for it.
///
/// Compressed in the `accepted` coding when it is at least
/// `compression.min_bytes`: a single message's answer once per message and
/// coding (shared like its plain form), any other small answer on its own,
/// a streamed one stitched from the messages' pieces compressed once
/// ([`crate::transport::stitch`]).
pub(super) fn respond(
    gw: &Gateway,
    messages: &[Arc<Message>],
    position: Cursor,
    truncated: bool,
    conflated: bool,
    accepted: Option<Coding>,
    delta: Option<DeltaTrack>,
) -> Result<Response, ApiError> {
    let compression = Compression::new(&gw.config.compression);
    let messages = page(messages, gw.config.longpoll.max_answer_bytes);
    let (last_id, epoch) = messages
        .last()
        .map_or((position.id, position.epoch), |m| (m.id, m.epoch));
    let deltas = delta.filter(|_| !truncated && !messages.is_empty());
    if let Some(body) = deltas.and_then(|track| {
        super::delta::poll_answer(
            track,
            messages,
            (last_id, epoch),
            conflated,
            &gw.metrics.delta,
        )
    }) {
        count_answer(gw, messages, truncated);
        return Ok(json(StatusCode::OK, body));
    }
    let body = match messages {
        // A fan-out's polls: one new message each, the same answer for all,
        // encoded once per message. (A larger one is streamed from its
        // shared envelope instead of cached as a second copy.)
        [only] if !truncated && !conflated && only.envelope.len() < replay::CHUNK => {
            let plain = only.poll_answer();
            let coding = compression.for_len(accepted, plain.len());
            let packed = coding.map(|c| only.poll_answer_encoded(c, compression.levels).clone());
            (plain.clone(), coding, packed)
        }
        _ => {
            let size: usize = messages.iter().map(|m| m.envelope.len() + 1).sum();
            if size > replay::CHUNK {
                let coding = compression.for_len(accepted, size);
                let stitcher = coding.map(|c| {
                    Stitcher::new(c, compression, gw.metrics.clone(), Transport::LongPoll)
                });
                let answer = (last_id, epoch, truncated, conflated);
                let mut resp = streamed(gw, messages, answer, stitcher)?;
                if compression.enabled {
                    vary_on_encoding(resp.headers_mut());
                }
                if let Some(coding) = coding {
                    set_content_encoding(resp.headers_mut(), coding);
                }
                return Ok(resp);
            }
            let envelopes = messages.iter().map(|m| &m.envelope);
            let plain = encode_answer(envelopes, last_id, epoch, truncated, conflated);
            let coding = compression.for_len(accepted, plain.len());
            let packed = coding.map(|c| compress::encode(c, &plain, compression.levels));
            (plain, coding, packed)
        }
    };
    let (plain, coding, packed) = body;
    count_answer(gw, messages, truncated);
    let body = compressed_body(&gw.metrics, Transport::LongPoll, plain, packed);
    let mut resp = json(StatusCode::OK, body);
    if compression.enabled {
        vary_on_encoding(resp.headers_mut());
    }
    if let Some(coding) = coding {
        set_content_encoding(resp.headers_mut(), coding);
    }
    Ok(resp)
}

/// A large answer, produced as the socket drains (compressed on
/// `stitcher`'s stream if given) and counted as pending output until it is.
fn streamed(
    gw: &Gateway,
    messages: &[Arc<Message>],
    (last_id, epoch, truncated, conflated): (u64, Epoch, bool, bool),
    stitcher: Option<Stitcher>,
) -> Result<Response, ApiError> {
    let answer = streamed_answer(messages.to_vec(), last_id, epoch, truncated, conflated);
    let size = answer.remaining();
    if !gw.output.has_room_for(size) {
        gw.metrics
            .transport(Transport::LongPoll)
            .output_refused
            .inc();
        return Err(ApiError::OutputBudget(1));
    }
    let account = standalone_account(&gw.output, Transport::LongPoll, size);
    count_answer(gw, messages, truncated);
    let mut body = ReplayBody::new(answer, account);
    if let Some(stitcher) = stitcher {
        body = body.coded(stitcher);
    }
    let mut resp = hyper::Response::new(Body::stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The answer's metrics.
fn count_answer(gw: &Gateway, messages: &[Arc<Message>], truncated: bool) {
    let result = if truncated {
        PollResult::Truncated
    } else if messages.is_empty() {
        PollResult::Empty
    } else {
        PollResult::Messages
    };
    gw.metrics.poll_answered(result);
    record_delivery(&gw.metrics, Transport::LongPoll, messages);
}

/// The same answer as [`encode_answer`], as a [`Replay`] that produces it
/// in chunks.
pub(crate) fn streamed_answer(
    messages: Vec<Arc<Message>>,
    last_id: u64,
    epoch: Epoch,
    truncated: bool,
    conflated: bool,
) -> Replay {
    let mut closing = BytesMut::with_capacity(96);
    put_closing(&mut closing, last_id, epoch, truncated, conflated);
    Replay::new(
        Framing::PollList,
        Bytes::from_static(b"{\"messages\":["),
        messages,
        closing.freeze(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::channel::ChannelName;
    use std::time::Instant;

    fn epoch() -> Epoch {
        Epoch::parse(b"e1").unwrap()
    }

    #[test]
    fn answer_shape() {
        let ch = ChannelName::new("n").unwrap();
        let msgs = [
            Arc::new(Message::new(ch.clone(), epoch(), 1, b"1", Instant::now())),
            Arc::new(Message::new(ch, epoch(), 2, b"\"x\"", Instant::now())),
        ];
        let body = encode_answer(msgs.iter().map(|m| &m.envelope), 2, epoch(), false, false);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"][1]["data"], "x");
        assert_eq!(v["last_id"], 2);
        assert_eq!(v["truncated"], false);
        assert!(v.get("conflated").is_none());
        assert_eq!(v["cursor"], "2-e1");
        let empty = encode_answer(std::iter::empty(), 7, Epoch::NONE, true, true);
        assert_eq!(
            &empty[..],
            br#"{"messages":[],"last_id":7,"truncated":true,"conflated":true,"cursor":"7"}"#
        );
    }

    #[test]
    fn a_single_message_answer_is_encoded_once_and_shared() {
        let ch = ChannelName::new("n").unwrap();
        let one = Arc::new(Message::new(ch, epoch(), 1, b"1", Instant::now()));
        let a = one.poll_answer().clone();
        let b = one.poll_answer().clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same answer is shared");
        assert_eq!(
            a,
            encode_answer(std::iter::once(&one.envelope), 1, epoch(), false, false)
        );
    }
}
