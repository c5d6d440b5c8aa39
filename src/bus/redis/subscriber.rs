//! This node's one Redis subscription connection, and the task that owns
//! it.
//!
//! The task keeps a [`Watch`] per channel with local subscribers, reads
//! every push of the connection in order and delivers messages into the
//! [`Hub`](crate::bus::Hub), which fans them out with shared encodings.
//!
//! Why no message is lost or duplicated:
//!
//! - A channel's notifications arrive in id order on one connection (one
//!   shard publishes them, in script order), after its subscription
//!   confirmation. Everything published before the confirmation is in the
//!   stream, and every history read a subscriber makes happens after it.
//! - On a fresh subscription the task notes the channel's last id at
//!   confirmation (the *floor*): live messages at or below it are already in
//!   the stream, so they are ignored rather than flooded into new queues.
//! - After that, the next expected id is `max(hub.last_id, floor) + 1`. A
//!   notification further ahead means some were missed (the connection
//!   dropped, or Redis dropped them): the gap is read from the stream and
//!   delivered first. Older ids are duplicates; the hub ignores them too.
//! - When the connection drops, the task reconnects with jittered backoff,
//!   subscribes again to every watched channel and, on each confirmation,
//!   fills the gap from the last id delivered — before any newer message.
//! - Every notification and every read carries the channel's epoch (see
//!   [`Epoch`](crate::protocol::Epoch)). Another epoch than the one followed
//!   means Redis lost the sequence and started a new one: the task follows
//!   the new one ([`Hub::reset`](crate::bus::Hub::reset): this node's state
//!   of the channel is dropped) and fills it from id 1, before any newer
//!   message; each transport tells its client `truncated` once when the
//!   first message of the new epoch reaches it. Notifications of an epoch
//!   the task has left are stale and ignored.
//! - Ids going backwards within one epoch (a failover to a replica that
//!   lagged: it has the epoch, but not the last ids) are noticed when a
//!   live id repeats on one connection, when a gap fill finds fewer ids
//!   than delivered, or when the entry at the last delivered id is not the
//!   one delivered (its publish time differs). The task then gives the
//!   sequence a new epoch in Redis (the `ROTATE` script), so that every
//!   node and every client cursor learns of it the same way.
//! - When the stream no longer holds the gap (history too short for the
//!   outage), the channel's local subscribers are closed
//!   ([`Hub::forget`](crate::bus::Hub::forget)), so their clients resume and
//!   are told `truncated`.
//!
//! Subscribe and unsubscribe commands go through one worker task per
//! connection, in order, so an unsubscribe and a quick re-subscribe of the
//! same channel can't overtake each other.
//!
//! This file is the connection's life (connect with backoff, health
//! checks, the command worker, which channels are watched); [`live`]
//! delivers what the connection notifies into the hub, and [`gaps`] fills
//! what it missed and follows changes of a channel's sequence.

mod gaps;
mod live;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::conn::PubSubConn;
use super::Shared;
use crate::protocol::channel::ChannelName;
use watch::Watch;

