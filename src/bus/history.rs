//! A channel's history ring, bounded by count, age and bytes, and the
//! node-wide byte budget over every channel's history.
//!
//! Bytes are the encoded envelopes' lengths (`Message::envelope`): what a
//! message costs whatever transport reads it. The per-transport encodings
//! made on demand (WebSocket frame, SSE event, poll answer) share the same
//! `Arc<Message>` and are freed with it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::Message;

/// One channel's kept messages, oldest first, with their byte total.
#[derive(Default)]
pub(super) struct History {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
}

/// Read access is the ring's own; every change goes through the methods
/// below so the byte counts stay right.
impl Deref for History {
    type Target = VecDeque<Arc<Message>>;

    fn deref(&self) -> &Self::Target {
        &self.messages
    }
}

fn size_of(msg: &Message) -> usize {
    msg.envelope.len()
}

impl History {
    pub(super) fn push(&mut self, msg: Arc<Message>, budget: &Budget) {
        let size = size_of(&msg);
        self.bytes += size;
        budget.total.fetch_add(size, Ordering::Relaxed);
        self.messages.push_back(msg);
    }

    pub(super) fn pop_front(&mut self, budget: &Budget) -> Option<Arc<Message>> {
        let msg = self.messages.pop_front()?;
        let size = size_of(&msg);
        self.bytes -= size;
        budget.total.fetch_sub(size, Ordering::Relaxed);
        Some(msg)
    }

    pub(super) fn clear(&mut self, budget: &Budget) {
        budget.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.messages.clear();
    }

    /// Bytes of the kept messages.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the oldest messages past `size` messages or the channel's
    /// byte limit (always keeping the newest), and those older than
    /// `max_age`.
    pub(super) fn trim(&mut self, size: usize, max_age: Duration, now: Instant, budget: &Budget) {
        while self.messages.len() > size {
            self.pop_front(budget);
        }
        while self.bytes > budget.per_channel && self.messages.len() > 1 {
            self.pop_front(budget);
            budget.evicted_channel_bytes.inc();
        }
        self.trim_by_age(max_age, now, budget);
    }

    pub(super) fn trim_by_age(&mut self, max_age: Duration, now: Instant, budget: &Budget) {
        while self
            .messages
            .front()
            .is_some_and(|m| now.saturating_duration_since(m.published_at) > max_age)
        {
            self.pop_front(budget);
        }
    }
}

/// The byte limits of history: per channel, and over the whole node.
pub(super) struct Budget {
    /// `history.max_bytes`.
    per_channel: usize,
    /// `history.max_total_bytes`.
    total_max: usize,
    /// Bytes of history held by every channel of this node.
    total: AtomicUsize,
    /// One eviction pass at a time; the others carry on publishing.
    evicting: parking_lot::Mutex<()>,
    evicted_channel_bytes: prometheus::IntCounter,
    evicted_total_bytes: prometheus::IntCounter,
    gauge: prometheus::IntGauge,
}

/// A channel's history as the eviction pass sees it.
pub(super) trait Evictable {
    /// Locks the channel and drops its oldest kept message; returns when
    /// the next oldest one was published (None: nothing left).
    fn evict_oldest(&self, budget: &Budget) -> Option<Instant>;
    /// When its oldest kept message was published.
    fn oldest(&self) -> Option<Instant>;
}

impl Budget {
    pub(super) fn new(
        per_channel: usize,
        total_max: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Budget {
        Budget {
            per_channel,
            total_max,
            total: AtomicUsize::new(0),
            evicting: parking_lot::Mutex::new(()),
            evicted_channel_bytes: metrics.floods.history_evicted_channel_bytes.clone(),
            evicted_total_bytes: metrics.floods.history_evicted_total_bytes.clone(),
            gauge: metrics.floods.history_bytes.clone(),
        }
    }

    /// Bytes of history on this node now.
    pub(super) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Over the node-wide budget: the caller should run [`Budget::evict`]
    /// (with no channel lock held). Also refreshes the gauge.
    pub(super) fn over(&self) -> bool {
        let total = self.total();
        self.gauge.set(total as i64);
        total > self.total_max
    }

    /// Drops the oldest messages of any channel until history is back
    /// under 7/8 of the budget (a margin, so that a node at its budget
    /// doesn't scan every channel on every publish). Called without any
    /// channel lock held; it takes them one at a time.
    pub(super) fn evict<E: Evictable>(&self, channels: impl Iterator<Item = E>) {
        let Some(_one_at_a_time) = self.evicting.try_lock() else {
            return;
        };
        let target = self.total_max - self.total_max / 8;
        let channels: Vec<E> = channels.collect();
        // Oldest front message first.
        let mut heap: BinaryHeap<(Reverse<Instant>, usize)> = channels
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.oldest().map(|at| (Reverse(at), i)))
            .collect();
        while self.total() > target {
            let Some((_, i)) = heap.pop() else { break };
            if let Some(next) = channels[i].evict_oldest(self) {
                heap.push((Reverse(next), i));
            }
        }
        self.gauge.set(self.total() as i64);
    }

    /// Counts one message dropped for the node-wide budget.
    pub(super) fn count_total_eviction(&self) {
        self.evicted_total_bytes.inc();
    }
}
