//! Metrics of the flood limits: what clients were refused, what history
//! was dropped to stay within its byte budgets, and how the backend-auth
//! limits held. Every series is created at startup (bounded label sets).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why a WebSocket command was refused by a flood limit.
pub const COMMAND_REFUSALS: [&str; 4] = [
    "command_rate",
    "publish_rate",
    "publish_bytes",
    "client_channels",
];

/// Why a backend auth check was refused before reaching the backend.
pub const AUTH_REFUSALS: [&str; 4] = ["ip_rate", "ip_concurrency", "rate", "concurrency"];

pub struct FloodMetrics {
    /// `pollbridge_ws_commands_refused_total{reason}`, in `COMMAND_REFUSALS` order.
    pub commands_refused: [IntCounter; 4],
    /// WebSockets closed (1008) for collecting too many refusals.
    pub abuse_closes: IntCounter,
    /// Bytes of history held in this node's memory.
    pub history_bytes: IntGauge,
    pub history_evicted_channel_bytes: IntCounter,
    pub history_evicted_total_bytes: IntCounter,
    /// Channels created by client publishes, as counted for `limits.ws.max_client_channels`.
    pub client_channels: IntGauge,
    /// Requests sent to the auth backend.
    pub auth_backend_requests: IntCounter,
    /// Checks refused by the backend-auth limits, in `AUTH_REFUSALS` order.
    pub auth_refused: [IntCounter; 4],
    /// Backend answers cached (grants and denials).
    pub auth_cache_entries: IntGauge,
}

impl FloodMetrics {
    pub fn new(registry: &Registry) -> FloodMetrics {
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let refused = IntCounterVec::new(
            Opts::new(
                "ws_commands_refused_total",
                "WebSocket commands refused by a flood limit (error answer), by limit",
            ),
            &["reason"],
        )
        .unwrap();
        let abuse_closes = IntCounter::new(
            "ws_abuse_closes_total",
            "WebSockets closed with 1008 after too many refused commands",
        )
        .unwrap();
        let history_bytes = IntGauge::new(
            "history_bytes",
            "Bytes of message history held in this node's memory",
        )
        .unwrap();
        let evicted = IntCounterVec::new(
            Opts::new(
                "history_evictions_total",
                "Messages dropped from history to stay within its byte limits, by limit",
            ),
            &["limit"],
        )
        .unwrap();
        let client_channels = IntGauge::new(
            "client_channels",
            "Channels created by client publishes, counted against limits.ws.max_client_channels",
        )
        .unwrap();
        let auth_backend_requests = IntCounter::new(
            "auth_backend_requests_total",
            "Requests sent to the auth backend (auth.auth_url)",
        )
        .unwrap();
        let auth_refused = IntCounterVec::new(
            Opts::new(
                "auth_backend_refused_total",
                "Backend auth checks refused by the gateway's limits before reaching the backend, by limit",
            ),
            &["reason"],
        )
        .unwrap();
        let auth_cache_entries = IntGauge::new(
            "auth_cache_entries",
            "Backend auth answers cached (grants and denials)",
        )
        .unwrap();
        let metrics = FloodMetrics {
            commands_refused: COMMAND_REFUSALS.map(|r| refused.with_label_values(&[r])),
            abuse_closes,
            history_bytes,
            history_evicted_channel_bytes: evicted.with_label_values(&["channel_bytes"]),
            history_evicted_total_bytes: evicted.with_label_values(&["total_bytes"]),
            client_channels,
            auth_backend_requests,
            auth_refused: AUTH_REFUSALS.map(|r| auth_refused.with_label_values(&[r])),
            auth_cache_entries,
        };
        reg(Box::new(refused));
        reg(Box::new(metrics.abuse_closes.clone()));
        reg(Box::new(metrics.history_bytes.clone()));
        reg(Box::new(evicted));
        reg(Box::new(metrics.client_channels.clone()));
        reg(Box::new(metrics.auth_backend_requests.clone()));
        reg(Box::new(auth_refused));
        reg(Box::new(metrics.auth_cache_entries.clone()));
        metrics
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

    #[test]
    fn flood_series_exist_at_startup() {
        let (_, text) = Metrics::new().render();
        let text = String::from_utf8(text).unwrap();
        for needle in [
            "pollbridge_ws_commands_refused_total{reason=\"publish_bytes\"} 0",
            "pollbridge_ws_abuse_closes_total 0",
            "pollbridge_history_bytes 0",
            "pollbridge_history_evictions_total{limit=\"total_bytes\"} 0",
            "pollbridge_client_channels 0",
            "pollbridge_auth_backend_requests_total 0",
            "pollbridge_auth_backend_refused_total{reason=\"ip_rate\"} 0",
            "pollbridge_auth_cache_entries 0",
        ] {
            assert!(text.contains(needle), "missing {needle}\n{text}");
        }
    }
}