/// What the bus asks of the task.
pub enum Control {
    /// Make `channel` live on Redis; answer once it is.
    Subscribe {
        channel: ChannelName,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// A subscribe command sent on connection `generation` failed.
    Failed {
        channel: ChannelName,
        generation: u64,
        error: String,
    },
}

/// A subscribe/unsubscribe command for the worker.
enum Op {
    Subscribe(ChannelName),
    Unsubscribe(ChannelName),
}

struct Subscriber {
    shared: Arc<Shared>,
    watches: HashMap<ChannelName, Watch>,
    /// Counts connections; failures reported from an older one are stale.
    generation: u64,
    /// The current connection's command worker.
    ops: Option<mpsc::UnboundedSender<Op>>,
    sharded: bool,
    /// Failed connects and connections lost before their first good health
    /// check, in a row: sets the backoff.
    failures: u32,
}

/// Runs until `stop` is cancelled.
pub async fn run(
    shared: Arc<Shared>,
    mut control: mpsc::UnboundedReceiver<Control>,
    stop: CancellationToken,
) {
    let mut task = Subscriber {
        shared,
        watches: HashMap::new(),
        generation: 0,
        ops: None,
        sharded: false,
        failures: 0,
    };
    loop {
        task.shared.set_ready(false);
        let Some((mut conn, mut pushes)) = task.connect(&mut control, &stop).await else {
            return;
        };
        task.generation += 1;
        if task.generation > 1 {
            task.shared.hub.metrics().redis_reconnects.inc();
            tracing::info!("redis subscription connection re-established");
        } else {
            tracing::info!(sharded = task.sharded, "redis bus connected");
        }
        let (ops, queue) = mpsc::unbounded_channel();
        tokio::spawn(worker(
            task.shared.clone(),
            conn.clone(),
            queue,
            task.generation,
            task.sharded,
        ));
        for (channel, watch) in task.watches.iter_mut() {
            watch.requested = true;
            let _ = ops.send(Op::Subscribe(channel.clone()));
        }
        task.ops = Some(ops);
        task.shared.set_ready(true);

        let why = task
            .serve(&mut conn, &mut pushes, &mut control, &stop)
            .await;
        let Some(why) = why else { return };
        if task.failures == 0 {
            tracing::warn!(reason = %why, "redis subscription connection lost; reconnecting");
        } else {
            tracing::debug!(reason = %why, "redis subscription connection lost again");
        }
        task.failures = task.failures.saturating_add(1);
        task.ops = None;
        for watch in task.watches.values_mut() {
            watch.confirmed = false;
            watch.requested = false;
            watch.live_last = 0;
        }
        task.update_gauge();
    }
}

impl Subscriber {
    /// Connects (and pings, and picks the pub/sub flavour), retrying with
    /// backoff; `None` when stopped.
    async fn connect(
        &mut self,
        control: &mut mpsc::UnboundedReceiver<Control>,
        stop: &CancellationToken,
    ) -> Option<(PubSubConn, mpsc::UnboundedReceiver<PushInfo>)> {
        let settings = self.shared.settings.clone();
        let mut warned = false;
        loop {
            if self.failures > 0 {
                let delay = backoff(
                    settings.reconnect_min_delay,
                    settings.reconnect_max_delay,
                    self.failures - 1,
                );
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        _ = stop.cancelled() => return None,
                        Some(msg) = control.recv() => self.on_control(msg),
                    }
                }
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let shared = self.shared.clone();
            let attempt = async move {
                let mut conn = bounded(
                    settings.connect_timeout + settings.command_timeout,
                    shared.target.subscription_connection(tx),
                )
                .await?;
                bounded(settings.command_timeout, conn.ping()).await?;
                let sharded = shared.decide_sharded(&mut conn).await?;
                Ok::<_, String>((conn, sharded))
            };
            let result = tokio::select! {
                result = attempt => result,
                _ = stop.cancelled() => return None,
            };
            match result {
                Ok((conn, sharded)) => {
                    self.sharded = sharded;
                    return Some((conn, rx));
                }
                Err(e) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, "cannot reach redis; retrying");
                    } else {
                        tracing::debug!(error = %e, failures = self.failures, "cannot reach redis");
                    }
                    self.failures = self.failures.saturating_add(1);
                }
            }
        }
    }

    /// Serves one connection; `Some(reason)` when it is lost, `None` when
    /// stopped.
    async fn serve(
        &mut self,
        conn: &mut PubSubConn,
        pushes: &mut mpsc::UnboundedReceiver<PushInfo>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        stop: &CancellationToken,
    ) -> Option<String> {
        let every = self.shared.settings.health_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Pushes last: under a steady flood of messages they are always
            // ready, and must not starve subscription requests or the
            // health check.
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                Some(msg) = control.recv() => self.on_control(msg),
                _ = tick.tick() => {
                    let timeout = self.shared.settings.command_timeout;
                    if let Err(e) = bounded(timeout, conn.ping()).await {
                        return Some(format!("ping failed: {e}"));
                    }
                    self.failures = 0;
                    self.sweep_idle();
                    self.retry_unconfirmed();
                }
                push = pushes.recv() => {
                    let Some(push) = push else {
                        return Some("connection closed".into());
                    };
                    if let Err(why) = self.on_push(push).await {
                        return Some(why);
                    }
                }
            }
        }
    }

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Subscribe { channel, done } => {
                let watch = self.watches.entry(channel.clone()).or_default();
                watch.idle_since = None;
                if watch.confirmed {
                    self.shared.live.lock().insert(channel);
                    let _ = done.send(Ok(()));
                    return;
                }
                watch.waiters.retain(|w| !w.is_closed());
                watch.waiters.push(done);
                if !watch.requested {
                    if let Some(ops) = &self.ops {
                        watch.requested = true;
                        let _ = ops.send(Op::Subscribe(channel));
                    }
                }
            }
            Control::Failed {
                channel,
                generation,
                error,
            } => {
                if generation != self.generation {
                    return;
                }
                tracing::warn!(channel = %channel, error = %error, "redis subscribe failed; will retry");
                if let Some(watch) = self.watches.get_mut(&channel) {
                    if !watch.confirmed {
                        watch.requested = false;
                        for waiter in watch.waiters.drain(..) {
                            let _ = waiter.send(Err(format!("redis subscribe failed: {error}")));
                        }
                    }
                }
            }
        }
    }

    /// One push from the connection. `Err` means the connection must be
    /// replaced (it dropped, or a gap could not be filled).
    async fn on_push(&mut self, push: PushInfo) -> Result<(), String> {
        let channel = match push.data.first() {
            Some(Value::BulkString(name)) => self.shared.keys.channel_of(name),
            _ => None,
        };
        match push.kind {
            PushKind::Disconnection => Err("connection closed".into()),
            PushKind::SSubscribe | PushKind::Subscribe => match channel {
                Some(channel) => self.on_confirmed(channel).await,
                None => Ok(()),
            },
            PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                if let Some(channel) = channel {
                    self.on_unsubscribed(channel);
                }
                Ok(())
            }
            PushKind::SMessage | PushKind::Message => {
                let payload = match push.data.get(1) {
                    Some(Value::BulkString(payload)) => payload.as_slice(),
                    _ => return Ok(()),
                };
                let handled = match channel {
                    Some(channel) => self.on_message(channel, payload).await,
                    None => Ok(()),
                };
                // Reading on while the fan-out is far behind would only
                // grow its backlog: Redis buffers meanwhile.
                self.shared.hub.fanout_room().await;
                handled
            }
            _ => Ok(()),
        }
    }

    /// The server ended a subscription we still want (its slot moved to
    /// another shard): subscribe again; the confirmation fills the gap.
    fn on_unsubscribed(&mut self, channel: ChannelName) {
        let Some(watch) = self.watches.get_mut(&channel) else {
            return; // our own unsubscribe
        };
        if !watch.confirmed {
            return;
        }
        tracing::info!(channel = %channel, "redis ended the subscription; subscribing again");
        watch.confirmed = false;
        watch.requested = false;
        if let Some(ops) = &self.ops {
            watch.requested = true;
            let _ = ops.send(Op::Subscribe(channel));
        }
        self.update_gauge();
    }

    /// Unsubscribes channels that had no local subscriber for
    /// `unsubscribe_delay`.
    fn sweep_idle(&mut self) {
        let now = Instant::now();
        let delay = self.shared.settings.unsubscribe_delay;
        let mut idle = Vec::new();
        for (channel, watch) in self.watches.iter_mut() {
            watch.waiters.retain(|w| !w.is_closed());
            if !watch.waiters.is_empty() || self.shared.local_subscribers(channel) > 0 {
                watch.idle_since = None;
                continue;
            }
            let since = *watch.idle_since.get_or_insert(now);
            if now.duration_since(since) >= delay {
                idle.push(channel.clone());
            }
        }
        for channel in idle {
            // Leave the fast path first, then look again: a subscriber that
            // registered before this look keeps the channel; one that
            // registers after it misses the fast path and asks the task,
            // which subscribes again after this unsubscribe.
            self.shared.live.lock().remove(&channel);
            if self.shared.local_subscribers(&channel) > 0 {
                if let Some(watch) = self.watches.get_mut(&channel) {
                    watch.idle_since = None;
                    if watch.confirmed {
                        self.shared.live.lock().insert(channel);
                    }
                }
                continue;
            }
            let Some(watch) = self.watches.remove(&channel) else {
                continue;
            };
            if watch.requested || watch.confirmed {
                if let Some(ops) = &self.ops {
                    let _ = ops.send(Op::Unsubscribe(channel));
                }
            }
        }
        self.update_gauge();
    }

    /// Sends again the subscriptions whose command failed.
    fn retry_unconfirmed(&mut self) {
        let Some(ops) = &self.ops else { return };
        for (channel, watch) in self.watches.iter_mut() {
            if !watch.confirmed && !watch.requested {
                watch.requested = true;
                let _ = ops.send(Op::Subscribe(channel.clone()));
            }
        }
    }

    fn update_gauge(&self) {
        let live = self.watches.values().filter(|w| w.confirmed).count();
        self.shared.hub.metrics().bus_subscriptions.set(live as i64);
    }
}

