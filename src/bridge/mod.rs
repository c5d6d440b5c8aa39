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

mod answer;
mod auth;
mod browser_cache;
mod feed;
mod identity;
mod incremental;
mod incremental_answer;
mod items;
mod record;
mod route;
mod schedule;
mod snapshot;
mod upstream;
mod variants;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use http::header::HeaderMap;
use http::Method;

use crate::config::BridgeMode;
use crate::gateway::Gateway;
use crate::http::{Request, Response};
use crate::metrics::Metrics;
use crate::protocol::channel::ChannelName;
use crate::protocol::error::ApiError;
use answer::{
    answer_with_body, client_has, forwarded_headers, held_until, not_modified, pass_through,
    record_poll, vary_value,
};
use feed::Feed;
use identity::FeedIdentity;
use incremental::IncrementalFeed;
use route::export_without_routes;
pub use route::Route;
use schedule::Poller;
pub use upstream::UpstreamClient;

/// How long a first-time client waits for the backend's first answer.
const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(30);

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
                    config.compression.enabled,
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
            return incremental_answer::handle(gw, self, index, identity, req, peer, secure).await;
        }
        let Some(feed) = self.feed(gw, index, identity, req.headers())? else {
            route.variants.count_refused();
            return pass_through(gw, route, req, peer, secure).await;
        };
        feed.touch();
        record_poll(gw, route, &feed.channel, &req, peer);
        snapshot::answer(gw, &feed, &req).await
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
