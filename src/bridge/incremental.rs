//! Incremental bridge routes (`mode = "incremental"`): APIs that answer
//! "what is new since my cursor" (`GET /api/messages?after=123` →
//! `{"messages":[{"id":124,…}]}`).
//!
//! One feed per route variant polls the backend with the gateway's own
//! cursor (the id of the newest item it has), publishes every new item as
//! one message on a `stream` channel, and answers each legacy poll from its
//! [`Record`] of that channel: the items after the client's cursor, inside
//! the wrapper of the backend's latest answer, with an ETag (`304`, `hold`)
//! as snapshot routes do. What only the backend can answer goes to the
//! backend unchanged: a first poll (no cursor), and a cursor the record
//! doesn't know (older than its history, or not yet seen) — so a client
//! never misses an item.
//!
//! In a cluster the node holding the feed's lease polls; the others build
//! their record from the channel, and fetch the wrapper once themselves.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::feed::etag_for;
use super::identity::FeedIdentity;
use super::items::{self, Template};
use super::record::Record;
use super::schedule::{next_poll_delay, Demand, Poller};
use super::upstream::{Fetched, UpstreamClient};
use super::Route;
use crate::bus::{Bus, SubscriberQueue};
use crate::gateway::Gateway;
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::Transport;
use crate::protocol::{Epoch, Message, Payload};

/// Messages taken from the feed's own subscription per wake-up.
const DRAIN_BATCH: usize = 256;

struct State {
    record: Record,
    /// The wrapper of the backend's latest answer; None until one is seen.
    template: Option<Template>,
    content_type: HeaderValue,
    /// The newest item on the channel as (epoch, bus id, item id): the
    /// cursor the gateway polls with. Bus ids are compared within one epoch
    /// only: after the bus lost the channel they start again at 1.
    cursor: Option<(Epoch, u64, String)>,
    /// The first poll (or, on a node that doesn't poll, the first look at
    /// the channel) is done.
    resolved: bool,
}

/// What a legacy client with a known cursor is sent.
pub(super) struct Answer {
    pub(super) body: Bytes,
    pub(super) etag: HeaderValue,
    pub(super) content_type: HeaderValue,
    /// The newest bus id the answer reflects.
    pub(super) last_bus_id: u64,
}

/// One incremental route variant: its poller and its record.
pub struct IncrementalFeed {
    route: Arc<Route>,
    pub(super) channel: ChannelName,
    identity: FeedIdentity,
    /// Headers copied from the client that started the feed.
    forwarded: HeaderMap,
    /// Most items kept in the record (the channel's history length), and
    /// most published from one poll.
    capacity: usize,
    state: Mutex<State>,
    /// Bumped on every state change; held polls and first-time waiters watch it.
    pub(super) version: watch::Sender<u64>,
    pub(super) demand: Demand,
}

