//! Parked long-polls: one-shot waiters listed on their channel.
//!
//! A long-poll that must wait needs one message and is done: it does not
//! need what a subscriber has (a key in the member map, a place in a
//! shard's lane, a queue, a leave at the end), which per poll cost about
//! a third of a long-poll delivery's user time. A parked poll is instead
//! put on its channel's list under the channel lock, atomically with the
//! history read that found nothing new (as a subscription is), at the
//! cursor that read ended at. The next batch recorded on the channel takes
//! the whole list and hands it, with the batch, to the fan-out shards
//! ([`super::shard`]), which offer each poll the batch once: the poll
//! writes its answer itself ([`WaitingPoll::offer`]). A poll that wants
//! none of the batch (a shared bus's copy of what its history read already
//! had) is put back, unless something newer was recorded meanwhile, which
//! then wakes it ([`Hub::relist`]).
//!
//! A poll let go before an answer (timeout, client gone, shutdown) leaves
//! the list when its [`PollRegistration`] is dropped. When the channel's
//! sequence is reset or the channel forgotten, every listed poll is woken:
//! its connection answers it.

use std::sync::Arc;

use super::channel::{forget_if_unused, ChannelInner, ChannelSlot, Channels};
use super::read::{read_history, HistoryRead};
use super::shard::{Job, Shards, Wakeups, CHUNK, INLINE_WRITES};
use super::Hub;
use crate::metrics::DeliveryTally;
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::{Cursor, Epoch, Message};

/// A parked long-poll, as its channel lists it.
pub trait WaitingPoll: Send + Sync {
    /// The batch just recorded on the channel (in id order) for a poll
    /// whose client is at `cursor`: the poll answers (or gets its
    /// connection to), counting what it writes in `tally`; or it wants none
    /// of it (every message at or before `cursor`).
    fn offer(
        &self,
        msgs: &[Arc<Message>],
        cursor: Cursor,
        tally: &mut DeliveryTally<'_>,
    ) -> Offered;
    /// The channel's data is gone (a reset sequence, a forgotten channel):
    /// the poll's connection must answer it.
    fn wake(&self);
    /// Lets the poll go unless it took something already: true when it
    /// was still waiting (nothing is written for it from here on).
    fn cancel(&self) -> bool;
}

/// What a poll did with a batch offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Answered, or handed to its connection: off the list for good.
    Taken,
    /// Nothing in the batch was after its cursor: still waiting.
    NotForIt,
}

/// A poll on its channel's list, with the cursor its client is at.
pub(super) struct Listed {
    pub(super) poll: Arc<dyn WaitingPoll>,
    pub(super) cursor: Cursor,
}

/// The batch a shard offers to part of a channel's listed polls.
pub(super) struct PollBatch {
    pub(super) slot: Arc<ChannelSlot>,
    pub(super) msgs: Arc<[Arc<Message>]>,
    pub(super) polls: Vec<Listed>,
    /// How many messages a woken poll is given at most (the history size).
    pub(super) limit: usize,
}

impl PollBatch {
    /// Offers the batch to each poll; puts back those that wanted none of it.
    pub(super) fn run(self, tally: &mut DeliveryTally<'_>) {
        for listed in self.polls {
            if listed.poll.offer(&self.msgs, listed.cursor, tally) == Offered::NotForIt {
                relist(&self.slot, listed, self.limit, tally);
            }
        }
    }
}

/// A parked poll's place on its channel's list; dropping it takes the poll
/// off the list (if it is still there) and forgets the channel at once if
/// nothing else uses it.
pub struct PollRegistration {
    slot: Arc<ChannelSlot>,
    channels: Arc<Channels>,
    poll: Arc<dyn WaitingPoll>,
    /// False once the holder knows the poll was taken off the list.
    listed: bool,
}

impl PollRegistration {
    /// Moves the listed poll's cursor into `cursor`'s sequence: a shared
    /// bus lists a poll before it has read which sequence the channel is
    /// in (a client's plain id has none).
    pub fn set_cursor(&self, cursor: Cursor) {
        let mut inner = self.slot.inner.lock();
        if let Some(listed) = inner
            .polls
            .iter_mut()
            .find(|listed| Arc::ptr_eq(&listed.poll, &self.poll))
        {
            listed.cursor = cursor;
        }
    }

    /// Lets go of a poll known to be off the list already (a batch was
    /// offered to it and it took it, or it was woken): nothing to look
    /// up under the channel lock, which every answered poll would
    /// otherwise take once more.
    pub fn taken(mut self) {
        self.listed = false;
    }

    /// The channel's name as the hub holds it.
    pub fn channel(&self) -> &ChannelName {
        &self.slot.name
    }
}

impl Drop for PollRegistration {
    fn drop(&mut self) {
        if !self.listed {
            return;
        }
        let unused = {
            let mut inner = self.slot.inner.lock();
            // Usually already taken by the batch that answered it.
            inner
                .polls
                .retain(|listed| !Arc::ptr_eq(&listed.poll, &self.poll));
            inner.is_unused() && !inner.removed
        };
        if unused {
            forget_if_unused(&self.channels, &self.slot);
        }
    }
}

/// What parking a poll found.
pub enum Parking {
    /// Listed, its client at this cursor.
    Parked(PollRegistration, Cursor),
    /// Not listed: the channel has something for it (or the cursor is
    /// truncated): answer from this read.
    Read(HistoryRead),
    /// Off the list already: a message was offered to it while a shared
    /// bus read its history, and it took it (it answers, or its connection
    /// does); its client was at this cursor.
    Taken(Cursor),
}

