//! One configured bridge route with its counters resolved, and the
//! counters' label values (exported at 0 from startup).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use prometheus::IntCounter;

use super::auth;
use super::variants::VariantCap;
use crate::config::BridgeRoute;
use crate::metrics::Metrics;

/// One configured route with its counters resolved.
pub struct Route {
    pub config: BridgeRoute,
    /// The backend's content type, last seen by any of the route's feeds
    /// (a feed that restarts serves its first copy with it).
    pub(super) content_type: parking_lot::Mutex<Option<HeaderValue>>,
    pub(super) vary_header: Option<HeaderName>,
    pub(super) forward: Vec<HeaderName>,
    pub(super) upstream_changed: IntCounter,
    pub(super) upstream_not_modified: IntCounter,
    pub(super) upstream_error: IntCounter,
    pub(super) client_body: IntCounter,
    pub(super) client_not_modified: IntCounter,
    pub(super) client_held: IntCounter,
    /// Legacy polls answered by the backend itself (past `max_variants`;
    /// on incremental routes also first polls and unknown cursors).
    pub(super) client_proxied: IntCounter,
    pub(super) variants: Arc<VariantCap>,
    pub(super) client_refused: IntCounter,
    /// `auth`: the checks a client passes before it is served the copy.
    pub(super) auth: Option<auth::RouteAuth>,
}

impl Route {
    pub(super) fn new(config: BridgeRoute, auth_timeout: Duration, metrics: &Metrics) -> Route {
        let up = |r: &str| {
            metrics
                .bridge_upstream_requests
                .with_label_values(&[config.channel.as_str(), r])
        };
        let client = |r: &str| {
            metrics
                .bridge_client_polls
                .with_label_values(&[config.channel.as_str(), r])
        };
        // Every route's check counters exist from startup, `auth` or not.
        for result in AUTH_RESULTS {
            metrics
                .bridge_auth_checks
                .with_label_values(&[config.channel.as_str(), result]);
        }
        Route {
            content_type: parking_lot::Mutex::new(None),
            vary_header: config
                .vary_by
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            forward: config
                .forward_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            upstream_changed: up("changed"),
            upstream_not_modified: up("not_modified"),
            upstream_error: up("error"),
            client_body: client("body"),
            client_not_modified: client("not_modified"),
            client_held: client("held"),
            client_proxied: client("proxied"),
            variants: VariantCap::new(
                config.max_variants,
                metrics
                    .bridge_variants
                    .with_label_values(&[config.channel.as_str()]),
                metrics
                    .bridge_variants_refused
                    .with_label_values(&[config.channel.as_str()]),
            ),
            client_refused: client("refused"),
            auth: auth::RouteAuth::new(&config, auth_timeout, metrics),
            config,
        }
    }

    pub(super) fn upstream_result(&self, result: &str) {
        match result {
            "changed" => self.upstream_changed.inc(),
            "not_modified" => self.upstream_not_modified.inc(),
            _ => self.upstream_error.inc(),
        }
    }
}

/// The results of `pollbridge_bridge_upstream_requests_total`.
const UPSTREAM_RESULTS: [&str; 3] = ["changed", "not_modified", "error"];
/// The results of `pollbridge_bridge_client_polls_total`.
const CLIENT_RESULTS: [&str; 5] = ["body", "not_modified", "held", "refused", "proxied"];
/// The results of `pollbridge_bridge_auth_checks_total`.
const AUTH_RESULTS: [&str; 3] = ["allowed", "refused", "error"];

/// A gateway without routes still exports the bridge counters, at 0 and
/// without a `bridge` label (an empty label is no label to Prometheus), so
/// every series exists from startup and the dashboards' bridge panels and
/// recording rule show 0 there instead of nothing.
pub(super) fn export_without_routes(metrics: &Metrics) {
    for result in UPSTREAM_RESULTS {
        metrics
            .bridge_upstream_requests
            .with_label_values(&["", result]);
    }
    for result in CLIENT_RESULTS {
        metrics.bridge_client_polls.with_label_values(&["", result]);
    }
    for result in AUTH_RESULTS {
        metrics.bridge_auth_checks.with_label_values(&["", result]);
    }
    metrics.bridge_variants.with_label_values(&[""]);
    metrics.bridge_variants_refused.with_label_values(&[""]);
}
