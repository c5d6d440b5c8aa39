//! The message bus's series: publishes, readiness, publish latency, and
//! how a shared (Redis) bus's subscription connection and sequences fare.

use prometheus::{Histogram, IntCounter, IntGauge, Registry};

use super::series::{counter, gauge, latency};

/// The bus's series, as [`Metrics`](super::Metrics) holds them.
pub(super) struct BusSeries {
    pub published: IntCounter,
    pub bus_ready: IntGauge,
    pub bus_publish_duration: Histogram,
    pub redis_reconnects: IntCounter,
    pub bus_gap_fill_messages: IntCounter,
    pub bus_epoch_resets: IntCounter,
    pub bus_subscriptions: IntGauge,
}

impl BusSeries {
    pub fn register(reg: &Registry) -> BusSeries {
        BusSeries {
            published: counter(
                reg,
                "messages_published_total",
                "Messages accepted by the bus",
            ),
            bus_ready: gauge(reg, "bus_ready", "1 when the message bus is reachable"),
            bus_publish_duration: latency(
                reg,
                "bus_publish_duration_seconds",
                "Time for the bus to accept a publish: id assigned and message stored",
            ),
            redis_reconnects: counter(
                reg,
                "redis_reconnects_total",
                "Redis subscription connection re-established after a loss",
            ),
            bus_gap_fill_messages: counter(
                reg,
                "bus_gap_fill_messages_total",
                "Messages recovered from the shared history after being missed live",
            ),
            bus_epoch_resets: counter(
                reg,
                "bus_epoch_resets_total",
                "Channels started over because their epoch changed (the bus lost their data)",
            ),
            bus_subscriptions: gauge(
                reg,
                "bus_subscriptions",
                "Channels this node is subscribed to on the shared bus",
            ),
        }
    }
}
