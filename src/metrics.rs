//! Prometheus metrics: one registry owned by the gateway, every series
//! registered (and so visible as 0) at startup.
//!
//! The hot paths (socket reads and writes, deliveries) never look a label up:
//! each transport's counters are resolved once into a [`TransportMetrics`]
//! and indexed by [`Transport`], so counting is one atomic add.

mod bridge;
mod bus;
mod compression;
mod delivery;
mod delta;
mod edge;
mod floods;
mod series;
mod slow_close;
pub mod stats;
pub use delivery::{record_delivery, ConnectionGuard};
pub use slow_close::SlowClose;
mod transports;
pub use compression::CompressionMetrics;
mod fanout;
mod tally;
pub use delta::DeltaMetrics;
pub use fanout::FanoutMetrics;
pub use floods::FloodMetrics;
pub use tally::DeliveryTally;
pub use transports::TransportMetrics;

use prometheus::{
    Encoder, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};

use crate::protocol::Transport;
use bridge::BridgeSeries;
use bus::BusSeries;
use edge::EdgeSeries;

/// Latency buckets from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why a browser client fell back from WebSocket (what it reports).
pub const FALLBACK_REASONS: [&str; 5] = [
    "ws_error",
    "ws_timeout",
    "ws_closed_before_open",
    "ws_blocked",
    "other",
];

/// Why the gateway refused a WebSocket upgrade.
#[derive(Debug, Clone, Copy)]
pub enum UpgradeFailure {
    Origin = 0,
    Auth = 1,
    Limit = 2,
    BadHandshake = 3,
    Disabled = 4,
}

const UPGRADE_FAILURES: [&str; 5] = ["origin", "auth", "limit", "bad_handshake", "disabled"];

/// Why a long-poll answer ended the way it did.
#[derive(Debug, Clone, Copy)]
pub enum PollResult {
    Messages = 0,
    Empty = 1,
    Truncated = 2,
}

/// All of the gateway's metrics.
pub struct Metrics {
    registry: Registry,
    transports: Vec<TransportMetrics>,
    pub published: IntCounter,
    polls: [IntCounter; 3],
    proxy_requests: [IntCounter; 5],
    pub proxy_duration: Histogram,
    pub bus_ready: IntGauge,
    /// Time for the bus to accept one publish (assign the id, store it).
    pub bus_publish_duration: Histogram,
    /// Redis subscription connection re-established after a loss.
    pub redis_reconnects: IntCounter,
    /// Messages a node recovered from the shared history after missing
    /// them live (reconnects, dropped notifications).
    pub bus_gap_fill_messages: IntCounter,
    /// Channels this node started over because their sequence's epoch
    /// changed (the shared bus lost their data).
    pub bus_epoch_resets: IntCounter,
    /// Channels this node is subscribed to on the shared bus.
    pub bus_subscriptions: IntGauge,
    pub bridge_upstream_requests: IntCounterVec,
    pub bridge_client_polls: IntCounterVec,
    /// Live feeds (query × `vary_by` variants) per bridged route.
    pub bridge_variants: IntGaugeVec,
    /// Legacy polls proxied unchanged because their route was at `max_variants`.
    pub bridge_variants_refused: IntCounterVec,
    /// `[[bridge]] auth` checks of legacy clients' credentials, by result.
    pub bridge_auth_checks: IntCounterVec,
    /// WebSocket upgrade requests, and the bytes of their handshakes (the
    /// request head and the answer, both directions), which are also in
    /// `wire_bytes_total{transport="websocket"}`.
    pub ws_handshakes: IntCounter,
    pub ws_handshake_bytes: IntCounter,
    /// WebSocket connections parked now (no task, no runtime registration:
    /// `websocket.park_after`); also counted in `connections`.
    pub ws_parked: IntGauge,
    /// Long-polls parked on their connection now (the lean HTTP/1.1 path):
    /// held without the router's future, answered by the publisher.
    pub longpoll_parked: IntGauge,
    /// Distinct legacy pollers per route over the telemetry window.
    pub legacy_clients: IntGaugeVec,
    fallbacks: [IntCounter; 5],
    upgrade_failures: [IntCounter; 5],
    /// Unsent output all clients hold (set by the output reaper).
    pub output_pending_bytes: IntGauge,
    /// `limits.max_pending_output_bytes`, for dashboards.
    pub output_budget_bytes: IntGauge,
    /// Flood limits: refused commands, history evictions, backend auth.
    pub floods: FloodMetrics,
    /// Bytes compressed and what they became, per transport.
    pub compression: CompressionMetrics,
    /// The fan-out shards' span per publish.
    pub fanout: FanoutMetrics,
    /// Deliveries as deltas or whole values, and the bytes deltas saved.
    pub delta: DeltaMetrics,
}

