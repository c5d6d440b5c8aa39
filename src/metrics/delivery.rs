//! Per-transport delivery accounting shared by every transport: messages
//! handed to a socket, and the gauge of open connections.

use std::sync::Arc;

use super::Metrics;
use crate::protocol::{Message, Transport};

/// Records that `messages` were handed to a client's socket: delivered
/// count, payload bytes and publish→write latency.
pub fn record_delivery(metrics: &Metrics, transport: Transport, messages: &[Arc<Message>]) {
    if messages.is_empty() {
        return;
    }
    let m = metrics.transport(transport);
    m.delivered.inc_by(messages.len() as u64);
    let payload: usize = messages.iter().map(|msg| msg.payload_len).sum();
    m.payload_out.inc_by(payload as u64);
    for msg in messages {
        m.latency.observe(msg.published_at.elapsed().as_secs_f64());
    }
}

/// Increments a transport's connection gauge for as long as it lives.
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    transport: Transport,
}

impl ConnectionGuard {
    pub fn new(metrics: &Arc<Metrics>, transport: Transport) -> ConnectionGuard {
        metrics.transport(transport).connections.inc();
        ConnectionGuard {
            metrics: metrics.clone(),
            transport,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.transport(self.transport).connections.dec();
    }
}
