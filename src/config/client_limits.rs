//! The `[limits.ws]` section: what one WebSocket connection may ask of the
//! gateway per second (commands, client publishes and their bytes), how
//! patient the gateway is past that, and how many channels client
//! publishes may bring into being.
//!
//! Each rate is a token bucket: `*_rate` tokens per second, holding at
//! most `*_burst`. A command past a bucket is not run; the client gets an
//! `{"type":"error","code":"rate_limited"|"publish_rate_limited",…}`
//! answer. Refusals are forgiven at one per second; a connection that
//! collects more than `refusals_before_close` is closed with 1008.

use serde::{Deserialize, Serialize};

/// Per-connection command and publish limits of the WebSocket transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WsClientLimits {
    /// Commands (subscribe, unsubscribe, publish, anything unparsable) per
    /// second per connection. 0: unlimited. Default: 50.
    pub command_rate: u32,
    /// Commands a connection may send at once before the rate applies.
    /// Default: 100.
    pub command_burst: u32,
    /// Client publishes per second per connection. 0: unlimited.
    /// Default: 10.
    pub publish_rate: u32,
    /// Client publishes at once before `publish_rate` applies. Default: 20.
    pub publish_burst: u32,
    /// Payload bytes a connection may publish per second. 0: unlimited.
    /// Default: 65536 (64 KiB).
    pub publish_bytes_rate: u64,
    /// Payload bytes a connection may publish at once. A message larger
    /// than this takes a full bucket (it is slowed down, never refused
    /// for good). Default: 262144 (256 KiB).
    pub publish_bytes_burst: u64,
    /// Rate refusals a connection may collect (forgiven at one per
    /// second) before it is closed with 1008. Default: 20.
    pub refusals_before_close: u32,
    /// Channels client publishes may bring into being on this node (a
    /// channel counts from its first client publish until its history
    /// ages out, `history.max_age`); a publish that would create one more
    /// is refused (`too_many_channels`). 0: clients may only publish on
    /// channels that already exist. Default: 1000.
    pub max_client_channels: usize,
}

impl Default for WsClientLimits {
    fn default() -> Self {
        WsClientLimits {
            command_rate: 50,
            command_burst: 100,
            publish_rate: 10,
            publish_burst: 20,
            publish_bytes_rate: 64 << 10,
            publish_bytes_burst: 256 << 10,
            refusals_before_close: 20,
            max_client_channels: 1000,
        }
    }
}

impl WsClientLimits {
    /// Problems with these values, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.command_rate > 0 && self.command_burst == 0 {
            problems.push((
                "limits.ws.command_burst".into(),
                "must be at least 1 while limits.ws.command_rate is set".into(),
            ));
        }
        if self.publish_rate > 0 && self.publish_burst == 0 {
            problems.push((
                "limits.ws.publish_burst".into(),
                "must be at least 1 while limits.ws.publish_rate is set".into(),
            ));
        }
        if self.publish_bytes_rate > 0 && self.publish_bytes_burst == 0 {
            problems.push((
                "limits.ws.publish_bytes_burst".into(),
                "must be at least 1 while limits.ws.publish_bytes_rate is set".into(),
            ));
        }
        problems
    }
}
