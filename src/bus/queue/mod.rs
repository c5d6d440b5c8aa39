//! The per-subscriber queue between the bus and one client connection.
//!
//! Publishers push shared `Arc<Message>`s and never wait; the connection
//! drains everything queued in one go (so one socket write can carry many
//! frames). The queue is bounded: a `stream` subscriber that falls
//! `capacity` messages behind is cut off (the connection closes it with a
//! "slow consumer" reason), a `state` subscriber keeps only the newest
//! message per channel. Either way no client can make the gateway's memory
//! grow without bound.
//!
//! **Direct delivery.** While a connection is idle and has nothing queued,
//! it can lend the queue a [`DirectSink`]: the publisher then writes each
//! message to the socket itself (a non-blocking `write()` of the shared,
//! pre-encoded frame) instead of queueing it and waking the connection's
//! task. That task wake-up was most of the gateway's CPU per delivery
//! above the bare `write()`. The first write the socket does not take whole
//! ends direct mode: what it did not take is kept here (the unsent tail of
//! a frame, then whole messages) and the connection's task is woken to
//! finish it with ordinary awaited writes. Only one side writes at a time:
//! the publisher only under this queue's lock while direct mode is on, the
//! task only after taking direct mode back under the same lock.
//!
//! **Output limits.** A client's queue (see [`SubscriberQueue::for_client`])
//! also counts the bytes it holds against the client's
//! [`OutputAccount`](crate::net::output::OutputAccount): past the
//! per-client hard limit (or the soft one for too long) it closes with
//! [`QueueClosed::OutputLimit`], and the output reaper may close it the same
//! way when the gateway-wide budget runs out. Messages written directly
//! never count.

mod direct;
mod drain;

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;

use crate::config::ChannelMode;
use crate::metrics::DeliveryTally;
use crate::net::output::{OutputAccount, OutputBudget, Verdict};
use crate::protocol::Message;
use crate::protocol::Transport;
pub use direct::{DirectReport, DirectSink};

/// Why a queue stopped delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueClosed {
    /// The subscriber fell more than `capacity` messages behind.
    Overflow,
    /// The gateway is shutting down or the subscription was ended.
    Shutdown,
    /// The client holds too much unsent output (its own limits, or the
    /// gateway-wide budget): it is dropped.
    OutputLimit,
}

/// What happened to one pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Written straight to the subscriber's socket (direct mode).
    Written,
    /// `state` messages replaced `count` undelivered older ones of their
    /// channel.
    Conflated {
        count: usize,
    },
    /// The queue was full: it is now closed; `dropped` messages were lost
    /// for this subscriber (the queued ones and this one).
    Overflowed {
        dropped: usize,
    },
    /// The queue was already closed.
    Closed,
}

struct State {
    items: VecDeque<Arc<Message>>,
    waker: Option<Waker>,
    closed: Option<QueueClosed>,
    /// Messages lost to the overflow (what was queued, and the one that
    /// did not fit): at most `capacity + 1`. (`u32`: every idle connection
    /// holds a queue, and its size decides its allocation class; see
    /// `a_queue_stays_small`.)
    dropped: u32,
    /// Set while the publisher writes to the connection itself.
    direct: Option<Arc<dyn DirectSink>>,
    /// Written directly since the connection last took its socket back.
    report: DirectReport,
    /// `report` is the connection's, lent by `enter_direct`.
    report_lent: bool,
    /// The client's output account, made when the queue first holds
    /// something (most WebSocket queues never do: direct mode), so an idle
    /// connection pays nothing for it. Its pending bytes are the envelope
    /// bytes of `items`.
    output: Option<Arc<OutputAccount>>,
}

/// What a queued message counts for: its envelope (every transport's
/// encoding of it is a few bytes more).
fn cost(msg: &Message) -> usize {
    msg.envelope.len()
}

/// One subscriber's queue, shared by every channel it is subscribed to.
pub struct SubscriberQueue {
    state: Mutex<State>,
    /// `limits.queue_length` (`u32`, as `State::dropped`).
    capacity: u32,
    transport: Transport,
    /// Where the client's output account comes from (None: uncounted,
    /// e.g. a held poll's one-off queue).
    budget: Option<Arc<OutputBudget>>,
}

