//! The `[shutdown]` section: how long a draining gateway waits, and how
//! widely it spreads the reconnects it asks clients for.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Graceful shutdown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, connections get this long to finish before the process
    /// exits anyway. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Clients told to reconnect (drain, restart, operator disconnect) get
    /// a suggested delay spread at random over this window, so they don't
    /// all come back in the same second. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub reconnect_window: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(10),
            reconnect_window: Duration::from_secs(10),
        }
    }
}
