//! The legacy polling bridge (`[[bridge]]` routes): the gateway polls the
//! backend's existing polling URL once per interval for everybody,
//! publishes each change on a channel, and answers the old polling browsers
//! from its own copy — with `ETag`/`304`, and optionally holding a poll
//! until the next change. WebSocket, SSE and long-poll clients subscribe to
//! the channel. The backend changes nothing.
//!
//! A route serves one feed per distinct query string and `vary_by` value
//! ([`identity`]), up to `max_variants` ([`variants`]); a `snapshot` route's
//! feed keeps the latest answer ([`feed`]), an `incremental` route's keeps
//! the items after each cursor ([`incremental`]).

mod auth;
mod browser_cache;
mod feed;
mod identity;
mod incremental;
mod items;
mod record;
mod schedule;
mod upstream;
mod variants;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use prometheus::IntCounter;

use crate::config::{BridgeMode, BridgeRoute};
use crate::gateway::Gateway;
use crate::http::{Body, Request, Response};
use crate::metrics::Metrics;
use crate::protocol::channel::ChannelName;
use crate::protocol::error::ApiError;
use crate::protocol::Transport;
use feed::{Answer, Feed};
use identity::FeedIdentity;
use incremental::IncrementalFeed;
use schedule::Poller;
pub use upstream::UpstreamClient;
use variants::VariantCap;

/// How long a first-time client waits for the backend's first answer.
const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// One configured route with its counters resolved.
pub struct Route {
    pub config: BridgeRoute,
    /// The backend's content type, last seen by any of the route's feeds
    /// (a feed that restarts serves its first copy with it).
    content_type: parking_lot::Mutex<Option<HeaderValue>>,
    vary_header: Option<HeaderName>,
    forward: Vec<HeaderName>,
    upstream_changed: IntCounter,
    upstream_not_modified: IntCounter,
    upstream_error: IntCounter,
    client_body: IntCounter,
    client_not_modified: IntCounter,
    client_held: IntCounter,
    /// Legacy polls answered by the backend itself (past `max_variants`;
    /// on incremental routes also first polls and unknown cursors).
    client_proxied: IntCounter,
    variants: Arc<VariantCap>,
    client_refused: IntCounter,
    /// `auth`: the checks a client passes before it is served the copy.
    auth: Option<auth::RouteAuth>,
}

impl Route {
    fn new(config: BridgeRoute, auth_timeout: Duration, metrics: &Metrics) -> Route {
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

    fn upstream_result(&self, result: &str) {
        match result {
            "changed" => self.upstream_changed.inc(),
            "not_modified" => self.upstream_not_modified.inc(),
            _ => self.upstream_error.inc(),
        }
    }
}

/// Running feeds of one kind by (route index, identity key).
type FeedMap<F> = DashMap<(usize, String), Arc<F>>;

/// All bridge routes and their running feeds.
pub struct Bridges {
    routes: Vec<Arc<Route>>,
    /// Running snapshot feeds by (route index, identity key).
    feeds: FeedMap<Feed>,
    /// Running incremental feeds by (route index, identity key).
    incremental: FeedMap<IncrementalFeed>,
    client: Option<Arc<UpstreamClient>>,
    /// Itself, for the feed tasks that remove their feed when they end.
    me: std::sync::Weak<Bridges>,
}

impl Bridges {
    pub fn new(config: &crate::Config, metrics: &Metrics) -> Arc<Bridges> {
        let client = config
            .upstream
            .as_deref()
            .and_then(|url| crate::proxy::parse_upstream(url).ok())
            .map(|authority| {
                Arc::new(UpstreamClient::new(
                    authority,
                    &config.proxy,
                    config.limits.max_message_bytes,
                ))
            });
        if config.bridges.is_empty() {
            export_without_routes(metrics);
        }
        Arc::new_cyclic(|me| Bridges {
            routes: config
                .bridges
                .iter()
                .map(|r| Arc::new(Route::new(r.clone(), config.auth.auth_timeout, metrics)))
                .collect(),
            feeds: DashMap::new(),
            incremental: DashMap::new(),
            client,
            me: me.clone(),
        })
    }

