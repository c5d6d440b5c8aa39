//! How a WebSocket session delivers: it lends the socket to publishers
//! while idle (direct mode) and takes it back on every wake-up, writes
//! queued, replayed and throttled messages itself (only those each
//! subscription's cursor hasn't had), and catches a client whose queue
//! overflowed up from history — or closes it when history can't.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use super::super::deflate::{frame_for, record_compressed};
use super::subscriptions::Subscriptions;
use super::vectored::write_all_vectored;
use super::{End, SendProgress, Session};
use crate::bus::{Bus, DirectReport, QueueClosed, SubscriberQueue};
use crate::gateway::Gateway;
use crate::metrics::record_delivery;
use crate::protocol::channel::ChannelName;
use crate::protocol::ws_frame as frame;
use crate::protocol::Message;
use crate::protocol::{Step, Transport};

impl<W: AsyncWrite + SendProgress + Unpin> Session<W> {
    /// Nothing queued: lets publishers write to the socket themselves
    /// (refused, harmlessly, while something is queued), with the cursors
    /// they must continue from. Throttled channels hold messages back,
    /// which only this task can do: no direct mode then.
    ///
    /// A delta subscription goes direct too, as long as the client holds
    /// the value of its cursor: publishers then write each message's shared
    /// delta frame, and end direct mode at the first message that has none
    /// against that value (see `bus::queue::direct`). A client that holds
    /// another value (none yet, after a subscribe with no history) is
    /// served by this task until it does. True if the socket was lent.
    pub(super) fn lend_socket(&mut self) -> bool {
        if !W::LENDS {
            return false;
        }
        if self.throttle.is_enabled() || !self.subscriptions.deltas_hold_cursors() {
            return false;
        }
        // Its own compressor (context takeover): no shared frames to write.
        if self
            .deflate_context
            .as_ref()
            .is_some_and(|c| c.compresses())
        {
            return false;
        }
        // Made here and moved into the queue, which holds it while the
        // socket is lent: the session keeps no report of its own (56 bytes
        // less in every idle session, which then fits a smaller allocation
        // class). Exactly one cursor per subscription: it stays allocated
        // while the session waits (a first `extend` makes room for four).
        let mut report = DirectReport::default();
        report.written.reserve_exact(self.subscriptions.len());
        report.written.extend(
            self.subscriptions
                .iter()
                .map(|(c, s)| (c.clone(), s.cursor.epoch, s.cursor.id)),
        );
        for (channel, _) in self.subscriptions.iter().filter(|(_, s)| s.delta.is_some()) {
            report.add_delta_channel(channel.clone());
        }
        let Some(sink) = self.writer.direct_sink() else {
            return false;
        };
        self.queue.enter_direct(&sink, &mut report)
    }

    /// Ends direct mode: from here on this task is the socket's only
    /// writer. Catches the cursors up with what publishers wrote and
    /// finishes a frame they wrote in part.
    pub(super) async fn take_back_socket(&mut self) -> Result<(), End> {
        if !W::LENDS {
            return Ok(());
        }
        let mut report = DirectReport::default();
        self.queue.leave_direct(&mut report);
        for (channel, epoch, id) in report.written.drain(..) {
            if let Some(sub) = self.subscriptions.get_mut(&channel) {
                // Publishers write only in the cursor's own epoch.
                if sub.cursor.epoch == epoch && id > sub.cursor.id {
                    sub.cursor.id = id;
                    // What they wrote on a delta channel were deltas
                    // chained from the value the client held.
                    if let Some(track) = sub.delta.as_mut() {
                        track.wrote_up_to(sub.cursor);
                    }
                }
            }
        }
        match report.take_remainder() {
            Some(rest) => Box::pin(self.write_frames(&[rest])).await,
            None => Ok(()),
        }
    }

    /// The conformance echo: compressed (on its own) when the client
    /// negotiated permessage-deflate.
    pub(super) async fn echo(&mut self, opcode: u8, data: &[u8]) -> Result<(), End> {
        let own = self.deflate_context.as_mut();
        let frame = match (own.and_then(|c| c.echo_frame(opcode, data)), self.deflate) {
            (Some(frame), _) => frame,
            (None, Some(d)) => {
                crate::protocol::deflate::encode_deflated(opcode, data, d.server_window_bits)
            }
            (None, None) => frame::encode(opcode, data),
        };
        self.write_frames(&[frame]).await
    }

    pub(super) async fn send_text(&mut self, json: &[u8]) -> Result<(), End> {
        self.write_frames(&[frame::encode_text(json)]).await
    }

    /// Writes the messages this client hasn't had yet, in one vectored write.
    pub(super) async fn write_messages(&mut self, messages: &[Arc<Message>]) -> Result<(), End> {
        if !self.throttle.is_enabled() {
            return self.write_now(messages).await;
        }
        let mut batch = messages.to_vec();
        let metrics = self.gw.metrics.transport(Transport::WebSocket);
        self.throttle
            .admit(&self.gw.rules, &mut batch, Instant::now(), metrics);
        self.write_now(&batch).await
    }

