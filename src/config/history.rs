//! The `[history]` section: how much of each channel's past is kept for
//! resuming clients, bounded by count, age and bytes (per channel and for
//! the whole node).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How much of each channel's past is kept for resuming clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per channel. Default: 1000.
    pub size: usize,
    /// Messages older than this are dropped from history. Default: 1h.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// A channel with no history and no subscribers is forgotten after this
    /// long (at once if nothing was ever published on it). Default: 5m.
    #[serde(with = "humantime_serde")]
    pub idle_channel_ttl: Duration,
    /// Bytes of history kept per channel (the encoded envelopes); past it
    /// the channel's oldest messages are dropped. The newest message is
    /// always kept. With the Redis bus this also bounds each channel's
    /// stream. Default: 4194304 (4 MiB).
    pub max_bytes: usize,
    /// Bytes of history this node keeps in memory over all channels; past
    /// it the oldest messages of any channel are dropped first. Default:
    /// 268435456 (256 MiB).
    pub max_total_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 1000,
            max_age: Duration::from_secs(3600),
            idle_channel_ttl: Duration::from_secs(300),
            max_bytes: 4 << 20,
            max_total_bytes: 256 << 20,
        }
    }
}
