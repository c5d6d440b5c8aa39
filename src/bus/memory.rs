//! The in-process bus: ids, history and fan-out all live in this node's
//! [`Hub`]. One process only; use a shared bus for several nodes.

use std::sync::Arc;

use super::{Bus, BusError, HistoryRead, Hub, Published, SubscriberQueue, Subscription};
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::Payload;

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