    /// The route bridging `path`, if any.
    pub fn route_for(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.config.path == path)
    }

    /// Answers a legacy poll of a bridged path.
    pub async fn handle(
        &self,
        gw: &Arc<Gateway>,
        index: usize,
        req: Request,
        peer: std::net::SocketAddr,
        secure: bool,
    ) -> Result<Response, ApiError> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(ApiError::MethodNotAllowed("GET"));
        }
        if let Some(denied) = self.refusal(gw, index, req.headers()).await {
            self.routes[index].client_refused.inc();
            return denied.into_response();
        }
        let route = &self.routes[index];
        let identity = FeedIdentity::of(
            &route.config,
            req.uri().query(),
            vary_value(route, req.headers()),
        );
        if route.auth.is_some() && !identity.query.is_empty() {
            // Credentials are checked against the route's own URL, and a
            // query's feed would publish on a channel no rule was checked
            // for: an `auth` route shares only its plain URL's answer.
            return pass_through(gw, route, req, peer, secure).await;
        }
        if route.config.mode == BridgeMode::Incremental {
            return incremental::handle(gw, self, index, identity, req, peer, secure).await;
        }
        let Some(feed) = self.feed(gw, index, identity, req.headers())? else {
            route.variants.count_refused();
            return pass_through(gw, route, req, peer, secure).await;
        };
        feed.touch();
        record_poll(gw, route, &feed.channel, &req, peer);
        let route = &feed.route;

        // Before the first poll has come back, wait for it: the first
        // client's request is the one that reaches the backend.
        let mut watch = feed.watch();
        if !feed.resolved() {
            let wait = watch.wait_for(|_| feed.resolved());
            let _ = tokio::time::timeout(FIRST_ANSWER_WAIT, wait).await;
        }
        let answer = feed.answer().ok_or_else(|| {
            ApiError::UpstreamTimeout(format!(
                "no answer from the backend for {} yet",
                route.config.path
            ))
        })?;
        let (copy, age) = match answer {
            Answer::Failure(failure) => {
                let mut resp = hyper::Response::new(Body::full(failure.body));
                *resp.status_mut() = failure.status;
                if let Some(ct) = failure.content_type {
                    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                return Ok(resp);
            }
            Answer::Copy { copy, age } => (copy, age),
        };

        let current = client_has(req.headers(), &copy.etag);
        if current {
            let Some(hold) = route.config.hold else {
                route.client_not_modified.inc();
                return Ok(not_modified(route, &copy.etag));
            };
            // Hold the poll until the copy changes or the hold ends.
            let seen = copy.id;
            let changed = watch.wait_for(
                |_| matches!(feed.answer(), Some(Answer::Copy { copy, .. }) if copy.id != seen),
            );
            let outcome = tokio::select! {
                changed = tokio::time::timeout(hold, changed) => changed.is_ok_and(|r| r.is_ok()),
                _ = gw.shutdown.cancelled() => false,
            };
            drop(watch);
            if !outcome {
                route.client_not_modified.inc();
                return Ok(not_modified(route, &copy.etag));
            }
            route.client_held.inc();
            let Some(Answer::Copy { copy, age }) = feed.answer() else {
                return Ok(not_modified(route, &copy.etag));
            };
            return Ok(self.body(gw, route, copy, age));
        }
        route.client_body.inc();
        Ok(self.body(gw, route, copy, age))
    }

    /// With `auth`: why this client may not be served the copy, if so.
    async fn refusal(
        &self,
        gw: &Gateway,
        index: usize,
        headers: &HeaderMap,
    ) -> Option<auth::Denied> {
        let route = &self.routes[index];
        let checks = route.auth.as_ref()?;
        let Some(client) = self.client.as_deref() else {
            return Some(auth::Denied::Error(ApiError::NotFound(
                "bridge configured without an upstream".into(),
            )));
        };
        checks
            .check(&route.config, &gw.auth, client, headers)
            .await
            .err()
    }

    fn body(
        &self,
        gw: &Gateway,
        route: &Route,
        copy: feed::Copy,
        age: Option<Duration>,
    ) -> Response {
        let held = route.config.hold.is_some();
        let mut resp = answer_with_body(gw, copy.body, copy.content_type, copy.etag, held);
        if let Some(age) = age {
            resp.headers_mut()
                .insert(header::AGE, HeaderValue::from(age.as_secs()));
        }
        resp
    }
}

