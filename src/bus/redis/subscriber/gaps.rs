//! Gap detection and catch-up: reading what a channel's live stream
//! missed from the Redis stream, following a new epoch when Redis lost the
//! sequence, and giving the sequence a new epoch when its ids went
//! backwards (a failover to a lagging replica).

use std::time::{Instant, SystemTime};

use super::super::script::{ReadReply, MAX_LUA_CURSOR};
use super::Subscriber;
use crate::config::ChannelMode;
use crate::protocol::channel::ChannelName;
use crate::protocol::Epoch;

/// Most entries read per gap-fill round trip.
const FILL_BATCH: usize = 1000;

/// Epochs remembered as left per channel (their late notifications are
/// ignored); a channel loses its data rarely, so a few are plenty.
const RETIRED_EPOCHS: usize = 4;

impl Subscriber {
    /// Follows `epoch` for `channel` from its start: this node's state of
    /// the channel is dropped (the hub's subscribers stay, and are told
    /// `truncated` when the new sequence reaches them).
    pub(super) fn follow(&mut self, channel: &ChannelName, epoch: Epoch) {
        let Some(watch) = self.watches.get_mut(channel) else {
            return;
        };
        if watch.epoch == epoch {
            return;
        }
        if !watch.epoch.is_none() {
            let left = watch.epoch;
            watch.retired.retain(|&e| e != left && e != epoch);
            if watch.retired.len() >= RETIRED_EPOCHS {
                watch.retired.remove(0);
            }
            watch.retired.push(left);
        }
        watch.epoch = epoch;
        watch.floor = 0;
        watch.last_delivered = (0, 0);
        self.shared.hub.reset(channel, epoch);
    }

    /// The ids of `epoch` went backwards: give the sequence a new epoch in
    /// Redis (unless another node already did) and follow it from its
    /// start.
    pub(super) async fn rotate(
        &mut self,
        channel: &ChannelName,
        epoch: Epoch,
    ) -> Result<(), String> {
        let current = self
            .shared
            .rotate(channel, epoch)
            .await
            .map_err(|e| e.to_string())?;
        tracing::warn!(channel = %channel, old = %epoch, new = %current, "gave the channel's sequence a new epoch");
        self.follow(channel, current);
        self.fill(channel, 0).await
    }

    /// Delivers everything after `after` that the stream holds, in the
    /// epoch followed; follows a new one from its start if Redis has one.
    pub(super) async fn fill(
        &mut self,
        channel: &ChannelName,
        mut after: u64,
    ) -> Result<(), String> {
        let mode = self.shared.hub.mode_of(channel.as_str());
        let mut recovered = 0u64;
        // Read the entry at `after` too (once), to check it is the one this
        // node delivered (when `after` is the last id it delivered).
        let mut verify = after > 0
            && self
                .watches
                .get(channel)
                .is_some_and(|w| w.last_delivered.0 == after);
        // Each round either makes progress or changes epoch; a sequence
        // that keeps changing under us is not followed forever.
        let mut epoch_changes = 0;
        loop {
            let Some(watch) = self.watches.get(channel) else {
                return Ok(());
            };
            let (epoch, last_ts) = (watch.epoch, watch.last_delivered.1);
            let since = if verify { after - 1 } else { after };
            let reply = self
                .shared
                .read(channel, Some(since.min(MAX_LUA_CURSOR)), FILL_BATCH)
                .await
                .map_err(|e| e.to_string())?;
            if reply.epoch != epoch {
                one_more_change(&mut epoch_changes)?;
                if !self.follow_lost(channel, epoch, reply.epoch) {
                    return Ok(()); // nothing published since the loss
                }
                (after, verify) = (0, false);
                continue;
            }
            if forked(&reply, after, verify, last_ts) {
                tracing::error!(
                    channel = %channel, last_id = reply.last_id, delivered = after,
                    "redis ids went backwards within one epoch (a failover to a lagging replica?)"
                );
                one_more_change(&mut epoch_changes)?;
                let current = self
                    .shared
                    .rotate(channel, epoch)
                    .await
                    .map_err(|e| e.to_string())?;
                self.follow(channel, current);
                (after, verify) = (0, false);
                continue;
            }
            verify = false;
            if self.history_lost(channel, after, &reply, mode) {
                return Ok(());
            }
            let (now, wall) = (Instant::now(), SystemTime::now());
            for entry in &reply.entries {
                if entry.id > after {
                    self.deliver(channel, entry, now, wall);
                    after = entry.id;
                    recovered += 1;
                }
            }
            if reply.entries.len() < FILL_BATCH || after >= reply.last_id {
                break;
            }
        }
        self.count_recovered(channel, recovered);
        Ok(())
    }

    /// Counts and logs the messages a gap fill recovered, if any.
    fn count_recovered(&self, channel: &ChannelName, recovered: u64) {
        if recovered > 0 {
            self.shared
                .hub
                .metrics()
                .bus_gap_fill_messages
                .inc_by(recovered);
            tracing::info!(channel = %channel, recovered, "filled a gap from redis history");
        }
    }

    /// Redis holds another sequence of `channel` than the one followed,
    /// `old` (it lost the data): follows `new` from its start. False when
    /// there is no new sequence yet.
    fn follow_lost(&mut self, channel: &ChannelName, old: Epoch, new: Epoch) -> bool {
        if !old.is_none() {
            tracing::error!(
                channel = %channel, old = %old, new = %new,
                "redis lost the channel's sequence; telling its local clients `truncated`"
            );
        }
        self.follow(channel, new);
        !new.is_none()
    }

    /// True when the stream no longer reaches back to `after` (history too
    /// short for the outage): the channel's local subscribers are closed, so
    /// their clients resume and are told `truncated`. State channels
    /// are exempt.
    fn history_lost(
        &mut self,
        channel: &ChannelName,
        after: u64,
        reply: &ReadReply,
        mode: ChannelMode,
    ) -> bool {
        let first_kept = reply.first_kept.unwrap_or(reply.last_id + 1);
        if after + 1 >= first_kept || mode == ChannelMode::State {
            return false;
        }
        tracing::warn!(
            channel = %channel, missed = first_kept - after - 1,
            "messages missed live are no longer in redis history; closing this channel's local subscribers so they resume and see `truncated`"
        );
        self.shared.hub.forget(channel);
        if let Some(watch) = self.watches.get_mut(channel) {
            watch.floor = reply.last_id;
        }
        true
    }
}

/// Counts one more change of epoch during a gap fill: past three, the fill
/// gives up (and the connection is replaced) rather than follow a sequence
/// that keeps changing under it.
fn one_more_change(changes: &mut u32) -> Result<(), String> {
    *changes += 1;
    if *changes > 3 {
        return Err("the channel's epoch keeps changing".into());
    }
    Ok(())
}

/// The ids went backwards within the epoch read: the stream ends before
/// `after`, or (when `verify`) its entry at `after` is not the one this
/// node delivered, published at `last_ts`.
fn forked(reply: &ReadReply, after: u64, verify: bool, last_ts: u64) -> bool {
    let at_after = reply.entries.iter().find(|e| e.id == after);
    reply.last_id < after || (verify && at_after.is_some_and(|e| e.ts_us != last_ts))
}
