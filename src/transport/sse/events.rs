//! The events of live messages, as the stream's chunks: what the client
//! has not had (its cursor), `event: truncated` before a new sequence,
//! deltas for `?delta=1`, throttled channels' updates held until due.

use std::future::Future;
use std::sync::Arc;
use std::task::Context;

use bytes::Bytes;

use super::SseBody;
use crate::metrics::record_delivery;
use crate::protocol::{Cursor, Message, Step, Transport};
use crate::transport::sse_compressed::{self, EventKind, SseEvent};

impl SseBody {
    /// The events of `messages` this client may have now, as one chunk
    /// (throttled channels' extra updates are held).
    pub(super) fn encode(&mut self, messages: &[Arc<Message>]) -> Option<Bytes> {
        if !self.throttle.is_enabled() {
            return self.encode_now(messages);
        }
        let mut batch = messages.to_vec();
        self.hold_throttled(&mut batch);
        self.encode_now(&batch)
    }

    /// Takes out of `messages` the extra updates of throttled channels,
    /// which the throttle holds for later (`conflate_interval`).
    pub(super) fn hold_throttled(&mut self, messages: &mut Vec<Arc<Message>>) {
        let metrics = self.metrics.clone();
        self.throttle.admit(
            &self.rules,
            messages,
            std::time::Instant::now(),
            metrics.transport(Transport::Sse),
        );
    }

    /// Held updates whose time has come, as one chunk.
    pub(super) fn poll_throttled(&mut self, cx: &mut Context<'_>) -> Option<Bytes> {
        let deadline = self.throttle.deadline()?;
        let timer = self
            .throttle_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if timer.deadline() != deadline.into() {
            timer.as_mut().reset(deadline.into());
        }
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        let mut due = Vec::new();
        self.throttle.release(std::time::Instant::now(), &mut due);
        self.encode_now(&due)
    }

    /// The events of `messages` this client hasn't had, as one chunk. The
    /// first message of a new sequence (the bus lost the channel's data)
    /// comes after an `event: truncated`.
    fn encode_now(&mut self, messages: &[Arc<Message>]) -> Option<Bytes> {
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.clear();
        // (index in `fresh`, the notice to send before it)
        let mut notices: Vec<(usize, Bytes)> = Vec::new();
        for m in messages {
            let before = self.cursor;
            match self.cursor.step(m) {
                Step::Duplicate => continue,
                Step::Next => {}
                Step::Restarted => notices.push((fresh.len(), restart_notice(m, before))),
            }
            fresh.push(m.clone());
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        for m in &fresh {
            let delta = self
                .delta
                .as_mut()
                .and_then(|d| d.pick(m, Transport::Sse, &self.metrics.delta));
            events.push(match delta {
                Some(delta) => SseEvent {
                    bytes: delta.sse_event(m).clone(),
                    kind: EventKind::Delta { base: delta.base },
                },
                None => SseEvent {
                    bytes: m.sse_event().clone(),
                    kind: EventKind::Whole,
                },
            });
        }
        let chunk = sse_compressed::chunk(self.gzip.as_mut(), &notices, &fresh, &events);
        events.clear();
        self.events = events;
        record_delivery(&self.metrics, Transport::Sse, &fresh);
        fresh.clear();
        self.fresh = fresh;
        chunk
    }
}

/// `event: truncated` before `msg`, the first of a new sequence: the
/// client's cursor `before` is of a sequence the bus lost.
fn restart_notice(msg: &Message, before: Cursor) -> Bytes {
    let data = serde_json::json!({
        "channel": msg.channel.as_str(),
        "since": before.id,
        "epoch": msg.epoch.to_string(),
    });
    Bytes::from(format!("event: truncated\ndata: {data}\n\n"))
}
