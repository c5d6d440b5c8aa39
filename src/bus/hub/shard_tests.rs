//! Unit tests of the fan-out shards: lanes stay balanced, small fan-outs
//! are written by the publisher, deliveries queued behind each other go out
//! in one write, and racing publishers, subscribers and leavers on one
//! channel never see a gap, a duplicate or a message out of order, queued
//! or written directly, on the shard tasks or inline.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Runner, INLINE_WRITES};
use crate::bus::hub::Hub;
use crate::bus::queue::{DirectReport, DirectSink, SubscriberQueue};
use crate::config::{ChannelRules, HistoryConfig};
use crate::metrics::Metrics;
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::Message;
use crate::protocol::Transport;

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

fn sharded_hub(shards: usize, runtime: &tokio::runtime::Runtime) -> Hub {
    let history = HistoryConfig {
        size: 100_000,
        ..HistoryConfig::default()
    };
    Hub::new(ChannelRules::default(), history, Arc::new(Metrics::new()))
        .sharded(shards, runtime.handle())
}

/// Waits (bounded) until every posted job has run.
fn settle(hub: &Hub) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !hub.shards.settled() {
        assert!(Instant::now() < deadline, "the shards never settled");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn drain_ids(queue: &SubscriberQueue) -> Vec<u64> {
    let mut out = Vec::new();
    let _ = queue.try_drain(&mut out, usize::MAX);
    out.iter().map(|m| m.id).collect()
}

/// A socket that takes everything, recording the ids of the frames
/// written (one whole frame per buffer: it never writes in part), and
/// which went out in one write.
#[derive(Default)]
struct RecordingSink {
    ids: Mutex<Vec<u64>>,
    writes: Mutex<Vec<Vec<u64>>>,
}

/// The envelope id in a WebSocket frame of one.
fn frame_id(frame: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(frame);
    let at = text.find("\"id\":").expect("an envelope") + 5;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("an id")
}

impl DirectSink for RecordingSink {
    fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes {
        msg.ws_frame()
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let ids: Vec<u64> = bufs.iter().map(|b| frame_id(b)).collect();
        self.ids.lock().extend(&ids);
        self.writes.lock().push(ids);
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
}

#[test]
fn a_channels_subscribers_are_spread_evenly_over_the_shards() {
    let rt = runtime(2);
    let hub = sharded_hub(4, &rt);
    let ch = ChannelName::new("hot").unwrap();
    let queues: Vec<_> = (0..100)
        .map(|_| SubscriberQueue::new(16, Transport::WebSocket))
        .collect();
    let mut subs: Vec<_> = queues
        .iter()
        .map(|q| hub.subscribe(&ch, None, q, 0).0)
        .collect();
    // Leavers unbalance the lanes; joiners fill the emptiest first.
    subs.drain(..30);
    for q in &queues[..30] {
        subs.push(hub.subscribe(&ch, None, q, 0).0);
    }
    settle(&hub);
    let slot = hub.channels.get(&ch).unwrap().value().clone();
    let sizes: Vec<usize> = slot.lanes.iter().map(|l| l.len()).collect();
    assert_eq!(sizes, vec![25; 4], "lanes as the shards hold them");
    assert_eq!(&*slot.inner.lock().lane_sizes, &[25; 4][..]);
    // One message reaches all of them, each once.
    hub.publish_next(&ch, &Bytes::from("1"));
    settle(&hub);
    for q in &queues {
        assert_eq!(drain_ids(q), vec![1]);
    }
    assert_eq!(hub.metrics().fanout.seconds.get_sample_count(), 1);
}

#[test]
fn a_subscriber_that_overflows_leaves_its_lane_and_the_counts() {
    let rt = runtime(2);
    let hub = sharded_hub(2, &rt);
    let ch = ChannelName::new("flood").unwrap();
    let slow = SubscriberQueue::new(4, Transport::WebSocket);
    let (_sub, _) = hub.subscribe(&ch, None, &slow, 0);
    for _ in 0..10 {
        hub.publish_next(&ch, &Bytes::from("1"));
    }
    settle(&hub);
    assert_eq!(hub.subscriber_counts(&ch).websocket, 0);
    let slot = hub.channels.get(&ch).unwrap().value().clone();
    assert!(slot.lanes.iter().all(|l| l.len() == 0));
}

/// One subscriber that came and went: its history read, and what was
/// delivered to it live, queued or written directly (read once the shards
/// settle).
struct Seen {
    since: u64,
    history: Vec<u64>,
    queue: Arc<SubscriberQueue>,
    sink: Arc<RecordingSink>,
    /// The channel's last id just before and just after it left.
    left_between: (u64, u64),
}

impl Seen {
    fn ids(&self) -> Vec<u64> {
        let mut report = DirectReport::default();
        self.queue.leave_direct(&mut report);
        let mut ids = self.history.clone();
        ids.extend(self.sink.ids.lock().iter().copied());
        ids.extend(drain_ids(&self.queue));
        ids
    }
}

/// Subscribes from `since` (None: live only), optionally in direct mode,
/// stays a moment and leaves.
fn one_subscriber(hub: &Hub, ch: &ChannelName, since: Option<u64>, direct: bool) -> Seen {
    let queue = SubscriberQueue::new(1 << 20, Transport::WebSocket);
    let sink = Arc::new(RecordingSink::default());
    let (sub, read) = hub.subscribe(ch, since.map(Since::plain), &queue, usize::MAX);
    assert!(!read.truncated, "history is large enough");
    if direct {
        // Cursor 0, not `read.last_id`: the queue would hide a duplicate
        // the shards sent, and this test is about the shards.
        let mut report = DirectReport::default();
        report.written.push((ch.clone(), read.epoch, 0));
        let dyn_sink: Arc<dyn DirectSink> = sink.clone();
        // Refused only while something is queued: then it stays queued.
        queue.enter_direct(&dyn_sink, &mut report);
    }
    std::thread::sleep(Duration::from_micros(200));
    let before = hub.last_id(ch);
    drop(sub);
    let after = hub.last_id(ch);
    Seen {
        since: since.unwrap_or(read.last_id),
        history: read.messages.iter().map(|m| m.id).collect(),
        queue,
        sink,
        left_between: (before, after),
    }
}

fn check(seen: &Seen) {
    let ids = seen.ids();
    let expected_first = seen.since + 1;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            *id,
            expected_first + i as u64,
            "from {}: a gap, duplicate or reordering at #{i}: {:?}",
            seen.since,
            ids
        );
    }
    let last = ids.last().copied().unwrap_or(seen.since);
    let (before, after) = seen.left_between;
    assert!(
        last >= before && last <= after,
        "from {}: got up to {last}, but it left when the channel was between {before} and {after}",
        seen.since
    );
}

