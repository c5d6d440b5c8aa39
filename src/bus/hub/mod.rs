//! This node's channels: ids, the history ring, subscribers and fan-out.
//!
//! Every bus implementation delivers through a [`Hub`]. For a channel, one
//! mutex covers assigning ids (in-memory bus), appending to history,
//! reading history for a new subscriber, and handing recorded messages and
//! subscriber changes to the fan-out shards ([`shard`]), so all
//! subscribers see one order and a subscription taken under the same lock
//! gets history and live messages with no gap and no overlap. The writes
//! to subscribers happen after the lock is released, on the shards' own
//! tasks (a handful of writes by the publisher itself, which is cheaper
//! than waking a task): a publish is answered once it is recorded. (The
//! gateway's own bridge feeds are the exception: queues, written under the
//! lock.)
//!
//! History is bounded per channel by count, age and bytes, and over the
//! node by bytes ([`history`](super::history)). A channel nobody
//! subscribes to and nothing was published on is forgotten as soon as its
//! last subscriber leaves, so subscribe/unsubscribe churn leaves nothing.

mod channel;
mod lane;
mod polls;
mod read;
mod shard;
mod stats;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::history::Budget;
use super::queue::{Pushed, QueueClosed, SubscriberQueue};
use crate::config::{ChannelMode, ChannelRules, HistoryConfig};
use crate::metrics::{DeliveryTally, Metrics};
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::{Epoch, Message};
use channel::{ChannelInner, ChannelSlot, Channels};
use shard::{Job, Shards, Wakeups};

pub use channel::Subscription;
pub use polls::{Offered, Parking, PollRegistration, WaitingPoll};
pub use read::{read_start, HistoryRead, ReadStart, Sequence};
pub use stats::{ChannelStats, SubscriberCounts};

/// All channels this node knows.
pub struct Hub {
    /// Shared with every [`Subscription`], which removes an unused channel
    /// when it is dropped.
    channels: Arc<Channels>,
    /// Who writes to subscribers (shared with every [`Subscription`], which
    /// tells its shard when it leaves).
    shards: Arc<Shards>,
    /// Byte limits of history, per channel and for the node.
    budget: Budget,
    rules: ChannelRules,
    history: HistoryConfig,
    metrics: Arc<Metrics>,
    /// Subscriber keys are never reused, so a late unsubscribe can't remove
    /// somebody else.
    next_key: AtomicU64,
}

impl Hub {
    /// A hub whose fan-out runs on the publishing thread, right after the
    /// channel lock is released (no runtime needed); see
    /// [`sharded`](Self::sharded).
    pub fn new(rules: ChannelRules, history: HistoryConfig, metrics: Arc<Metrics>) -> Hub {
        Hub {
            channels: Arc::new(DashMap::new()),
            shards: Arc::new(Shards::inline(&metrics)),
            budget: Budget::new(history.max_bytes, history.max_total_bytes, &metrics),
            rules,
            history,
            metrics,
            next_key: AtomicU64::new(1),
        }
    }

    /// Fans out on `shards` tasks of `runtime` (one per worker thread is
    /// the intent). Call before the first subscribe.
    pub fn sharded(mut self, shards: usize, runtime: &tokio::runtime::Handle) -> Hub {
        debug_assert!(self.channels.is_empty(), "sharded() before any channel");
        self.shards = Arc::new(Shards::start(shards, &self.metrics, runtime));
        self
    }