impl SubscriberQueue {
    /// A queue whose bytes count against nobody's output limits.
    pub fn new(capacity: usize, transport: Transport) -> Arc<SubscriberQueue> {
        Arc::new(Self::build(capacity, transport, None))
    }

    /// A client connection's queue: what it holds counts against the
    /// client's output limits and the gateway's output budget.
    pub fn for_client(
        capacity: usize,
        transport: Transport,
        budget: &Arc<OutputBudget>,
    ) -> Arc<SubscriberQueue> {
        Arc::new(Self::build(capacity, transport, Some(budget.clone())))
    }

    fn build(
        capacity: usize,
        transport: Transport,
        budget: Option<Arc<OutputBudget>>,
    ) -> SubscriberQueue {
        SubscriberQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                waker: None,
                closed: None,
                dropped: 0,
                direct: None,
                report: DirectReport::default(),
                report_lent: false,
                output: None,
            }),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
            transport,
            budget,
        }
    }

    /// The client's output account, made now if need be (None: this queue
    /// is not counted).
    pub fn output(self: &Arc<Self>) -> Option<Arc<OutputAccount>> {
        let mut state = self.state.lock();
        self.account(&mut state).cloned()
    }

    fn account<'s>(self: &Arc<Self>, state: &'s mut State) -> Option<&'s Arc<OutputAccount>> {
        let budget = self.budget.as_ref()?;
        Some(state.output.get_or_insert_with(|| {
            let account = budget.account(self.transport);
            account.attach_queue(Arc::downgrade(self));
            account
        }))
    }

    /// Takes `bytes` off the queue's count (messages left it).
    fn release(state: &mut State, bytes: usize) {
        if let Some(account) = &state.output {
            account.sub(bytes);
        }
    }

    /// Takes everything queued off the count.
    fn release_all(state: &mut State) {
        if let Some(account) = &state.output {
            account.sub(account.pending());
        }
    }

    /// The transport this subscriber reads through (for metrics and stats).
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Adds a message, counting direct writes nowhere (tests).
    #[cfg(test)]
    pub fn push(self: &Arc<Self>, msg: &Arc<Message>, mode: ChannelMode) -> Pushed {
        let mut tally = crate::metrics::DeliveryTally::detached();
        self.push_all(std::slice::from_ref(msg), mode, &mut tally)
    }

    /// Adds several messages of one channel in order: in direct mode they
    /// go out in one vectored write, and are counted in `tally` (the
    /// caller's, flushed to the shared counters once per many writes).
    /// Never blocks beyond a short uncontended lock (and, in direct mode,
    /// one non-blocking write). Returns the outcome of the last one
    /// (`Conflated` if any was, `Overflowed` if it stopped).
    pub fn push_all(
        self: &Arc<Self>,
        msgs: &[Arc<Message>],
        mode: ChannelMode,
        tally: &mut DeliveryTally<'_>,
    ) -> Pushed {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        let mut rest = msgs;
        if state.direct.is_some() {
            let written = write_direct(&mut state, msgs, self.transport, tally);
            if written == msgs.len() {
                if state.direct.is_none() {
                    // The last frame went out in part: direct mode ended
                    // and the connection must send its tail now, not at
                    // its next wake-up for something else (a parked one
                    // would wait for its ping).
                    wake_reader(state);
                }
                return Pushed::Written;
            }
            rest = &msgs[written..];
        }
        let mut outcome = Pushed::Queued;
        let mut conflated = 0;
        let counted = self.budget.is_some();
        let (mut added, mut removed) = (0, 0);
        for msg in rest {
            if mode == ChannelMode::State {
                if let Some(pos) = state.items.iter().position(|m| m.channel == msg.channel) {
                    if let Some(old) = state.items.remove(pos) {
                        removed += if counted { cost(&old) } else { 0 };
                    }
                    conflated += 1;
                    outcome = Pushed::Conflated { count: conflated };
                }
            }
            if state.items.len() >= self.capacity as usize {
                let dropped = state.items.len() + 1;
                state.items = VecDeque::new();
                removed = state.output.as_ref().map_or(0, |a| a.pending()) + added;
                state.closed = Some(QueueClosed::Overflow);
                state.dropped = saturate(dropped);
                outcome = Pushed::Overflowed { dropped };
                break;
            }
            added += if counted { cost(msg) } else { 0 };
            state.items.push_back(msg.clone());
        }
        if counted && added != removed {
            let verdict = match self.account(&mut state) {
                Some(account) if added > removed => account.add(added - removed),
                Some(account) => {
                    account.sub(removed - added);
                    Verdict::Fine
                }
                None => Verdict::Fine,
            };
            if let Verdict::Drop(why) = verdict {
                // Dropped like an overflow, but for good: no catching up.
                let dropped = state.items.len();
                state.items = VecDeque::new();
                Self::release_all(&mut state);
                state.closed = Some(QueueClosed::OutputLimit);
                state.direct = None;
                state.dropped = saturate(dropped);
                if let Some(account) = &state.output {
                    account.mark_dropped(why);
                }
                outcome = Pushed::Overflowed { dropped };
            }
        }
        wake_reader(state);
        outcome
    }
}

