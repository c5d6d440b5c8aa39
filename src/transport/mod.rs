//! Client transports: WebSocket, long-poll, server-sent events. Each reads
//! the bus through [`Bus`](crate::bus::Bus) and a
//! [`SubscriberQueue`](crate::bus::SubscriberQueue); the pieces they share
//! (cursor parsing, delivery accounting, duplicate suppression) live here.

pub mod longpoll;
pub mod params;
pub mod sse;
pub mod throttle;
pub mod websocket;

use std::sync::Arc;

use crate::bus::Message;
use crate::metrics::Metrics;

/// The ways a client reaches the gateway; metric label `transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Transport {
    WebSocket = 0,
    LongPoll = 1,
    Sse = 2,
    Proxy = 3,
    Bridge = 4,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::WebSocket,
        Transport::LongPoll,
        Transport::Sse,
        Transport::Proxy,
        Transport::Bridge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
            Transport::Sse => "sse",
            Transport::Proxy => "proxy",
            Transport::Bridge => "bridge",
        }
    }
}

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

/// Keeps the last id delivered on one channel and drops anything at or
/// below it, so history replays and live messages never duplicate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor(pub u64);

impl Cursor {
    /// True (and advances) when `msg` is new for this client.
    #[inline]
    pub fn advance(&mut self, id: u64) -> bool {
        if id > self.0 {
            self.0 = id;
            true
        } else {
            false
        }
    }
}
