//! SSE streams written by the publisher (direct mode, as WebSocket and
//! parked long-polls have it: `bus::queue`), on the lean HTTP/1.1 path.
//!
//! A plain stream — no compression, no deltas, no throttled channels —
//! whose connection offers its socket ([`ParkOffer::direct_send`]) lends
//! its queue an [`SseSink`] once it is live: the replay written, nothing
//! queued, and at least one chunk written by the connection (so the
//! response head and every chunk the task wrote are on the wire before
//! any byte the publisher writes; the lean connection polls the body for
//! its next frame only after writing the last). The publisher then writes
//! each message as one HTTP/1.1 chunk carrying its event, encoded once per
//! message and shared ([`Message::sse_http_chunk`]): the bytes the task
//! writes for a chunk of that event alone.
//!
//! Whenever the body is polled (the publisher ended direct mode — a short
//! write, a message of a new sequence, the queue closed — or a timer, the
//! shutdown, the client's bytes) it takes direct mode back first
//! ([`DirectLease::take_back`]): the unsent tail of a chunk the publisher
//! wrote in part is the stream's next frame, already chunk-framed
//! (`StreamBody::prechunked`), and the task goes on as usual.
//!
//! [`ParkOffer::direct_send`]: crate::transport::longpoll_park::ParkOffer::direct_send

use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::bus::{DirectReport, DirectSink, SubscriberQueue};
use crate::http::h1::chunk_size_line;
use crate::net::socket::DirectSend;
use crate::protocol::channel::ChannelName;
use crate::protocol::{Cursor, Message};

/// The chunk the lean path writes for `msg`'s event alone.
pub fn event_chunk(msg: &Message) -> &Bytes {
    msg.sse_http_chunk(chunk_size_line)
}

/// The sink an SSE stream lends its queue (see the module doc).
struct SseSink {
    send: DirectSend,
    /// When the last message the publisher wrote was published (close
    /// enough to when it went out): the keepalive counts from there.
    last_write: Mutex<Option<std::time::Instant>>,
}

impl DirectSink for SseSink {
    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes {
        event_chunk(msg)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send.try_send_vectored(bufs)
    }

    fn delivered(&self, msgs: &[Arc<Message>]) {
        // Deliveries and wire bytes are counted by the writer's tally and
        // the connection's meter, as the task path counts them.
        if let Some(last) = msgs.last() {
            *self.last_write.lock() = Some(last.published_at);
        }
    }
}

/// An SSE stream's socket, lent to its queue while the stream is idle.
pub struct DirectLease {
    sink: Arc<SseSink>,
    dyn_sink: Arc<dyn DirectSink>,
    queue: Arc<SubscriberQueue>,
    channel: ChannelName,
    /// The cursor lent with the sink, back after `leave_direct`.
    report: DirectReport,
    lent: bool,
}

impl DirectLease {
    pub fn new(send: DirectSend, queue: Arc<SubscriberQueue>, channel: ChannelName) -> Self {
        let sink = Arc::new(SseSink {
            send,
            last_write: Mutex::new(None),
        });
        DirectLease {
            dyn_sink: sink.clone(),
            sink,
            queue,
            channel,
            report: DirectReport::default(),
            lent: false,
        }
    }

    /// Lends the socket with the stream's `cursor`; refused (false) while
    /// something is queued — the push that queued it woke the stream.
    pub fn lend(&mut self, cursor: Cursor) -> bool {
        if self.lent {
            return true;
        }
        self.report.written.clear();
        self.report
            .written
            .push((self.channel.clone(), cursor.epoch, cursor.id));
        self.lent = self.queue.enter_direct(&self.dyn_sink, &mut self.report);
        self.lent
    }

    /// Takes the socket back: moves `cursor` past what the publisher
    /// wrote and `last_sent` to its last write; returns the unsent tail of
    /// a chunk it wrote in part (to be written before anything else, as
    /// is: it is already chunk-framed).
    pub fn take_back(
        &mut self,
        cursor: &mut Cursor,
        last_sent: &mut tokio::time::Instant,
    ) -> Option<Bytes> {
        if !std::mem::take(&mut self.lent) {
            return None;
        }
        self.queue.leave_direct(&mut self.report);
        if let Some((_, epoch, id)) = self.report.written.first() {
            if *epoch == cursor.epoch && *id > cursor.id {
                cursor.id = *id;
            }
        }
        if let Some(at) = self.sink.last_write.lock().take() {
            *last_sent = (*last_sent).max(tokio::time::Instant::from_std(at));
        }
        self.report.take_remainder()
    }
}

impl Drop for DirectLease {
    fn drop(&mut self) {
        // Publishers must not write to the socket once the connection may
        // close it (it drops the body first).
        if self.lent {
            self.queue.leave_direct(&mut self.report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Epoch;

    #[test]
    fn an_event_chunk_is_the_lean_paths_chunk_of_that_event_alone() {
        let msg = Message::new(
            ChannelName::new("c").unwrap(),
            Epoch::parse(b"e1").unwrap(),
            7,
            br#"{"text":"\u00e9 and more"}"#,
            std::time::Instant::now(),
        );
        let event = msg.sse_event().clone();
        // What `server::lean::conn::write_response` writes for a data
        // frame of a chunked body.
        let mut task = chunk_size_line(event.len()).to_vec();
        task.extend_from_slice(&event);
        task.extend_from_slice(b"\r\n");
        assert_eq!(event_chunk(&msg).as_ref(), &task[..]);
        // Shared: made once.
        assert_eq!(event_chunk(&msg).as_ptr(), event_chunk(&msg).as_ptr());
    }
}