/// A count of messages as the queue keeps it.
fn saturate(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Wakes the connection's task, if it waits, after letting the lock go (a
/// woken task may lock the queue at once).
fn wake_reader(mut state: parking_lot::MutexGuard<'_, State>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(w) = waker {
        w.wake();
    }
}

/// Writes `msgs` (one channel's, in id order) through the direct sink,
/// several per system call, skipping those the connection already has;
/// returns how many are done with (the last written perhaps in part: its
/// unsent tail is kept in the report). Direct mode ends at the first write
/// the socket does not take whole, and on a delta channel at the first
/// message with no delta against the one before (see [`direct`]).
fn write_direct(
    state: &mut State,
    msgs: &[Arc<Message>],
    transport: Transport,
    tally: &mut DeliveryTally<'_>,
) -> usize {
    const CHUNK: usize = 16;
    let Some(first) = msgs.first() else {
        return 0;
    };
    let Some(sink) = state.direct.take() else {
        return 0;
    };
    let Some(cursor) = state
        .report
        .written
        .iter()
        .position(|(channel, _, _)| *channel == first.channel)
    else {
        // The connection lent a cursor for every channel it is subscribed
        // to: this one it left. A fan-out shard may still hold messages
        // recorded before it left; they must not follow the
        // `unsubscribed` answer.
        state.direct = Some(sink);
        return msgs.len();
    };
    if state.report.written[cursor].1 != first.epoch {
        // A new sequence: the connection must say `truncated` first. Direct
        // mode ends here (the sink is not put back).
        return 0;
    }
    let deltas = state.report.is_delta_channel(&first.channel);
    let known = state.report.written[cursor].2;
    let skip = msgs.iter().take_while(|m| m.id <= known).count();
    // The value the connection holds (delta channels): the last written.
    let mut holds = known;
    let mut out = skip;
    let mut keep_direct = true;
    for chunk in msgs[skip..].chunks(CHUNK) {
        let mut frames = [None; CHUNK];
        let ready = chunk_frames(&*sink, chunk, deltas.then_some(&mut holds), &mut frames);
        let frames = frames[..ready].iter().map(|f| f.expect("set above"));
        let mut slices = [IoSlice::new(&[]); CHUNK];
        let mut total = 0;
        for (slot, frame) in slices.iter_mut().zip(frames.clone()) {
            total += frame.len();
            *slot = IoSlice::new(frame);
        }
        // An error (peer gone) is the connection task's to find and report.
        let n = match ready {
            0 => 0,
            _ => sink.try_write_vectored(&slices[..ready]).unwrap_or(0),
        };
        let (mut sent, partial) = taken(frames, n);
        if let Some(rest) = partial {
            state.report.set_remainder(rest);
            sent += 1;
        }
        if sent > 0 {
            let done = &chunk[..sent];
            state.report.written[cursor].2 = done[sent - 1].id;
            tally.record(transport, done);
            if deltas {
                sink.delivered_deltas(done);
            } else {
                sink.delivered(done);
            }
        }
        out += sent;
        if n < total || ready < chunk.len() {
            keep_direct = false;
            break;
        }
    }
    if keep_direct {
        state.direct = Some(sink);
    }
    out
}

