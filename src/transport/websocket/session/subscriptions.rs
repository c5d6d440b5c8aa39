//! The subscriptions a WebSocket session holds, each with the cursor of
//! the last message it delivered.

use crate::bus::Subscription;
use crate::protocol::channel::ChannelName;
use crate::protocol::Cursor;

/// The session's subscriptions: a few per connection (usually one), so a
/// vector searched in order, smaller than a hash map for every idle
/// connection. Each is found by the hub's copy of its channel's name
/// ([`Subscription::channel`]), not a copy of its own: 16 bytes less per
/// entry, which with the boxed delta track puts a one-subscription
/// connection's vector in jemalloc's 64-byte class instead of 96.
#[derive(Default)]
pub(super) struct Subscriptions(Vec<Subscribed>);

impl Subscriptions {
    pub(super) fn get(&self, channel: &ChannelName) -> Option<&Subscribed> {
        self.0.iter().find(|s| s.channel() == channel)
    }

    pub(super) fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Subscribed> {
        self.0.iter_mut().find(|s| s.channel() == channel)
    }

    /// Adds `sub`, or replaces the one of its channel.
    pub(super) fn insert(&mut self, sub: Subscribed) {
        match self.get_mut(sub.channel()) {
            Some(existing) => *existing = sub,
            None => {
                // Grown one at a time: a first push would make room for
                // four (about 260 bytes more per idle connection, which
                // usually holds one).
                self.0.reserve_exact(1);
                self.0.push(sub)
            }
        }
    }

    pub(super) fn remove(&mut self, channel: &ChannelName) -> Option<Subscribed> {
        let pos = self.0.iter().position(|s| s.channel() == channel)?;
        Some(self.0.swap_remove(pos))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// True when every subscription that asked for deltas holds the value
    /// of its cursor (the message it last delivered): publishers can then
    /// chain deltas from it in direct mode.
    pub(super) fn deltas_hold_cursors(&self) -> bool {
        self.0.iter().all(|s| match &s.delta {
            None => true,
            Some(track) => track
                .holds()
                .is_some_and(|h| h.id == s.cursor.id && h.epoch == s.cursor.epoch),
        })
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&ChannelName, &Subscribed)> {
        self.0.iter().map(|s| (s.channel(), s))
    }
}

/// A subscription the session holds, with the last id it delivered.
pub(super) struct Subscribed {
    pub(super) subscription: Subscription,
    pub(super) cursor: Cursor,
    /// Set when the client asked for deltas on this channel. Boxed: few
    /// subscriptions have one, and it is 24 bytes inline.
    pub(super) delta: Option<Box<crate::transport::delta::DeltaTrack>>,
}

impl Subscribed {
    /// Its channel (the hub's copy of the name).
    pub(super) fn channel(&self) -> &ChannelName {
        self.subscription.channel()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_entry_stays_small() {
        // A one-subscription connection's vector holds exactly one: 88
        // bytes with its own copy of the name and the delta track inline
        // (jemalloc's 96-byte class), 56 now (64).
        let size = std::mem::size_of::<Subscribed>();
        eprintln!("Subscribed: {size} bytes");
        assert!(size <= 64, "a subscription entry grew to {size} bytes");
    }
}
