//! Direct delivery (see the queue's module doc): while a connection is
//! idle with nothing queued, the publisher writes the shared pre-encoded
//! frames to its socket itself, under the queue's lock, and the first write
//! the socket does not take whole ends it.
//!
//! A channel the connection reads as deltas goes out as each message's
//! shared delta frame (made once per message, against the message before
//! it): the connection lends such a channel only while it holds the value
//! of its cursor, so each message whose base is the last one written can
//! follow as a delta. Anything else — a base that is not the last message
//! written, or no delta for a message (not smaller than the whole value,
//! not linked) — ends direct mode there: the connection's task sends it
//! whole, as it always does.

use std::io::{self, IoSlice};

use bytes::Bytes;

use crate::protocol::{Epoch, Message};

/// A connection the publisher may write to directly (see the module doc).
pub trait DirectSink: Send + Sync {
    /// This transport's encoding of `msg` (shared, pre-encoded).
    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes;
    /// `msg` as a delta for a connection that holds the value of message
    /// `base` of its channel: the shared delta frame, or None when there
    /// is none for that base (direct mode then ends before `msg`).
    fn encoded_delta<'m>(&self, _msg: &'m Message, _base: u64) -> Option<&'m Bytes> {
        None
    }
    /// Writes what the socket takes now, without waiting.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// `msgs` were written whole (deliveries themselves are counted by
    /// the writer's tally).
    fn delivered(&self, _msgs: &[std::sync::Arc<Message>]) {}
    /// `msgs` were written whole as deltas ([`encoded_delta`](Self::encoded_delta)).
    fn delivered_deltas(&self, _msgs: &[std::sync::Arc<Message>]) {}
}

/// What the connection must write before anything queued, and the last id
/// written per channel, after direct mode ends.
#[derive(Default)]
pub struct DirectReport {
    /// What few connections ever have (a partly written message, delta
    /// channels), boxed: every idle WebSocket's queue holds a report, and
    /// 24 bytes more put the queue in a larger allocation class.
    rare: Option<Box<RareReport>>,
    /// Last id delivered per channel, and the epoch it is in: the
    /// connection's cursors, one per channel it is subscribed to, moved on
    /// by what publishers wrote. Messages of other channels are not
    /// written (the connection left them). Publishers
    /// write only messages of that epoch; one of another (the bus lost the
    /// channel's data) ends direct mode, so that the connection tells its
    /// client.
    pub written: Vec<(crate::protocol::channel::ChannelName, Epoch, u64)>,
}

/// The boxed part of a [`DirectReport`].
#[derive(Default)]
struct RareReport {
    /// The unsent tail of a message the publisher wrote in part.
    remainder: Option<Bytes>,
    /// The channels of `written` the connection reads as deltas; it holds
    /// the value of each one's cursor (see the module doc).
    deltas: Vec<crate::protocol::channel::ChannelName>,
}

impl DirectReport {
    /// Whether a partly written message's tail is left to write.
    pub fn has_remainder(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.remainder.is_some())
    }

    /// Leaves the unsent tail of a message the publisher wrote in part.
    pub fn set_remainder(&mut self, rest: Bytes) {
        self.rare.get_or_insert_with(Box::default).remainder = Some(rest);
    }

    /// Takes the unsent tail, if any.
    pub fn take_remainder(&mut self) -> Option<Bytes> {
        self.rare.as_mut().and_then(|r| r.remainder.take())
    }

    /// The connection reads `channel` (one of `written`) as deltas.
    pub fn add_delta_channel(&mut self, channel: crate::protocol::channel::ChannelName) {
        self.rare
            .get_or_insert_with(Box::default)
            .deltas
            .push(channel);
    }

    /// Whether the connection reads `channel` as deltas.
    pub fn is_delta_channel(&self, channel: &crate::protocol::channel::ChannelName) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| r.deltas.contains(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_stays_small() {
        // Every queue holds one: 80 with the tail inline, 56 with only the
        // tail boxed, 32 with the delta channels boxed too.
        assert!(std::mem::size_of::<DirectReport>() <= 32);
        let mut report = DirectReport::default();
        assert!(!report.has_remainder());
        report.set_remainder(Bytes::from_static(b"tail"));
        assert!(report.has_remainder());
        assert_eq!(report.take_remainder().as_deref(), Some(&b"tail"[..]));
        assert!(!report.has_remainder());
        let channel = crate::protocol::channel::ChannelName::new("s").unwrap();
        assert!(!report.is_delta_channel(&channel));
        report.add_delta_channel(channel.clone());
        assert!(report.is_delta_channel(&channel));
    }
}
