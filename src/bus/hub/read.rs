//! History reads: the cursor rules every bus shares ([`read_start`]) and
//! the answer to "what came after cursor N?" from a channel's ring.

use std::sync::Arc;

use super::channel::ChannelInner;
use crate::config::ChannelMode;
use crate::protocol::channel::Since;
use crate::protocol::{Epoch, Message};

/// The answer to "what came after cursor N?".
#[derive(Debug, Default)]
pub struct HistoryRead {
    /// Messages with id > cursor, oldest first, at most the asked limit.
    pub messages: Vec<Arc<Message>>,
    /// The id of the last message returned, or the cursor the client should
    /// use next when none was.
    pub last_id: u64,
    /// The sequence these ids belong to ([`Epoch::NONE`]: the channel has
    /// none yet).
    pub epoch: Epoch,
    /// History no longer reaches back to the cursor: messages were missed.
    pub truncated: bool,
    /// A `state` channel skipped intermediate values: only the latest is here.
    pub conflated: bool,
}

/// Where a history read starts, by the cursor rules every bus shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadStart {
    /// Return the kept messages with ids above this.
    pub after: u64,
    /// History no longer reaches back to the cursor (or the cursor was
    /// from the future and was reset).
    pub truncated: bool,
    /// A `state` channel skipped values: only the latest is kept.
    pub conflated: bool,
}

impl ReadStart {
    /// The cursor to hand back when no message is returned. After a
    /// truncation it moves past what was lost, so a client with an old
    /// cursor isn't told `truncated` again and again.
    pub fn resume_point(&self, last_id: u64, first_kept: u64) -> u64 {
        if self.truncated {
            first_kept.saturating_sub(1).min(last_id).max(self.after)
        } else {
            self.after
        }
    }
}

/// The shape of a channel's sequence, as a history read sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    pub epoch: Epoch,
    pub last_id: u64,
    /// The oldest kept message (`last_id + 1` when nothing is kept).
    pub first_kept: u64,
}

/// Applies the cursor rules to a client's cursor `since` in `seq`.
pub fn read_start(since: Since, seq: Sequence, mode: ChannelMode) -> ReadStart {
    let Sequence {
        epoch,
        last_id,
        first_kept,
    } = seq;
    let mut start = ReadStart {
        after: since.id,
        truncated: false,
        conflated: false,
    };
    // A cursor of another sequence: what it counted is gone (Redis lost the
    // data, or the gateway restarted). At id 0 nothing was counted yet.
    let other_epoch = since.epoch.is_some_and(|e| e != epoch) && since.id > 0;
    if other_epoch || since.id > last_id {
        // Ids restarted (the bus's store was reset): the client's cursor
        // means nothing here any more; give it everything we have.
        start.after = 0;
        start.truncated = true;
    }
    if start.after + 1 < first_kept {
        if mode == ChannelMode::State {
            start.conflated = first_kept <= last_id;
        } else {
            start.truncated = true;
        }
    }
    start
}

pub(super) fn read_history(
    inner: &ChannelInner,
    since: Option<Since>,
    limit: usize,
) -> HistoryRead {
    let Some(since) = since else {
        return HistoryRead {
            last_id: inner.last_id,
            epoch: inner.epoch,
            ..HistoryRead::default()
        };
    };
    let first_kept = inner
        .history
        .front()
        .map(|m| m.id)
        .unwrap_or(inner.last_id + 1);
    let seq = Sequence {
        epoch: inner.epoch,
        last_id: inner.last_id,
        first_kept,
    };
    let start = read_start(since, seq, inner.mode);
    let skip = inner.history.partition_point(|m| m.id <= start.after);
    let messages: Vec<Arc<Message>> = inner
        .history
        .iter()
        .skip(skip)
        .take(limit)
        .cloned()
        .collect();
    HistoryRead {
        last_id: messages
            .last()
            .map_or(start.resume_point(inner.last_id, first_kept), |m| m.id),
        messages,
        epoch: inner.epoch,
        truncated: start.truncated,
        conflated: start.conflated,
    }
}