impl IncrementalFeed {
    pub fn new(
        route: Arc<Route>,
        channel: ChannelName,
        identity: FeedIdentity,
        forwarded: HeaderMap,
        capacity: usize,
    ) -> Arc<IncrementalFeed> {
        let capacity = capacity.max(1);
        Arc::new(IncrementalFeed {
            route,
            channel,
            identity,
            forwarded,
            capacity,
            state: Mutex::new(State {
                record: Record::new(capacity),
                template: None,
                content_type: HeaderValue::from_static("application/json"),
                cursor: None,
                resolved: false,
            }),
            version: watch::channel(0).0,
            demand: Demand::new(),
        })
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub(super) fn resolved(&self) -> bool {
        self.state.lock().resolved
    }

    fn resolve(&self) {
        let mut state = self.state.lock();
        if !state.resolved {
            state.resolved = true;
            drop(state);
            self.changed();
        }
    }

    pub(super) fn last_bus_id(&self) -> u64 {
        self.state.lock().record.last_bus_id()
    }

    /// The answer for a client whose cursor is `cursor`; None when only the
    /// backend can give it (unknown cursor, or no wrapper seen yet).
    ///
    /// While the feed has no items at all (the backend had none when last
    /// asked), every cursor gets the empty wrapper: there is nothing after
    /// it. So a page polling `after=0` in an empty room, or a user with no
    /// notifications, costs the backend nothing.
    pub(super) fn answer_after(&self, cursor: &str) -> Option<Answer> {
        let state = self.state.lock();
        let template = state.template.as_ref()?;
        let body = if state.record.is_empty() {
            template.render(std::iter::empty())
        } else {
            template.render(state.record.after(cursor)?.map(|m| m.data()))
        };
        let last_bus_id = state.record.last_bus_id();
        Some(Answer {
            etag: etag_for(last_bus_id, &body),
            body,
            content_type: state.content_type.clone(),
            last_bus_id,
        })
    }

    /// Adds messages of the channel (own publishes, another node's, or
    /// history) to the record. Messages without an item id (published on
    /// the channel by someone else) are not items of this feed.
    fn record_messages(&self, messages: &[Arc<Message>]) {
        let id_pointer = &self.route.config.item_id;
        let mut state = self.state.lock();
        let mut added = false;
        for msg in messages {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(msg.data()) else {
                continue;
            };
            let Some(item_id) = items::item_id(&value, id_pointer) else {
                continue;
            };
            let newer = state
                .cursor
                .as_ref()
                .is_none_or(|(epoch, bus, _)| msg.epoch != *epoch || msg.id > *bus);
            if newer {
                state.cursor = Some((msg.epoch, msg.id, item_id.clone()));
            }
            added |= state.record.push(item_id, msg.clone());
        }
        drop(state);
        if added {
            self.changed();
        }
    }

    /// The feed's task: follow the channel, poll while wanted.
    async fn run(self: Arc<Self>, gw: Arc<Gateway>, client: Arc<UpstreamClient>) {
        // Room for a whole poll's items (at most `capacity`) twice over, so
        // the feed's own publishes never overflow its queue.
        let queue = SubscriberQueue::new(self.capacity * 2 + 16, Transport::Bridge);
        let subscription = match gw
            .bus
            .subscribe(&self.channel, Some(Since::plain(0)), &queue, self.capacity)
            .await
        {
            Ok((subscription, history)) => {
                self.record_messages(&history.messages);
                subscription
            }
            Err(e) => {
                // Without the channel nothing can be answered from it: every
                // poll goes to the backend until the feed is started again.
                tracing::warn!(channel = %self.channel, error = %e, "bridge cannot follow its channel");
                self.resolve();
                return;
            }
        };
        let mut failures = 0u32;
        let mut next_poll = tokio::time::Instant::now();
        let mut batch = Vec::new();
        let mut last_batch = HashSet::new();
        loop {
            tokio::select! {
                _ = gw.shutdown.cancelled() => break,
                drained = queue.drain(&mut batch, DRAIN_BATCH) => {
                    if drained.is_err() {
                        break;
                    }
                    self.record_messages(&batch);
                    batch.clear();
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    if self.demand.is_idle(&gw, &self.channel, self.route.config.idle_timeout) {
                        tracing::debug!(channel = %self.channel, "bridge feed idle; stopping its poller");
                        break;
                    }
                    let interval = self.route.config.interval;
                    let ok = match gw.bus.lease(&self.channel, "bridge", interval * 2).await {
                        Ok(true) => {
                            let ok = self.poll_once(&gw, &client, &mut last_batch).await;
                            // Our own publishes are queued by now (at once on
                            // the memory bus): record them before anyone asks.
                            if queue.try_drain(&mut batch, usize::MAX).is_ok() {
                                self.record_messages(&batch);
                            }
                            batch.clear();
                            ok
                        }
                        Ok(false) => self.follow(&client).await,
                        Err(e) => {
                            tracing::warn!(channel = %self.channel, error = %e, "bridge lease unavailable");
                            false
                        }
                    };
                    failures = if ok { 0 } else { failures.saturating_add(1) };
                    next_poll = tokio::time::Instant::now() + next_poll_delay(interval, failures);
                }
            }
        }
        drop(subscription);
    }

    /// This node doesn't poll: its record follows the channel. It needs the
    /// backend's wrapper once, so it asks for it (after the newest item it
    /// has: a short answer) and publishes nothing.
    async fn follow(&self, client: &UpstreamClient) -> bool {
        if self.state.lock().template.is_some() {
            self.resolve();
            return true;
        }
        let cursor = self.state.lock().cursor.clone().map(|(_, _, id)| id);
        let ok = match self.fetch(client, cursor.as_deref()).await {
            Ok(Some(parsed)) => {
                self.state.lock().template = Some(parsed.template);
                true
            }
            Ok(None) => true,
            Err(()) => false,
        };
        self.resolve();
        ok
    }

    /// One poll after the gateway's cursor; true when the backend answered
    /// well. New items are published in one batch, in the backend's order.
    async fn poll_once(
        &self,
        gw: &Gateway,
        client: &UpstreamClient,
        last_batch: &mut HashSet<String>,
    ) -> bool {
        let cursor = self.state.lock().cursor.clone().map(|(_, _, id)| id);
        let parsed = match self.fetch(client, cursor.as_deref()).await {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                self.route.upstream_result("not_modified");
                self.resolve();
                return true;
            }
            Err(()) => {
                self.route.upstream_result("error");
                self.resolve();
                return false;
            }
        };
        let new = self.new_items(parsed, cursor.as_ref(), last_batch);
        if new.is_empty() {
            self.route.upstream_result("not_modified");
            self.resolve();
            return true;
        }
        // The same JSON check as every publish path (nesting, numbers).
        let payloads: Result<Vec<Payload>, _> = new
            .iter()
            .map(|i| Payload::json(&serde_json::to_vec(&i.value).expect("a Value encodes")))
            .collect();
        let payloads = match payloads {
            Ok(payloads) => payloads,
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "bridge cannot publish the backend's items");
                self.route.upstream_result("error");
                self.resolve();
                return false;
            }
        };
        match gw.bus.publish_many(&self.channel, &payloads).await {
            Ok(published) => {
                let last = new.last().expect("not empty");
                let bus_id = published.last().map_or(0, |p| p.id);
                self.advance_cursor(bus_id, &last.id);
                *last_batch = new.into_iter().map(|i| i.id).collect();
                self.route.upstream_result("changed");
                self.resolve();
                true
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "bridge cannot publish new items");
                self.route.upstream_result("error");
                self.resolve();
                false
            }
        }
    }

    /// The backend's items the channel doesn't have yet: not an `after`
    /// that includes the cursor's own item, nor a repeat of the last batch
    /// that is not back from the bus yet; at most a history's worth.
    fn new_items(
        &self,
        parsed: items::Parsed,
        cursor: Option<&String>,
        last_batch: &HashSet<String>,
    ) -> Vec<items::Item> {
        let mut state = self.state.lock();
        state.template = Some(parsed.template);
        let mut seen = HashSet::new();
        parsed
            .items
            .into_iter()
            .filter(|item| {
                !state.record.knows(&item.id)
                    && Some(&item.id) != cursor
                    && !last_batch.contains(&item.id)
                    && seen.insert(item.id.clone())
            })
            // A longer answer is taken in pages: the cursor moves to the
            // last item published and the rest comes with the next poll.
            .take(self.capacity)
            .collect()
    }

    /// Moves the feed's cursor to a batch it just published. The epoch of
    /// these ids is learnt when they come back through the feed's own
    /// subscription (record_messages, right after this); within the epoch
    /// it has, a newer id moves the cursor now.
    fn advance_cursor(&self, bus_id: u64, item_id: &str) {
        let mut state = self.state.lock();
        match &state.cursor {
            None => state.cursor = Some((Epoch::NONE, bus_id, item_id.to_string())),
            Some((epoch, b, _)) if bus_id > *b => {
                state.cursor = Some((*epoch, bus_id, item_id.to_string()));
            }
            Some(_) => {}
        }
    }

    /// Asks the backend for the items after `cursor` (all it gives without
    /// one). Ok(None): nothing new (`304`). Err: failed, logged. A good
    /// answer's content type is remembered for the clients' answers.
    async fn fetch(
        &self,
        client: &UpstreamClient,
        cursor: Option<&str>,
    ) -> Result<Option<items::Parsed>, ()> {
        let config = &self.route.config;
        let cursor_pair = cursor.map(|c| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair(&config.cursor_param, c)
                .finish()
        });
        let target = self
            .identity
            .upstream_target(&config.path, cursor_pair.as_deref());
        let mut headers = self.forwarded.clone();
        if let (Some(name), Some(value)) = (&self.route.vary_header, &self.identity.vary_value) {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(auth) = &self.route.auth {
            // An `auth` route is polled with an allowed client's credentials.
            auth.add_poll_credentials(&mut headers);
        }
        let (body, content_type) = match client.fetch(&target, headers).await {
            Fetched::NotModified => return Ok(None),
            Fetched::Body {
                body, content_type, ..
            } => (body, content_type),
            Fetched::Status { status, .. } => {
                tracing::warn!(channel = %self.channel, %status, "bridge: backend answered with an error");
                return Err(());
            }
            Fetched::Failed { reason, .. } => {
                tracing::warn!(channel = %self.channel, %reason, "bridge: backend unreachable");
                return Err(());
            }
        };
        if !crate::http::is_json_content_type(content_type.as_ref()) {
            tracing::warn!(channel = %self.channel, "bridge: an incremental answer must be JSON");
            return Err(());
        }
        match items::parse(&body, &config.items, &config.item_id) {
            Ok(parsed) => {
                if let Some(content_type) = content_type {
                    self.state.lock().content_type = content_type;
                }
                Ok(Some(parsed))
            }
            Err(reason) => {
                tracing::warn!(channel = %self.channel, %reason, "bridge cannot read the backend's items");
                Err(())
            }
        }
    }
}

impl Poller for IncrementalFeed {
    fn poll_while_wanted(
        self: Arc<Self>,
        gw: Arc<Gateway>,
        client: Arc<UpstreamClient>,
    ) -> impl Future<Output = ()> + Send {
        self.run(gw, client)
    }
}
