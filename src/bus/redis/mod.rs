//! The Redis bus (`bus = "redis://…"`): ids, history and live delivery
//! shared by every node, so any node can serve any client's cursor.
//!
//! - **Publish** runs one Lua script ([`script::PUBLISH`]): next id, stream
//!   entry (capped by count, bytes and age) and pub/sub notification,
//!   atomically.
//!   Concurrent publishers on any node get distinct, gapless ids, and a
//!   failed publish stores nothing.
//! - **History** (long-poll `since`, WebSocket/SSE resume) is read from the
//!   stream by another script ([`script::READ`]), with the same cursor rules
//!   as the in-memory bus ([`read_start`]).
//! - **Live delivery**: one subscription connection per node (per master in
//!   a cluster) owned by the [`subscriber`] task, which subscribes a channel
//!   when its first local subscriber arrives, unsubscribes it a while after
//!   the last one left, fills gaps from the stream after reconnects, and
//!   hands each message to the [`Hub`] once.
//! - **Cluster**: the same code; every key of a channel carries its name as
//!   hash tag, and sharded pub/sub (Redis 7) keeps notifications on the
//!   channel's shard.
//! - **Failures**: every command has a deadline (`redis.command_timeout`);
//!   while Redis is unreachable [`Bus::is_ready`] is false, publishes
//!   answer 503 and subscribes fail instead of hanging.

mod conn;
mod polls;
mod script;
mod subscriber;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use redis::{RedisResult, Script, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use self::conn::{min_major_version, CommandConn, PubSubConn, Target};
use self::script::{parse_read_reply, Keys, ReadReply, MAX_LUA_CURSOR};
use self::subscriber::{bounded, Control};
use super::hub::{read_start, Sequence};
use super::{
    Bus, BusError, HistoryRead, Hub, Parking, Published, SubscriberQueue, Subscription, WaitingPoll,
};
use crate::config::redis_url::redact;
use crate::config::{ChannelMode, Config, PubSubMode, RedisConfig};
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::{Epoch, Message, Payload};

/// The Redis bus. Must be created inside the tokio runtime (it starts the
/// subscription task); dropping it stops the task.
pub struct RedisBus {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// What the bus and its subscription task share.
pub(crate) struct Shared {
    hub: Hub,
    keys: Keys,
    settings: RedisConfig,
    target: Target,
    /// Command connections, used round-robin.
    commands: Vec<CommandConn>,
    next_command: AtomicUsize,
    publish_script: Script,
    read_script: Script,
    lease_script: Script,
    rotate_script: Script,
    /// This node's id in leases (random per process).
    node_id: String,
    /// Pub/sub flavour once known: 0 unknown, 1 sharded, 2 classic.
    sharded: AtomicU8,
    /// The subscription connection is up (and so, as far as we know, Redis).
    ready: AtomicBool,
    /// Channels confirmed live on Redis: subscribers of these need not ask
    /// the task. See `subscriber::Subscriber::sweep_idle` for the race.
    live: Mutex<HashSet<ChannelName>>,
    control: mpsc::UnboundedSender<Control>,
    history_size: usize,
    /// `history.max_bytes`: the stream is trimmed to this many data bytes.
    history_max_bytes: usize,
    /// `history.max_age` in µs (what the scripts compare).
    max_age_us: u64,
}

impl RedisBus {
    /// Sets up connections (lazily: nothing blocks here, and a Redis that
    /// is down at startup only makes the node not ready) and starts the
    /// subscription task.
    pub fn new(hub: Hub, config: &Config) -> Result<RedisBus, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the Redis bus must be created inside the tokio runtime".to_string())?;
        let settings = config.redis.clone();
        let ca = match &settings.tls_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("redis.tls_ca_file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let mut urls = vec![config.bus.as_str()];
        urls.extend(settings.cluster_nodes.iter().map(String::as_str));
        let target = Target::new(
            &urls,
            settings.cluster,
            ca,
            settings.connect_timeout,
            settings.command_timeout,
        )?;
        let commands = (0..settings.pool_size.max(1))
            .map(|_| target.command_connection())
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| format!("redis bus: {e}"))?;
        let (control, control_rx) = mpsc::unbounded_channel();
        let max_age_us = u64::try_from(config.history.max_age.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LUA_CURSOR);
        hub.metrics().bus_ready.set(0);
        let shared = Arc::new(Shared {
            hub,
            keys: Keys::new(&settings.key_prefix),
            target,
            commands,
            next_command: AtomicUsize::new(0),
            publish_script: Script::new(script::PUBLISH),
            read_script: Script::new(script::READ),
            lease_script: Script::new(script::LEASE),
            rotate_script: Script::new(script::ROTATE),
            node_id: format!(
                "{:016x}",
                crate::protocol::random_below(u64::MAX) ^ u64::from(std::process::id())
            ),
            sharded: AtomicU8::new(match settings.pubsub {
                PubSubMode::Auto => 0,
                PubSubMode::Sharded => 1,
                PubSubMode::Classic => 2,
            }),
            settings,
            ready: AtomicBool::new(false),
            live: Mutex::new(HashSet::new()),
            control,
            history_size: config.history.size.max(1),
            history_max_bytes: config.history.max_bytes,
            max_age_us,
        });
        let stop = CancellationToken::new();
        runtime.spawn(subscriber::run(shared.clone(), control_rx, stop.clone()));
        Ok(RedisBus {
            shared,
            _stop: stop.drop_guard(),
        })
    }
}

impl Shared {
    fn command_conn(&self) -> CommandConn {
        let i = self.next_command.fetch_add(1, Ordering::Relaxed);
        self.commands[i % self.commands.len()].clone()
    }

