//! The subscriptions a WebSocket session holds, each with the cursor of
//! the last message it delivered.

use crate::bus::Subscription;
use crate::protocol::channel::ChannelName;
use crate::protocol::Cursor;

/// The session's subscriptions: a few per connection (usually one), so a
/// vector searched in order, smaller than a hash map for every idle
/// connection.
#[derive(Default)]
pub(super) struct Subscriptions(Vec<(ChannelName, Subscribed)>);

impl Subscriptions {
    pub(super) fn get(&self, channel: &ChannelName) -> Option<&Subscribed> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, s)| s)
    }

    pub(super) fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Subscribed> {
        self.0
            .iter_mut()
            .find(|(c, _)| c == channel)
            .map(|(_, s)| s)
    }

    pub(super) fn insert(&mut self, channel: ChannelName, sub: Subscribed) {
        match self.get_mut(&channel) {
            Some(existing) => *existing = sub,
            None => {
                // Grown one at a time: a first push would make room for
                // four (about 260 bytes more per idle connection, which
                // usually holds one).
                self.0.reserve_exact(1);
                self.0.push((channel, sub))
            }
        }
    }

    pub(super) fn remove(&mut self, channel: &ChannelName) -> Option<Subscribed> {
        let pos = self.0.iter().position(|(c, _)| c == channel)?;
        Some(self.0.swap_remove(pos).1)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// True when every subscription that asked for deltas holds the value
    /// of its cursor (the message it last delivered): publishers can then
    /// chain deltas from it in direct mode.
    pub(super) fn deltas_hold_cursors(&self) -> bool {
        self.0.iter().all(|(_, s)| match &s.delta {
            None => true,
            Some(track) => track
                .holds()
                .is_some_and(|h| h.id == s.cursor.id && h.epoch == s.cursor.epoch),
        })
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&ChannelName, &Subscribed)> {
        self.0.iter().map(|(c, s)| (c, s))
    }
}

/// A subscription the session holds, with the last id it delivered.
pub(super) struct Subscribed {
    pub(super) _subscription: Subscription,
    pub(super) cursor: Cursor,
    /// Set when the client asked for deltas on this channel.
    pub(super) delta: Option<crate::transport::delta::DeltaTrack>,
}
