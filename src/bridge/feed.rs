//! One bridged feed: a route (and, with `vary_by`, one user's variant of
//! it). Its task polls the backend at the route's interval while anyone
//! wants the feed, publishes each change on the channel, and keeps the copy
//! legacy clients are answered from — taken from the channel itself, so a
//! change published anywhere (another node's poller) updates it too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::identity::FeedIdentity;
use super::schedule::{next_poll_delay, Demand, Poller};
use super::upstream::Fetched;
use super::Route;
use crate::bus::{Bus, SubscriberQueue};
use crate::gateway::Gateway;
use crate::http::encoding::CompressOnce;
use crate::protocol::channel::ChannelName;
use crate::protocol::Transport;
use crate::protocol::{Message, Payload};

/// The copy legacy clients are served.
#[derive(Clone)]
pub struct Copy {
    /// The channel message id of this version; the ETag is derived from it.
    pub id: u64,
    /// The message's `data` JSON, to tell a real change from a repeat.
    pub data: Bytes,
    pub body: Bytes,
    pub content_type: HeaderValue,
    pub etag: HeaderValue,
    /// `body` gzip- and brotli-compressed, once per version, shared by
    /// every client that gets it.
    pub compressed: Arc<CompressOnce>,
}

/// An upstream answer passed through while there is no good copy.
#[derive(Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    copy: Option<Copy>,
    /// Set while the backend fails; cleared by the next good poll.
    failure: Option<Failure>,
    /// When the backend last confirmed the copy (a 2xx or 304).
    confirmed: Option<Instant>,
    /// The first poll has finished (well or not).
    resolved: bool,
    content_type: Option<HeaderValue>,
}

/// What a legacy client gets.
pub enum Answer {
    Copy { copy: Copy, age: Option<Duration> },
    Failure(Failure),
}

pub struct Feed {
    pub route: Arc<Route>,
    pub channel: ChannelName,
    /// The `vary_by` header value this variant serves, if any.
    vary_value: Option<HeaderValue>,
    /// The path and query this feed polls.
    target: String,
    /// Headers copied from the client that started the feed.
    forwarded: HeaderMap,
    state: Mutex<State>,
    /// Bumped on every state change; holders and first-time waiters watch it.
    version: watch::Sender<u64>,
    demand: Demand,
}

impl Feed {
    pub fn new(
        route: Arc<Route>,
        channel: ChannelName,
        identity: FeedIdentity,
        forwarded: HeaderMap,
    ) -> Arc<Feed> {
        Arc::new(Feed {
            target: identity.upstream_target(&route.config.path, None),
            vary_value: identity.vary_value,
            route,
            channel,
            forwarded,
            state: Mutex::new(State::default()),
            version: watch::channel(0).0,
            demand: Demand::new(),
        })
    }

