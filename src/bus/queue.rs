//! The per-subscriber queue between the bus and one client connection.
//!
//! Publishers push shared `Arc<Message>`s and never wait; the connection
//! drains everything queued in one go (so one socket write can carry many
//! frames). The queue is bounded: a `stream` subscriber that falls
//! `capacity` messages behind is cut off (the connection closes it with a
//! "slow consumer" reason), a `state` subscriber keeps only the newest
//! message per channel. Either way no client can make the gateway's memory
//! grow without bound.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::Message;
use crate::config::ChannelMode;
use crate::transport::Transport;

/// Why a queue stopped delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueClosed {
    /// The subscriber fell more than `capacity` messages behind.
    Overflow,
    /// The gateway is shutting down or the subscription was ended.
    Shutdown,
}

/// What happened to one pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// A `state` message replaced an undelivered older one of its channel.
    Conflated,
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
    /// did not fit).
    dropped: usize,
}

/// One subscriber's queue, shared by every channel it is subscribed to.
pub struct SubscriberQueue {
    state: Mutex<State>,
    capacity: usize,
    transport: Transport,
}

impl SubscriberQueue {
    pub fn new(capacity: usize, transport: Transport) -> Arc<SubscriberQueue> {
        Arc::new(SubscriberQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                waker: None,
                closed: None,
                dropped: 0,
            }),
            capacity: capacity.max(1),
            transport,
        })
    }

    /// The transport this subscriber reads through (for metrics and stats).
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Adds a message. Never blocks beyond a short uncontended lock.
    pub fn push(&self, msg: &Arc<Message>, mode: ChannelMode) -> Pushed {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        let mut outcome = Pushed::Queued;
        if mode == ChannelMode::State {
            if let Some(pos) = state.items.iter().position(|m| m.channel == msg.channel) {
                state.items.remove(pos);
                outcome = Pushed::Conflated;
            }
        }
        if state.items.len() >= self.capacity {
            let dropped = state.items.len() + 1;
            state.items = VecDeque::new();
            state.closed = Some(QueueClosed::Overflow);
            state.dropped = dropped;
            let waker = state.waker.take();
            drop(state);
            if let Some(w) = waker {
                w.wake();
            }
            return Pushed::Overflowed { dropped };
        }
        state.items.push_back(msg.clone());
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        outcome
    }

    /// Closes the queue; the reader sees `reason` once the queue is empty…
    /// except for overflow, which drops what is queued.
    pub fn close(&self, reason: QueueClosed) {
        let mut state = self.state.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Moves up to `max` queued messages into `out`. Ready with `Ok` when at
    /// least one was moved, with `Err` once the queue is closed and empty.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Arc<Message>>,
        max: usize,
    ) -> Poll<Result<(), QueueClosed>> {
        let mut state = self.state.lock();
        if !state.items.is_empty() {
            let n = state.items.len().min(max);
            out.extend(state.items.drain(..n));
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = state.closed {
            return Poll::Ready(Err(reason));
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for messages; see [`poll_drain`](Self::poll_drain). Cancel-safe:
    /// nothing is taken from the queue unless the future completes.
    pub async fn drain(&self, out: &mut Vec<Arc<Message>>, max: usize) -> Result<(), QueueClosed> {
        std::future::poll_fn(|cx| self.poll_drain(cx, out, max)).await
    }

    /// How many messages the overflow took from this subscriber. Whoever
    /// gives up on the subscriber counts them as dropped; a reader that
    /// catches up from history has lost nothing.
    pub fn overflow_dropped(&self) -> usize {
        self.state.lock().dropped
    }

    /// Completes once the queue has overflowed. Lets a writer blocked on a
    /// client that reads nothing give up at once instead of at its timeout.
    pub async fn overflowed(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state.lock();
            if state.closed == Some(QueueClosed::Overflow) {
                return Poll::Ready(());
            }
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Takes whatever is queued without waiting.
    pub fn try_drain(&self, out: &mut Vec<Arc<Message>>, max: usize) -> Result<(), QueueClosed> {
        let mut state = self.state.lock();
        if state.items.is_empty() {
            if let Some(reason) = state.closed {
                return Err(reason);
            }
        }
        let n = state.items.len().min(max);
        out.extend(state.items.drain(..n));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use std::time::Instant;

    fn msg(channel: &str, id: u64) -> Arc<Message> {
        Arc::new(Message::new(
            ChannelName::new(channel).unwrap(),
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