/// Publishers, joiners and leavers racing on one channel that also has
/// `stayers` subscribers all along; every subscriber must see every
/// message of its time on the channel, once, in order.
fn race(stayers: usize) {
    const ROUNDS: u64 = 40;
    let rt = runtime(4);
    let hub = sharded_hub(4, &rt);
    let ch = ChannelName::new("race").unwrap();
    let staying: Vec<_> = (0..stayers)
        .map(|_| {
            let queue = SubscriberQueue::new(1 << 20, Transport::WebSocket);
            let (sub, read) = hub.subscribe(&ch, None, &queue, 0);
            (sub, queue, read.last_id)
        })
        .collect();
    let subscribing = AtomicBool::new(true);
    let seen = Mutex::new(Vec::new());
    let published: u64 = std::thread::scope(|s| {
        let publishers: Vec<_> = (0..3u64)
            .map(|p| {
                let (hub, ch, subscribing) = (&hub, &ch, &subscribing);
                s.spawn(move || {
                    let mut published = 0;
                    // Bounded, in case the subscribers hang.
                    for i in 0..20_000u64 {
                        if !subscribing.load(Ordering::Relaxed) {
                            break;
                        }
                        let n = 1 + (i + p) % 3;
                        let data: Vec<Bytes> = (0..n).map(|_| Bytes::from("1")).collect();
                        hub.publish_next_many(ch, &data);
                        published += n;
                        std::thread::yield_now();
                    }
                    published
                })
            })
            .collect();
        let subscribers: Vec<_> = (0..4u64)
            .map(|t| {
                let (hub, ch, seen) = (&hub, &ch, &seen);
                s.spawn(move || {
                    for round in 0..ROUNDS {
                        // Live only, from a recent cursor, from the start;
                        // and queued or direct.
                        let since = match (round + t) % 3 {
                            0 => None,
                            1 => Some(hub.last_id(ch).saturating_sub(5)),
                            _ => Some(0),
                        };
                        let got = one_subscriber(hub, ch, since, round % 2 == 0);
                        seen.lock().push(got);
                    }
                })
            })
            .collect();
        for sub in subscribers {
            sub.join().unwrap();
        }
        subscribing.store(false, Ordering::Relaxed);
        publishers.into_iter().map(|p| p.join().unwrap()).sum()
    });
    settle(&hub);
    let seen = seen.into_inner();
    assert_eq!(seen.len() as u64, 4 * ROUNDS);
    for got in &seen {
        check(got);
    }
    assert_eq!(hub.last_id(&ch), published);
    // Some subscriptions overlapped live publishing (the race is real).
    assert!(seen.iter().any(|s| s.left_between.0 > s.since));
    for (_sub, queue, since) in &staying {
        let want: Vec<u64> = (since + 1..=published).collect();
        assert_eq!(drain_ids(queue), want, "a subscriber that stayed");
    }
}

#[test]
fn racing_publishers_joiners_and_leavers_see_every_message_once_in_order() {
    // A few subscribers at a time: the publishers write them inline.
    race(0);
}

#[test]
fn racing_on_a_channel_the_shard_tasks_write_loses_nothing() {
    // 200 more, 50 per shard: past INLINE_WRITES, so the shard tasks
    // write, and posters find them busy.
    const { assert!(200 / 4 > INLINE_WRITES) };
    race(200);
}

