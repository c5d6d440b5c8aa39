//! The `[redis]` section: how the Redis bus (`bus = "redis://…"`) connects.
//!
//! The server itself is named by `bus`:
//! `redis://[[user]:password@]host[:port][/db]` or `rediss://…` for TLS
//! (certificates checked against the system store, or `tls_ca_file`). Every
//! connection speaks RESP3, so the server must be Redis 6 or newer (7 for
//! sharded pub/sub).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::redis_url::{check_url, is_redis_url};

/// Which pub/sub commands carry live messages.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PubSubMode {
    /// Sharded (`SPUBLISH`/`SSUBSCRIBE`) when the server is Redis 7 or
    /// newer, classic otherwise.
    Auto,
    /// Always `SPUBLISH`/`SSUBSCRIBE` (Redis 7+): in a cluster each message
    /// goes only to the shard owning its channel.
    Sharded,
    /// Always `PUBLISH`/`SUBSCRIBE`: in a cluster every message is
    /// broadcast to every node.
    Classic,
}

/// Connection settings of the Redis bus. Unused with `bus = "memory"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `bus` is one node of a Redis Cluster; the others are discovered
    /// (database must be 0). Default: false.
    pub cluster: bool,
    /// More cluster nodes to start from, as `redis://host:port` URLs, in case
    /// the `bus` node is down at startup. Default: none.
    pub cluster_nodes: Vec<String>,
    /// Command connections (publish, history reads), each multiplexing many
    /// concurrent requests; in a cluster, per node. Live delivery always
    /// uses one extra subscription connection (per cluster master).
    /// Default: 1.
    pub pool_size: usize,
    /// Connecting (TCP, TLS, AUTH, SELECT) must finish within this.
    /// Default: 2s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Every command must be answered within this; past it a publish
    /// answers 503 (it may still have been stored) and a read fails.
    /// Default: 2s.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// First delay before reconnecting the subscription connection; it
    /// doubles on each failure, with random jitter. Default: 100ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    /// Longest delay between reconnect attempts. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// The subscription connection is pinged this often; a failed ping
    /// counts as a lost connection (and `/readyz` reports not ready).
    /// Default: 1s.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// A channel whose last local subscriber left is unsubscribed on Redis
    /// after this long, so clients that come straight back (long-polls)
    /// don't make the node resubscribe. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub unsubscribe_delay: Duration,
    /// `auto`, `sharded` or `classic`: see [`PubSubMode`]. Every node of a
    /// deployment must end up with the same choice. Default: `auto`.
    pub pubsub: PubSubMode,
    /// Prefix of every key and pub/sub channel, so deployments can share a
    /// Redis. No braces. Default: `pollbridge`.
    pub key_prefix: String,
    /// PEM file with the CA certificate(s) to trust for `rediss://` instead
    /// of the system store. Default: none.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            cluster: false,
            cluster_nodes: Vec::new(),
            pool_size: 1,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            health_interval: Duration::from_secs(1),
            unsubscribe_delay: Duration::from_secs(10),
            pubsub: PubSubMode::Auto,
            key_prefix: "pollbridge".into(),
            tls_ca_file: None,
        }
    }
}

impl RedisConfig {
    /// Problems with this section (and with `bus`, when it names Redis), as
    /// (key, message).
    pub fn problems(&self, bus: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| problems.push((key.to_string(), message));
        if !is_redis_url(bus) {
            return problems;
        }
        match check_url(bus) {
            Ok(db) if self.cluster && db != 0 => {
                bad("bus", "a Redis Cluster has only database 0".into())
            }
            Ok(_) => {}
            Err(e) => bad("bus", e),
        }
        for node in &self.cluster_nodes {
            if let Err(e) = check_url(node) {
                bad("redis.cluster_nodes", e);
            }
        }
        if !self.cluster_nodes.is_empty() && !self.cluster {
            bad(
                "redis.cluster_nodes",
                "only used with redis.cluster = true".into(),
            );
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            bad("redis.pool_size", "must be between 1 and 64".into());
        }
        for (key, value) in [
            ("redis.connect_timeout", self.connect_timeout),
            ("redis.command_timeout", self.command_timeout),
            ("redis.reconnect_min_delay", self.reconnect_min_delay),
            ("redis.health_interval", self.health_interval),
        ] {
            if value.is_zero() {
                bad(key, "must be longer than 0s".into());
            }
        }
        if self.reconnect_max_delay < self.reconnect_min_delay {
            bad(
                "redis.reconnect_max_delay",
                "must not be shorter than redis.reconnect_min_delay".into(),
            );
        }
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            bad(
                "redis.key_prefix",
                format!(
                    "{:?} must be non-empty, without braces or spaces",
                    self.key_prefix
                ),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cfg: &RedisConfig, bus: &str) -> Vec<String> {
        cfg.problems(bus).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn defaults_are_valid_for_redis_urls() {
        let cfg = RedisConfig::default();
        for bus in [
            "redis://127.0.0.1:6379",
            "redis://:secret@10.0.0.1/3",
            "redis://user:secret@host:6380/0",
            "rediss://cache.example.com",
            "redis://127.0.0.1/?protocol=resp3",
            "memory",
        ] {
            assert_eq!(keys(&cfg, bus), Vec::<String>::new(), "{bus}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let cfg = RedisConfig {
            cluster: true,
            cluster_nodes: vec!["http://x".into()],
            pool_size: 0,
            command_timeout: Duration::ZERO,
            reconnect_max_delay: Duration::from_millis(1),
            key_prefix: "a{b}".into(),
            ..RedisConfig::default()
        };
        assert_eq!(
            keys(&cfg, "redis://h/2"),
            [
                "bus",
                "redis.cluster_nodes",
                "redis.pool_size",
                "redis.command_timeout",
                "redis.reconnect_max_delay",
                "redis.key_prefix"
            ]
        );
        let problems = cfg.problems("redis://h:notaport");
        assert_eq!(problems[0].0, "bus");
    }
}
