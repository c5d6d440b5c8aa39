//! `conflate_interval` on state channels: at most one update per interval
//! for each subscriber, the newest value at each tick. Shared by the
//! WebSocket and SSE writers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ChannelRules;
use crate::metrics::TransportMetrics;
use crate::protocol::channel::ChannelName;
use crate::protocol::Message;

struct Slot {
    /// None: this channel isn't throttled.
    interval: Option<Duration>,
    /// No update before this.
    next: Instant,
    /// The newest message waiting for `next`.
    held: Option<Arc<Message>>,
}

/// One subscriber's throttle across its channels.
pub struct Throttle {
    /// None when no rule sets an interval (then nothing is looked up): every
    /// idle WebSocket holds a throttle, and 8 bytes are less than a map's 48.
    #[allow(clippy::box_collection)] // on purpose: 8 bytes inline, not 48
    slots: Option<Box<HashMap<ChannelName, Slot>>>,
}

impl Throttle {
    pub fn new(rules: &ChannelRules) -> Throttle {
        Throttle {
            slots: rules.has_conflate_interval().then(Box::default),
        }
    }

    /// False when no channel rule sets an interval.
    pub fn is_enabled(&self) -> bool {
        self.slots.is_some()
    }

    /// Keeps in `batch` what may go out now; holds the rest (newest per
    /// channel wins; a replaced one counts as conflated).
    pub fn admit(
        &mut self,
        rules: &ChannelRules,
        batch: &mut Vec<Arc<Message>>,
        now: Instant,
        metrics: &TransportMetrics,
    ) {
        let Some(slots) = self.slots.as_deref_mut() else {
            return;
        };
        batch.retain(|msg| {
            let slot = slots.entry(msg.channel.clone()).or_insert_with(|| Slot {
                interval: rules.resolve(msg.channel.as_str()).conflate_interval,
                next: now,
                held: None,
            });
            let Some(interval) = slot.interval else {
                return true;
            };
            if now >= slot.next && slot.held.is_none() {
                slot.next = now + interval;
                return true;
            }
            if slot.held.replace(msg.clone()).is_some() {
                metrics.conflated.inc();
            }
            false
        });
    }

    /// When the next held message is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.slots
            .as_deref()?
            .values()
            .filter(|s| s.held.is_some())
            .map(|s| s.next)
            .min()
    }

    /// Moves the held messages that are due into `out`.
    pub fn release(&mut self, now: Instant, out: &mut Vec<Arc<Message>>) {
        for slot in self.slots.iter_mut().flat_map(|slots| slots.values_mut()) {
            if slot.next <= now {
                if let Some(msg) = slot.held.take() {
                    slot.next = now + slot.interval.unwrap_or_default();
                    out.push(msg);
                }
            }
        }
        out.sort_by_key(|m| m.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChannelMode, ChannelRule};
    use crate::metrics::Metrics;
    use crate::protocol::Transport;

    fn msg(channel: &str, id: u64) -> Arc<Message> {
        Arc::new(Message::new(
            ChannelName::new(channel).unwrap(),
            crate::protocol::Epoch::NONE,
            id,
            b"1",
            Instant::now(),
        ))
    }

    #[test]
    fn one_update_per_interval_newest_wins() {
        let rules = ChannelRules::new(vec![ChannelRule {
            pattern: "price".into(),
            mode: ChannelMode::State,
            allow_client_publish: false,
            auth: Default::default(),
            conflate_interval: Some(Duration::from_millis(100)),
            compress: true,
        }]);
        let metrics = Metrics::new();
        let m = metrics.transport(Transport::WebSocket);
        let mut t = Throttle::new(&rules);
        let t0 = Instant::now();
        let mut batch = vec![
            msg("price", 1),
            msg("other", 1),
            msg("price", 2),
            msg("price", 3),
        ];
        t.admit(&rules, &mut batch, t0, m);
        let ids: Vec<_> = batch
            .iter()
            .map(|m| (m.channel.to_string(), m.id))
            .collect();
        assert_eq!(ids, vec![("price".into(), 1), ("other".into(), 1)]);
        assert_eq!(t.deadline(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(m.conflated.get(), 1, "2 was replaced by 3");
        let mut out = Vec::new();
        t.release(t0 + Duration::from_millis(50), &mut out);
        assert!(out.is_empty());
        t.release(t0 + Duration::from_millis(100), &mut out);
        assert_eq!(out.iter().map(|m| m.id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn disabled_without_intervals() {
        let rules = ChannelRules::default();
        let mut t = Throttle::new(&rules);
        let metrics = Metrics::new();
        let mut batch = vec![msg("a", 1), msg("a", 2)];
        t.admit(
            &rules,
            &mut batch,
            Instant::now(),
            metrics.transport(Transport::Sse),
        );
        assert_eq!(batch.len(), 2);
        assert!(t.deadline().is_none());
    }
}
