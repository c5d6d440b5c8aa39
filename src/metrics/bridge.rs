//! The legacy-polling bridge's series: the gateway's own polls of the
//! backend, the legacy polls it answers, its feeds, and the distinct
//! polling clients per route.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::series::{counter_vec, gauge_vec};

/// The bridge's series, as [`Metrics`](super::Metrics) holds them.
pub(super) struct BridgeSeries {
    pub bridge_upstream_requests: IntCounterVec,
    pub bridge_client_polls: IntCounterVec,
    pub bridge_variants: IntGaugeVec,
    pub bridge_variants_refused: IntCounterVec,
    pub bridge_auth_checks: IntCounterVec,
    pub legacy_clients: IntGaugeVec,
}

impl BridgeSeries {
    pub fn register(reg: &Registry) -> BridgeSeries {
        BridgeSeries {
            bridge_upstream_requests: counter_vec(
                reg,
                "bridge_upstream_requests_total",
                "The gateway's own polls of the backend, by result",
                &["bridge", "result"],
            ),
            bridge_client_polls: counter_vec(
                reg,
                "bridge_client_polls_total",
                "Legacy polls answered by the gateway, by result",
                &["bridge", "result"],
            ),
            bridge_variants: gauge_vec(
                reg,
                "bridge_variants",
                "Live feeds (distinct query and vary_by values) per bridged route",
                &["bridge"],
            ),
            bridge_variants_refused: counter_vec(
                reg,
                "bridge_variants_refused_total",
                "Legacy polls proxied to the backend unchanged because their route had max_variants feeds",
                &["bridge"],
            ),
            bridge_auth_checks: counter_vec(
                reg,
                "bridge_auth_checks_total",
                "Checks of a legacy client's credentials with the backend before a bridged copy is served ([[bridge]] auth), by result",
                &["bridge", "result"],
            ),
            legacy_clients: gauge_vec(
                reg,
                "legacy_clients",
                "Distinct polling clients seen in the telemetry window, by bridged route (or longpoll)",
                &["route"],
            ),
        }
    }
}
