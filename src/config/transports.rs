//! The client transports' sections: `[websocket]`, `[longpoll]` and
//! `[sse]` (keep-alives, timeouts and answer sizes).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// WebSocket transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Accept WebSocket upgrades on `{prefix}/ws`. Default: true.
    pub enabled: bool,
    /// A ping is sent after this long without traffic from the client.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent for this long (no frame, no pong) is dropped.
    /// Default: 75s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A write to a client that makes no progress for this long drops it.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A plain (non-TLS) connection that had something to do parks again
    /// once it has had nothing to do for about this long (a new one parks
    /// as soon as it is idle): it keeps no task and no runtime
    /// registration, only its state, until the client sends something, a
    /// message cannot be written directly, or a ping is due. `0s` never
    /// parks. Default: 30s (the ping period: a shorter one wakes the ping
    /// clock of every running session that often, which cost more idle CPU
    /// than parking saves; a new connection parks at once regardless).
    #[serde(with = "humantime_serde")]
    pub park_after: Duration,
    /// permessage-deflate (RFC 7692) for clients that offer it. Default:
    /// `shared`.
    pub compression: WsCompression,
    /// Messages whose envelope is shorter than this go uncompressed (the
    /// deflate header costs more than it saves). Default: 256.
    pub compression_min_bytes: usize,
    /// Let clients that offer it use context takeover (a better ratio on
    /// similar messages): such a connection gets its own compressor
    /// (~315 KiB at a 15-bit window, from its first compressed message on)
    /// and its own inflater (~40 KiB), and is written by its own task. Default: false (every answer carries
    /// `server_no_context_takeover; client_no_context_takeover`: no
    /// per-connection state).
    pub deflate_context_takeover: bool,
    /// Most connections holding per-connection compression state at once,
    /// gateway-wide; past it a connection is negotiated without context
    /// takeover (never refused). Default: 1000.
    pub max_deflate_contexts: usize,
}

/// `websocket.compression`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WsCompression {
    /// Never negotiate permessage-deflate.
    Off,
    /// Negotiate it with `server_no_context_takeover`: each message is
    /// deflated once and the same frame goes to every client that
    /// negotiated it (no compressor memory per connection).
    #[default]
    Shared,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: true,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(30),
            park_after: Duration::from_secs(30),
            compression: WsCompression::Shared,
            compression_min_bytes: 256,
            deflate_context_takeover: false,
            max_deflate_contexts: 1000,
        }
    }
}

/// Long-poll and plain-poll transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LongPollConfig {
    /// How long a poll is held when it gives no `timeout`. Default: 25s.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Upper bound on a poll's `timeout`. Default: 120s.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Most messages in one answer; the client polls again for the rest.
    /// Default: 1000.
    pub max_messages: usize,
    /// Most bytes of messages in one answer: as many whole messages as fit
    /// (always at least one), `last_id` the last one included, so the next
    /// poll pages on from it. Default: 1048576 (1 MiB).
    pub max_answer_bytes: usize,
    /// Origins allowed to poll cross-site (CORS), e.g. `https://app.example.com`,
    /// or `*`. Default: none.
    pub cors_origins: Vec<String>,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            default_timeout: Duration::from_secs(25),
            max_timeout: Duration::from_secs(120),
            max_messages: 1000,
            max_answer_bytes: 1024 * 1024,
            cors_origins: Vec::new(),
        }
    }
}

/// Server-sent events transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// A comment line is sent after this long without an event, so proxies
    /// keep the stream open. Default: 15s.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Reconnect delay suggested to browsers (`retry:` field). Default: 2s.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            keepalive_interval: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}
