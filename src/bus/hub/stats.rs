//! What `/channels`, the bridges and the Redis bus learn about this node's
//! channels: per-channel figures and subscriber counts by transport.

use super::channel::ChannelInner;
use super::Hub;
use crate::config::ChannelMode;
use crate::protocol::channel::ChannelName;
use crate::protocol::Transport;

/// Per-channel figures for `/channels`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelStats {
    pub channel: String,
    pub mode: ChannelMode,
    pub last_id: u64,
    pub history: usize,
    /// Bytes of the kept messages (counted against `history.max_bytes`).
    pub history_bytes: usize,
    pub subscribers: SubscriberCounts,
}

/// Subscribers of one channel on this node, by transport.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SubscriberCounts {
    pub websocket: usize,
    pub longpoll: usize,
    pub sse: usize,
    pub bridge: usize,
}

/// The channel's subscribers by transport; its parked long-polls count
/// as long-poll subscribers.
fn count_subscribers(inner: &ChannelInner) -> SubscriberCounts {
    let mut counts = SubscriberCounts {
        longpoll: inner.polls.len(),
        ..SubscriberCounts::default()
    };
    for member in inner.members.values() {
        match member.queue.transport() {
            Transport::WebSocket => counts.websocket += 1,
            Transport::LongPoll => counts.longpoll += 1,
            Transport::Sse => counts.sse += 1,
            Transport::Bridge => counts.bridge += 1,
            Transport::Proxy => {}
        }
    }
    counts
}

impl Hub {
    /// Per-channel figures, sorted by name.
    #[cfg(test)]
    pub fn stats(&self) -> Vec<ChannelStats> {
        self.stats_page(None, usize::MAX)
    }

    /// Per-channel figures of at most `limit` channels named after
    /// `after`, sorted by name: one page of `/channels`. Only the page's
    /// channels are locked and described.
    pub fn stats_page(&self, after: Option<&str>, limit: usize) -> Vec<ChannelStats> {
        let mut names: Vec<ChannelName> = self
            .channels
            .iter()
            .map(|e| e.key().clone())
            .filter(|name| after.is_none_or(|after| name.as_str() > after))
            .collect();
        if names.len() > limit {
            names.select_nth_unstable(limit);
            names.truncate(limit);
        }
        names.sort_unstable();
        names
            .into_iter()
            .filter_map(|name| {
                let slot = self.channels.get(&name).map(|s| s.value().clone())?;
                let inner = slot.inner.lock();
                Some(ChannelStats {
                    channel: name.to_string(),
                    mode: inner.mode,
                    last_id: inner.last_id,
                    history: inner.history.len(),
                    history_bytes: inner.history.bytes(),
                    subscribers: count_subscribers(&inner),
                })
            })
            .collect()
    }

    /// Subscribers of one channel on this node, by transport (zero for a
    /// channel this node doesn't know).
    pub fn subscriber_counts(&self, channel: &ChannelName) -> SubscriberCounts {
        let Some(slot) = self.channels.get(channel).map(|s| s.value().clone()) else {
            return SubscriberCounts::default();
        };
        let inner = slot.inner.lock();
        count_subscribers(&inner)
    }
}
