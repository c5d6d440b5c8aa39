//! Fan-out shards: each channel's subscribers are spread over one shard
//! per runtime worker, and each shard writes its own subscribers on its
//! own task, so one hot feed is written by every core at once and the
//! publisher does not wait for the writes.
//!
//! **Order without holding the channel lock.** Everything that changes
//! who gets what — a subscriber joining or leaving, a recorded batch of
//! messages — is posted to the shard as a [`Job`] *while the channel's
//! lock is held*, into the shard's FIFO inbox. The lock already orders
//! these events (ids are assigned and history is read under it), so each
//! shard sees them in exactly that order: a subscriber joins after every
//! message its history read covered and before every message recorded
//! later, and batches of one channel arrive in id order. No gap, no
//! duplicate, no cursor check needed on the hot path. The shard's
//! subscriber list of a channel (its [`Lane`]) is touched by that shard
//! alone, so the sends hold no lock a subscribe, a read or a publish
//! needs.
//!
//! **Where jobs run.** With a runtime, each shard is a task
//! ([`Shards::start`]); the scheduler spreads the woken shard tasks over
//! the worker threads. A shard yields every [`CHUNK`] writes so a huge
//! channel cannot hold a worker for the whole fan-out. Without a runtime
//! (unit tests, [`Shards::inline`]) there is one shard and whoever posted
//! a job runs the inbox right after releasing the channel lock.
//!
//! **Bounded.** A shard that falls behind holds at most [`BACKLOG`]
//! undelivered batches before publishers wait for it
//! ([`Shards::room`]): the backlog is memory a publisher causes.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::channel::ChannelSlot;
use crate::bus::queue::{Pushed, SubscriberQueue};
use crate::config::ChannelMode;
use crate::metrics::{DeliveryTally, Metrics};
use crate::protocol::Message;

/// Writes a shard task makes before it yields to the other tasks of its
/// worker.
pub(super) const CHUNK: usize = 256;

/// Undelivered batches one shard may hold before publishers wait. Small:
/// past it the fan-out cannot keep up, and a longer queue would only turn
/// into delivery latency (each batch waits for those before it: measured,
/// 8 batches of 5,000 subscribers on an overloaded core were 3 s) instead
/// of slowing the publishers down, as writing inline used to. Not 1: a
/// publish on another channel then waited for any fan-out in progress.
pub(super) const BACKLOG: usize = 2;

/// One shard's subscribers of one channel, in delivery order, with each
/// key's position for O(1) removal.
#[derive(Default)]
pub(super) struct Lane {
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

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.subscribers.len()
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
    parts_left: AtomicUsize,
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

/// What a shard is told, in the channel lock's order.
pub(super) enum Job {
    Join {
        slot: Arc<ChannelSlot>,
        key: u64,
        queue: Arc<SubscriberQueue>,
    },
    Leave {
        slot: Arc<ChannelSlot>,
        key: u64,
    },
    Deliver {
        slot: Arc<ChannelSlot>,
        batch: Arc<Batch>,
    },
}

#[derive(Default)]
struct Inbox {
    jobs: VecDeque<Job>,
    /// The shard task, parked on an empty inbox.
    waker: Option<Waker>,
    /// Someone is running jobs taken from here (inline mode: one runner
    /// at a time).
    running: bool,
    closed: bool,
}

struct Shard {
    index: usize,
    inbox: Mutex<Inbox>,
    /// Batches posted and not yet written.
    backlog: AtomicUsize,
    /// Publishers waiting for the backlog to shrink.
    room: Notify,
    metrics: Arc<Metrics>,
}

/// Task wake-ups owed after posting jobs; given back to
/// [`Shards::kick`] once the channel lock is released.
#[must_use = "hand to Shards::kick after releasing the channel lock"]
#[derive(Default)]
pub(super) struct Wakeups(Vec<Waker>);

/// Every shard of a hub.
pub(super) struct Shards {
    shards: Box<[Arc<Shard>]>,
    /// No tasks: posters run the jobs themselves.
    inline: bool,
}

impl Shards {
    fn build(count: usize, metrics: &Arc<Metrics>, inline: bool) -> Shards {
        let shards = (0..count.max(1))
            .map(|index| {
                Arc::new(Shard {
                    index,
                    inbox: Mutex::new(Inbox::default()),
                    backlog: AtomicUsize::new(0),
                    room: Notify::new(),
                    metrics: metrics.clone(),
                })
            })
            .collect();
        Shards { shards, inline }
    }

