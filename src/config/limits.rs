//! The `[limits]` section: what one client may cost the gateway
//! (connections, message and header sizes, read and write deadlines,
//! unsent output), each with a safe default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::WsClientLimits;

/// Limits that keep one client from costing the gateway without bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections on the public listener; past it new ones are
    /// answered 503 and closed. Default: 19000 (the open-file limit here is 20000).
    pub max_connections: usize,
    /// Largest published payload and largest WebSocket message from a
    /// client, in bytes. Default: 65536.
    pub max_message_bytes: usize,
    /// Messages queued per subscriber before a slow `stream` subscriber is
    /// disconnected. Default: 1024.
    pub queue_length: usize,
    /// Channels one WebSocket connection may subscribe to. Default: 64.
    pub max_subscriptions_per_connection: usize,
    /// Largest HTTP request head in bytes (request line + headers); larger
    /// heads are answered 431. Default: 16384.
    pub max_header_bytes: usize,
    /// A request head must arrive completely within this time (slowloris).
    /// Default: 10s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A publish body must arrive completely within this time. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open connections from one client address; past it new ones get 429
    /// and are closed. 0: no per-address limit. Default: 1000.
    pub max_connections_per_ip: usize,
    /// Long-polls per second from one client address (a burst of twice
    /// this is allowed); past it 429 with `Retry-After`. 0: unlimited.
    /// Default: 100.
    pub longpoll_rate_per_ip: u32,
    /// Proxies (CIDRs like `10.0.0.0/8`) whose `X-Forwarded-For` is
    /// trusted to name the client, for the per-address limits. Connections
    /// from them are not counted per address. Default: none.
    pub trusted_proxies: Vec<String>,
    /// New WebSocket and SSE sessions admitted per second, gateway-wide
    /// (a burst of one second's worth); past it `503` with a jittered
    /// `Retry-After`. 0: unlimited. Default: 2000.
    pub new_sessions_per_second: u32,
    /// An HTTP answer (long-poll, proxied, any other) or SSE stream whose
    /// socket accepts nothing for this long is closed. WebSocket sessions
    /// use `websocket.write_timeout`. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Bytes of unsent output all clients together may hold (queued live
    /// messages, streamed long-poll answers); past it the clients holding
    /// the most are dropped first and new large long-poll answers get `503`
    /// with `Retry-After`. Default: 268435456 (256 MiB).
    pub max_pending_output_bytes: usize,
    /// A client whose unsent output passes this is dropped at once.
    /// Default: 33554432 (32 MiB).
    pub client_output_hard_bytes: usize,
    /// A client whose unsent output stays past this for
    /// `client_output_soft_time` is dropped. Default: 8388608 (8 MiB).
    pub client_output_soft_bytes: usize,
    /// See `client_output_soft_bytes`. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub client_output_soft_time: Duration,
    /// Per-WebSocket-connection command and publish rates, and the cap on
    /// channels client publishes may create (`[limits.ws]`).
    pub ws: WsClientLimits,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 19_000,
            max_message_bytes: 64 * 1024,
            queue_length: 1024,
            max_subscriptions_per_connection: 64,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections_per_ip: 1000,
            longpoll_rate_per_ip: 100,
            trusted_proxies: Vec::new(),
            new_sessions_per_second: 2000,
            write_timeout: Duration::from_secs(30),
            max_pending_output_bytes: 256 * 1024 * 1024,
            client_output_hard_bytes: 32 * 1024 * 1024,
            client_output_soft_bytes: 8 * 1024 * 1024,
            client_output_soft_time: Duration::from_secs(60),
            ws: WsClientLimits::default(),
        }
    }
}
