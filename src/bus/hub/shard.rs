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
//! channel cannot hold a worker for the whole fan-out. Handing work to a
//! task costs a wake-up (a futex call when its worker sleeps) and a poll
//! on the other side, as much as a few writes: so when a shard is idle and
//! what is queued for it is at most [`INLINE_WRITES`] writes (a channel
//! with a handful of subscribers, a subscriber joining or leaving), the
//! poster runs it itself right after releasing the channel lock ([`Shards::kick`]).
//! Whoever runs a shard's jobs — its task or a poster — holds the shard
//! ([`Runner`]) until the inbox is empty, so jobs never run on two threads
//! at once and keep their order; a poster that finds more queued when it
//! is done hands it to the task. Without a runtime (unit tests,
//! [`Shards::inline`]) there is one shard and posters run every job.
//!
//! **Several batches, one write.** A shard that is behind finds several
//! deliveries of one channel next to each other in its inbox: it writes
//! them to each subscriber together ([`Delivery`]), one write per
//! subscriber instead of one per batch, in id order as posted.
//!
//! **Bounded.** A shard that falls behind holds at most [`BACKLOG`]
//! undelivered batches before publishers wait for it
//! ([`Shards::room`]): the backlog is memory a publisher causes.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::channel::ChannelSlot;
use super::lane::Delivery;
pub(super) use super::lane::{Batch, LaneCell};
use super::polls::PollBatch;
use crate::bus::queue::SubscriberQueue;
use crate::config::ChannelMode;
use crate::metrics::Metrics;
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

/// Queued writes a poster runs itself instead of waking the shard's task
/// (see the module doc). Small: it is what a publish answer may wait for
/// (about 6 µs a write), and past a few writes the other workers writing
/// in parallel are worth their wake-up.
pub(super) const INLINE_WRITES: usize = 32;

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
    /// A batch for some of a channel's parked long-polls ([`super::polls`]).
    Polls(PollBatch),
}

/// Who holds a shard: runs the jobs taken from its inbox, the only one
/// to touch its lanes until the inbox is empty.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Runner {
    #[default]
    Nobody,
    /// The shard's task.
    Task,
    /// A poster, inline ([`Shards::kick`]).
    Poster,
}

#[derive(Default)]
struct Inbox {
    jobs: VecDeque<Job>,
    /// Writes the queued deliveries will make (their lanes' sizes when
    /// posted): what decides whether a poster may run them itself.
    writes: usize,
    /// The shard task, parked on an empty inbox (or while a poster holds
    /// the shard).
    waker: Option<Waker>,
    runner: Runner,
    closed: bool,
}

impl Inbox {
    /// Takes every queued job for `runner`, who now holds the shard.
    fn take(&mut self, runner: Runner, out: &mut VecDeque<Job>) {
        self.runner = runner;
        self.writes = 0;
        std::mem::swap(&mut self.jobs, out);
    }
}

struct Shard {
    index: usize,
    inbox: Mutex<Inbox>,
    /// No task: whoever posts runs every job (see [`Shards::inline`]).
    inline: bool,
    /// Batches posted and not yet written.
    backlog: AtomicUsize,
    /// Publishers waiting for the backlog to shrink.
    room: Notify,
    metrics: Arc<Metrics>,
}