    /// One shard run by whoever posts to it: for hubs without a runtime.
    pub(super) fn inline(metrics: &Arc<Metrics>) -> Shards {
        Self::build(1, metrics, true)
    }

    /// `count` shards, each a task on `runtime`.
    pub(super) fn start(
        count: usize,
        metrics: &Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
    ) -> Shards {
        let shards = Self::build(count, metrics, false);
        for shard in shards.shards.iter() {
            runtime.spawn(shard.clone().run());
        }
        shards
    }

    pub(super) fn count(&self) -> usize {
        self.shards.len()
    }

    /// One empty lane per shard, for a new channel.
    pub(super) fn lanes(&self) -> Box<[Mutex<Lane>]> {
        self.shards.iter().map(|_| Mutex::default()).collect()
    }

    /// Queues `job` on shard `lane`. Called under the channel's lock: that
    /// is what orders the jobs of a channel.
    pub(super) fn post(&self, lane: usize, job: Job, wakeups: &mut Wakeups) {
        let shard = &self.shards[lane];
        if matches!(job, Job::Deliver { .. }) {
            shard.backlog.fetch_add(1, Ordering::Relaxed);
        }
        let mut inbox = shard.inbox.lock();
        inbox.jobs.push_back(job);
        if let Some(waker) = inbox.waker.take() {
            wakeups.0.push(waker);
        }
    }

    /// Hands `msgs` (just recorded, under the channel lock) to every shard
    /// with subscribers of the channel; `lane_sizes` says which have.
    pub(super) fn fan_out(
        &self,
        slot: &Arc<ChannelSlot>,
        lane_sizes: &[usize],
        msgs: &[Arc<Message>],
        mode: ChannelMode,
        wakeups: &mut Wakeups,
    ) {
        let parts = lane_sizes.iter().filter(|&&n| n > 0).count();
        if parts == 0 || msgs.is_empty() {
            return;
        }
        let batch = Batch::new(msgs, mode, parts);
        for (lane, _) in lane_sizes.iter().enumerate().filter(|(_, &n)| n > 0) {
            let job = Job::Deliver {
                slot: slot.clone(),
                batch: batch.clone(),
            };
            self.post(lane, job, wakeups);
        }
    }

    /// Wakes the shard tasks jobs were posted to (inline: runs the jobs).
    /// Called after releasing the channel lock.
    pub(super) fn kick(&self, wakeups: Wakeups) {
        for waker in wakeups.0 {
            waker.wake();
        }
        if self.inline {
            for shard in self.shards.iter() {
                shard.run_inline();
            }
        }
    }

    /// Nothing posted is still to run (tests wait for this).
    #[cfg(test)]
    pub(super) fn settled(&self) -> bool {
        self.shards.iter().all(|shard| {
            let inbox = shard.inbox.lock();
            inbox.jobs.is_empty() && !inbox.running && shard.backlog.load(Ordering::Acquire) == 0
        })
    }

    /// Waits while any shard is more than [`BACKLOG`] batches behind.
    pub(super) async fn room(&self) {
        for shard in self.shards.iter() {
            loop {
                let notified = shard.room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shard.backlog.load(Ordering::Relaxed) <= BACKLOG {
                    break;
                }
                notified.await;
            }
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            let mut inbox = shard.inbox.lock();
            inbox.closed = true;
            inbox.jobs.clear();
            if let Some(waker) = inbox.waker.take() {
                drop(inbox);
                waker.wake();
            }
        }
    }
}

impl Shard {
    /// The shard task: runs jobs as they come, until the hub is dropped.
    async fn run(self: Arc<Self>) {
        let mut jobs = VecDeque::new();
        while poll_fn(|cx| self.poll_jobs(cx, &mut jobs)).await {
            while let Some(job) = jobs.pop_front() {
                let Job::Deliver { slot, batch } = job else {
                    self.apply(job);
                    continue;
                };
                let mut dead = Vec::new();
                let mut from = 0;
                while let Some(next) = self.deliver_chunk(&slot, &batch, from, CHUNK, &mut dead) {
                    from = next;
                    tokio::task::yield_now().await;
                }
                self.delivered(&slot, &batch, &dead);
            }
        }
    }

