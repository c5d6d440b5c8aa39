//! The message bus: publish once, deliver to every subscriber on every
//! transport (and, with a shared bus, every node).
//!
//! Transports see only the [`Bus`] trait. Each implementation assigns ids
//! and stores history its own way and delivers live messages through this
//! node's [`Hub`], so the per-subscriber queues, fan-out and shared
//! encodings are the same whichever bus is in use: [`MemoryBus`] (here,
//! the hub alone) for one process, [`redis`] for several nodes.

pub mod client_channels;
mod history;
pub mod hub;
#[cfg(test)]
mod output_limit_tests;
pub mod queue;
pub mod redis;

use std::future::Future;
use std::sync::Arc;

pub use hub::{
    ChannelStats, HistoryRead, Hub, Parking, PollRegistration, Subscription, WaitingPoll,
};
pub use queue::{DirectReport, DirectSink, QueueClosed, SubscriberQueue};

use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::Payload;

/// Why the bus could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The shared store is unreachable; nothing was published.
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
}

impl crate::net::output::DropOnLimit for SubscriberQueue {
    fn drop_on_limit(&self) {
        self.close(QueueClosed::OutputLimit);
    }
}

impl From<BusError> for crate::protocol::error::ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Unavailable(why) => crate::protocol::error::ApiError::Bus(why),
        }
    }
}

/// What a publish returns once the message is durable in the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
}

/// The bus seam. Every method is safe to call concurrently.
pub trait Bus: Send + Sync + 'static {
    /// Publishes one message; returns its id once it is stored.
    fn publish(
        &self,
        channel: &ChannelName,
        payload: &Payload,
    ) -> impl Future<Output = Result<Published, BusError>> + Send;

    /// Publishes several messages of one channel, in order; returns their
    /// ids. Buses that can deliver them together (one write per
    /// subscriber) do.
    fn publish_many(
        &self,
        channel: &ChannelName,
        payloads: &[Payload],
    ) -> impl Future<Output = Result<Vec<Published>, BusError>> + Send;

    /// Subscribes `queue` to live messages of `channel` and returns the
    /// history after `since` (None: no history). Messages delivered live
    /// may overlap the returned history on shared buses; readers skip ids
    /// they already have.
    fn subscribe(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        queue: &Arc<SubscriberQueue>,
        limit: usize,
    ) -> impl Future<Output = Result<(Subscription, HistoryRead), BusError>> + Send;

    /// Parks a long-poll that found nothing after `since` on the channel's
    /// list of waiting polls ([`hub::WaitingPoll`]), so that the next
    /// message is offered to it, or returns what the channel has after
    /// `since` after all (read again, as `subscribe` does).
    fn park_poll(
        &self,
        channel: &ChannelName,
        since: Since,
        poll: &Arc<dyn WaitingPoll>,
        limit: usize,
    ) -> impl Future<Output = Result<Parking, BusError>> + Send;

    /// History after `since`, for polls.
    fn history(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        limit: usize,
    ) -> impl Future<Output = Result<HistoryRead, BusError>> + Send;

    /// Acquires or renews the lease `name` on `channel` for this node, for
    /// `ttl`: true while this node holds it. Leases elect one node of a
    /// cluster to do a channel's work (the bridge's poller); a single-node
    /// bus always holds them.
    fn lease(
        &self,
        channel: &ChannelName,
        name: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<bool, BusError>> + Send;

    /// True while the bus can publish and deliver.
    fn is_ready(&self) -> bool;

    /// This node's channels and subscribers: for the servers' sweeps and
    /// reports. Transports and the bridge use the methods below.
    fn hub(&self) -> &Hub;

    /// The newest id this node knows on `channel` (0: none).
    fn last_id(&self, channel: &ChannelName) -> u64 {
        self.hub().last_id(channel)
    }

    /// How many subscribers `channel` has on this node, per transport.
    fn subscriber_counts(&self, channel: &ChannelName) -> hub::SubscriberCounts {
        self.hub().subscriber_counts(channel)
    }

    /// False when this node's history no longer reaches back to `since`
    /// on `channel` (messages after it were evicted).
    fn history_covers(&self, channel: &ChannelName, since: Since) -> bool {
        !self.hub().read(channel, Some(since), 0).truncated
    }
}

/// The bus chosen at startup (`bus = "memory"` …). An enum rather than
/// `dyn Bus` because the trait's async methods are not object-safe.
///
/// The Redis bus's futures are boxed: they are large (a network round
/// trip's state), and a future's size is the largest of its variants, so
/// unboxed they would size every caller's future (every held poll, every
/// connection's request future) for the Redis case. The memory bus, the
/// hot path, stays unboxed.
pub enum AnyBus {
    Memory(MemoryBus),
    Redis(redis::RedisBus),
}

