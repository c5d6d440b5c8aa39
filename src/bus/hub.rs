//! This node's channels: subscribers, fan-out and the history ring.
//!
//! Every bus implementation delivers through a [`Hub`]. For a channel, one
//! mutex covers assigning ids (in-memory bus), appending to history and
//! pushing to every subscriber queue, so all subscribers see one order and a
//! subscription taken under the same lock gets history and live messages
//! with no gap and no overlap.
//!
//! History is bounded per channel by count, age and bytes, and over the
//! node by bytes ([`history`](super::history)). A channel nobody
//! subscribes to and nothing was published on is forgotten as soon as its
//! last subscriber leaves, so subscribe/unsubscribe churn leaves nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::history::{Budget, Evictable, History};
use super::queue::{Pushed, QueueClosed, SubscriberQueue};
use crate::config::{ChannelMode, ChannelRules, HistoryConfig};
use crate::metrics::Metrics;
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::Transport;
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

/// Per-channel figures for `/channels`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelStats {
    pub channel: String,
    pub mode: ChannelMode,
    pub last_id: u64,
    pub history: usize,
    /// Bytes of the kept messages (counted against `history.max_bytes`).
    pub history_bytes: usize,
    pub subscribers: SubscriberCounts,
}

/// Subscribers of one channel on this node, by transport.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SubscriberCounts {
    pub websocket: usize,
    pub longpoll: usize,
    pub sse: usize,
    pub bridge: usize,
}

struct Subscriber {
    key: u64,
    queue: Arc<SubscriberQueue>,
}

struct ChannelInner {
    /// Set when the sweeper forgot this channel; holders of a stale `Arc`
    /// look the channel up again.
    removed: bool,
    mode: ChannelMode,
    /// The sequence `last_id` and the history belong to: random per
    /// channel creation on the in-memory bus, Redis's on the Redis bus.
    epoch: Epoch,
    last_id: u64,
    history: History,
    subscribers: Vec<Subscriber>,
    last_activity: Instant,
}

impl ChannelInner {
    /// Nothing here worth keeping: no subscriber, no history, and no id
    /// handed out (forgetting a used channel would restart its ids, so
    /// those wait for the sweeper's `idle_channel_ttl`).
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty() && self.last_id == 0
    }
}

struct ChannelSlot {
    /// Its key in the map, so a dropped subscription can remove it.
    name: ChannelName,
    inner: Mutex<ChannelInner>,
}

type Channels = DashMap<ChannelName, Arc<ChannelSlot>>;

/// All channels this node knows.
pub struct Hub {
    /// Shared with every [`Subscription`], which removes an unused channel
    /// when it is dropped.
    channels: Arc<Channels>,
    /// Byte limits of history, per channel and for the node.
    budget: Budget,
    rules: ChannelRules,
    history: HistoryConfig,
    metrics: Arc<Metrics>,
    /// Subscriber keys are never reused, so a late unsubscribe can't remove
    /// somebody else.
    next_key: AtomicU64,
}

/// A live subscription; dropping it unsubscribes (and forgets the
/// channel at once if nothing else uses it).
pub struct Subscription {
    slot: Arc<ChannelSlot>,
    channels: Arc<Channels>,
    key: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let unused = {
            let mut inner = self.slot.inner.lock();
            if let Some(pos) = inner.subscribers.iter().position(|s| s.key == self.key) {
                inner.subscribers.swap_remove(pos);
                inner.last_activity = Instant::now();
            }
            inner.is_unused() && !inner.removed
        };
        if unused {
            // Map shard first, then the channel lock: the sweeper's order.
            // Checked again under both, as a publish or subscribe may have
            // come in between.
            self.channels.remove_if(&self.slot.name, |_, slot| {
                if !Arc::ptr_eq(slot, &self.slot) {
                    return false;
                }
                let mut inner = slot.inner.lock();
                let unused = inner.is_unused();
                if unused {
                    inner.removed = true;
                }
                unused
            });
        }
    }
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