/// Sends one connection's subscribe/unsubscribe commands, in order.
async fn worker(
    shared: Arc<Shared>,
    mut conn: PubSubConn,
    mut ops: mpsc::UnboundedReceiver<Op>,
    generation: u64,
    sharded: bool,
) {
    let timeout = shared.settings.command_timeout;
    while let Some(op) = ops.recv().await {
        match op {
            Op::Subscribe(channel) => {
                let name = shared.keys.pubsub(&channel);
                if let Err(error) = bounded(timeout, conn.subscribe(&name, sharded)).await {
                    let _ = shared.control.send(Control::Failed {
                        channel,
                        generation,
                        error,
                    });
                }
            }
            Op::Unsubscribe(channel) => {
                let name = shared.keys.pubsub(&channel);
                if let Err(error) = bounded(timeout, conn.unsubscribe(&name, sharded)).await {
                    tracing::debug!(channel = %channel, %error, "redis unsubscribe failed");
                }
            }
        }
    }
}

/// Runs a Redis future with a deadline; errors become text.
pub(super) async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Exponential backoff with jitter: `min · 2^failures`, capped at `max`,
/// then a random point in its upper half (so nodes that lost Redis together
/// don't reconnect in lockstep).
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let ceiling = min.saturating_mul(1 << failures.min(20)).min(max).max(min);
    let half = ceiling / 2;
    let span = (ceiling - half).as_nanos() as u64;
    half + Duration::from_nanos(random() % (span + 1))
}

/// A random number from the standard library's per-process hash keys.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for failures in 0..40 {
            let ceiling = (min * 2u32.saturating_pow(failures.min(20))).min(max);
            let d = backoff(min, max, failures);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
        }
        let samples: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(min, max, 10)).collect();
        assert!(samples.len() > 10, "no jitter: {samples:?}");
    }
}