impl crate::gateway::ChannelDemand for Bridges {
    /// Someone subscribed to `channel`: if a route bridges it (its plain
    /// feed: no query, no `vary_by`), make sure that feed is polling.
    fn wanted(&self, gw: &Arc<Gateway>, channel: &ChannelName) {
        for (index, route) in self.routes.iter().enumerate() {
            // A route with `auth` polls with an allowed client's
            // credentials: it starts once a legacy client has passed.
            let can_poll = route.auth.as_ref().is_none_or(|a| a.has_poll_credentials());
            if route.vary_header.is_some() || route.config.channel != channel.as_str() || !can_poll
            {
                continue;
            }
            let started = match route.config.mode {
                BridgeMode::Snapshot => self
                    .start_feed(gw, index, FeedIdentity::plain(), HeaderMap::new())
                    .map(drop),
                BridgeMode::Incremental => self
                    .incremental_feed(gw, index, FeedIdentity::plain(), HeaderMap::new())
                    .map(drop),
            };
            if let Err(e) = started {
                tracing::debug!(%channel, error = %e, "bridge feed not started");
            }
        }
    }
}

impl Bridges {
    /// The feed for this request's variant, started if needed; None when
    /// the route is at `max_variants`.
    fn feed(
        &self,
        gw: &Arc<Gateway>,
        index: usize,
        identity: FeedIdentity,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<Feed>>, ApiError> {
        let forwarded = forwarded_headers(&self.routes[index], headers);
        self.start_feed(gw, index, identity, forwarded)
    }

    /// The running snapshot feed of a route variant, or a new one (None at
    /// the cap).
    fn start_feed(
        &self,
        gw: &Arc<Gateway>,
        index: usize,
        identity: FeedIdentity,
        forwarded: HeaderMap,
    ) -> Result<Option<Arc<Feed>>, ApiError> {
        self.running(
            gw,
            index,
            identity,
            |b| &b.feeds,
            |route, channel, identity| Feed::new(route, channel, identity, forwarded),
        )
    }

    /// The running incremental feed of a route variant, or a new one (None
    /// at the cap).
    fn incremental_feed(
        &self,
        gw: &Arc<Gateway>,
        index: usize,
        identity: FeedIdentity,
        forwarded: HeaderMap,
    ) -> Result<Option<Arc<IncrementalFeed>>, ApiError> {
        let history = gw.config.history.size;
        self.running(
            gw,
            index,
            identity,
            |b| &b.incremental,
            |route, channel, identity| {
                IncrementalFeed::new(route, channel, identity, forwarded, history)
            },
        )
    }

    /// The running feed of `identity` in `feeds`, or a new one made by
    /// `new` and its poller started — None when the route has
    /// `max_variants` feeds already.
    fn running<F: Poller>(
        &self,
        gw: &Arc<Gateway>,
        index: usize,
        identity: FeedIdentity,
        feeds: fn(&Bridges) -> &FeedMap<F>,
        new: impl FnOnce(Arc<Route>, ChannelName, FeedIdentity) -> Arc<F>,
    ) -> Result<Option<Arc<F>>, ApiError> {
        let route = &self.routes[index];
        let key = (index, identity.key.clone());
        if let Some(feed) = feeds(self).get(&key) {
            return Ok(Some(feed.clone()));
        }
        let client = self.upstream()?;
        let channel = ChannelName::new(&identity.channel_name(&route.config.channel))?;
        let (feed, slot) = match feeds(self).entry(key.clone()) {
            dashmap::Entry::Occupied(e) => return Ok(Some(e.get().clone())),
            dashmap::Entry::Vacant(v) => {
                let Some(slot) = route.variants.try_take() else {
                    return Ok(None);
                };
                let feed = new(route.clone(), channel, identity);
                v.insert(feed.clone());
                (feed, slot)
            }
        };
        let task_feed = feed.clone();
        let task_gw = gw.clone();
        let bridges = self.me.clone();
        gw.tasks.spawn(async move {
            task_feed.poll_while_wanted(task_gw, client).await;
            // Retired (idle) or shutting down: forget it (and give its place
            // under the cap back); the next poll starts a fresh one.
            if let Some(bridges) = bridges.upgrade() {
                feeds(&bridges).remove(&key);
            }
            drop(slot);
        });
        Ok(Some(feed))
    }

    fn upstream(&self) -> Result<Arc<UpstreamClient>, ApiError> {
        self.client
            .clone()
            .ok_or_else(|| ApiError::NotFound("bridge configured without an upstream".into()))
    }
}

/// The request's `vary_by` header value, if the route has one.
fn vary_value(route: &Route, headers: &HeaderMap) -> Option<HeaderValue> {
    route
        .vary_header
        .as_ref()
        .and_then(|name| headers.get(name))
        .cloned()
}

/// The client headers a feed started by this request sends to the backend.
fn forwarded_headers(route: &Route, headers: &HeaderMap) -> HeaderMap {
    let mut forwarded = HeaderMap::new();
    for name in &route.forward {
        if let Some(value) = headers.get(name) {
            forwarded.insert(name.clone(), value.clone());
        }
    }
    forwarded
}

/// Counts a legacy poll in the migration telemetry.
fn record_poll(
    gw: &Gateway,
    route: &Route,
    channel: &ChannelName,
    req: &Request,
    peer: std::net::SocketAddr,
) {
    let client = gw.ip_limits.client_ip(peer.ip(), req.headers());
    gw.migration.record_poll(
        &route.config.path,
        channel.as_str(),
        crate::migration::client_key(client, req.headers(), None),
        crate::migration::referer_path(req.headers()).as_deref(),
    );
}

/// Sends a legacy poll to the backend unchanged, as if there were no
/// bridge: past `max_variants`, and for what only the backend can answer.
async fn pass_through(
    gw: &Gateway,
    route: &Route,
    req: Request,
    peer: std::net::SocketAddr,
    secure: bool,
) -> Result<Response, ApiError> {
    route.client_proxied.inc();
    let proxy = gw
        .proxy
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("bridge configured without an upstream".into()))?;
    let from_proxy = gw.ip_limits.is_trusted(peer.ip());
    let scheme = if secure { "https" } else { "http" };
    Ok(proxy.forward(req, peer, scheme, from_proxy).await)
}