#[test]
fn a_small_fan_out_is_written_before_the_publish_returns() {
    let rt = runtime(2);
    let hub = sharded_hub(2, &rt);
    let ch = ChannelName::new("few").unwrap();
    let queues: Vec<_> = (0..3)
        .map(|_| SubscriberQueue::new(16, Transport::WebSocket))
        .collect();
    let _subs: Vec<_> = queues
        .iter()
        .map(|q| hub.subscribe(&ch, None, q, 0).0)
        .collect();
    settle(&hub);
    for id in 1..=3 {
        hub.publish_next(&ch, &Bytes::from("1"));
        // No task hop: the shards were idle and had three writes to make.
        for q in &queues {
            assert_eq!(drain_ids(q), vec![id]);
        }
    }
    assert!(hub.shards.settled());
    assert_eq!(hub.metrics().fanout.seconds.get_sample_count(), 3);
}

/// A subscriber in direct mode on `ch` from id 0.
fn direct_subscriber(
    hub: &Hub,
    ch: &ChannelName,
) -> (
    super::super::Subscription,
    Arc<SubscriberQueue>,
    Arc<RecordingSink>,
) {
    let queue = SubscriberQueue::new(64, Transport::WebSocket);
    let sink = Arc::new(RecordingSink::default());
    let (sub, read) = hub.subscribe(ch, None, &queue, 0);
    let mut report = DirectReport::default();
    report.written.push((ch.clone(), read.epoch, read.last_id));
    let dyn_sink: Arc<dyn DirectSink> = sink.clone();
    assert!(queue.enter_direct(&dyn_sink, &mut report));
    (sub, queue, sink)
}

#[test]
fn deliveries_queued_behind_each_other_go_out_in_one_write_around_joins_and_leaves() {
    // No runtime: one shard, run by whoever posts. Held here as if a
    // poster were busy on it, so what follows queues up in its inbox.
    let hub = Hub::new(
        ChannelRules::default(),
        HistoryConfig::default(),
        Arc::new(Metrics::new()),
    );
    let ch = ChannelName::new("behind").unwrap();
    let (_stays, _q1, stays) = direct_subscriber(&hub, &ch);
    let (leaves, _q2, leaver) = direct_subscriber(&hub, &ch);
    let shard = &hub.shards.shards[0];
    shard.inbox.lock().runner = Runner::Poster;

    hub.publish_next(&ch, &Bytes::from("1"));
    hub.publish_next(&ch, &Bytes::from("2"));
    drop(leaves);
    hub.publish_next(&ch, &Bytes::from("3"));
    let joiner = SubscriberQueue::new(64, Transport::WebSocket);
    let (_joined, read) = hub.subscribe(&ch, Some(Since::plain(0)), &joiner, usize::MAX);
    hub.publish_next(&ch, &Bytes::from("4"));
    hub.publish_next(&ch, &Bytes::from("5"));
    assert!(stays.ids.lock().is_empty(), "all queued behind the holder");

    let mut jobs = VecDeque::new();
    shard.inbox.lock().take(Runner::Poster, &mut jobs);
    shard.run_here(jobs);

    // Batches next to each other: one write; a leave or a join between
    // them splits the run there.
    assert_eq!(*stays.writes.lock(), vec![vec![1, 2], vec![3], vec![4, 5]]);
    assert_eq!(
        *leaver.writes.lock(),
        vec![vec![1, 2]],
        "nothing after it left"
    );
    let history: Vec<u64> = read.messages.iter().map(|m| m.id).collect();
    assert_eq!(history, vec![1, 2, 3]);
    assert_eq!(
        drain_ids(&joiner),
        vec![4, 5],
        "live from where history ended"
    );
    assert!(hub.shards.settled());
    assert_eq!(hub.metrics().fanout.seconds.get_sample_count(), 5);
}

#[test]
fn a_poster_that_finds_the_shard_held_leaves_its_jobs_to_the_holder() {
    let rt = runtime(2);
    let hub = sharded_hub(1, &rt);
    let ch = ChannelName::new("held").unwrap();
    let queue = SubscriberQueue::new(64, Transport::WebSocket);
    let (_sub, _) = hub.subscribe(&ch, None, &queue, 0);
    settle(&hub);
    let shard = &hub.shards.shards[0];
    // A poster holds the shard: the task must not run what is posted now.
    shard.inbox.lock().runner = Runner::Poster;
    hub.publish_next(&ch, &Bytes::from("1"));
    hub.publish_next(&ch, &Bytes::from("2"));
    std::thread::sleep(Duration::from_millis(20));
    assert!(drain_ids(&queue).is_empty(), "run by nobody but the holder");
    // The holder runs what it took, finds the rest and hands it to the
    // task.
    shard.run_here(VecDeque::new());
    settle(&hub);
    assert_eq!(drain_ids(&queue), vec![1, 2]);
}
