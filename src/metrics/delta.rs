//! What delta updates save, per transport: for every delivery to a client
//! that asked for deltas, whether it went out as a delta or whole, and the
//! bytes a delta envelope saved against the whole one.
//! Series: `pollbridge_delta_deliveries_total{transport,form="delta|whole"}`,
//! `pollbridge_delta_bytes_saved_total{transport}` and
//! `pollbridge_delta_direct_deliveries_total` (the WebSocket deltas that
//! publishers wrote themselves, in direct mode).

use prometheus::{IntCounter, Registry};

use super::series::{counter, counter_vec};
use crate::protocol::Transport;

/// Delta deliveries and the bytes they saved, per transport.
pub struct DeltaMetrics {
    /// `[delta, whole, saved bytes]`, indexed by [`Transport`].
    per_transport: Vec<[IntCounter; 3]>,
    /// WebSocket deltas written by publishers (direct mode); also counted
    /// in `per_transport`.
    direct: IntCounter,
}

impl DeltaMetrics {
    pub(super) fn register(registry: &Registry) -> DeltaMetrics {
        let deliveries = counter_vec(
            registry,
            "delta_deliveries_total",
            "Messages delivered to clients that asked for deltas, by transport: form=\"delta\" (a merge patch against the previous value) or form=\"whole\"",
            &["transport", "form"],
        );
        let saved = counter_vec(
            registry,
            "delta_bytes_saved_total",
            "Envelope bytes not sent thanks to deltas (whole envelope minus delta envelope, per delivery), by transport",
            &["transport"],
        );
        let direct = counter(
            registry,
            "delta_direct_deliveries_total",
            "WebSocket deliveries as deltas that the publisher wrote to the socket itself (direct mode, no wake-up of the connection's task); part of delta_deliveries_total{transport=\"websocket\",form=\"delta\"}",
        );
        DeltaMetrics {
            direct,
            per_transport: Transport::ALL
                .iter()
                .map(|t| {
                    [
                        deliveries.with_label_values(&[t.as_str(), "delta"]),
                        deliveries.with_label_values(&[t.as_str(), "whole"]),
                        saved.with_label_values(&[t.as_str()]),
                    ]
                })
                .collect(),
        }
    }

    /// One delivery as a delta of `delta_len` bytes instead of `whole_len`.
    pub fn delta(&self, transport: Transport, whole_len: usize, delta_len: usize) {
        let [delta, _, saved] = &self.per_transport[transport as usize];
        delta.inc();
        saved.inc_by(whole_len.saturating_sub(delta_len) as u64);
    }

    /// One WebSocket delivery as a delta written by a publisher (direct
    /// mode), of `delta_len` bytes instead of `whole_len`.
    pub fn direct_delta(&self, whole_len: usize, delta_len: usize) {
        self.delta(Transport::WebSocket, whole_len, delta_len);
        self.direct.inc();
    }

    /// One delivery, to a client that asked for deltas, as a whole value.
    pub fn whole(&self, transport: Transport) {
        self.per_transport[transport as usize][1].inc();
    }

    /// `(deltas, wholes, bytes saved)` so far.
    pub fn totals(&self, transport: Transport) -> (u64, u64, u64) {
        let [d, w, s] = &self.per_transport[transport as usize];
        (d.get(), w.get(), s.get())
    }
}
