//! The per-transport series (connections, bytes, deliveries, drops, slow
//! clients), resolved once per [`Transport`] into a [`TransportMetrics`]
//! so that the hot paths count with one atomic add and no label lookup.

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use super::series::{counter_vec, gauge_vec, latency_vec};
use crate::metrics::SlowClose;
use crate::protocol::Transport;

/// Counters of one transport, resolved from their label sets once.
pub struct TransportMetrics {
    /// Open connections (WebSocket, SSE) or in-flight requests (polls, proxy).
    pub connections: IntGauge,
    pub wire_in: IntCounter,
    pub wire_out: IntCounter,
    pub payload_in: IntCounter,
    pub payload_out: IntCounter,
    pub delivered: IntCounter,
    pub latency: Histogram,
    pub dropped_slow_consumer: IntCounter,
    /// Undelivered messages replaced by a newer one on a `state` channel.
    pub conflated: IntCounter,
    /// New sessions refused by admission control.
    pub admission_refused: IntCounter,
    /// Slow clients the gateway closed, by [`SlowClose`] reason.
    pub slow_closed: [IntCounter; 4],
    /// New large answers refused (`503`) while the output budget was spent.
    pub output_refused: IntCounter,
}

/// Registers the per-transport series; the counters of each transport,
/// indexed by [`Transport`].
pub(super) fn per_transport(registry: &Registry) -> Vec<TransportMetrics> {
    let families = Families::register(registry);
    Transport::ALL
        .iter()
        .map(|&t| families.resolve(t))
        .collect()
}

/// The labelled series, before they are resolved per transport.
struct Families {
    connections: IntGaugeVec,
    wire: IntCounterVec,
    payload: IntCounterVec,
    delivered: IntCounterVec,
    latency: HistogramVec,
    dropped: IntCounterVec,
    conflated: IntCounterVec,
    admission: IntCounterVec,
    slow_closed: IntCounterVec,
    output_refused: IntCounterVec,
}

impl Families {
    fn register(registry: &Registry) -> Families {
        let reg = registry;
        let connections = gauge_vec(
            reg,
            "connections",
            "Open client connections (WebSocket, SSE) and in-flight requests (polls, proxy) by transport",
            &["transport"],
        );
        let wire = counter_vec(
            reg,
            "wire_bytes_total",
            "Bytes read (in) and written (out) on client sockets, by the transport of the request they belong to",
            &["transport", "direction"],
        );
        let payload = counter_vec(
            reg,
            "payload_bytes_total",
            "Application payload bytes (the published data) inside the wire bytes",
            &["transport", "direction"],
        );
        let delivered = counter_vec(
            reg,
            "messages_delivered_total",
            "Envelopes handed to clients",
            &["transport"],
        );
        let latency = latency_vec(
            reg,
            "delivery_latency_seconds",
            "Publish accepted by the bus to envelope written to the client socket",
            &["transport"],
        );
        let dropped = counter_vec(
            reg,
            "dropped_total",
            "Messages not delivered, by reason",
            &["transport", "reason"],
        );
        let conflated = counter_vec(
            reg,
            "conflated_total",
            "Undelivered messages replaced by a newer one for a subscriber of a state channel",
            &["transport"],
        );
        let admission = counter_vec(
            reg,
            "admission_refused_total",
            "New WebSocket/SSE sessions refused by admission control (503 with Retry-After)",
            &["transport"],
        );
        let slow_closed = counter_vec(
            reg,
            "slow_clients_closed_total",
            "Slow clients closed by the gateway, by transport and reason (write_timeout, output_hard_limit, output_soft_limit, output_budget)",
            &["transport", "reason"],
        );
        let output_refused = counter_vec(
            reg,
            "output_refused_total",
            "New large answers refused with 503 while the output budget was spent",
            &["transport"],
        );
        Families {
            connections,
            wire,
            payload,
            delivered,
            latency,
            dropped,
            conflated,
            admission,
            slow_closed,
            output_refused,
        }
    }

    /// The series of one transport.
    fn resolve(&self, transport: Transport) -> TransportMetrics {
        let name = transport.as_str();
        TransportMetrics {
            connections: self.connections.with_label_values(&[name]),
            wire_in: self.wire.with_label_values(&[name, "in"]),
            wire_out: self.wire.with_label_values(&[name, "out"]),
            payload_in: self.payload.with_label_values(&[name, "in"]),
            payload_out: self.payload.with_label_values(&[name, "out"]),
            delivered: self.delivered.with_label_values(&[name]),
            latency: self.latency.with_label_values(&[name]),
            dropped_slow_consumer: self.dropped.with_label_values(&[name, "slow_consumer"]),
            conflated: self.conflated.with_label_values(&[name]),
            admission_refused: self.admission.with_label_values(&[name]),
            slow_closed: SlowClose::ALL
                .map(|why| self.slow_closed.with_label_values(&[name, why.as_str()])),
            output_refused: self.output_refused.with_label_values(&[name]),
        }
    }
}