/// Fills `frames` with `chunk`'s frames as the connection reads them:
/// whole, or on a delta channel (`holds`: the id of the value it holds,
/// moved on) each message's delta against the one before, stopping at the
/// first message with none. Returns how many are ready.
fn chunk_frames<'m>(
    sink: &dyn DirectSink,
    chunk: &'m [Arc<Message>],
    mut holds: Option<&mut u64>,
    frames: &mut [Option<&'m bytes::Bytes>],
) -> usize {
    let mut ready = 0;
    for (msg, slot) in chunk.iter().zip(frames.iter_mut()) {
        let frame = match holds.as_deref_mut() {
            Some(held) => sink.encoded_delta(msg, *held).inspect(|_| *held = msg.id),
            None => Some(sink.encoded(msg)),
        };
        let Some(frame) = frame else { break };
        *slot = Some(frame);
        ready += 1;
    }
    ready
}

/// How many of `frames` a write of `n` bytes took whole, and the unsent
/// tail of the one it took in part.
fn taken<'f>(
    frames: impl Iterator<Item = &'f bytes::Bytes>,
    n: usize,
) -> (usize, Option<bytes::Bytes>) {
    let mut left = n;
    let mut sent = 0;
    for frame in frames {
        if left < frame.len() {
            return (sent, (left > 0).then(|| frame.slice(left..)));
        }
        left -= frame.len();
        sent += 1;
    }
    (sent, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::protocol::channel::ChannelName;
    use crate::protocol::Epoch;
    use bytes::Bytes;
    use std::io::{self, IoSlice};
    use std::time::Instant;

    fn epoch() -> Epoch {
        Epoch::parse(b"e1").unwrap()
    }

    #[test]
    fn a_queue_stays_small() {
        // Every idle WebSocket holds one in an `Arc` (16 bytes of counts):
        // 176 bytes was jemalloc's 192-byte class; up to 144, the 160-byte
        // one (the delta channels boxed with the report's tail, the counts
        // `u32`).
        let size = std::mem::size_of::<SubscriberQueue>();
        eprintln!("SubscriberQueue: {size} bytes");
        assert!(size <= 144, "SubscriberQueue grew to {size} bytes");
    }

    fn msg(channel: &str, id: u64) -> Arc<Message> {
        msg_in(epoch(), channel, id)
    }

    fn msg_in(epoch: Epoch, channel: &str, id: u64) -> Arc<Message> {
        Arc::new(Message::new(
            ChannelName::new(channel).unwrap(),
            epoch,
            id,
            b"1",
            Instant::now(),
        ))
    }

    #[test]
    fn stream_queue_overflows_and_closes() {
        let q = SubscriberQueue::new(2, Transport::WebSocket);
        assert_eq!(q.push(&msg("a", 1), ChannelMode::Stream), Pushed::Queued);
        assert_eq!(q.push(&msg("a", 2), ChannelMode::Stream), Pushed::Queued);
        assert_eq!(
            q.push(&msg("a", 3), ChannelMode::Stream),
            Pushed::Overflowed { dropped: 3 }
        );
        assert_eq!(q.push(&msg("a", 4), ChannelMode::Stream), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(q.try_drain(&mut out, 10), Err(QueueClosed::Overflow));
        assert!(out.is_empty());
        assert_eq!(q.overflow_dropped(), 3);
    }

    #[test]
    fn state_queue_keeps_newest_per_channel() {
        let q = SubscriberQueue::new(2, Transport::Sse);
        for id in 1..=100 {
            assert_ne!(
                q.push(&msg("price", id), ChannelMode::State),
                Pushed::Closed
            );
        }
        q.push(&msg("other", 1), ChannelMode::State);
        let mut out = Vec::new();
        q.try_drain(&mut out, 10).unwrap();
        let got: Vec<_> = out.iter().map(|m| (m.channel.to_string(), m.id)).collect();
        assert_eq!(got, vec![("price".into(), 100), ("other".into(), 1)]);
    }

    /// A socket that takes at most `room` more bytes, then would block.
    struct FakeSink {
        room: Mutex<usize>,
        wire: Mutex<Vec<u8>>,
    }

    impl FakeSink {
        fn new(room: usize) -> Arc<FakeSink> {
            Arc::new(FakeSink {
                room: Mutex::new(room),
                wire: Mutex::new(Vec::new()),
            })
        }
    }

    impl DirectSink for FakeSink {
        fn encoded<'m>(&self, msg: &'m Message) -> &'m Bytes {
            msg.ws_frame()
        }
        fn encoded_delta<'m>(&self, msg: &'m Message, base: u64) -> Option<&'m Bytes> {
            msg.delta_after(base, msg.epoch).map(|d| d.ws_frame())
        }
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.room.lock();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(*room - n);
                self.wire.lock().extend_from_slice(&buf[..take]);
                n += take;
            }
            *room -= n;
            Ok(n)
        }
    }

    /// Pushes one message, counting direct writes in `metrics`.
    fn push_counted(q: &Arc<SubscriberQueue>, m: &Arc<Message>, metrics: &Metrics) -> Pushed {
        let mut tally = DeliveryTally::new(metrics);
        q.push_all(std::slice::from_ref(m), ChannelMode::Stream, &mut tally)
    }

    /// WebSocket deliveries counted so far.
    fn delivered(metrics: &Metrics) -> u64 {
        metrics.transport(Transport::WebSocket).delivered.get()
    }

    #[test]
    fn direct_mode_writes_until_the_socket_is_full_then_queues_in_order() {
        let metrics = Metrics::new();
        let q = SubscriberQueue::new(8, Transport::WebSocket);
        let frame_len = msg("a", 1).ws_frame().len();
        // Room for two frames and a half.
        let fake = FakeSink::new(frame_len * 2 + frame_len / 2);
        let sink: Arc<dyn DirectSink> = fake.clone();
        // The connection has delivered up to 1 already (from history): a
        // shared bus delivering 1 again must not send it twice.
        let mut report = DirectReport::default();
        report
            .written
            .push((ChannelName::new("a").unwrap(), epoch(), 1));
        assert!(q.enter_direct(&sink, &mut report));
        assert_eq!(push_counted(&q, &msg("a", 1), &metrics), Pushed::Written);
        assert!(fake.wire.lock().is_empty());
        q.leave_direct(&mut report);
        report.written.clear();
        report
            .written
            .push((ChannelName::new("a").unwrap(), epoch(), 0));
        assert!(q.enter_direct(&sink, &mut report));
        assert_eq!(push_counted(&q, &msg("a", 1), &metrics), Pushed::Written);
        assert_eq!(push_counted(&q, &msg("a", 2), &metrics), Pushed::Written);
        // Half of #3 fits: it counts as written, its tail is kept, direct
        // mode ends, and #4 is queued behind the tail.
        assert_eq!(push_counted(&q, &msg("a", 3), &metrics), Pushed::Written);
        assert_eq!(push_counted(&q, &msg("a", 4), &metrics), Pushed::Queued);
        assert_eq!(delivered(&metrics), 3, "1, 2 and the first part of 3");
        // Refused while something is pending.
        assert!(!q.enter_direct(&sink, &mut DirectReport::default()));

        q.leave_direct(&mut report);
        let tail = report.take_remainder().expect("a partial frame");
        assert_eq!(report.written.len(), 1);
        assert_eq!(report.written[0].2, 3);
        let mut wire = fake.wire.lock().clone();
        wire.extend_from_slice(&tail);
        let mut out = Vec::new();
        q.try_drain(&mut out, 10).unwrap();
        assert_eq!(out.iter().map(|m| m.id).collect::<Vec<_>>(), vec![4]);
        for m in &out {
            wire.extend_from_slice(m.ws_frame());
        }
        // The wire carries frames 1-4 whole and in order.
        let expected: Vec<u8> = (1..=4)
            .flat_map(|id| msg("a", id).ws_frame().to_vec())
            .collect();
        assert_eq!(wire, expected);
        // Drained and nothing pending: direct mode may start again.
        assert!(q.enter_direct(&sink, &mut DirectReport::default()));
    }

    #[test]
    fn a_frame_written_in_part_wakes_the_connection_for_its_tail() {
        let q = SubscriberQueue::new(8, Transport::WebSocket);
        let frame_len = msg("a", 1).ws_frame().len();
        let fake = FakeSink::new(frame_len / 2);
        let sink: Arc<dyn DirectSink> = fake.clone();
        let mut report = subscribed_to("a");
        assert!(q.enter_direct(&sink, &mut report));
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let pending = q.poll_drain(
            &mut std::task::Context::from_waker(&waker),
            &mut Vec::new(),
            0,
        );
        assert!(pending.is_pending());
        assert_eq!(q.push(&msg("a", 1), ChannelMode::Stream), Pushed::Written);
        assert!(
            woken.0.load(std::sync::atomic::Ordering::SeqCst),
            "the connection must be woken to finish the frame"
        );
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The cursors a connection lends: `channel` at id 0 in `epoch()`.
    fn subscribed_to(channel: &str) -> DirectReport {
        let mut report = DirectReport::default();
        report
            .written
            .push((ChannelName::new(channel).unwrap(), epoch(), 0));
        report
    }

    #[test]
    fn direct_mode_never_writes_a_channel_the_connection_left() {
        let metrics = Metrics::new();
        let q = SubscriberQueue::new(8, Transport::WebSocket);
        let fake = FakeSink::new(1 << 20);
        let sink: Arc<dyn DirectSink> = fake.clone();
        assert!(q.enter_direct(&sink, &mut subscribed_to("a")));
        // "b" was left (its cursor not lent): a late fan-out of it is
        // dropped, and direct mode goes on.
        assert_eq!(push_counted(&q, &msg("b", 7), &metrics), Pushed::Written);
        assert_eq!(push_counted(&q, &msg("a", 1), &metrics), Pushed::Written);
        assert_eq!(delivered(&metrics), 1);
        assert_eq!(*fake.wire.lock(), msg("a", 1).ws_frame().to_vec());
    }

    #[test]
    fn a_new_epoch_ends_direct_mode_and_is_queued_for_the_connection() {
        let metrics = Metrics::new();
        let q = SubscriberQueue::new(8, Transport::WebSocket);
        let fake = FakeSink::new(1 << 20);
        let sink: Arc<dyn DirectSink> = fake.clone();
        let mut report = DirectReport::default();
        report
            .written
            .push((ChannelName::new("a").unwrap(), epoch(), 5));
        assert!(q.enter_direct(&sink, &mut report));
        assert_eq!(push_counted(&q, &msg("a", 6), &metrics), Pushed::Written);
        // The bus lost the channel's data: ids start again in a new epoch.
        // The connection, not the publisher, must handle that (it tells the
        // client `truncated` first).
        let other = Epoch::parse(b"e2").unwrap();
        assert_eq!(
            push_counted(&q, &msg_in(other, "a", 1), &metrics),
            Pushed::Queued
        );
        assert_eq!(
            push_counted(&q, &msg_in(other, "a", 2), &metrics),
            Pushed::Queued
        );
        assert_eq!(delivered(&metrics), 1, "only #6");
        let mut out = Vec::new();
        q.try_drain(&mut out, 10).unwrap();
        let got: Vec<_> = out.iter().map(|m| (m.epoch, m.id)).collect();
        assert_eq!(got, [(other, 1), (other, 2)]);
        q.leave_direct(&mut report);
        assert_eq!(report.written[0].2, 6);
    }

    #[test]
    fn a_batch_goes_out_in_one_write_and_close_ends_direct_mode() {
        let metrics = Metrics::new();
        let q = SubscriberQueue::new(8, Transport::WebSocket);
        let fake = FakeSink::new(1 << 20);
        let sink: Arc<dyn DirectSink> = fake.clone();
        assert!(q.enter_direct(&sink, &mut subscribed_to("a")));
        let batch: Vec<_> = (1..=10).map(|id| msg("a", id)).collect();
        assert_eq!(
            q.push_all(
                &batch,
                ChannelMode::Stream,
                &mut DeliveryTally::new(&metrics)
            ),
            Pushed::Written
        );
        assert_eq!(delivered(&metrics), 10);
        q.close(QueueClosed::Shutdown);
        assert_eq!(push_counted(&q, &msg("a", 11), &metrics), Pushed::Closed);
        assert_eq!(delivered(&metrics), 10);
    }

    /// A `state` value of a few hundred bytes whose `n`-th version
    /// differs from the one before in one field.
    fn state_msg(id: u64, n: u64) -> Arc<Message> {
        let data = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(300));
        Arc::new(Message::new(
            ChannelName::new("s").unwrap(),
            epoch(),
            id,
            data.as_bytes(),
            Instant::now(),
        ))
    }

    #[test]
    fn a_delta_channel_gets_the_shared_deltas_until_one_is_missing() {
        let metrics = Metrics::new();
        let q = SubscriberQueue::new(8, Transport::WebSocket);
        let fake = FakeSink::new(1 << 20);
        let sink: Arc<dyn DirectSink> = fake.clone();
        // Values 1..=4, each linked to the one before (as the hub does);
        // #5 is not linked (no delta): the connection must send it whole.
        let msgs: Vec<_> = (1..=5).map(|id| state_msg(id, id)).collect();
        for pair in msgs[..4].windows(2) {
            pair[1].link_base(&pair[0]);
        }
        // The connection holds value 1 and reads "s" as deltas; "a" whole.
        let mut report = subscribed_to("s");
        report.written[0].2 = 1;
        report
            .written
            .push((ChannelName::new("a").unwrap(), epoch(), 0));
        report.add_delta_channel(ChannelName::new("s").unwrap());
        assert!(q.enter_direct(&sink, &mut report));
        // Two at once (one write), then one, then a whole-value channel.
        let batch = [msgs[1].clone(), msgs[2].clone()];
        let mut tally = DeliveryTally::new(&metrics);
        assert_eq!(
            q.push_all(&batch, ChannelMode::State, &mut tally),
            Pushed::Written
        );
        drop(tally);
        assert_eq!(push_counted(&q, &msgs[3], &metrics), Pushed::Written);
        assert_eq!(push_counted(&q, &msg("a", 1), &metrics), Pushed::Written);
        let mut expected = Vec::new();
        for m in &msgs[1..4] {
            let delta = m.delta_after(m.id - 1, epoch()).expect("a delta");
            expected.extend_from_slice(delta.ws_frame());
        }
        expected.extend_from_slice(msg("a", 1).ws_frame());
        assert_eq!(*fake.wire.lock(), expected, "the shared delta frames");
        // No delta for #5: direct mode ends before it, and it is queued.
        assert_eq!(push_counted(&q, &msgs[4], &metrics), Pushed::Queued);
        assert_eq!(delivered(&metrics), 4);
        q.leave_direct(&mut report);
        assert_eq!(report.written[0].2, 4, "deltas up to #4 written");
        assert!(!report.has_remainder());
        let mut out = Vec::new();
        q.try_drain(&mut out, 10).unwrap();
        assert_eq!(out.iter().map(|m| m.id).collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn a_delta_against_another_base_ends_direct_mode() {
        let metrics = Metrics::new();
        let q = SubscriberQueue::new(8, Transport::WebSocket);
        let fake = FakeSink::new(1 << 20);
        let sink: Arc<dyn DirectSink> = fake.clone();
        let (m1, m2, m3) = (state_msg(1, 1), state_msg(2, 2), state_msg(3, 3));
        m2.link_base(&m1);
        m3.link_base(&m2);
        // The connection holds value 1, but #2 never reaches this queue
        // (say, it was written by the connection itself and its cursor
        // lent before): #3 is a delta against #2, not against 1.
        let mut report = subscribed_to("s");
        report.written[0].2 = 1;
        report.add_delta_channel(ChannelName::new("s").unwrap());
        assert!(q.enter_direct(&sink, &mut report));
        assert_eq!(push_counted(&q, &m3, &metrics), Pushed::Queued);
        assert!(fake.wire.lock().is_empty());
        assert_eq!(delivered(&metrics), 0);
    }

    #[tokio::test]
    async fn drain_wakes_on_push_and_reports_close_after_items() {
        let q = SubscriberQueue::new(8, Transport::LongPoll);
        let q2 = q.clone();
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            q2.drain(&mut out, 8).await.unwrap();
            out.len()
        });
        tokio::task::yield_now().await;
        q.push(&msg("a", 1), ChannelMode::Stream);
        assert_eq!(reader.await.unwrap(), 1);
        q.push(&msg("a", 2), ChannelMode::Stream);
        q.close(QueueClosed::Shutdown);
        let mut out = Vec::new();
        assert_eq!(q.drain(&mut out, 8).await, Ok(()));
        assert_eq!(q.drain(&mut out, 8).await, Err(QueueClosed::Shutdown));
    }
}
