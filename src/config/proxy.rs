//! The `[proxy]` section: how the reverse proxy talks to the upstream
//! (connect and answer deadlines, the idle pool, request body pace).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Reverse proxy to the upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Connecting to the upstream must succeed within this time, else 502.
    /// Default: 2s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The upstream must send its response head within this time, else 504.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Idle pooled upstream connections are closed after this long. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept to the upstream. Default: 256.
    pub pool_max_idle: usize,
    /// A proxied request body must be complete this long after its head,
    /// plus one second per `body_min_rate` bytes received; past it the
    /// client gets `408 body_timeout` (when the answer has not started) and
    /// the upstream request is aborted. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Bytes per second a proxied request body must average beyond
    /// `body_timeout` (each this many bytes extends the deadline by 1 s);
    /// 0: the whole body within `body_timeout`. Default: 1024.
    pub body_min_rate: u64,
    /// Plain proxied requests go through the gateway's own HTTP/1.1
    /// upstream codec (docs/http.md); `false`: through hyper's client, on
    /// a new upstream connection per request (for comparison, or should an
    /// upstream's answers need hyper's leniency). Upgrades and `CONNECT`
    /// always use hyper's client. Default: true.
    pub codec: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 256,
            body_timeout: Duration::from_secs(10),
            body_min_rate: 1024,
            codec: true,
        }
    }
}
