//! The `[demo]` section: the live demo page and the read-only bandwidth
//! figures it shows.

use serde::{Deserialize, Serialize};

/// The live demo page and the read-only figures it shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo page at `{prefix}/demo`, and let anyone publish on
    /// `demo.channel` from it without a key. Default: false.
    pub enabled: bool,
    /// The channel the demo reads and publishes. Default: `demo`.
    pub channel: String,
    /// Serve the bandwidth figures at `{prefix}/stats` on the public
    /// listener. Default: on exactly when the demo is.
    pub public_stats: Option<bool>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: false,
            channel: "demo".into(),
            public_stats: None,
        }
    }
}

impl DemoConfig {
    pub fn public_stats(&self) -> bool {
        self.public_stats.unwrap_or(self.enabled)
    }
}
