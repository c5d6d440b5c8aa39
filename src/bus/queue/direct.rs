//! Direct delivery (see the queue's module doc): while a connection is
//! idle with nothing queued, the publisher writes the shared pre-encoded
//! frames to its socket itself, under the queue's lock, and the first write
//! the socket does not take whole ends it.

use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::Bytes;

use super::State;
use crate::metrics::DeliveryTally;
use crate::protocol::{Epoch, Message, Transport};

/// A connection the publisher may write to directly (see the module doc).
pub trait DirectSink: Send + Sync {
    /// This transport's encoding of `msg` (shared, pre-encoded).
    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes;
    /// Writes what the socket takes now, without waiting.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// What the connection must write before anything queued, and the last id
/// written per channel, after direct mode ends.
#[derive(Default)]
pub struct DirectReport {
    /// The unsent tail of a message the publisher wrote in part.
    pub remainder: Option<Bytes>,
    /// Last id delivered per channel, and the epoch it is in: the
    /// connection's cursors, one per channel it is subscribed to, moved on
    /// by what publishers wrote. Messages of other channels are not
    /// written (the connection left them). Publishers
    /// write only messages of that epoch; one of another (the bus lost the
    /// channel's data) ends direct mode, so that the connection tells its
    /// client.
    pub written: Vec<(crate::protocol::channel::ChannelName, Epoch, u64)>,
}

/// Writes `msgs` (one channel's, in id order) through the direct sink,
/// several per system call, skipping those the connection already has;
/// returns how many are done with (the last written perhaps in part: its
/// unsent tail is kept in the report). Direct mode ends at the first write
/// the socket does not take whole.
pub(super) fn write_direct(
    state: &mut State,
    msgs: &[Arc<Message>],
    transport: Transport,
    tally: &mut DeliveryTally<'_>,
) -> usize {
    const CHUNK: usize = 16;
    let Some(first) = msgs.first() else {
        return 0;
    };
    let Some(sink) = state.direct.take() else {
        return 0;
    };
    let Some(cursor) = state
        .report
        .written
        .iter()
        .position(|(channel, _, _)| *channel == first.channel)
    else {
        // The connection lent a cursor for every channel it is subscribed
        // to: this one it left. A fan-out shard may still hold messages
        // recorded before it left; they must not follow the
        // `unsubscribed` answer.
        state.direct = Some(sink);
        return msgs.len();
    };
    if state.report.written[cursor].1 != first.epoch {
        // A new sequence: the connection must say `truncated` first. Direct
        // mode ends here (the sink is not put back).
        return 0;
    }
    let known = state.report.written[cursor].2;
    let skip = msgs.iter().take_while(|m| m.id <= known).count();
    let mut out = skip;
    let mut keep_direct = true;
    for chunk in msgs[skip..].chunks(CHUNK) {
        let mut slices = [IoSlice::new(&[]); CHUNK];
        let mut total = 0;
        for (slot, msg) in slices.iter_mut().zip(chunk) {
            let frame = sink.encoded(msg);
            total += frame.len();
            *slot = IoSlice::new(frame);
        }
        // An error (peer gone) is the connection task's to find and report.
        let n = sink.try_write_vectored(&slices[..chunk.len()]).unwrap_or(0);
        let mut left = n;
        let mut sent = 0;
        for msg in chunk {
            let len = sink.encoded(msg).len();
            if left < len {
                break;
            }
            left -= len;
            sent += 1;
        }
        if left > 0 {
            state.report.remainder = Some(sink.encoded(&chunk[sent]).slice(left..));
            sent += 1;
        }
        if sent > 0 {
            state.report.written[cursor].2 = chunk[sent - 1].id;
            tally.record(transport, &chunk[..sent]);
        }
        out += sent;
        if n < total {
            keep_direct = false;
            break;
        }
    }
    if keep_direct {
        state.direct = Some(sink);
    }
    out
}
