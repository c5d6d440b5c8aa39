//! The connection's side of its queue: draining what publishers queued,
//! lending the socket for direct delivery and taking it back, closing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{cost, saturate, DirectReport, DirectSink, QueueClosed, State, SubscriberQueue};
use crate::protocol::Message;

impl SubscriberQueue {
    /// Lends the queue the connection's socket: from now on publishers
    /// write to it directly. `report.written` holds the last ids the
    /// connection has delivered per channel: a shared bus may deliver a
    /// message the connection already sent from history, and it must not
    /// go out twice. The report moves into the queue (and comes back with
    /// [`leave_direct`](Self::leave_direct)), so one allocation serves
    /// both. Refused (false, nothing moved) while anything is queued or the
    /// queue is closed: the connection drains first.
    pub fn enter_direct(&self, sink: &Arc<dyn DirectSink>, report: &mut DirectReport) -> bool {
        let mut state = self.state.lock();
        if !state.items.is_empty() || state.closed.is_some() || state.report.has_remainder() {
            return false;
        }
        std::mem::swap(&mut state.report, report);
        state.report_lent = true;
        state.direct = Some(sink.clone());
        true
    }

    /// Takes the socket back (the connection is about to write itself) and
    /// reports what was written meanwhile and what is left of a partial
    /// write, which must go out before anything queued.
    pub fn leave_direct(&self, report: &mut DirectReport) {
        let mut state = self.state.lock();
        state.direct = None;
        if std::mem::take(&mut state.report_lent) {
            std::mem::swap(report, &mut state.report);
        }
    }

    /// Closes the queue; the reader sees `reason` once the queue is empty…
    /// except for overflow, which drops what is queued.
    pub fn close(&self, reason: QueueClosed) {
        let mut state = self.state.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        if reason == QueueClosed::OutputLimit {
            // What it holds is what it is dropped for: let it go now.
            state.dropped = saturate(state.items.len());
            state.items = VecDeque::new();
            Self::release_all(&mut state);
        }
        state.direct = None;
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
        if !state.items.is_empty() || state.report.has_remainder() {
            self.move_out(&mut state, out, max);
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

    /// Moves up to `max` items into `out`, releasing their bytes.
    fn move_out(&self, state: &mut State, out: &mut Vec<Arc<Message>>, max: usize) {
        let n = state.items.len().min(max);
        let start = out.len();
        out.extend(state.items.drain(..n));
        if state.output.is_some() {
            let bytes = out[start..].iter().map(|m| cost(m)).sum();
            Self::release(state, bytes);
        }
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
        self.state.lock().dropped as usize
    }

    /// Completes once the queue has overflowed or was closed for its
    /// output limit, with which. Lets a writer blocked on a client that
    /// reads nothing give up at once instead of at its timeout.
    pub async fn overflowed(&self) -> QueueClosed {
        std::future::poll_fn(|cx| {
            let mut state = self.state.lock();
            if let Some(reason @ (QueueClosed::Overflow | QueueClosed::OutputLimit)) = state.closed
            {
                return Poll::Ready(reason);
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
        self.move_out(&mut state, out, max);
        Ok(())
    }
}
