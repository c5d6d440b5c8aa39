//! What compression saves, per transport: the bytes of every encoded
//! answer, frame or event that was compressed, before and after. Wire bytes
//! (`wire_bytes_total`) stay what crossed the socket (compressed) and
//! payload bytes the uncompressed `data`, so compression shows there as a
//! negative overhead; these two counters give the ratio itself
//! (`after / before`, the compression ratio in `/stats` and the dashboard).
//! `pollbridge_ws_deflate_contexts_connections` counts the WebSocket
//! connections that hold their own compression state (context takeover,
//! bounded by `websocket.max_deflate_contexts`).

use prometheus::{IntCounter, IntGauge, Registry};

use super::series::{counter_vec, gauge};
use crate::protocol::Transport;

/// Bytes compressed and what they compressed to, per transport.
pub struct CompressionMetrics {
    /// `[before, after]`, indexed by [`Transport`].
    per_transport: Vec<[IntCounter; 2]>,
    /// WebSocket connections holding a compressor or inflater of their
    /// own (context takeover); also the count their cap is checked on.
    pub ws_contexts: IntGauge,
}

impl CompressionMetrics {
    pub(super) fn register(registry: &Registry) -> CompressionMetrics {
        let bytes = counter_vec(
            registry,
            "compression_bytes_total",
            "Bytes of compressed output by transport: stage=\"before\" (as encoded) and stage=\"after\" (as sent)",
            &["transport", "stage"],
        );
        let ws_contexts = gauge(
            registry,
            "ws_deflate_contexts_connections",
            "WebSocket connections holding their own permessage-deflate state (context takeover: a compressor and/or an inflater kept between messages), at most websocket.max_deflate_contexts",
        );
        CompressionMetrics {
            ws_contexts,
            per_transport: Transport::ALL
                .iter()
                .map(|t| {
                    [
                        bytes.with_label_values(&[t.as_str(), "before"]),
                        bytes.with_label_values(&[t.as_str(), "after"]),
                    ]
                })
                .collect(),
        }
    }

    /// `before` bytes went out compressed to `after`.
    pub fn record(&self, transport: Transport, before: usize, after: usize) {
        let [b, a] = &self.per_transport[transport as usize];
        b.inc_by(before as u64);
        a.inc_by(after as u64);
    }

    /// `(before, after)` so far, for `/stats`.
    pub fn totals(&self, transport: Transport) -> (u64, u64) {
        let [b, a] = &self.per_transport[transport as usize];
        (b.get(), a.get())
    }
}