    /// Runs a command future with the command deadline.
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, BusError> {
        bounded(self.settings.command_timeout, fut)
            .await
            .map_err(|e| BusError::Unavailable(format!("redis {what}: {e}")))
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.hub.metrics().bus_ready.set(ready as i64);
    }

    fn local_subscribers(&self, channel: &ChannelName) -> usize {
        let c = self.hub.subscriber_counts(channel);
        c.websocket + c.longpoll + c.sse + c.bridge
    }

    /// Sharded pub/sub or classic, asking the server when `auto` and not
    /// yet known.
    async fn sharded(&self) -> Result<bool, BusError> {
        match self.sharded.load(Ordering::Acquire) {
            1 => return Ok(true),
            2 => return Ok(false),
            _ => {}
        }
        let mut conn = self.command_conn();
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let value: Value = self.timed("INFO", info.query_async(&mut conn)).await?;
        Ok(self.remember_version(min_major_version(&value)))
    }

    /// Like [`sharded`](Self::sharded), on the subscription connection
    /// (asked again on every connect, so an upgraded server is noticed).
    async fn decide_sharded(&self, conn: &mut PubSubConn) -> Result<bool, String> {
        match self.settings.pubsub {
            PubSubMode::Sharded => Ok(true),
            PubSubMode::Classic => Ok(false),
            PubSubMode::Auto => {
                let version =
                    bounded(self.settings.command_timeout, conn.server_major_version()).await?;
                Ok(self.remember_version(version))
            }
        }
    }

    fn remember_version(&self, major: Option<u32>) -> bool {
        let sharded = major.is_some_and(|v| v >= 7);
        self.sharded
            .store(if sharded { 1 } else { 2 }, Ordering::Release);
        sharded
    }

    /// Runs the read script: the channel's last id and, with `since`, the
    /// kept entries after it.
    async fn read(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
        limit: usize,
    ) -> Result<ReadReply, BusError> {
        let mut invocation = self.read_script.key(self.keys.seq(channel));
        invocation
            .key(self.keys.log(channel))
            .key(self.keys.epoch(channel))
            .arg(
                since
                    .map(|s| s.min(MAX_LUA_CURSOR).to_string())
                    .unwrap_or_default(),
            )
            // Lua numbers are doubles: callers may ask for "everything".
            .arg(limit.min(self.history_size))
            .arg(self.max_age_us)
            .arg(Epoch::random().to_string());
        let mut conn = self.command_conn();
        let limit = self.settings.command_timeout;
        let value: Value =
            match tokio::time::timeout(limit, invocation.invoke_async(&mut conn)).await {
                // A read is idempotent: one retry hides a connection that died
                // since the last command (the manager has reconnected by now).
                Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => {
                    self.timed("history read", invocation.invoke_async(&mut conn))
                        .await?
                }
                Ok(result) => {
                    result.map_err(|e| BusError::Unavailable(format!("redis history read: {e}")))?
                }
                Err(_) => {
                    return Err(BusError::Unavailable(format!(
                        "redis history read: no answer within {limit:?}"
                    )))
                }
            };
        parse_read_reply(value).map_err(BusError::Unavailable)
    }

    /// Replaces `epoch` of `channel` by a new one (see [`script::ROTATE`]);
    /// returns the channel's epoch now.
    async fn rotate(&self, channel: &ChannelName, epoch: Epoch) -> Result<Epoch, BusError> {
        let mut invocation = self.rotate_script.key(self.keys.epoch(channel));
        invocation
            .key(self.keys.seq(channel))
            .arg(epoch.to_string())
            .arg(Epoch::random().to_string());
        let mut conn = self.command_conn();
        let text: String = self
            .timed("epoch rotation", invocation.invoke_async(&mut conn))
            .await?;
        match text.as_str() {
            "" => Ok(Epoch::NONE),
            hex => Epoch::parse(hex.as_bytes())
                .ok_or_else(|| BusError::Unavailable(format!("redis: bad epoch {hex:?}"))),
        }
    }