impl Metrics {
    /// Every series, registered (and so visible as 0) from the start.
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("pollbridge".into()), None).expect("valid registry prefix");
        let transports = transports::per_transport(&registry);
        let BusSeries {
            published,
            bus_ready,
            bus_publish_duration,
            redis_reconnects,
            bus_gap_fill_messages,
            bus_epoch_resets,
            bus_subscriptions,
        } = BusSeries::register(&registry);
        let BridgeSeries {
            bridge_upstream_requests,
            bridge_client_polls,
            bridge_variants,
            bridge_variants_refused,
            bridge_auth_checks,
            legacy_clients,
        } = BridgeSeries::register(&registry);
        let EdgeSeries {
            polls,
            proxy_requests,
            proxy_duration,
            ws_handshakes,
            ws_handshake_bytes,
            fallbacks,
            upgrade_failures,
            output_pending_bytes,
            output_budget_bytes,
        } = EdgeSeries::register(&registry);
        let floods = FloodMetrics::new(&registry);
        let compression = CompressionMetrics::register(&registry);
        let fanout = FanoutMetrics::new(&registry);

        let delta = DeltaMetrics::register(&registry);
        let ws_parked = series::gauge(
            &registry,
            "ws_parked_connections",
            "WebSocket connections parked now: idle for websocket.park_after, held without a task until the client sends, a message can't be written directly or a ping is due",
        );
        let longpoll_parked = series::gauge(
            &registry,
            "longpoll_parked_polls",
            "Long-polls parked on their connection now (cleartext HTTP/1.1): held without a handler, answered by the publisher with one send()",
        );
        Metrics {
            registry,
            transports,
            published,
            polls,
            proxy_requests,
            proxy_duration,
            bus_ready,
            bus_publish_duration,
            redis_reconnects,
            bus_gap_fill_messages,
            bus_epoch_resets,
            bus_subscriptions,
            bridge_upstream_requests,
            bridge_client_polls,
            bridge_variants,
            bridge_variants_refused,
            bridge_auth_checks,
            ws_handshakes,
            ws_handshake_bytes,
            ws_parked,
            longpoll_parked,
            legacy_clients,
            fallbacks,
            upgrade_failures,
            output_pending_bytes,
            output_budget_bytes,
            floods,
            compression,
            fanout,
            delta,
        }
    }

    /// A browser reported falling back from WebSocket (unknown reasons
    /// count as `other`, so the label stays bounded).
    pub fn fallback(&self, reason: &str) {
        let index = FALLBACK_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(FALLBACK_REASONS.len() - 1);
        self.fallbacks[index].inc();
    }

    /// Fallbacks so far, by reason.
    pub fn fallback_counts(&self) -> Vec<(&'static str, u64)> {
        FALLBACK_REASONS
            .iter()
            .zip(&self.fallbacks)
            .map(|(r, c)| (*r, c.get()))
            .collect()
    }

    /// Refused upgrades so far, by reason.
    pub fn upgrade_failure_counts(&self) -> Vec<(&'static str, u64)> {
        UPGRADE_FAILURES
            .iter()
            .zip(&self.upgrade_failures)
            .map(|(r, c)| (*r, c.get()))
            .collect()
    }

    /// The gateway refused a WebSocket upgrade.
    pub fn upgrade_failed(&self, reason: UpgradeFailure) {
        self.upgrade_failures[reason as usize].inc();
    }

    /// The counters of one transport.
    #[inline]
    pub fn transport(&self, transport: Transport) -> &TransportMetrics {
        &self.transports[transport as usize]
    }

    /// The gateway closed a slow client.
    pub fn slow_client_closed(&self, transport: Transport, why: SlowClose) {
        self.transport(transport).slow_closed[why as usize].inc();
    }

    /// Slow clients closed so far for one transport and reason.
    pub fn slow_closed_count(&self, transport: Transport, why: SlowClose) -> u64 {
        self.transport(transport).slow_closed[why as usize].get()
    }

    pub fn poll_answered(&self, result: PollResult) {
        self.polls[result as usize].inc();
    }

    pub fn proxy_answered(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.proxy_requests[class].inc();
    }

    /// The Prometheus text exposition (format 0.0.4) and its content type.
    pub fn render(&self) -> (String, Vec<u8>) {
        let encoder = TextEncoder::new();
        let mut buf = Vec::with_capacity(16 * 1024);
        encoder
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        (encoder.format_type().to_string(), buf)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_at_startup() {
        let metrics = Metrics::new();
        let (_, text) = metrics.render();
        let text = String::from_utf8(text).unwrap();
        for needle in [
            "pollbridge_connections{transport=\"bridge\"} 0",
            "pollbridge_wire_bytes_total{direction=\"in\",transport=\"longpoll\"} 0",
            "pollbridge_payload_bytes_total{direction=\"out\",transport=\"sse\"} 0",
            "pollbridge_messages_published_total 0",
            "pollbridge_messages_delivered_total{transport=\"websocket\"} 0",
            "pollbridge_delivery_latency_seconds_bucket{transport=\"proxy\",le=\"0.0001\"} 0",
            "pollbridge_polls_total{result=\"truncated\"} 0",
            "pollbridge_proxy_requests_total{code=\"5xx\"} 0",
            "pollbridge_dropped_total{reason=\"slow_consumer\",transport=\"websocket\"} 0",
            "pollbridge_bus_ready 0",
            "pollbridge_bus_publish_duration_seconds_bucket{le=\"0.0001\"} 0",
            "pollbridge_redis_reconnects_total 0",
            "pollbridge_bus_gap_fill_messages_total 0",
            "pollbridge_bus_epoch_resets_total 0",
            "pollbridge_bus_subscriptions 0",
            "pollbridge_slow_clients_closed_total{reason=\"write_timeout\",transport=\"longpoll\"} 0",
            "pollbridge_slow_clients_closed_total{reason=\"output_budget\",transport=\"websocket\"} 0",
            "pollbridge_output_refused_total{transport=\"longpoll\"} 0",
            "pollbridge_output_pending_bytes 0",
            "pollbridge_ws_handshakes_total 0",
            "pollbridge_ws_handshake_bytes_total 0",
            "pollbridge_ws_parked_connections 0",
            "pollbridge_longpoll_parked_polls 0",
        ] {
            assert!(text.contains(needle), "missing {needle}\n{text}");
        }
    }

    #[test]
    fn transport_counters_are_the_labelled_series() {
        let metrics = Metrics::new();
        metrics.transport(Transport::Sse).wire_out.inc_by(7);
        metrics.proxy_answered(504);
        metrics.poll_answered(PollResult::Empty);
        let (_, text) = metrics.render();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("pollbridge_wire_bytes_total{direction=\"out\",transport=\"sse\"} 7"));
        assert!(text.contains("pollbridge_proxy_requests_total{code=\"5xx\"} 1"));
        assert!(text.contains("pollbridge_polls_total{result=\"empty\"} 1"));
    }
}