/// A `200` a legacy client gets from the gateway's copy.
fn answer_with_body(
    gw: &Gateway,
    body: bytes::Bytes,
    content_type: HeaderValue,
    etag: HeaderValue,
    held: bool,
) -> Response {
    let delivered = gw.metrics.transport(Transport::Bridge);
    delivered.delivered.inc();
    delivered.payload_out.inc_by(body.len() as u64);
    let mut resp = hyper::Response::new(Body::full(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, browser_cache::cache_control(held));
    resp
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
fn export_without_routes(metrics: &Metrics) {
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

/// True when the request's `If-None-Match` names `etag`.
fn client_has(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| {
            let t = t.trim_ascii();
            t == etag.as_bytes() || t == b"*" || t.strip_prefix(b"W/") == Some(etag.as_bytes())
        })
}

fn not_modified(route: &Route, etag: &HeaderValue) -> Response {
    let mut resp = hyper::Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    resp.headers_mut().insert(header::ETAG, etag.clone());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        browser_cache::cache_control(route.config.hold.is_some()),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let etag = HeaderValue::from_static("\"pb-3\"");
        let mut h = HeaderMap::new();
        assert!(!client_has(&h, &etag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"pb-2\", W/\"pb-3\""),
        );
        assert!(client_has(&h, &etag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"pb-30\""));
        assert!(!client_has(&h, &etag));
    }
}
