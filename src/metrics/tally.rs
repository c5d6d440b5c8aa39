//! Deliveries counted by one writer and added to the shared counters in
//! one go. A fan-out shard writes thousands of subscribers per publish;
//! counting every write in the gateway-wide counters (three counters and a
//! histogram: seven atomic updates) would make every core's writes fight
//! over the same few cache lines. A [`DeliveryTally`] counts locally and
//! flushes when dropped (a shard drops one every few hundred writes), so
//! the shared lines are touched once per batch instead of once per
//! delivery.

use std::sync::Arc;

use prometheus::local::LocalHistogram;

use super::Metrics;
use crate::protocol::Message;
use crate::protocol::Transport;

/// One transport's deliveries since the last flush.
struct Local {
    transport: Transport,
    delivered: u64,
    payload: u64,
    latency: Option<LocalHistogram>,
}

/// Deliveries (messages handed to client sockets) counted locally; added
/// to `pollbridge_messages_delivered_total`, `pollbridge_payload_bytes_total`
/// and `pollbridge_delivery_latency_seconds` on [`flush`](Self::flush) or
/// drop.
pub struct DeliveryTally<'m> {
    metrics: Option<&'m Metrics>,
    locals: Vec<Local>,
}

impl<'m> DeliveryTally<'m> {
    pub fn new(metrics: &'m Metrics) -> DeliveryTally<'m> {
        DeliveryTally {
            metrics: Some(metrics),
            locals: Vec::new(),
        }
    }

    /// A tally that adds to no counters (a queue tested on its own).
    pub fn detached() -> DeliveryTally<'static> {
        DeliveryTally {
            metrics: None,
            locals: Vec::new(),
        }
    }

    /// `msgs` were just written to a client of `transport`.
    pub fn record(&mut self, transport: Transport, msgs: &[Arc<Message>]) {
        if msgs.is_empty() {
            return;
        }
        let index = match self.locals.iter().position(|l| l.transport == transport) {
            Some(index) => index,
            None => {
                self.locals.push(Local {
                    transport,
                    delivered: 0,
                    payload: 0,
                    latency: self.metrics.map(|m| m.transport(transport).latency.local()),
                });
                self.locals.len() - 1
            }
        };
        let local = &mut self.locals[index];
        local.delivered += msgs.len() as u64;
        local.payload += msgs.iter().map(|m| m.payload_len as u64).sum::<u64>();
        if let Some(latency) = &local.latency {
            for msg in msgs {
                latency.observe(msg.published_at.elapsed().as_secs_f64());
            }
        }
    }

    /// Messages recorded since the last flush.
    pub fn pending(&self) -> u64 {
        self.locals.iter().map(|l| l.delivered).sum()
    }

    /// Adds what was recorded to the shared counters.
    pub fn flush(&mut self) {
        let Some(metrics) = self.metrics else {
            self.locals.clear();
            return;
        };
        for local in &mut self.locals {
            let shared = metrics.transport(local.transport);
            shared
                .delivered
                .inc_by(std::mem::take(&mut local.delivered));
            shared
                .payload_out
                .inc_by(std::mem::take(&mut local.payload));
            if let Some(latency) = &local.latency {
                latency.flush();
            }
        }
    }
}

impl Drop for DeliveryTally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::channel::ChannelName;
    use crate::protocol::Epoch;
    use std::time::Instant;

    #[test]
    fn counts_reach_the_shared_counters_on_flush_and_drop() {
        let metrics = Metrics::new();
        let msg = Arc::new(Message::new(
            ChannelName::new("a").unwrap(),
            Epoch::parse(b"e").unwrap(),
            1,
            b"12345",
            Instant::now(),
        ));
        let ws = metrics.transport(Transport::WebSocket);
        let mut tally = DeliveryTally::new(&metrics);
        tally.record(Transport::WebSocket, &[msg.clone(), msg.clone()]);
        assert_eq!((tally.pending(), ws.delivered.get()), (2, 0));
        tally.flush();
        assert_eq!((tally.pending(), ws.delivered.get()), (0, 2));
        tally.record(Transport::WebSocket, std::slice::from_ref(&msg));
        drop(tally);
        assert_eq!(ws.delivered.get(), 3);
        assert_eq!(ws.payload_out.get(), 15);
        assert_eq!(ws.latency.get_sample_count(), 3);
    }
}
