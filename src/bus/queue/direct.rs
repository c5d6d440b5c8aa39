//! Direct delivery (see the queue's module doc): while a connection is
//! idle with nothing queued, the publisher writes the shared pre-encoded
//! frames to its socket itself, under the queue's lock, and the first write
//! the socket does not take whole ends it.

use std::io::{self, IoSlice};

use bytes::Bytes;

use crate::protocol::{Epoch, Message};

/// A connection the publisher may write to directly (see the module doc).
pub trait DirectSink: Send + Sync {
    /// This transport's encoding of `msg` (shared, pre-encoded).
    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes;
    /// Writes what the socket takes now, without waiting.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// `msgs` were written whole (deliveries themselves are counted by
    /// the writer's tally).
    fn delivered(&self, _msgs: &[std::sync::Arc<Message>]) {}
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