    /// History after `since` by the shared cursor rules.
    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        let Some(since) = since else {
            let reply = self.read(channel, None, 0).await?;
            return Ok(HistoryRead {
                last_id: reply.last_id,
                epoch: reply.epoch,
                ..HistoryRead::default()
            });
        };
        let mut reply = self.read(channel, Some(since.id), limit).await?;
        let mode = self.hub.mode_of(channel.as_str());
        let start = read_start(since, sequence_of(&reply), mode);
        if start.after != since.id {
            // A cursor from the future or of a lost sequence: read again
            // from the start of the current one (truncated either way).
            reply = self.read(channel, Some(start.after), limit).await?;
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let messages: Vec<Arc<Message>> = reply
            .entries
            .iter()
            .filter(|e| e.id > start.after)
            .take(limit)
            .map(|e| {
                Arc::new(Message::new(
                    channel.clone(),
                    e.epoch,
                    e.id,
                    &e.data,
                    e.published_at(now, wall),
                ))
            })
            .collect();
        Ok(HistoryRead {
            last_id: messages.last().map_or(
                start.resume_point(reply.last_id, reply.first_kept.unwrap_or(reply.last_id + 1)),
                |m| m.id,
            ),
            messages,
            epoch: reply.epoch,
            truncated: start.truncated,
            conflated: start.conflated,
        })
    }

    /// Returns once `channel` is live on Redis for this node.
    async fn ensure_live(&self, channel: &ChannelName) -> Result<(), BusError> {
        if self.live.lock().contains(channel) {
            return Ok(());
        }
        let gone = || BusError::Unavailable("redis subscription task stopped".into());
        let (done, confirmed) = oneshot::channel();
        self.control
            .send(Control::Subscribe {
                channel: channel.clone(),
                done,
            })
            .map_err(|_| gone())?;
        let limit = self.settings.command_timeout;
        match tokio::time::timeout(limit, confirmed).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(BusError::Unavailable(e)),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(BusError::Unavailable(format!(
                "redis subscription not confirmed within {limit:?}"
            ))),
        }
    }

    fn max_entries(&self, channel: &ChannelName) -> usize {
        match self.hub.mode_of(channel.as_str()) {
            ChannelMode::State => 1,
            ChannelMode::Stream => self.history_size,
        }
    }
}

/// The sequence a read reply describes, for the cursor rules.
fn sequence_of(reply: &ReadReply) -> Sequence {
    Sequence {
        epoch: reply.epoch,
        last_id: reply.last_id,
        first_kept: reply.first_kept.unwrap_or(reply.last_id + 1),
    }
}

impl Bus for RedisBus {
    async fn publish_many(
        &self,
        channel: &ChannelName,
        payloads: &[Payload],
    ) -> Result<Vec<Published>, BusError> {
        // One script call per message: each is stored and announced on its
        // own, so a failure part-way leaves the earlier ones published.
        let mut ids = Vec::with_capacity(payloads.len());
        for payload in payloads {
            ids.push(self.publish(channel, payload).await?);
        }
        Ok(ids)
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        payload: &Payload,
    ) -> Result<Published, BusError> {
        let shared = &self.shared;
        let started = Instant::now();
        let sharded = shared.sharded().await?;
        let data = payload.to_json_bytes();
        let mut invocation = shared.publish_script.key(shared.keys.seq(channel));
        invocation
            .key(shared.keys.log(channel))
            .key(shared.keys.bytes(channel))
            .key(shared.keys.epoch(channel))
            .arg(shared.keys.pubsub(channel))
            .arg(&data[..])
            .arg(shared.max_entries(channel))
            .arg(shared.max_age_us)
            .arg(if sharded { "SPUBLISH" } else { "PUBLISH" })
            .arg(shared.history_max_bytes)
            // Used only when the script starts a sequence.
            .arg(Epoch::random().encode(&mut [0; 16]));
        let mut conn = shared.command_conn();
        let id: u64 = shared
            .timed("publish", invocation.invoke_async(&mut conn))
            .await?;
        let metrics = shared.hub.metrics();
        metrics
            .bus_publish_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.published.inc();
        Ok(Published { id })
    }

    async fn lease(
        &self,
        channel: &ChannelName,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, BusError> {
        let shared = &self.shared;
        let mut invocation = shared.lease_script.key(shared.keys.lease(channel, name));
        invocation
            .arg(&shared.node_id)
            .arg(ttl.as_millis().max(1) as u64);
        let mut conn = shared.command_conn();
        let held: u8 = shared
            .timed("lease", invocation.invoke_async(&mut conn))
            .await?;
        Ok(held == 1)
    }

    async fn subscribe(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        queue: &Arc<SubscriberQueue>,
        limit: usize,
    ) -> Result<(Subscription, HistoryRead), BusError> {
        // Registered first, so nothing delivered from here on is missed;
        // the history read after the channel is live covers the rest.
        let (subscription, _) = self.shared.hub.subscribe(channel, None, queue, 0);
        self.shared.ensure_live(channel).await?;
        let read = self.shared.history(channel, since, limit).await?;
        Ok((subscription, read))
    }

    async fn park_poll(
        &self,
        channel: &ChannelName,
        since: Since,
        poll: &Arc<dyn WaitingPoll>,
        limit: usize,
    ) -> Result<Parking, BusError> {
        self.shared.park_poll(channel, since, poll, limit).await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        self.shared.history(channel, since, limit).await
    }

    fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    fn hub(&self) -> &Hub {
        &self.shared.hub
    }
}