/// The shards jobs were posted to under a channel lock; given to
/// [`Shards::kick`] once the lock is released, which runs or wakes them.
#[must_use = "hand to Shards::kick after releasing the channel lock"]
#[derive(Default)]
pub(super) struct Wakeups(Vec<usize>);

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
                    inline,
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

    /// One (not yet made) lane per shard, for a new channel.
    pub(super) fn lanes(&self) -> Box<[LaneCell]> {
        self.shards.iter().map(|_| LaneCell::default()).collect()
    }

    /// Queues `job` on shard `lane`. Called under the channel's lock: that
    /// is what orders the jobs of a channel. `writes`: how many
    /// subscribers a delivery goes to (0 for the others).
    pub(super) fn post(&self, lane: usize, job: Job, writes: usize, wakeups: &mut Wakeups) {
        let shard = &self.shards[lane];
        if matches!(job, Job::Deliver { .. }) {
            shard.backlog.fetch_add(1, Ordering::Relaxed);
        }
        let mut inbox = shard.inbox.lock();
        inbox.jobs.push_back(job);
        inbox.writes += writes;
        drop(inbox);
        if !wakeups.0.contains(&lane) {
            wakeups.0.push(lane);
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
        for (lane, &writes) in lane_sizes.iter().enumerate().filter(|(_, &n)| n > 0) {
            let job = Job::Deliver {
                slot: slot.clone(),
                batch: batch.clone(),
            };
            self.post(lane, job, writes, wakeups);
        }
    }

    /// Gets the jobs just posted going: runs those of idle shards with at
    /// most [`INLINE_WRITES`] writes queued (all of them, without a
    /// runtime) on this thread, and wakes the other shards' tasks first so
    /// they write in parallel. Called after releasing the channel lock.
    pub(super) fn kick(&self, wakeups: Wakeups) {
        let mut budget = if self.inline {
            usize::MAX
        } else {
            INLINE_WRITES
        };
        let mut here: Vec<(&Shard, VecDeque<Job>)> = Vec::new();
        for lane in wakeups.0 {
            let shard = &*self.shards[lane];
            let mut inbox = shard.inbox.lock();
            // A runner looks at the inbox again before it lets go.
            if inbox.runner != Runner::Nobody || inbox.jobs.is_empty() || inbox.closed {
                continue;
            }
            if inbox.writes <= budget {
                budget -= inbox.writes;
                let mut jobs = VecDeque::new();
                inbox.take(Runner::Poster, &mut jobs);
                here.push((shard, jobs));
            } else if let Some(waker) = inbox.waker.take() {
                drop(inbox);
                waker.wake();
            }
        }
        for (shard, jobs) in here {
            shard.run_here(jobs);
        }
    }

    /// Nothing posted is still to run (tests wait for this).
    #[cfg(test)]
    pub(super) fn settled(&self) -> bool {
        self.shards.iter().all(|shard| {
            let inbox = shard.inbox.lock();
            inbox.jobs.is_empty()
                && inbox.runner == Runner::Nobody
                && shard.backlog.load(Ordering::Acquire) == 0
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
                let Some(delivery) = self.next_delivery(job, &mut jobs) else {
                    continue;
                };
                let mut dead = Vec::new();
                let mut from = 0;
                while let Some(next) = self.deliver_chunk(&delivery, from, CHUNK, &mut dead) {
                    from = next;
                    tokio::task::yield_now().await;
                }
                self.delivered(&delivery, &dead);
            }
        }
    }

    /// Takes every job queued; false once the hub is gone. Waits while a
    /// poster holds the shard (it wakes the task if it leaves jobs).
    fn poll_jobs(&self, cx: &mut Context<'_>, out: &mut VecDeque<Job>) -> Poll<bool> {
        let mut inbox = self.inbox.lock();
        if inbox.closed {
            return Poll::Ready(false);
        }
        if inbox.runner == Runner::Poster || inbox.jobs.is_empty() {
            if inbox.runner == Runner::Task {
                inbox.runner = Runner::Nobody;
            }
            match &inbox.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => inbox.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        inbox.take(Runner::Task, out);
        Poll::Ready(true)
    }

    /// Runs `jobs`, taken by a poster that now holds the shard, on this
    /// thread; then lets go, handing whatever was posted meanwhile to the
    /// task (without a runtime: running it too).
    fn run_here(&self, mut jobs: VecDeque<Job>) {
        loop {
            while let Some(job) = jobs.pop_front() {
                let Some(delivery) = self.next_delivery(job, &mut jobs) else {
                    continue;
                };
                let mut dead = Vec::new();
                self.deliver_chunk(&delivery, 0, usize::MAX, &mut dead);
                self.delivered(&delivery, &dead);
            }
            let mut inbox = self.inbox.lock();
            if inbox.jobs.is_empty() || inbox.closed {
                inbox.runner = Runner::Nobody;
                return;
            }
            if self.inline {
                inbox.take(Runner::Poster, &mut jobs);
                continue;
            }
            inbox.runner = Runner::Nobody;
            let waker = inbox.waker.take();
            drop(inbox);
            if let Some(waker) = waker {
                waker.wake();
            }
            return;
        }
    }

    /// Applies `job` if it is a join or a leave; a delivery is returned
    /// with the deliveries of the same channel queued right behind it
    /// (taken from `rest`), to be written together.
    fn next_delivery(&self, job: Job, rest: &mut VecDeque<Job>) -> Option<Delivery> {
        match job {
            Job::Join { slot, key, queue } => {
                slot.lanes[self.index].add(key, queue);
                None
            }
            Job::Leave { slot, key } => {
                slot.lanes[self.index].remove(key);
                None
            }
            Job::Polls(batch) => {
                let mut tally = crate::metrics::DeliveryTally::new(&self.metrics);
                batch.run(&mut tally);
                None
            }
            Job::Deliver { slot, batch } => {
                let mut delivery = Delivery {
                    slot,
                    first: batch,
                    more: Vec::new(),
                    joined: Vec::new(),
                };
                while let Some(Job::Deliver { slot, batch }) = rest.front() {
                    if !Arc::ptr_eq(slot, &delivery.slot) || batch.mode != delivery.first.mode {
                        break;
                    }
                    if let Some(Job::Deliver { batch, .. }) = rest.pop_front() {
                        delivery.more.push(batch);
                    }
                }
                if !delivery.more.is_empty() {
                    delivery.joined = std::iter::once(&delivery.first)
                        .chain(&delivery.more)
                        .flat_map(|b| b.msgs.iter().cloned())
                        .collect();
                }
                Some(delivery)
            }
        }
    }

    /// Writes `delivery` to up to `max` subscribers of this shard's lane
    /// from position `from`; see [`LaneCell::write`].
    fn deliver_chunk(
        &self,
        delivery: &Delivery,
        from: usize,
        max: usize,
        dead: &mut Vec<u64>,
    ) -> Option<usize> {
        // Only this shard's runner writes its lane: never contended.
        delivery.slot.lanes[self.index].write(delivery, from, max, dead, &self.metrics)
    }

    /// This shard's part of the delivery's batches is written: forgets the
    /// dead subscribers, ends each batch's span if this was its last part,
    /// and lets waiting publishers go.
    fn delivered(&self, delivery: &Delivery, dead: &[u64]) {
        if !dead.is_empty() {
            delivery.slot.drop_members(dead);
        }
        for batch in std::iter::once(&delivery.first).chain(&delivery.more) {
            if batch.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                let span = batch.recorded_at.elapsed().as_secs_f64();
                self.metrics.fanout.seconds.observe(span);
            }
            if self.backlog.fetch_sub(1, Ordering::AcqRel) == BACKLOG + 1 {
                self.room.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