    /// How many shards write to subscribers.
    pub fn shard_count(&self) -> usize {
        self.shards.count()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn mode_of(&self, channel: &str) -> ChannelMode {
        self.rules.resolve(channel).mode
    }

    /// Waits while the fan-out is far behind (a bounded backlog per
    /// shard): publishers call this after recording, so they are answered
    /// at once unless the shards cannot keep up.
    pub async fn fanout_room(&self) {
        self.shards.room().await
    }

    /// Runs `f` on the channel's state under its lock, creating the channel
    /// if needed and retrying if the sweeper removed it meanwhile. Jobs `f`
    /// posts to the shards are kicked off once the lock is released.
    fn with_channel<R>(
        &self,
        channel: &ChannelName,
        f: impl FnOnce(&Arc<ChannelSlot>, &mut ChannelInner, &mut Wakeups) -> R,
    ) -> R {
        loop {
            let slot = match self.channels.get(channel) {
                Some(slot) => slot.value().clone(),
                None => self
                    .channels
                    .entry(channel.clone())
                    .or_insert_with(|| {
                        Arc::new(ChannelSlot {
                            name: channel.clone(),
                            inner: Mutex::new(ChannelInner::new(
                                self.mode_of(channel.as_str()),
                                self.shards.count(),
                            )),
                            lanes: self.shards.lanes(),
                        })
                    })
                    .value()
                    .clone(),
            };
            // The DashMap guard is gone here; only the channel lock is held.
            let mut wakeups = Wakeups::default();
            let result = {
                let mut inner = slot.inner.lock();
                if inner.removed {
                    continue;
                }
                f(&slot, &mut inner, &mut wakeups)
            };
            self.shards.kick(wakeups);
            return result;
        }
    }

    /// One message through [`publish_next_many`](Self::publish_next_many),
    /// for the tests (the buses publish in batches).
    #[cfg(test)]
    pub fn publish_next(&self, channel: &ChannelName, data: &Bytes) -> Arc<Message> {
        let mut published = self.publish_next_many(channel, std::slice::from_ref(data));
        published.pop().expect("one payload, one message")
    }

    /// Delivers a message whose id was assigned elsewhere (a shared bus).
    /// Messages at or below the channel's last id are ignored, so replays
    /// and gap-fills never duplicate. A message of another epoch starts the
    /// channel over in that sequence (see [`reset`](Self::reset)); the
    /// caller only hands over epochs it has not left.
    pub fn deliver(&self, msg: Arc<Message>) -> bool {
        let delivered = self.with_channel(&msg.channel, |slot, inner, wakeups| {
            if msg.epoch != inner.epoch {
                self.start_over(inner, msg.epoch);
            }
            if msg.id <= inner.last_id {
                return false;
            }
            self.record_and_fan_out(slot, inner, std::slice::from_ref(&msg), wakeups);
            true
        });
        self.keep_within_budget();
        delivered
    }

    /// Evicts the oldest history of any channel while this node is over
    /// `history.max_total_bytes`. Called with no channel lock held.
    fn keep_within_budget(&self) {
        if self.budget.over() {
            let slots = self
                .channels
                .iter()
                .map(|e| e.value().clone())
                .collect::<Vec<_>>();
            self.budget.evict(slots.into_iter());
        }
    }

    /// Bytes of history this node holds now.
    pub fn history_bytes(&self) -> usize {
        self.budget.total()
    }

    /// Assigns the next ids to several payloads of one channel, records
    /// them and hands them to the shards together (a subscriber in direct
    /// mode gets them in one write). Returns once they are recorded; the
    /// writes to subscribers follow on the shards.
    pub fn publish_next_many(&self, channel: &ChannelName, data: &[Bytes]) -> Vec<Arc<Message>> {
        let published = self.with_channel(channel, |slot, inner, wakeups| {
            let now = Instant::now();
            let msgs: Vec<Arc<Message>> = data
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    Arc::new(Message::new(
                        channel.clone(),
                        inner.epoch,
                        inner.last_id + 1 + i as u64,
                        d,
                        now,
                    ))
                })
                .collect();
            self.record_and_fan_out(slot, inner, &msgs, wakeups);
            msgs
        });
        self.keep_within_budget();
        published
    }

    /// Makes `epoch` the channel's sequence: what this node held of another
    /// one is dropped. Subscribers stay: each transport sees the new epoch
    /// on the next message and tells its client `truncated` once.
    pub fn reset(&self, channel: &ChannelName, epoch: Epoch) {
        self.with_channel(channel, |_, inner, _| {
            if inner.epoch != epoch {
                self.start_over(inner, epoch);
            }
        })
    }

    /// The channel's epoch ([`Epoch::NONE`] when this node doesn't know the
    /// channel).
    pub fn epoch(&self, channel: &ChannelName) -> Epoch {
        self.channels
            .get(channel)
            .map(|s| s.value().clone())
            .map(|slot| slot.inner.lock().epoch)
            .unwrap_or(Epoch::NONE)
    }

    fn start_over(&self, inner: &mut ChannelInner, epoch: Epoch) {
        if inner.last_id > 0 {
            // Something of the old sequence was delivered here: that is
            // lost data, not a channel's first message.
            self.metrics.bus_epoch_resets.inc();
        }
        inner.epoch = epoch;
        inner.last_id = 0;
        inner.history.clear(&self.budget);
        polls::wake_all_but(inner, epoch);
    }

    /// Records `msgs` (one channel's, in id order) in the sequence and
    /// history, and posts them to the shards with subscribers. Under the
    /// channel lock: that is what puts them in order on every shard.
    fn record_and_fan_out(
        &self,
        slot: &Arc<ChannelSlot>,
        inner: &mut ChannelInner,
        msgs: &[Arc<Message>],
        wakeups: &mut Wakeups,
    ) {
        let Some(last) = msgs.last() else {
            return;
        };
        inner.last_id = last.id;
        inner.last_activity = last.published_at;
        if inner.mode == ChannelMode::State {
            // Each value may go out as a delta against the one before.
            crate::protocol::delta::link_chain(inner.history.back().map(|m| &**m), msgs);
            // A state channel's history is its latest value.
            inner.history.clear(&self.budget);
            inner.history.push(last.clone(), &self.budget);
        } else {
            for msg in msgs {
                inner.history.push(msg.clone(), &self.budget);
            }
        }
        inner.history.trim(
            self.history.size,
            self.history.max_age,
            last.published_at,
            &self.budget,
        );
        self.write_inline(inner, msgs);
        self.shards
            .fan_out(slot, &inner.lane_sizes, msgs, inner.mode, wakeups);
        if !inner.polls.is_empty() {
            // Each parked poll takes one answer: the list starts over.
            let polls = std::mem::take(&mut inner.polls);
            self.shards
                .offer_polls(slot, polls, msgs, self.history.size, wakeups);
        }
    }

    /// Pushes `msgs` to the channel's inline members (bridge feeds), under
    /// the channel lock; drops those whose queue overflowed or closed.
    fn write_inline(&self, inner: &mut ChannelInner, msgs: &[Arc<Message>]) {
        let mut tally = DeliveryTally::new(&self.metrics);
        let mut i = 0;
        while i < inner.inline.len() {
            let (key, queue) = &inner.inline[i];
            match queue.push_all(msgs, inner.mode, &mut tally) {
                Pushed::Overflowed { .. } | Pushed::Closed => {
                    let key = *key;
                    inner.leave(key);
                }
                _ => i += 1,
            }
        }
    }

    /// Subscribes `queue` to `channel` and, when `since` is given, returns
    /// the history after it — atomically, so the first live message is the
    /// one after the last returned.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        queue: &Arc<SubscriberQueue>,
        limit: usize,
    ) -> (Subscription, HistoryRead) {
        self.with_channel(channel, |slot, inner, wakeups| {
            let read = read::read_history(inner, since, limit);
            let key = self.next_key.fetch_add(1, Ordering::Relaxed);
            // Posted under the lock, behind every batch the read covered
            // and ahead of every batch recorded later.
            if let Some(lane) = inner.join(key, queue) {
                let job = Job::Join {
                    slot: slot.clone(),
                    key,
                    queue: queue.clone(),
                };
                self.shards.post(lane, job, 0, wakeups);
            }
            let subscription = Subscription {
                slot: slot.clone(),
                channels: self.channels.clone(),
                shards: self.shards.clone(),
                key,
            };
            (subscription, read)
        })
    }

    /// History after `since` (None: nothing, just the current last id).
    pub fn read(&self, channel: &ChannelName, since: Option<Since>, limit: usize) -> HistoryRead {
        // Reading a channel nobody has used must not create it.
        let Some(slot) = self.channels.get(channel).map(|s| s.value().clone()) else {
            return HistoryRead {
                last_id: 0,
                truncated: since.is_some_and(|s| s.id > 0),
                ..HistoryRead::default()
            };
        };
        let inner = slot.inner.lock();
        read::read_history(&inner, since, limit)
    }

    /// The channel's last id (0 when unknown).
    pub fn last_id(&self, channel: &ChannelName) -> u64 {
        self.channels
            .get(channel)
            .map(|s| s.value().clone())
            .map(|slot| slot.inner.lock().last_id)
            .unwrap_or(0)
    }

    /// Ages history out and forgets channels with no history, no
    /// subscribers and no activity for `idle_channel_ttl`.
    pub fn sweep(&self, now: Instant) {
        let max_age = self.history.max_age;
        let ttl = self.history.idle_channel_ttl;
        self.channels.retain(|_, slot| {
            let mut inner = slot.inner.lock();
            inner.history.trim_by_age(max_age, now, &self.budget);
            let idle = inner.members.is_empty()
                && inner.polls.is_empty()
                && inner.history.is_empty()
                && now.saturating_duration_since(inner.last_activity) >= ttl;
            if idle {
                inner.removed = true;
            }
            !idle
        });
        self.budget.over();
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Drops all this node holds for `channel` and closes its subscribers'
    /// queues (`Shutdown`), so their clients reconnect and resume from the
    /// shared history, which then tells them plainly what was lost. A
    /// shared bus calls this when its store no longer has messages this
    /// node's subscribers missed, or its ids restarted. (The shards drop
    /// the closed queues from their lanes at their next write.)
    pub fn forget(&self, channel: &ChannelName) {
        let Some((_, slot)) = self.channels.remove(channel) else {
            return;
        };
        let mut inner = slot.inner.lock();
        inner.removed = true;
        inner.history.clear(&self.budget);
        for (_, member) in inner.members.drain() {
            member.queue.close(QueueClosed::Shutdown);
        }
        inner.inline.clear();
        inner.lane_sizes.iter_mut().for_each(|n| *n = 0);
        polls::wake_all_but(&mut inner, Epoch::NONE);
    }
}