    /// Takes every job queued; false once the hub is gone.
    fn poll_jobs(&self, cx: &mut Context<'_>, out: &mut VecDeque<Job>) -> Poll<bool> {
        let mut inbox = self.inbox.lock();
        if inbox.closed {
            return Poll::Ready(false);
        }
        if inbox.jobs.is_empty() {
            inbox.running = false;
            match &inbox.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => inbox.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        inbox.running = true;
        std::mem::swap(&mut inbox.jobs, out);
        Poll::Ready(true)
    }

    /// Runs the inbox on this thread unless someone already is (who then
    /// also runs what was just posted: it looks again before it stops).
    fn run_inline(&self) {
        let mut jobs = {
            let mut inbox = self.inbox.lock();
            if inbox.running || inbox.jobs.is_empty() {
                return;
            }
            inbox.running = true;
            std::mem::take(&mut inbox.jobs)
        };
        loop {
            while let Some(job) = jobs.pop_front() {
                let Job::Deliver { slot, batch } = job else {
                    self.apply(job);
                    continue;
                };
                let mut dead = Vec::new();
                self.deliver_chunk(&slot, &batch, 0, usize::MAX, &mut dead);
                self.delivered(&slot, &batch, &dead);
            }
            let mut inbox = self.inbox.lock();
            if inbox.jobs.is_empty() {
                inbox.running = false;
                return;
            }
            std::mem::swap(&mut inbox.jobs, &mut jobs);
        }
    }

    fn apply(&self, job: Job) {
        match job {
            Job::Join { slot, key, queue } => slot.lanes[self.index].lock().add(key, queue),
            Job::Leave { slot, key } => slot.lanes[self.index].lock().remove(key),
            Job::Deliver { .. } => unreachable!("deliveries are run by the caller"),
        }
    }

    /// Writes `batch` to up to `max` subscribers of this shard's lane from
    /// position `from`; returns where to go on, or None when the lane is
    /// done. Subscribers whose queue overflowed or closed leave the lane
    /// (their keys go to `dead`); their readers learn of it from the queue.
    fn deliver_chunk(
        &self,
        slot: &ChannelSlot,
        batch: &Batch,
        from: usize,
        max: usize,
        dead: &mut Vec<u64>,
    ) -> Option<usize> {
        // Only this shard locks its lane: the lock is never contended.
        let mut lane = slot.lanes[self.index].lock();
        // Flushed to the shared counters once, when this chunk is done.
        let mut tally = DeliveryTally::new(&self.metrics);
        let mut i = from;
        let mut done = 0;
        while i < lane.subscribers.len() {
            if done == max {
                return Some(i);
            }
            done += 1;
            let (key, queue) = &lane.subscribers[i];
            match queue.push_all(&batch.msgs, batch.mode, &mut tally) {
                Pushed::Queued | Pushed::Written => i += 1,
                Pushed::Conflated { count } => {
                    self.metrics
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
        None
    }

    /// This shard's part of `batch` is written: forgets the dead
    /// subscribers, ends the span if it was the last part, and lets
    /// waiting publishers go.
    fn delivered(&self, slot: &ChannelSlot, batch: &Batch, dead: &[u64]) {
        if !dead.is_empty() {
            slot.drop_members(dead);
        }
        if batch.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let span = batch.recorded_at.elapsed().as_secs_f64();
            self.metrics.fanout.seconds.observe(span);
        }
        if self.backlog.fetch_sub(1, Ordering::AcqRel) == BACKLOG + 1 {
            self.room.notify_waiters();
        }
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
