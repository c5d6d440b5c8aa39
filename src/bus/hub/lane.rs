//! What a fan-out shard writes and to whom: a channel's subscribers on
//! one shard (its [`Lane`], made on demand), the recorded [`Batch`]es
//! handed to the shards, and a [`Delivery`] — the batches of one channel
//! a shard writes together — written to a lane.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::channel::ChannelSlot;
use crate::bus::queue::{Pushed, SubscriberQueue};
use crate::config::ChannelMode;
use crate::metrics::{DeliveryTally, Metrics};
use crate::protocol::Message;

/// One shard's subscribers of one channel, in delivery order, with each
/// key's position for O(1) removal.
#[derive(Default)]
struct Lane {
    subscribers: Vec<(u64, Arc<SubscriberQueue>)>,
    position: HashMap<u64, usize>,
}

impl Lane {
    fn add(&mut self, key: u64, queue: Arc<SubscriberQueue>) {
        self.position.insert(key, self.subscribers.len());
        self.subscribers.push((key, queue));
    }

    fn remove(&mut self, key: u64) {
        if let Some(pos) = self.position.remove(&key) {
            self.remove_at(pos);
        }
    }

    fn remove_at(&mut self, pos: usize) {
        let (key, _) = self.subscribers.swap_remove(pos);
        self.position.remove(&key);
        if let Some((moved, _)) = self.subscribers.get(pos) {
            self.position.insert(*moved, pos);
        }
    }
}

/// A channel's lane on one shard: made when the shard gets its first
/// subscriber of the channel, freed when it has none left, so a channel
/// costs each shard it does not use a lock and a pointer (16 bytes), not
/// an empty lane (80).
#[derive(Default)]
pub(super) struct LaneCell(Mutex<Option<Box<Lane>>>);

impl LaneCell {
    pub(super) fn add(&self, key: u64, queue: Arc<SubscriberQueue>) {
        self.0
            .lock()
            .get_or_insert_with(Box::default)
            .add(key, queue);
    }

    pub(super) fn remove(&self, key: u64) {
        let mut cell = self.0.lock();
        if let Some(lane) = cell.as_mut() {
            lane.remove(key);
            if lane.subscribers.is_empty() {
                *cell = None;
            }
        }
    }

    /// Writes `delivery` to up to `max` subscribers of the lane from
    /// position `from`; returns where to go on, or None when the lane is
    /// done. Subscribers whose queue overflowed or closed leave the lane
    /// (their keys go to `dead`); their readers learn of it from the queue.
    pub(super) fn write(
        &self,
        delivery: &Delivery,
        from: usize,
        max: usize,
        dead: &mut Vec<u64>,
        metrics: &Metrics,
    ) -> Option<usize> {
        let (msgs, mode) = (delivery.msgs(), delivery.first.mode);
        let mut cell = self.0.lock();
        let lane = cell.as_mut()?;
        // Flushed to the shared counters once, when this chunk is done.
        let mut tally = DeliveryTally::new(metrics);
        let mut i = from;
        let mut done = 0;
        while i < lane.subscribers.len() {
            if done == max {
                return Some(i);
            }
            done += 1;
            let (key, queue) = &lane.subscribers[i];
            match queue.push_all(msgs, mode, &mut tally) {
                Pushed::Queued | Pushed::Written => i += 1,
                Pushed::Conflated { count } => {
                    metrics
                        .transport(queue.transport())
                        .conflated
                        .inc_by(count as u64);
                    i += 1;
                }
                Pushed::Overflowed { .. } | Pushed::Closed => {
                    dead.push(*key);
                    lane.remove_at(i);
                }
            }
        }
        if lane.subscribers.is_empty() {
            *cell = None;
        }
        None
    }

    /// Subscribers in the lane (as the shard holds them).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0
            .lock()
            .as_ref()
            .map_or(0, |lane| lane.subscribers.len())
    }
}

/// Messages recorded together, handed to every shard with subscribers of
/// the channel.
pub(super) struct Batch {
    pub(super) msgs: Box<[Arc<Message>]>,
    pub(super) mode: ChannelMode,
    /// When the batch was recorded: the start of the fan-out span.
    pub(super) recorded_at: Instant,
    /// Shards still writing it; the last one measures the span.
    pub(super) parts_left: AtomicUsize,
}

impl Batch {
    pub(super) fn new(msgs: &[Arc<Message>], mode: ChannelMode, parts: usize) -> Arc<Batch> {
        Arc::new(Batch {
            msgs: msgs.into(),
            mode,
            recorded_at: Instant::now(),
            parts_left: AtomicUsize::new(parts),
        })
    }
}

/// Deliveries of one channel that were queued next to each other on a
/// shard, written to each subscriber in one go (in id order: the order
/// they were posted in).
pub(super) struct Delivery {
    pub(super) slot: Arc<ChannelSlot>,
    pub(super) first: Arc<Batch>,
    /// The batches queued right behind `first` (usually none).
    pub(super) more: Vec<Arc<Batch>>,
    /// Every batch's messages in order, when there is more than one.
    pub(super) joined: Vec<Arc<Message>>,
}

impl Delivery {
    pub(super) fn msgs(&self) -> &[Arc<Message>] {
        if self.more.is_empty() {
            &self.first.msgs
        } else {
            &self.joined
        }
    }
}