impl Hub {
    /// Lists `poll` on `channel` unless the history after `since` has
    /// something for it — atomically, so the first message recorded after
    /// the read is offered to it (see the module doc).
    pub fn park_poll(
        &self,
        channel: &ChannelName,
        since: Since,
        poll: &Arc<dyn WaitingPoll>,
        limit: usize,
    ) -> Parking {
        self.with_channel(channel, |slot, inner, _| {
            let read = read_history(inner, Some(since), limit);
            if !read.messages.is_empty() || read.truncated || read.conflated {
                return Parking::Read(read);
            }
            let cursor = Cursor::new(since.id, read.epoch);
            list(inner, poll, cursor);
            Parking::Parked(self.registration(slot, poll), cursor)
        })
    }

    /// Lists `poll` at `cursor` without reading: a shared bus lists its
    /// polls before it makes sure the channel is live and reads its own
    /// history (as it subscribes), so that this node counts the poll as
    /// wanting the channel from the start. What the read then finds, the
    /// poll may also be offered: the bus lets it go ([`WaitingPoll::cancel`])
    /// or, if it already took something, leaves it to answer. None when
    /// this node already recorded something after the cursor (for a
    /// cursor of another sequence: anything of the channel's current one):
    /// the poll would never be offered it, and the shared history has it
    /// too.
    pub fn list_poll(
        &self,
        channel: &ChannelName,
        cursor: Cursor,
        poll: &Arc<dyn WaitingPoll>,
    ) -> Option<PollRegistration> {
        self.with_channel(channel, |slot, inner, _| {
            // A plain id is in whatever sequence the channel is in; a
            // cursor of another sequence waits for the next one's first
            // message, unless this node already has some of it.
            let same = cursor.epoch.is_none() || inner.epoch == cursor.epoch;
            let behind = if same { cursor.id } else { 0 };
            if inner.last_id > behind {
                return None;
            }
            list(inner, poll, cursor);
            Some(self.registration(slot, poll))
        })
    }

    fn registration(
        &self,
        slot: &Arc<ChannelSlot>,
        poll: &Arc<dyn WaitingPoll>,
    ) -> PollRegistration {
        PollRegistration {
            slot: slot.clone(),
            channels: self.channels.clone(),
            poll: poll.clone(),
            listed: true,
        }
    }
}

impl Shards {
    /// Hands `msgs` (just recorded, under the channel lock) to the
    /// channel's parked long-polls, taken off its list: in parts of at
    /// most [`CHUNK`] polls, spread over the shards like lanes are, so a
    /// channel's polls are answered by every core. Unlike a delivery, not
    /// counted in the backlog: the polls were listed by their own requests,
    /// one answer each, so a publisher cannot make these pile up.
    pub(super) fn offer_polls(
        &self,
        slot: &Arc<ChannelSlot>,
        mut polls: Vec<Listed>,
        msgs: &[Arc<Message>],
        limit: usize,
        wakeups: &mut Wakeups,
    ) {
        let msgs: Arc<[Arc<Message>]> = msgs.into();
        let spread = if polls.len() > INLINE_WRITES {
            self.count()
        } else {
            1
        };
        let parts = polls
            .len()
            .div_ceil(CHUNK)
            .max(spread)
            .clamp(1, polls.len().max(1));
        let size = polls.len().div_ceil(parts);
        // The first part goes to a shard picked by the channel's address,
        // so one-poll channels do not all land on the first shard.
        let first = (Arc::as_ptr(slot) as usize / 64) % self.count();
        let mut part = 0;
        while !polls.is_empty() {
            let these = polls.split_off(polls.len().saturating_sub(size));
            let writes = these.len();
            let job = Job::Polls(PollBatch {
                slot: slot.clone(),
                msgs: msgs.clone(),
                polls: these,
                limit,
            });
            self.post((first + part) % self.count(), job, writes, wakeups);
            part += 1;
        }
    }
}

fn list(inner: &mut ChannelInner, poll: &Arc<dyn WaitingPoll>, cursor: Cursor) {
    inner.last_activity = std::time::Instant::now();
    inner.polls.push(Listed {
        poll: poll.clone(),
        cursor,
    });
}

/// Puts back a poll that wanted none of a batch, unless the channel
/// recorded something after its cursor since the batch took the list (or
/// started another sequence, or was forgotten): then the poll is offered
/// that, from history, or woken when history no longer has it.
fn relist(slot: &ChannelSlot, listed: Listed, limit: usize, tally: &mut DeliveryTally<'_>) {
    let mut inner = slot.inner.lock();
    if !inner.removed && inner.epoch == listed.cursor.epoch && inner.last_id <= listed.cursor.id {
        inner.polls.push(listed);
        return;
    }
    let read = (!inner.removed).then(|| read_history(&inner, Some(listed.cursor.since()), limit));
    drop(inner);
    match read {
        Some(read) if !read.messages.is_empty() && !read.truncated => {
            if listed.poll.offer(&read.messages, listed.cursor, tally) == Offered::NotForIt {
                listed.poll.wake();
            }
        }
        _ => listed.poll.wake(),
    }
}

/// Wakes every poll listed on the channel whose cursor is not in
/// `epoch` (all of them for [`Epoch::NONE`]): the data it waited on is
/// gone. (A shared bus's poll may be listed at the shared sequence before
/// this node has seen a message of it: that one waits on; so does a poll
/// at id 0, which had nothing of any sequence: the new one's first
/// message is its next.)
pub(super) fn wake_all_but(inner: &mut ChannelInner, epoch: Epoch) {
    inner.polls.retain(|listed| {
        let fresh = listed.cursor.id == 0;
        let keep = !epoch.is_none() && (listed.cursor.epoch == epoch || fresh);
        if !keep {
            listed.poll.wake();
        }
        keep
    });
}

#[cfg(test)]
#[path = "polls_tests.rs"]
mod tests;