    /// A legacy client asked for the feed.
    pub fn touch(&self) {
        self.demand.touch();
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// The answer for a legacy client now, or None before the first poll.
    pub fn answer(&self) -> Option<Answer> {
        let state = self.state.lock();
        if let Some(copy) = &state.copy {
            let age = state
                .failure
                .as_ref()
                .and(state.confirmed)
                .map(|t| t.elapsed());
            return Some(Answer::Copy {
                copy: copy.clone(),
                age,
            });
        }
        if let Some(failure) = &state.failure {
            return Some(Answer::Failure(failure.clone()));
        }
        None
    }

    /// True once the first poll has finished.
    pub fn resolved(&self) -> bool {
        self.state.lock().resolved
    }

    /// Takes a message of the channel as the new copy (if newer).
    fn adopt(&self, msg: &Message, live: bool) {
        let mut state = self.state.lock();
        if state.copy.as_ref().is_some_and(|c| c.id >= msg.id) {
            return;
        }
        let content_type = state
            .content_type
            .clone()
            .or_else(|| self.route.content_type.lock().clone());
        state.copy = Some(copy_from_data(msg.id, msg.data(), content_type));
        // A live change answers legacy clients as well as a copy we fetched
        // (on a node that doesn't hold the lease it is the only way). The
        // channel's latest at start may be old: wait for the first poll.
        if live {
            state.resolved = true;
        }
        drop(state);
        self.changed();
    }

    /// The feed's task: follow the channel, poll while wanted.
    async fn run(self: Arc<Feed>, gw: Arc<Gateway>, client: Arc<super::UpstreamClient>) {
        let queue = SubscriberQueue::new(4, Transport::Bridge);
        // Start from the channel's latest message, if any (a restarted
        // feed, or another node's poller).
        let subscription = match gw
            .bus
            .subscribe(
                &self.channel,
                Some(crate::protocol::channel::Since::plain(0)),
                &queue,
                gw.config.history.size,
            )
            .await
        {
            Ok((subscription, history)) => {
                if let Some(latest) = history.messages.last() {
                    self.adopt(latest, false);
                }
                subscription
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "bridge cannot follow its channel");
                self.fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                return;
            }
        };
        let mut validators = Validators::default();
        let mut failures = 0u32;
        let mut next_poll = tokio::time::Instant::now();
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = gw.shutdown.cancelled() => break,
                drained = queue.drain(&mut batch, 4) => {
                    if drained.is_err() {
                        break;
                    }
                    for msg in batch.drain(..) {
                        self.adopt(&msg, true);
                    }
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    if self.is_idle(&gw) {
                        tracing::debug!(channel = %self.channel, "bridge feed idle; stopping its poller");
                        break;
                    }
                    // One poller per feed for the whole cluster: the node
                    // holding the lease polls; the others follow the channel.
                    // The lease outlives two intervals, so a dead holder is
                    // replaced within two.
                    let ttl = self.route.config.interval * 2;
                    match gw.bus.lease(&self.channel, "bridge", ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            // Another node polls: its changes reach us on the
                            // channel, and the copy we have is what it has.
                            self.follow();
                            next_poll = tokio::time::Instant::now() + self.route.config.interval;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(channel = %self.channel, error = %e, "bridge lease unavailable");
                            next_poll = tokio::time::Instant::now() + self.route.config.interval;
                            continue;
                        }
                    }
                    let ok = self.poll_once(&gw, &client, &mut validators).await;
                    failures = if ok { 0 } else { failures.saturating_add(1) };
                    next_poll = tokio::time::Instant::now()
                        + next_poll_delay(self.route.config.interval, failures);
                }
            }
        }
        drop(subscription);
    }

    /// This node doesn't poll: answer legacy clients from the channel's copy.
    fn follow(&self) {
        let mut state = self.state.lock();
        if state.copy.is_some() && !state.resolved {
            state.resolved = true;
            drop(state);
            self.changed();
        }
    }

    fn is_idle(&self, gw: &Gateway) -> bool {
        self.demand
            .is_idle(gw, &self.channel, self.route.config.idle_timeout)
    }

    /// One poll; true when the backend answered well.
    async fn poll_once(
        &self,
        gw: &Gateway,
        client: &super::UpstreamClient,
        validators: &mut Validators,
    ) -> bool {
        let headers = self.poll_headers(validators);
        let result = match client.fetch(&self.target, headers).await {
            Fetched::NotModified => {
                self.confirm();
                "not_modified"
            }
            Fetched::Body {
                body,
                content_type,
                etag,
                last_modified,
            } => {
                validators.etag = etag;
                validators.last_modified = last_modified;
                match self.on_body(gw, &body, content_type).await {
                    Some(result) => result,
                    None => return false,
                }
            }
            Fetched::Status {
                status,
                content_type,
                body,
            } => {
                tracing::warn!(channel = %self.channel, %status, "bridge: backend answered with an error");
                self.route.upstream_result("error");
                self.record_failure(Failure {
                    status,
                    content_type,
                    body,
                });
                return false;
            }
            Fetched::Failed { status, reason } => {
                tracing::warn!(channel = %self.channel, %reason, "bridge: backend unreachable");
                self.route.upstream_result("error");
                self.fail(status, reason);
                return false;
            }
        };
        self.route.upstream_result(result);
        true
    }

    /// The headers of a poll: the client's forwarded ones, the route's
    /// credentials and variant, and the validators of the last answer.
    fn poll_headers(&self, validators: &Validators) -> HeaderMap {
        let mut headers = self.forwarded.clone();
        if let Some(auth) = &self.route.auth {
            auth.add_poll_credentials(&mut headers);
        }
        if let (Some(name), Some(value)) = (&self.route.vary_header, &self.vary_value) {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(etag) = &validators.etag {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = &validators.last_modified {
            headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
        headers
    }

    /// A 2xx answer: published on the channel when it differs from the
    /// copy. The poll's result label, or `None` when it could not be
    /// published (the failure is already recorded).
    async fn on_body(
        &self,
        gw: &Gateway,
        body: &Bytes,
        content_type: Option<HeaderValue>,
    ) -> Option<&'static str> {
        let payload = match to_payload(body, content_type.as_ref()) {
            Ok(payload) => payload,
            Err(reason) => {
                tracing::warn!(channel = %self.channel, %reason, "bridge cannot publish the backend's answer");
                self.route.upstream_result("error");
                self.fail(StatusCode::BAD_GATEWAY, reason);
                return None;
            }
        };
        let data = payload.to_json_bytes();
        if self.current_data_is(&data) {
            self.learn_content_type(content_type);
            self.confirm();
            return Some("not_modified");
        }
        match gw.bus.publish(&self.channel, &payload).await {
            Ok(published) => {
                let mut state = self.state.lock();
                state.content_type = content_type.clone();
                *self.route.content_type.lock() = content_type.clone();
                if state.copy.as_ref().is_none_or(|c| c.id < published.id) {
                    state.copy = Some(copy_from_data(published.id, &data, content_type));
                }
                drop(state);
                self.confirm();
                Some("changed")
            }
            Err(e) => {
                self.route.upstream_result("error");
                self.fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                None
            }
        }
    }

    /// The backend's content type, once seen, is what the copy is served
    /// with (a copy adopted from the channel only had a guess).
    fn learn_content_type(&self, content_type: Option<HeaderValue>) {
        let Some(content_type) = content_type else {
            return;
        };
        *self.route.content_type.lock() = Some(content_type.clone());
        let mut state = self.state.lock();
        state.content_type = Some(content_type.clone());
        if let Some(copy) = &mut state.copy {
            if copy.content_type != content_type {
                copy.body = served_body(&copy.data, Some(&content_type));
                copy.content_type = content_type;
            }
        }
    }

    fn current_data_is(&self, data: &[u8]) -> bool {
        self.state
            .lock()
            .copy
            .as_ref()
            .is_some_and(|c| c.data == data)
    }

    fn confirm(&self) {
        let mut state = self.state.lock();
        state.confirmed = Some(Instant::now());
        state.failure = None;
        state.resolved = true;
        drop(state);
        self.changed();
    }

    fn fail(&self, status: StatusCode, reason: String) {
        let body = crate::protocol::error::ApiError::UpstreamUnreachable(reason);
        self.record_failure(Failure {
            status,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from(body.body()),
        });
    }

    fn record_failure(&self, failure: Failure) {
        let mut state = self.state.lock();
        state.failure = Some(failure);
        state.resolved = true;
        drop(state);
        self.changed();
    }
}

impl Poller for Feed {
    fn poll_while_wanted(
        self: Arc<Self>,
        gw: Arc<Gateway>,
        client: Arc<super::UpstreamClient>,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.run(gw, client)
    }
}

/// The backend's cache validators, sent back on the next poll.
#[derive(Default)]
struct Validators {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    crate::http::is_json_content_type(content_type)
}

/// JSON bodies are published as JSON, others as text.
fn to_payload(body: &[u8], content_type: Option<&HeaderValue>) -> Result<Payload, String> {
    if is_json(content_type) {
        Payload::json(body).map_err(|e| e.to_string())
    } else {
        Payload::text(body)
            .map_err(|_| "binary bodies are not bridged (not UTF-8 text)".to_string())
    }
}

/// What a legacy client is sent for a message's `data`: JSON as JSON text,
/// a JSON string as the text itself.
fn served_body(data: &[u8], content_type: Option<&HeaderValue>) -> Bytes {
    if !is_json(content_type) {
        if let Ok(text) = serde_json::from_slice::<String>(data) {
            return Bytes::from(text);
        }
    }
    Bytes::copy_from_slice(data)
}

fn copy_from_data(id: u64, data: &[u8], content_type: Option<HeaderValue>) -> Copy {
    let content_type = content_type.unwrap_or_else(|| {
        if data.first() == Some(&b'"') {
            HeaderValue::from_static("text/plain; charset=utf-8")
        } else {
            HeaderValue::from_static("application/json")
        }
    });
    Copy {
        id,
        data: Bytes::copy_from_slice(data),
        body: served_body(data, Some(&content_type)),
        etag: etag_for(id, data),
        content_type,
        compressed: Arc::default(),
    }
}

/// `"pb-<id>-<content hash>"`: the id ties the ETag to the channel's
/// message ids; the hash keeps an ETag from before a restart (when an
/// in-memory bus starts its ids again) from matching different content.
pub(super) fn etag_for(id: u64, data: &[u8]) -> HeaderValue {
    let hash = data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    HeaderValue::from_str(&format!("\"pb-{id}-{hash:016x}\"")).expect("hex is a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_through_the_channel() {
        let html = HeaderValue::from_static("text/html");
        let payload = to_payload(b"<b>2-1</b>", Some(&html)).unwrap();
        let copy = copy_from_data(3, &payload.to_json_bytes(), Some(html));
        assert_eq!(copy.body, Bytes::from_static(b"<b>2-1</b>"));
        assert!(copy.etag.to_str().unwrap().starts_with("\"pb-3-"));
        assert_ne!(copy.etag, copy_from_data(3, b"\"other\"", None).etag);

        let json = HeaderValue::from_static("application/json; charset=utf-8");
        let payload = to_payload(b"{ \"a\": 1 }", Some(&json)).unwrap();
        let copy = copy_from_data(4, &payload.to_json_bytes(), Some(json));
        assert_eq!(copy.body, Bytes::from_static(b"{\"a\":1}"));

        // A copy adopted from the channel without a known content type.
        assert_eq!(
            copy_from_data(5, b"\"hi\"", None).body,
            Bytes::from_static(b"hi")
        );
        assert_eq!(
            copy_from_data(5, b"[1]", None).content_type,
            "application/json"
        );
        assert!(to_payload(&[0xff], None).is_err());
    }
}
