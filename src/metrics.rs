//! Prometheus metrics: one registry owned by the gateway, every series
//! registered (and so visible as 0) at startup.
//!
//! The hot paths (socket reads and writes, deliveries) never look a label up:
//! each transport's counters are resolved once into a [`TransportMetrics`]
//! and indexed by [`Transport`], so counting is one atomic add.

mod delivery;
mod fanout;
mod floods;
pub use delivery::DeliveryTally;
pub use fanout::FanoutMetrics;
pub use floods::FloodMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::transport::output::SlowClose;
use crate::transport::Transport;

/// Latency buckets from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

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
    /// The fan-out shards' span per publish.
    pub fanout: FanoutMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("pollbridge".into()), None).expect("valid registry prefix");
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };

        let connections = IntGaugeVec::new(
            Opts::new(
                "connections",
                "Open client connections (WebSocket, SSE) and in-flight requests (polls, proxy) by transport",
            ),
            &["transport"],
        )
        .unwrap();
        let wire = IntCounterVec::new(
            Opts::new(
                "wire_bytes_total",
                "Bytes read (in) and written (out) on client sockets, by the transport of the request they belong to",
            ),
            &["transport", "direction"],
        )
        .unwrap();
        let payload = IntCounterVec::new(
            Opts::new(
                "payload_bytes_total",
                "Application payload bytes (the published data) inside the wire bytes",
            ),
            &["transport", "direction"],
        )
        .unwrap();
        let delivered = IntCounterVec::new(
            Opts::new("messages_delivered_total", "Envelopes handed to clients"),
            &["transport"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "delivery_latency_seconds",
                "Publish accepted by the bus to envelope written to the client socket",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["transport"],
        )
        .unwrap();
        let dropped = IntCounterVec::new(
            Opts::new("dropped_total", "Messages not delivered, by reason"),
            &["transport", "reason"],
        )
        .unwrap();
        let published =
            IntCounter::new("messages_published_total", "Messages accepted by the bus").unwrap();
        let polls = IntCounterVec::new(
            Opts::new("polls_total", "Long-poll answers by result"),
            &["result"],
        )
        .unwrap();
        let proxy_requests = IntCounterVec::new(
            Opts::new("proxy_requests_total", "Proxied requests by status class"),
            &["code"],
        )
        .unwrap();
        let proxy_duration = Histogram::with_opts(
            HistogramOpts::new(
                "proxy_duration_seconds",
                "Time from forwarding a request to the upstream's response head",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap();
        let bus_ready = IntGauge::new("bus_ready", "1 when the message bus is reachable").unwrap();
        let bus_publish_duration = Histogram::with_opts(
            HistogramOpts::new(
                "bus_publish_duration_seconds",
                "Time for the bus to accept a publish: id assigned and message stored",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap();
        let redis_reconnects = IntCounter::new(
            "redis_reconnects_total",
            "Redis subscription connection re-established after a loss",
        )
        .unwrap();
        let bus_gap_fill_messages = IntCounter::new(
            "bus_gap_fill_messages_total",
            "Messages recovered from the shared history after being missed live",
        )
        .unwrap();
        let bus_epoch_resets = IntCounter::new(
            "bus_epoch_resets_total",
            "Channels started over because their epoch changed (the bus lost their data)",
        )
        .unwrap();
        let bus_subscriptions = IntGauge::new(
            "bus_subscriptions",
            "Channels this node is subscribed to on the shared bus",
        )
        .unwrap();
        let bridge_upstream_requests = IntCounterVec::new(
            Opts::new(
                "bridge_upstream_requests_total",
                "The gateway's own polls of the backend, by result",
            ),
            &["bridge", "result"],
        )
        .unwrap();
        let bridge_client_polls = IntCounterVec::new(
            Opts::new(
                "bridge_client_polls_total",
                "Legacy polls answered by the gateway, by result",
            ),
            &["bridge", "result"],
        )
        .unwrap();
        let bridge_variants = IntGaugeVec::new(
            Opts::new(
                "bridge_variants",
                "Live feeds (distinct query and vary_by values) per bridged route",
            ),
            &["bridge"],
        )
        .unwrap();
        let bridge_variants_refused = IntCounterVec::new(
            Opts::new(
                "bridge_variants_refused_total",
                "Legacy polls proxied to the backend unchanged because their route had max_variants feeds",
            ),
            &["bridge"],
        )
        .unwrap();
        let bridge_auth_checks = IntCounterVec::new(
            Opts::new(
                "bridge_auth_checks_total",
                "Checks of a legacy client's credentials with the backend before a bridged copy is served ([[bridge]] auth), by result",
            ),
            &["bridge", "result"],
        )
        .unwrap();

        let ws_handshakes = IntCounter::new(
            "ws_handshakes_total",
            "WebSocket upgrade requests (refused ones included)",
        )
        .unwrap();
        let ws_handshake_bytes = IntCounter::new(
            "ws_handshake_bytes_total",
            "Wire bytes of WebSocket upgrade requests and their answers (both directions; part of wire_bytes_total{transport=\"websocket\"})",
        )
        .unwrap();
        let conflated = IntCounterVec::new(
            Opts::new(
                "conflated_total",
                "Undelivered messages replaced by a newer one for a subscriber of a state channel",
            ),
            &["transport"],
        )
        .unwrap();
        let admission = IntCounterVec::new(
            Opts::new(
                "admission_refused_total",
                "New WebSocket/SSE sessions refused by admission control (503 with Retry-After)",
            ),
            &["transport"],
        )
        .unwrap();
        let legacy_clients = IntGaugeVec::new(
            Opts::new(
                "legacy_clients",
                "Distinct polling clients seen in the telemetry window, by bridged route (or longpoll)",
            ),
            &["route"],
        )
        .unwrap();
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "transport_fallbacks_total",
                "Browser clients that fell back from WebSocket to long-poll, by the reason they reported",
            ),
            &["reason"],
        )
        .unwrap();
        let upgrade_failures = IntCounterVec::new(
            Opts::new(
                "ws_upgrade_failures_total",
                "WebSocket upgrades the gateway refused, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let slow_closed = IntCounterVec::new(
            Opts::new(
                "slow_clients_closed_total",
                "Slow clients closed by the gateway, by transport and reason (write_timeout, output_hard_limit, output_soft_limit, output_budget)",
            ),
            &["transport", "reason"],
        )
        .unwrap();
        let output_refused = IntCounterVec::new(
            Opts::new(
                "output_refused_total",
                "New large answers refused with 503 while the output budget was spent",
            ),
            &["transport"],
        )
        .unwrap();
        let output_pending_bytes = IntGauge::new(
            "output_pending_bytes",
            "Output committed to clients that their sockets have not taken yet",
        )
        .unwrap();
        let output_budget_bytes = IntGauge::new(
            "output_budget_bytes",
            "The configured limit on pending output (limits.max_pending_output_bytes)",
        )
        .unwrap();
        let transports = Transport::ALL
            .iter()
            .map(|t| {
                let name = t.as_str();
                TransportMetrics {
                    connections: connections.with_label_values(&[name]),
                    wire_in: wire.with_label_values(&[name, "in"]),
                    wire_out: wire.with_label_values(&[name, "out"]),
                    payload_in: payload.with_label_values(&[name, "in"]),
                    payload_out: payload.with_label_values(&[name, "out"]),
                    delivered: delivered.with_label_values(&[name]),
                    latency: latency.with_label_values(&[name]),
                    dropped_slow_consumer: dropped.with_label_values(&[name, "slow_consumer"]),
                    conflated: conflated.with_label_values(&[name]),
                    admission_refused: admission.with_label_values(&[name]),
                    slow_closed: SlowClose::ALL
                        .map(|why| slow_closed.with_label_values(&[name, why.as_str()])),
                    output_refused: output_refused.with_label_values(&[name]),
                }
            })
            .collect();
        let fallback_counters = FALLBACK_REASONS.map(|r| fallbacks.with_label_values(&[r]));
        let upgrade_failure_counters =
            UPGRADE_FAILURES.map(|r| upgrade_failures.with_label_values(&[r]));
        let poll_results =
            ["messages", "empty", "truncated"].map(|r| polls.with_label_values(&[r]));
        let proxy_classes =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| proxy_requests.with_label_values(&[c]));

        reg(Box::new(connections));
        reg(Box::new(wire));
        reg(Box::new(payload));
        reg(Box::new(delivered));
        reg(Box::new(latency));
        reg(Box::new(dropped));
        reg(Box::new(published.clone()));
        reg(Box::new(polls));
        reg(Box::new(proxy_requests));
        reg(Box::new(proxy_duration.clone()));
        reg(Box::new(bus_ready.clone()));
        reg(Box::new(bus_publish_duration.clone()));
        reg(Box::new(redis_reconnects.clone()));
        reg(Box::new(bus_gap_fill_messages.clone()));
        reg(Box::new(bus_epoch_resets.clone()));
        reg(Box::new(bus_subscriptions.clone()));
        reg(Box::new(bridge_upstream_requests.clone()));
        reg(Box::new(bridge_client_polls.clone()));
        reg(Box::new(bridge_variants.clone()));
        reg(Box::new(bridge_variants_refused.clone()));
        reg(Box::new(bridge_auth_checks.clone()));
        reg(Box::new(ws_handshakes.clone()));
        reg(Box::new(ws_handshake_bytes.clone()));
        reg(Box::new(conflated));
        reg(Box::new(admission));
        reg(Box::new(legacy_clients.clone()));
        reg(Box::new(fallbacks));
        reg(Box::new(upgrade_failures));
        reg(Box::new(slow_closed));
        reg(Box::new(output_refused));
        reg(Box::new(output_pending_bytes.clone()));
        reg(Box::new(output_budget_bytes.clone()));
        let floods = FloodMetrics::new(&registry);
        let fanout = FanoutMetrics::new(&registry);

        Metrics {
            registry,
            transports,
            published,
            polls: poll_results,
            proxy_requests: proxy_classes,
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
            legacy_clients,
            fallbacks: fallback_counters,
            upgrade_failures: upgrade_failure_counters,
            output_pending_bytes,
            output_budget_bytes,
            floods,
            fanout,
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
