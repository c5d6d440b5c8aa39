//! One channel's state on this node: its sequence and history under one
//! lock, its members (who is subscribed, and in which shard's lane), and
//! the [`Subscription`] handle that leaves it when dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::Mutex;

use super::polls::Listed;
use super::shard::{Job, LaneCell, Shards, Wakeups};
use crate::bus::history::{Budget, Evictable, History};
use crate::bus::queue::SubscriberQueue;
use crate::config::ChannelMode;
use crate::protocol::channel::ChannelName;
use crate::protocol::Epoch;
use crate::protocol::Transport;

pub(super) type Channels = DashMap<ChannelName, Arc<ChannelSlot>>;

/// A subscriber as the channel knows it; the shard of `lane` writes to it
/// (None: written under the channel lock, see [`ChannelInner::inline`]).
pub(super) struct Member {
    pub(super) queue: Arc<SubscriberQueue>,
    pub(super) lane: Option<usize>,
}

pub(super) struct ChannelInner {
    /// Set when the sweeper forgot this channel; holders of a stale `Arc`
    /// look the channel up again.
    pub(super) removed: bool,
    pub(super) mode: ChannelMode,
    /// The sequence `last_id` and the history belong to: random per
    /// channel creation on the in-memory bus, Redis's on the Redis bus.
    pub(super) epoch: Epoch,
    pub(super) last_id: u64,
    pub(super) history: History,
    /// Every subscriber by key: for counts, `forget`, and leaving.
    pub(super) members: HashMap<u64, Member>,
    /// Members per shard lane: a batch goes only to shards that have some.
    pub(super) lane_sizes: Box<[usize]>,
    /// The gateway's own subscribers (bridge feeds), written under this
    /// lock as the message is recorded: they are queues, not sockets (one
    /// push each), and a feed counts on finding its own publishes queued
    /// the moment the publish returns.
    pub(super) inline: Vec<(u64, Arc<SubscriberQueue>)>,
    /// Parked long-polls waiting for the next message ([`super::polls`]).
    pub(super) polls: Vec<Listed>,
    pub(super) last_activity: Instant,
}

impl ChannelInner {
    pub(super) fn new(mode: ChannelMode, lanes: usize) -> ChannelInner {
        ChannelInner {
            removed: false,
            mode,
            // Per creation, not per process: a channel the sweeper forgot
            // starts a new sequence.
            epoch: Epoch::random(),
            last_id: 0,
            history: History::default(),
            members: HashMap::new(),
            lane_sizes: vec![0; lanes].into(),
            inline: Vec::new(),
            polls: Vec::new(),
            last_activity: Instant::now(),
        }
    }

    /// Nothing here worth keeping: no subscriber, no parked poll, no
    /// history, and no id handed out (forgetting a used channel would
    /// restart its ids, so those wait for the sweeper's `idle_channel_ttl`).
    pub(super) fn is_unused(&self) -> bool {
        self.members.is_empty()
            && self.polls.is_empty()
            && self.history.is_empty()
            && self.last_id == 0
    }

    /// Adds a member: a bridge feed to the inline list, any other to the
    /// lane with the fewest, so every shard writes its share of the
    /// channel whatever the churn. Returns the lane (None: inline).
    pub(super) fn join(&mut self, key: u64, queue: &Arc<SubscriberQueue>) -> Option<usize> {
        self.last_activity = Instant::now();
        if queue.transport() == Transport::Bridge {
            self.inline.push((key, queue.clone()));
            let member = Member {
                queue: queue.clone(),
                lane: None,
            };
            self.members.insert(key, member);
            return None;
        }
        // Ties go round the lanes by key, so one-subscriber channels do not
        // all land on the first shard.
        let lanes = self.lane_sizes.len();
        let start = (key % lanes as u64) as usize;
        let lane = (0..lanes)
            .map(|i| (start + i) % lanes)
            .min_by_key(|&i| self.lane_sizes[i])
            .unwrap_or(0);
        self.lane_sizes[lane] += 1;
        let member = Member {
            queue: queue.clone(),
            lane: Some(lane),
        };
        self.members.insert(key, member);
        Some(lane)
    }

    /// Removes a member; its lane, if it was a member in one (the shard
    /// must be told).
    pub(super) fn leave(&mut self, key: u64) -> Option<usize> {
        let member = self.members.remove(&key)?;
        self.last_activity = Instant::now();
        match member.lane {
            Some(lane) => {
                self.lane_sizes[lane] -= 1;
                Some(lane)
            }
            None => {
                self.inline.retain(|(k, _)| *k != key);
                None
            }
        }
    }
}

pub(super) struct ChannelSlot {
    /// Its key in the map, so a dropped subscription can remove it.
    pub(super) name: ChannelName,
    pub(super) inner: Mutex<ChannelInner>,
    /// The subscribers each shard writes; lane `i` is shard `i`'s alone.
    pub(super) lanes: Box<[LaneCell]>,
}

impl ChannelSlot {
    /// Members whose queue overflowed or closed during a fan-out: the
    /// shard already took them off its lane.
    pub(super) fn drop_members(&self, keys: &[u64]) {
        let mut inner = self.inner.lock();
        for &key in keys {
            inner.leave(key);
        }
    }
}

/// A live subscription; dropping it unsubscribes (and forgets the
/// channel at once if nothing else uses it).
pub struct Subscription {
    pub(super) slot: Arc<ChannelSlot>,
    pub(super) channels: Arc<Channels>,
    pub(super) shards: Arc<Shards>,
    pub(super) key: u64,
}

impl Subscription {
    /// The channel's name as the hub holds it: a subscriber that keeps it
    /// shares the hub's copy instead of keeping its request's.
    pub fn channel(&self) -> &ChannelName {
        &self.slot.name
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut wakeups = Wakeups::default();
        let unused = {
            let mut inner = self.slot.inner.lock();
            if let Some(lane) = inner.leave(self.key) {
                let job = Job::Leave {
                    slot: self.slot.clone(),
                    key: self.key,
                };
                self.shards.post(lane, job, 0, &mut wakeups);
            }
            inner.is_unused() && !inner.removed
        };
        self.shards.kick(wakeups);
        if unused {
            forget_if_unused(&self.channels, &self.slot);
        }
    }
}

/// Removes `slot`'s channel from the map if nothing uses it (its last
/// subscriber or parked poll just left). Map shard first, then the channel
/// lock: the sweeper's order. Checked again under both, as a publish or
/// subscribe may have come in since the caller looked.
pub(super) fn forget_if_unused(channels: &Channels, slot: &Arc<ChannelSlot>) {
    channels.remove_if(&slot.name, |_, listed| {
        if !Arc::ptr_eq(listed, slot) {
            return false;
        }
        let mut inner = listed.inner.lock();
        let unused = inner.is_unused();
        if unused {
            inner.removed = true;
        }
        unused
    });
}

impl Evictable for Arc<ChannelSlot> {
    fn evict_oldest(&self, budget: &Budget) -> Option<Instant> {
        let mut inner = self.inner.lock();
        if inner.removed {
            return None;
        }
        if inner.history.pop_front(budget).is_some() {
            budget.count_total_eviction();
        }
        inner.history.front().map(|m| m.published_at)
    }

    fn oldest(&self) -> Option<Instant> {
        self.inner.lock().history.front().map(|m| m.published_at)
    }
}