impl Bus for AnyBus {
    async fn publish(
        &self,
        channel: &ChannelName,
        payload: &Payload,
    ) -> Result<Published, BusError> {
        match self {
            AnyBus::Memory(bus) => bus.publish(channel, payload).await,
            AnyBus::Redis(bus) => Box::pin(bus.publish(channel, payload)).await,
        }
    }

    async fn publish_many(
        &self,
        channel: &ChannelName,
        payloads: &[Payload],
    ) -> Result<Vec<Published>, BusError> {
        match self {
            AnyBus::Memory(bus) => bus.publish_many(channel, payloads).await,
            AnyBus::Redis(bus) => Box::pin(bus.publish_many(channel, payloads)).await,
        }
    }

    async fn subscribe(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        queue: &Arc<SubscriberQueue>,
        limit: usize,
    ) -> Result<(Subscription, HistoryRead), BusError> {
        match self {
            AnyBus::Memory(bus) => bus.subscribe(channel, since, queue, limit).await,
            AnyBus::Redis(bus) => Box::pin(bus.subscribe(channel, since, queue, limit)).await,
        }
    }

    async fn park_poll(
        &self,
        channel: &ChannelName,
        since: Since,
        poll: &Arc<dyn WaitingPoll>,
        limit: usize,
    ) -> Result<Parking, BusError> {
        match self {
            AnyBus::Memory(bus) => bus.park_poll(channel, since, poll, limit).await,
            AnyBus::Redis(bus) => Box::pin(bus.park_poll(channel, since, poll, limit)).await,
        }
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        match self {
            AnyBus::Memory(bus) => bus.history(channel, since, limit).await,
            AnyBus::Redis(bus) => Box::pin(bus.history(channel, since, limit)).await,
        }
    }

    async fn lease(
        &self,
        channel: &ChannelName,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, BusError> {
        match self {
            AnyBus::Memory(bus) => bus.lease(channel, name, ttl).await,
            AnyBus::Redis(bus) => Box::pin(bus.lease(channel, name, ttl)).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            AnyBus::Memory(bus) => bus.is_ready(),
            AnyBus::Redis(bus) => bus.is_ready(),
        }
    }

    fn hub(&self) -> &Hub {
        match self {
            AnyBus::Memory(bus) => bus.hub(),
            AnyBus::Redis(bus) => bus.hub(),
        }
    }
}

/// The in-process bus: ids, history and fan-out all live in this node's
/// [`Hub`]. One process only; use a shared bus for several nodes.
pub struct MemoryBus {
    hub: Hub,
}

impl MemoryBus {
    pub fn new(hub: Hub) -> MemoryBus {
        hub.metrics().bus_ready.set(1);
        MemoryBus { hub }
    }
}

impl Bus for MemoryBus {
    async fn publish(
        &self,
        channel: &ChannelName,
        payload: &Payload,
    ) -> Result<Published, BusError> {
        let published = self
            .publish_many(channel, std::slice::from_ref(payload))
            .await?;
        Ok(published[0])
    }

    async fn publish_many(
        &self,
        channel: &ChannelName,
        payloads: &[Payload],
    ) -> Result<Vec<Published>, BusError> {
        let started = std::time::Instant::now();
        let data: Vec<bytes::Bytes> = payloads.iter().map(Payload::to_json_bytes).collect();
        let msgs = self.hub.publish_next_many(channel, &data);
        let metrics = self.hub.metrics();
        metrics
            .bus_publish_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.published.inc_by(msgs.len() as u64);
        // Recorded: the answer need not wait for the writes to subscribers,
        // only (under overload) for the fan-out backlog to shrink.
        self.hub.fanout_room().await;
        Ok(msgs.iter().map(|m| Published { id: m.id }).collect())
    }

    async fn subscribe(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        queue: &Arc<SubscriberQueue>,
        limit: usize,
    ) -> Result<(Subscription, HistoryRead), BusError> {
        Ok(self.hub.subscribe(channel, since, queue, limit))
    }

    async fn park_poll(
        &self,
        channel: &ChannelName,
        since: Since,
        poll: &Arc<dyn WaitingPoll>,
        limit: usize,
    ) -> Result<Parking, BusError> {
        Ok(self.hub.park_poll(channel, since, poll, limit))
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        Ok(self.hub.read(channel, since, limit))
    }

    async fn lease(
        &self,
        _: &ChannelName,
        _: &str,
        _: std::time::Duration,
    ) -> Result<bool, BusError> {
        // One process: it always holds every lease.
        Ok(true)
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }
}