impl Hub {
    pub fn new(rules: ChannelRules, history: HistoryConfig, metrics: Arc<Metrics>) -> Hub {
        Hub {
            channels: Arc::new(DashMap::new()),
            budget: Budget::new(history.max_bytes, history.max_total_bytes, &metrics),
            rules,
            history,
            metrics,
            next_key: AtomicU64::new(1),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn mode_of(&self, channel: &str) -> ChannelMode {
        self.rules.resolve(channel).mode
    }

    /// Runs `f` on the channel's state under its lock, creating the channel
    /// if needed and retrying if the sweeper removed it meanwhile.
    fn with_channel<R>(
        &self,
        channel: &ChannelName,
        f: impl FnOnce(&Arc<ChannelSlot>, &mut ChannelInner) -> R,
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
                            inner: Mutex::new(ChannelInner {
                                removed: false,
                                mode: self.mode_of(channel.as_str()),
                                // Per creation, not per process: a channel
                                // the sweeper forgot starts a new sequence.
                                epoch: Epoch::random(),
                                last_id: 0,
                                history: History::default(),
                                subscribers: Vec::new(),
                                last_activity: Instant::now(),
                            }),
                        })
                    })
                    .value()
                    .clone(),
            };
            // The DashMap guard is gone here; only the channel lock is held.
            let mut inner = slot.inner.lock();
            if inner.removed {
                continue;
            }
            return f(&slot, &mut inner);
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
        let delivered = self.with_channel(&msg.channel, |_, inner| {
            if msg.epoch != inner.epoch {
                self.start_over(inner, msg.epoch);
            }
            if msg.id <= inner.last_id {
                return false;
            }
            self.record_and_fan_out(inner, &msg);
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
    /// them and fans them out together: a subscriber in direct mode gets
    /// them in one write.
    pub fn publish_next_many(&self, channel: &ChannelName, data: &[Bytes]) -> Vec<Arc<Message>> {
        let published = self.with_channel(channel, |_, inner| {
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
            self.record_and_fan_out_all(inner, &msgs);
            msgs
        });
        self.keep_within_budget();
        published
    }

    /// Makes `epoch` the channel's sequence: what this node held of another
    /// one is dropped. Subscribers stay: each transport sees the new epoch
    /// on the next message and tells its client `truncated` once.
    pub fn reset(&self, channel: &ChannelName, epoch: Epoch) {
        self.with_channel(channel, |_, inner| {
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
    }

    fn record_and_fan_out(&self, inner: &mut ChannelInner, msg: &Arc<Message>) {
        self.record_and_fan_out_all(inner, std::slice::from_ref(msg))
    }

    fn record_and_fan_out_all(&self, inner: &mut ChannelInner, msgs: &[Arc<Message>]) {
        let Some(last) = msgs.last() else {
            return;
        };
        inner.last_id = last.id;
        inner.last_activity = last.published_at;
        if inner.mode == ChannelMode::State {
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

        let mode = inner.mode;
        let mut i = 0;
        while i < inner.subscribers.len() {
            let queue = &inner.subscribers[i].queue;
            match queue.push_all(msgs, mode) {
                Pushed::Queued | Pushed::Written => i += 1,
                Pushed::Conflated { count } => {
                    self.metrics
                        .transport(queue.transport())
                        .conflated
                        .inc_by(count as u64);
                    i += 1;
                }
                // The reader learns of the overflow from its queue and
                // decides: catch up from history, or give up and count.
                Pushed::Overflowed { .. } | Pushed::Closed => {
                    inner.subscribers.swap_remove(i);
                }
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
        self.with_channel(channel, |slot, inner| {
            let read = read_history(inner, since, limit);
            let key = self.next_key.fetch_add(1, Ordering::Relaxed);
            inner.subscribers.push(Subscriber {
                key,
                queue: queue.clone(),
            });
            inner.last_activity = Instant::now();
            (
                Subscription {
                    slot: slot.clone(),
                    channels: self.channels.clone(),
                    key,
                },
                read,
            )
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
        read_history(&inner, since, limit)
    }

    /// The channel's last id (0 when unknown).
    pub fn last_id(&self, channel: &ChannelName) -> u64 {
        self.channels
            .get(channel)
            .map(|s| s.value().clone())
            .map(|slot| slot.inner.lock().last_id)
            .unwrap_or(0)
    }

    /// Per-channel figures, sorted by name.
    #[cfg(test)]
    pub fn stats(&self) -> Vec<ChannelStats> {
        self.stats_page(None, usize::MAX)
    }

    /// Per-channel figures of at most `limit` channels named after
    /// `after`, sorted by name: one page of `/channels`. Only the page's
    /// channels are locked and described.
    pub fn stats_page(&self, after: Option<&str>, limit: usize) -> Vec<ChannelStats> {
        let mut names: Vec<ChannelName> = self
            .channels
            .iter()
            .map(|e| e.key().clone())
            .filter(|name| after.is_none_or(|after| name.as_str() > after))
            .collect();
        if names.len() > limit {
            names.select_nth_unstable(limit);
            names.truncate(limit);
        }
        names.sort_unstable();
        names
            .into_iter()
            .filter_map(|name| {
                let slot = self.channels.get(&name).map(|s| s.value().clone())?;
                let inner = slot.inner.lock();
                Some(ChannelStats {
                    channel: name.to_string(),
                    mode: inner.mode,
                    last_id: inner.last_id,
                    history: inner.history.len(),
                    history_bytes: inner.history.bytes(),
                    subscribers: count_subscribers(&inner.subscribers),
                })
            })
            .collect()
    }

    /// Ages history out and forgets channels with no history, no
    /// subscribers and no activity for `idle_channel_ttl`.
    pub fn sweep(&self, now: Instant) {
        let max_age = self.history.max_age;
        let ttl = self.history.idle_channel_ttl;
        self.channels.retain(|_, slot| {
            let mut inner = slot.inner.lock();
            inner.history.trim_by_age(max_age, now, &self.budget);
            let idle = inner.subscribers.is_empty()
                && inner.history.is_empty()
                && now.saturating_duration_since(inner.last_activity) >= ttl;
            if idle {
                inner.removed = true;
            }
            !idle
        });
        self.budget.over();
    }

    /// Subscribers of one channel on this node, by transport (zero for a
    /// channel this node doesn't know).
    pub fn subscriber_counts(&self, channel: &ChannelName) -> SubscriberCounts {
        let Some(slot) = self.channels.get(channel).map(|s| s.value().clone()) else {
            return SubscriberCounts::default();
        };
        let inner = slot.inner.lock();
        count_subscribers(&inner.subscribers)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Drops all this node holds for `channel` and closes its subscribers'
    /// queues (`Shutdown`), so their clients reconnect and resume from the
    /// shared history, which then tells them plainly what was lost. A
    /// shared bus calls this when its store no longer has messages this
    /// node's subscribers missed, or its ids restarted.
    pub fn forget(&self, channel: &ChannelName) {
        let Some((_, slot)) = self.channels.remove(channel) else {
            return;
        };
        let mut inner = slot.inner.lock();
        inner.removed = true;
        inner.history.clear(&self.budget);
        for subscriber in inner.subscribers.drain(..) {
            subscriber.queue.close(QueueClosed::Shutdown);
        }
    }
}

fn count_subscribers(subscribers: &[Subscriber]) -> SubscriberCounts {
    let mut counts = SubscriberCounts::default();
    for s in subscribers {
        match s.queue.transport() {
            Transport::WebSocket => counts.websocket += 1,
            Transport::LongPoll => counts.longpoll += 1,
            Transport::Sse => counts.sse += 1,
            Transport::Bridge => counts.bridge += 1,
            Transport::Proxy => {}
        }
    }
    counts
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

fn read_history(inner: &ChannelInner, since: Option<Since>, limit: usize) -> HistoryRead {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::bus::queue::QueueClosed;
    use crate::config::ChannelRule;

    fn hub_with(size: usize, rules: Vec<ChannelRule>) -> Hub {
        let history = HistoryConfig {
            size,
            ..HistoryConfig::default()
        };
        Hub::new(ChannelRules::new(rules), history, Arc::new(Metrics::new()))
    }

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn ids(read: &HistoryRead) -> Vec<u64> {
        read.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn ids_start_at_one_and_history_is_bounded() {
        let hub = hub_with(3, vec![]);
        let ch = name("news");
        for i in 1..=5u64 {
            assert_eq!(hub.publish_next(&ch, &Bytes::from("1")).id, i);
        }
        let all = hub.read(&ch, Some(Since::plain(0)), 100);
        assert_eq!(ids(&all), vec![3, 4, 5]);
        assert!(all.truncated);
        let recent = hub.read(&ch, Some(Since::plain(3)), 100);
        assert_eq!(ids(&recent), vec![4, 5]);
        assert!(!recent.truncated);
        assert_eq!(recent.last_id, 5);
        let none = hub.read(&ch, Some(Since::plain(5)), 100);
        assert!(none.messages.is_empty());
        assert_eq!(none.last_id, 5);
        let limited = hub.read(&ch, Some(Since::plain(2)), 1);
        assert_eq!(ids(&limited), vec![3]);
        assert_eq!(limited.last_id, 3);
    }

    #[test]
    fn cursor_from_the_future_is_a_reset() {
        let hub = hub_with(10, vec![]);
        let ch = name("news");
        hub.publish_next(&ch, &Bytes::from("1"));
        let read = hub.read(&ch, Some(Since::plain(500)), 100);
        assert!(read.truncated);
        assert_eq!(ids(&read), vec![1]);
        let unknown = hub.read(&name("never"), Some(Since::plain(3)), 100);
        assert!(unknown.truncated);
        assert!(unknown.messages.is_empty());
    }

    #[test]
    fn subscription_continues_exactly_after_history() {
        let hub = hub_with(100, vec![]);
        let ch = name("news");
        for _ in 0..3 {
            hub.publish_next(&ch, &Bytes::from("1"));
        }
        let q = SubscriberQueue::new(16, Transport::WebSocket);
        let (sub, read) = hub.subscribe(&ch, Some(Since::plain(1)), &q, 100);
        assert_eq!(ids(&read), vec![2, 3]);
        hub.publish_next(&ch, &Bytes::from("1"));
        let mut out = Vec::new();
        q.try_drain(&mut out, 10).unwrap();
        assert_eq!(out.iter().map(|m| m.id).collect::<Vec<_>>(), vec![4]);
        assert_eq!(hub.stats()[0].subscribers.websocket, 1);
        drop(sub);
        assert_eq!(hub.stats()[0].subscribers.websocket, 0);
    }

    #[test]
    fn slow_subscriber_is_cut_off() {
        let hub = hub_with(100, vec![]);
        let ch = name("flood");
        let slow = SubscriberQueue::new(4, Transport::WebSocket);
        let fast = SubscriberQueue::new(1000, Transport::Sse);
        let (_s1, _) = hub.subscribe(&ch, None, &slow, 0);
        let (_s2, _) = hub.subscribe(&ch, None, &fast, 0);
        for _ in 0..10 {
            hub.publish_next(&ch, &Bytes::from("1"));
        }
        let mut out = Vec::new();
        assert_eq!(slow.try_drain(&mut out, 100), Err(QueueClosed::Overflow));
        fast.try_drain(&mut out, 100).unwrap();
        assert_eq!(out.len(), 10);
        assert_eq!(
            slow.overflow_dropped(),
            5,
            "4 queued + the one that overflowed"
        );
        assert_eq!(hub.stats()[0].subscribers.websocket, 0);
    }

    #[test]
    fn state_channel_keeps_latest_and_flags_conflation() {
        let rules = vec![ChannelRule {
            pattern: "price.*".into(),
            mode: ChannelMode::State,
            allow_client_publish: false,
            auth: Default::default(),
            conflate_interval: None,
            compress: true,
        }];
        let hub = hub_with(100, rules);
        let ch = name("price.eur");
        for _ in 0..100 {
            hub.publish_next(&ch, &Bytes::from("1"));
        }
        let read = hub.read(&ch, Some(Since::plain(1)), 100);
        assert_eq!(ids(&read), vec![100]);
        assert!(read.conflated && !read.truncated);
        let next = hub.read(&ch, Some(Since::plain(99)), 100);
        assert_eq!(ids(&next), vec![100]);
        assert!(!next.conflated);
    }

    #[test]
    fn read_start_rules() {
        use ChannelMode::{State, Stream};
        let epoch = Epoch::parse(b"e1").unwrap();
        let rs = |since, last_id, first_kept, mode| {
            let seq = Sequence {
                epoch,
                last_id,
                first_kept,
            };
            let plain = read_start(Since::plain(since), seq, mode);
            // The same id with the channel's own epoch reads the same.
            assert_eq!(read_start(Since::at(since, epoch), seq, mode), plain);
            plain
        };
        let plain = |after| ReadStart {
            after,
            truncated: false,
            conflated: false,
        };
        // Inside history, at its edge, and at the newest message.
        assert_eq!(rs(5, 10, 3, Stream), plain(5));
        assert_eq!(rs(2, 10, 3, Stream), plain(2));
        assert_eq!(rs(10, 10, 3, Stream), plain(10));
        // Older than history.
        assert_eq!(
            rs(1, 10, 3, Stream),
            ReadStart {
                truncated: true,
                ..plain(1)
            }
        );
        // From the future: a reset, and truncated.
        assert_eq!(
            rs(50, 10, 3, Stream),
            ReadStart {
                truncated: true,
                ..plain(0)
            }
        );
        assert_eq!(
            rs(50, 10, 1, Stream),
            ReadStart {
                truncated: true,
                ..plain(0)
            }
        );
        // Nothing kept, cursor current: not truncated.
        assert_eq!(rs(10, 10, 11, Stream), plain(10));
        assert_eq!(rs(0, 0, 1, Stream), plain(0));
        // State channels conflate instead, but only if something is kept.
        assert_eq!(
            rs(1, 10, 10, State),
            ReadStart {
                conflated: true,
                ..plain(1)
            }
        );
        assert_eq!(rs(1, 10, 11, State), plain(1));
    }

    #[test]
    fn forget_closes_subscribers_and_resets_the_channel() {
        let hub = hub_with(10, vec![]);
        let ch = name("lost");
        let q = SubscriberQueue::new(8, Transport::WebSocket);
        let (sub, _) = hub.subscribe(&ch, None, &q, 0);
        hub.publish_next(&ch, &Bytes::from("1"));
        hub.forget(&ch);
        let mut out = Vec::new();
        assert_eq!(
            q.try_drain(&mut out, 10),
            Ok(()),
            "queued messages stay readable"
        );
        assert_eq!(q.try_drain(&mut out, 10), Err(QueueClosed::Shutdown));
        assert_eq!(hub.last_id(&ch), 0);
        drop(sub);
        hub.forget(&name("never-seen"));
        assert_eq!(hub.publish_next(&ch, &Bytes::from("1")).id, 1);
    }

    #[test]
    fn deliver_ignores_duplicates() {
        let hub = hub_with(10, vec![]);
        let ch = name("x");
        let epoch = Epoch::parse(b"e1").unwrap();
        let m = |id| Arc::new(Message::new(ch.clone(), epoch, id, b"1", Instant::now()));
        assert!(hub.deliver(m(1)));
        assert!(hub.deliver(m(2)));
        assert!(!hub.deliver(m(2)));
        assert!(!hub.deliver(m(1)));
        assert_eq!(hub.last_id(&ch), 2);
    }

    #[test]
    fn sweep_forgets_idle_empty_channels_only() {
        let history = HistoryConfig {
            size: 10,
            max_age: Duration::from_secs(60),
            idle_channel_ttl: Duration::from_secs(1),
            ..HistoryConfig::default()
        };
        let hub = Hub::new(ChannelRules::default(), history, Arc::new(Metrics::new()));
        hub.publish_next(&name("old"), &Bytes::from("1"));
        let q = SubscriberQueue::new(4, Transport::Sse);
        let (_sub, _) = hub.subscribe(&name("watched"), None, &q, 0);
        let later = Instant::now() + Duration::from_secs(120);
        hub.sweep(later);
        let names: Vec<_> = hub.stats().into_iter().map(|s| s.channel).collect();
        assert_eq!(names, vec!["watched"]);
    }

    fn hub_with_bytes(max_bytes: usize, max_total_bytes: usize) -> Hub {
        let history = HistoryConfig {
            size: 1000,
            max_bytes,
            max_total_bytes,
            ..HistoryConfig::default()
        };
        Hub::new(ChannelRules::default(), history, Arc::new(Metrics::new()))
    }

    #[test]
    fn history_is_bounded_in_bytes_per_channel_and_resume_says_truncated() {
        let hub = hub_with_bytes(1000, 1 << 20);
        let ch = name("big");
        let data = Bytes::from(vec![b'1'; 300]);
        for _ in 0..10 {
            hub.publish_next(&ch, &data);
        }
        let stats = &hub.stats()[0];
        assert!(stats.history_bytes <= 1000, "{stats:?}");
        assert_eq!(
            stats.history, 3,
            "three 332-byte envelopes of 300-byte payloads fit in 1000"
        );
        let read = hub.read(&ch, Some(Since::plain(0)), 100);
        assert!(read.truncated);
        assert_eq!(ids(&read), vec![8, 9, 10]);
        // One message larger than the limit is still kept (the newest).
        hub.publish_next(&ch, &Bytes::from(vec![b'1'; 5000]));
        assert_eq!(ids(&hub.read(&ch, Some(Since::plain(10)), 100)), vec![11]);
        assert_eq!(hub.history_bytes(), hub.stats()[0].history_bytes);
    }

    #[test]
    fn node_budget_evicts_the_oldest_of_any_channel_first() {
        let hub = hub_with_bytes(1 << 20, 8000);
        let data = Bytes::from(vec![b'1'; 1000]);
        let (a, b) = (name("a"), name("b"));
        for _ in 0..4 {
            hub.publish_next(&a, &data);
        }
        for _ in 0..6 {
            hub.publish_next(&b, &data);
        }
        assert!(hub.history_bytes() <= 8000, "{}", hub.history_bytes());
        // a's messages are the oldest: they went first; b kept its newest.
        let read_a = hub.read(&a, Some(Since::plain(0)), 100);
        assert!(
            read_a.truncated && read_a.messages.is_empty(),
            "{:?}",
            ids(&read_a)
        );
        let read_b = hub.read(&b, Some(Since::plain(0)), 100);
        assert_eq!(*ids(&read_b).last().unwrap(), 6);
        assert!(ids(&read_b).len() >= 5);
        assert_eq!(
            hub.history_bytes(),
            hub.stats().iter().map(|s| s.history_bytes).sum::<usize>()
        );
    }

    #[test]
    fn a_channel_nothing_uses_is_forgotten_when_its_last_subscriber_leaves() {
        let hub = hub_with(10, vec![]);
        let q = SubscriberQueue::new(4, Transport::WebSocket);
        for i in 0..100 {
            let (sub, _) =
                hub.subscribe(&name(&format!("churn.{i}")), Some(Since::plain(0)), &q, 10);
            drop(sub);
        }
        assert_eq!(hub.channel_count(), 0);
        // A channel with history, or another subscriber, stays.
        let (s1, _) = hub.subscribe(&name("kept"), None, &q, 0);
        let (s2, _) = hub.subscribe(&name("kept"), None, &q, 0);
        drop(s1);
        assert_eq!(hub.channel_count(), 1);
        hub.publish_next(&name("kept"), &Bytes::from("1"));
        drop(s2);
        assert_eq!(hub.channel_count(), 1);
        assert_eq!(hub.last_id(&name("kept")), 1);
    }

    #[test]
    fn stats_pages_in_name_order() {
        let hub = hub_with(10, vec![]);
        for n in ["d", "b", "a", "c", "e"] {
            hub.publish_next(&name(n), &Bytes::from("1"));
        }
        let page = |after: Option<&str>, limit| -> Vec<String> {
            hub.stats_page(after, limit)
                .into_iter()
                .map(|s| s.channel)
                .collect()
        };
        assert_eq!(page(None, 2), vec!["a", "b"]);
        assert_eq!(page(Some("b"), 2), vec!["c", "d"]);
        assert_eq!(page(Some("d"), 2), vec!["e"]);
        assert!(page(Some("e"), 2).is_empty());
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(
            ChannelRules::default(),
            HistoryConfig::default(),
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn a_cursor_of_another_epoch_is_truncated_and_starts_over() {
        let hub = hub();
        let ch = ChannelName::new("e").unwrap();
        for _ in 0..3 {
            hub.publish_next(&ch, &Bytes::from("1"));
        }
        let epoch = hub.epoch(&ch);
        assert!(!epoch.is_none());
        let same = hub.read(&ch, Some(Since::at(2, epoch)), 10);
        assert_eq!((same.truncated, same.messages.len()), (false, 1));
        assert_eq!(same.epoch, epoch);
        let other = Epoch::parse(b"abc").unwrap();
        let lost = hub.read(&ch, Some(Since::at(2, other)), 10);
        assert!(lost.truncated);
        assert_eq!(
            lost.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // At id 0 nothing of the other sequence was had: nothing lost.
        let fresh = hub.read(&ch, Some(Since::at(0, other)), 10);
        assert!(!fresh.truncated);
        assert_eq!(fresh.messages.len(), 3);
    }

    #[test]
    fn deliver_of_a_new_epoch_starts_the_channel_over_and_counts_once() {
        let hub = hub();
        let ch = ChannelName::new("r").unwrap();
        let (a, b) = (Epoch::parse(b"a").unwrap(), Epoch::parse(b"b").unwrap());
        let m = |e, id| Arc::new(Message::new(ch.clone(), e, id, b"1", Instant::now()));
        let q = SubscriberQueue::new(16, Transport::Sse);
        let (_sub, _) = hub.subscribe(&ch, None, &q, 0);
        // The first epoch seen is adopted silently.
        assert!(hub.deliver(m(a, 1)) && hub.deliver(m(a, 2)));
        assert_eq!(hub.metrics().bus_epoch_resets.get(), 0);
        // A new sequence: id 1 is new again, and the old history is gone.
        assert!(hub.deliver(m(b, 1)));
        assert_eq!(hub.metrics().bus_epoch_resets.get(), 1);
        assert_eq!((hub.epoch(&ch), hub.last_id(&ch)), (b, 1));
        let read = hub.read(&ch, Some(Since::at(0, b)), 10);
        assert_eq!(read.messages.len(), 1);
        // The subscriber got every message, epochs and all, in order.
        let mut out = Vec::new();
        q.try_drain(&mut out, 10).unwrap();
        let got: Vec<_> = out.iter().map(|m| (m.epoch, m.id)).collect();
        assert_eq!(got, [(a, 1), (a, 2), (b, 1)]);
    }
}
