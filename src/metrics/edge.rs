//! The series of what clients ask of the gateway besides subscriptions:
//! long-poll answers, proxied requests, WebSocket handshakes and refused
//! upgrades, browser fallbacks, and the output budget they share.

use prometheus::{Histogram, IntCounter, IntGauge, Registry};

use super::series::{counter, counter_vec, gauge, latency};
use super::{FALLBACK_REASONS, UPGRADE_FAILURES};

/// These series, as [`Metrics`](super::Metrics) holds them (the labelled
/// ones resolved per label value, in their enums' order).
pub(super) struct EdgeSeries {
    pub polls: [IntCounter; 3],
    pub proxy_requests: [IntCounter; 5],
    pub proxy_duration: Histogram,
    pub ws_handshakes: IntCounter,
    pub ws_handshake_bytes: IntCounter,
    pub fallbacks: [IntCounter; 5],
    pub upgrade_failures: [IntCounter; 5],
    pub output_pending_bytes: IntGauge,
    pub output_budget_bytes: IntGauge,
}

impl EdgeSeries {
    pub fn register(reg: &Registry) -> EdgeSeries {
        let polls = counter_vec(
            reg,
            "polls_total",
            "Long-poll answers by result",
            &["result"],
        );
        let proxy_requests = counter_vec(
            reg,
            "proxy_requests_total",
            "Proxied requests by status class",
            &["code"],
        );
        let fallbacks = counter_vec(
            reg,
            "transport_fallbacks_total",
            "Browser clients that fell back from WebSocket to long-poll, by the reason they reported",
            &["reason"],
        );
        let upgrade_failures = counter_vec(
            reg,
            "ws_upgrade_failures_total",
            "WebSocket upgrades the gateway refused, by reason",
            &["reason"],
        );
        EdgeSeries {
            polls: ["messages", "empty", "truncated"].map(|r| polls.with_label_values(&[r])),
            proxy_requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| proxy_requests.with_label_values(&[c])),
            proxy_duration: latency(
                reg,
                "proxy_duration_seconds",
                "Time from forwarding a request to the upstream's response head",
            ),
            ws_handshakes: counter(
                reg,
                "ws_handshakes_total",
                "WebSocket upgrade requests (refused ones included)",
            ),
            ws_handshake_bytes: counter(
                reg,
                "ws_handshake_bytes_total",
                "Wire bytes of WebSocket upgrade requests and their answers (both directions; part of wire_bytes_total{transport=\"websocket\"})",
            ),
            fallbacks: FALLBACK_REASONS.map(|r| fallbacks.with_label_values(&[r])),
            upgrade_failures: UPGRADE_FAILURES.map(|r| upgrade_failures.with_label_values(&[r])),
            output_pending_bytes: gauge(
                reg,
                "output_pending_bytes",
                "Output committed to clients that their sockets have not taken yet",
            ),
            output_budget_bytes: gauge(
                reg,
                "output_budget_bytes",
                "The configured limit on pending output (limits.max_pending_output_bytes)",
            ),
        }
    }
}
