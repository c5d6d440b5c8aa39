//! Delivery into the hub: what the subscription connection notifies — a
//! channel's confirmation, its live messages — checked against where this
//! node stands on the channel (epoch, last id) and handed to the
//! [`Hub`](crate::bus::Hub), after any gap is filled (see [`gaps`](super::gaps)).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::super::script::{decode_frame, Entry};
use super::Subscriber;
use crate::protocol::channel::ChannelName;
use crate::protocol::Message;

impl Subscriber {
    /// The server confirmed a subscription: note where the channel stands
    /// (fresh) or fill what was missed (resumed), then let waiters go.
    pub(super) async fn on_confirmed(&mut self, channel: ChannelName) -> Result<(), String> {
        let Some(watch) = self.watches.get_mut(&channel) else {
            return Ok(()); // unsubscribed meanwhile
        };
        if watch.confirmed {
            return Ok(());
        }
        watch.confirmed = true;
        if watch.resume {
            let after = self.expected(&channel);
            self.fill(&channel, after).await?;
        } else {
            let read = self.shared.read(&channel, None, 0).await;
            let read = read.map_err(|e| e.to_string())?;
            // What this node holds of the channel from an earlier watch is
            // of another sequence if the epoch differs: start over (its
            // subscribers are told when the new sequence reaches them).
            if !read.epoch.is_none() {
                self.follow(&channel, read.epoch);
            }
            if let Some(watch) = self.watches.get_mut(&channel) {
                watch.floor = read.last_id;
            }
        }
        if let Some(watch) = self.watches.get_mut(&channel) {
            watch.resume = true;
            if watch.confirmed {
                self.shared.live.lock().insert(channel.clone());
            }
            for waiter in watch.waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }
        }
        self.update_gauge();
        Ok(())
    }

    pub(super) async fn on_message(
        &mut self,
        channel: ChannelName,
        payload: &[u8],
    ) -> Result<(), String> {
        if !self.watches.get(&channel).is_some_and(|w| w.confirmed) {
            return Ok(());
        }
        let Some(mut entry) = decode_frame(payload) else {
            tracing::debug!(channel = %channel, "ignoring a malformed redis pub/sub message");
            return Ok(());
        };
        let Some(watch) = self.watches.get_mut(&channel) else {
            return Ok(());
        };
        if entry.epoch.is_none() {
            // From a node without epochs (a rolling upgrade): it publishes
            // in whatever sequence there is.
            entry.epoch = watch.epoch;
        }
        if entry.epoch != watch.epoch {
            if watch.retired.contains(&entry.epoch) {
                return Ok(()); // in flight from before we left that epoch
            }
            if !watch.epoch.is_none() {
                tracing::error!(
                    channel = %channel, old = %watch.epoch, new = %entry.epoch,
                    "redis started the channel's ids again (it lost the data); telling its local clients `truncated`"
                );
            }
            self.follow(&channel, entry.epoch);
        } else if entry.id <= watch.live_last {
            // The same epoch, and ids went backwards on one connection.
            watch.live_last = entry.id;
            tracing::error!(
                channel = %channel, id = entry.id,
                "redis ids went backwards within one epoch (a failover to a lagging replica?)"
            );
            return self.rotate(&channel, entry.epoch).await;
        }
        if let Some(watch) = self.watches.get_mut(&channel) {
            watch.live_last = entry.id;
        }
        let expected = self.expected(&channel);
        if entry.id <= expected {
            return Ok(());
        }
        if entry.id > expected + 1 {
            self.fill(&channel, expected).await?;
        }
        let current = self.watches.get(&channel).map(|w| w.epoch);
        if current == Some(entry.epoch) && entry.id > self.expected(&channel) {
            self.deliver(&channel, &entry, Instant::now(), SystemTime::now());
        }
        Ok(())
    }

    /// The last id this node has accounted for on `channel`.
    fn expected(&self, channel: &ChannelName) -> u64 {
        let floor = self.watches.get(channel).map_or(0, |w| w.floor);
        self.shared.hub.last_id(channel).max(floor)
    }

    pub(super) fn deliver(
        &mut self,
        channel: &ChannelName,
        entry: &Entry,
        now: Instant,
        wall: SystemTime,
    ) {
        let published_at = entry.published_at(now, wall);
        let msg = Message::new(
            channel.clone(),
            entry.epoch,
            entry.id,
            &entry.data,
            published_at,
        );
        if self.shared.hub.deliver(Arc::new(msg)) {
            if let Some(watch) = self.watches.get_mut(channel) {
                watch.last_delivered = (entry.id, entry.ts_us);
            }
        }
    }
}