    /// Writes the messages this client hasn't had yet, now (no throttle).
    pub(super) async fn write_now(&mut self, messages: &[Arc<Message>]) -> Result<(), End> {
        // Allocated per batch rather than kept: this is the slow path (the
        // socket was full or the session was busy), and kept buffers would
        // be part of every idle connection's memory.
        let mut frames = Vec::with_capacity(messages.len());
        let mut fresh = Vec::with_capacity(messages.len());
        for msg in messages {
            // A message for a channel we just left may still be queued.
            let Some(sub) = self.subscriptions.get_mut(&msg.channel) else {
                continue;
            };
            match sub.cursor.step(msg) {
                Step::Duplicate => continue,
                Step::Next => {}
                Step::Restarted => frames.push(truncated_notice(msg)),
            }
            let metrics = &self.gw.metrics.delta;
            let delta = sub
                .delta
                .as_mut()
                .and_then(|d| d.pick(msg, Transport::WebSocket, metrics));
            // Through the connection's own compressor only when it is
            // sent: the client's inflater follows its history.
            let own = match delta {
                Some(_) => None,
                None => self.deflate_context.as_mut(),
            };
            frames.push(match (delta, own.and_then(|c| c.frame(&self.gw, msg))) {
                (Some(delta), _) => delta.ws_frame().clone(),
                (None, Some(frame)) => frame,
                (None, None) => frame_for(&self.gw, self.deflate, msg).clone(),
            });
            fresh.push(msg.clone());
        }
        let result = if frames.is_empty() {
            Ok(())
        } else {
            let written = self.write_frames(&frames).await;
            if written.is_ok() {
                record_delivery(&self.gw.metrics, Transport::WebSocket, &fresh);
                // Its own compressor counted what it compressed.
                if !self
                    .deflate_context
                    .as_ref()
                    .is_some_and(|c| c.compresses())
                {
                    record_compressed(&self.gw, self.deflate, &fresh);
                }
            }
            written
        };
        result
    }

    /// Writes whole frames. Gives up when the client accepts nothing for
    /// `write_timeout`, or when its queue overflows meanwhile (it is too
    /// slow: waiting longer only delays the disconnect).
    pub(super) async fn write_frames(&mut self, frames: &[Bytes]) -> Result<(), End> {
        let stall = self.gw.config.websocket.write_timeout;
        let queue = self.queue.clone();
        let (gw, subscriptions) = (&self.gw, &self.subscriptions);
        let write = write_all_vectored(&mut self.writer, frames, stall);
        tokio::pin!(write);
        let mut lagging = false;
        loop {
            tokio::select! {
                // Includes the stall limit: no progress for write_timeout.
                result = &mut write => return result.map_err(|_| End::Drop),
                closed = queue.overflowed(), if !lagging => {
                    // Dropped for its output limit: no waiting for history.
                    if closed == QueueClosed::OutputLimit {
                        return Err(End::Drop);
                    }
                    lagging = true;
                }
                // Behind, and the socket takes nothing: once history can no
                // longer cover what this client has missed, waiting is
                // pointless. (A frame may be half written: no close frame.)
                _ = tokio::time::sleep(LAG_CHECK), if lagging => {
                    if let Some(missed) = beyond_history(gw, subscriptions) {
                        count_dropped(gw, missed);
                        return Err(End::Drop);
                    }
                }
            }
        }
    }

    /// The subscriber queue overflowed: the client fell behind by more than
    /// `limits.queue_length` messages. Catch it up from history and carry on;
    /// if history no longer reaches back to where it is, it has lost
    /// messages and is disconnected (1013).
    pub(super) async fn catch_up(&mut self) -> Result<(), End> {
        if let Some(missed) = beyond_history(&self.gw, &self.subscriptions) {
            count_dropped(&self.gw, missed);
            return Err(slow_consumer());
        }
        let queue = SubscriberQueue::for_client(
            self.gw.config.limits.queue_length,
            Transport::WebSocket,
            &self.gw.output,
        );
        let channels: Vec<ChannelName> =
            self.subscriptions.iter().map(|(c, _)| c.clone()).collect();
        let mut backlog = Vec::new();
        for channel in channels {
            let cursor = self
                .subscriptions
                .get(&channel)
                .expect("listed above")
                .cursor;
            let (subscription, history) = self
                .gw
                .subscribe(
                    &channel,
                    Some(cursor.since()),
                    &queue,
                    self.gw.config.history.size,
                )
                .await
                .map_err(|e| End::Close(1011, format!("bus unavailable: {e}")))?;
            if history.truncated {
                count_dropped(
                    &self.gw,
                    self.gw.bus.last_id(&channel).saturating_sub(cursor.id),
                );
                return Err(slow_consumer());
            }
            let entry = self.subscriptions.get_mut(&channel).expect("listed above");
            entry.subscription = subscription;
            backlog.extend(history.messages);
        }
        self.queue = queue;
        self.write_messages(&backlog).await
    }
}

/// How often a blocked writer that has fallen behind checks whether
/// history still covers it.
const LAG_CHECK: Duration = Duration::from_millis(250);

/// Messages a client has missed beyond what history still holds, if any:
/// then it can never catch up.
fn beyond_history(gw: &Gateway, subscriptions: &Subscriptions) -> Option<u64> {
    let mut missed = 0;
    let mut hopeless = false;
    for (channel, sub) in subscriptions.iter() {
        if !gw.bus.history_covers(channel, sub.cursor.since()) {
            hopeless = true;
        }
        missed += gw.bus.last_id(channel).saturating_sub(sub.cursor.id);
    }
    hopeless.then_some(missed)
}

/// `{"type":"truncated",…}`, sent before the first message of a new
/// sequence of `msg`'s channel: the bus lost the channel's data, ids start
/// again in `epoch`.
fn truncated_notice(msg: &Message) -> Bytes {
    let notice = serde_json::json!({
        "type": "truncated",
        "channel": msg.channel.as_str(),
        "epoch": msg.epoch.to_string(),
    });
    frame::encode_text(&serde_json::to_vec(&notice).expect("json"))
}

fn count_dropped(gw: &Gateway, missed: u64) {
    gw.metrics
        .transport(Transport::WebSocket)
        .dropped_slow_consumer
        .inc_by(missed);
}

fn slow_consumer() -> End {
    End::Close(1013, "slow consumer: message queue overflowed".into())
}
