//! The `[migration]` section: the window over which legacy pollers are
//! counted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Migration telemetry: who still polls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationConfig {
    /// Distinct legacy pollers are counted over this sliding window.
    /// Default: 5m.
    #[serde(with = "humantime_serde")]
    pub legacy_window: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            legacy_window: Duration::from_secs(300),
        }
    }
}
