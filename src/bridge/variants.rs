//! The cap on a route's live feeds (`max_variants`). Every distinct query
//! and `vary_by` value is a feed with its own poller, so without a cap a
//! client could multiply the backend's load by sending new values. Past the
//! cap a poll is proxied to the backend unchanged: it costs the backend what
//! it would cost without the gateway, never more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

/// Live feeds of one route against its cap.
pub struct VariantCap {
    live: AtomicUsize,
    max: usize,
    /// `pollbridge_bridge_variants{bridge}`.
    live_gauge: IntGauge,
    /// `pollbridge_bridge_variants_refused_total{bridge}`.
    refused: IntCounter,
}

/// One live feed's place under the cap, given back when dropped.
pub struct VariantSlot(Arc<VariantCap>);

impl VariantCap {
    pub fn new(max: usize, live_gauge: IntGauge, refused: IntCounter) -> Arc<VariantCap> {
        Arc::new(VariantCap {
            live: AtomicUsize::new(0),
            max,
            live_gauge,
            refused,
        })
    }

    /// A place for one more feed, or None at the cap.
    pub fn try_take(self: &Arc<Self>) -> Option<VariantSlot> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        self.live_gauge.inc();
        Some(VariantSlot(self.clone()))
    }

    /// A poll was proxied because there was no place for its feed.
    pub fn count_refused(&self) {
        self.refused.inc();
    }
}

impl Drop for VariantSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.live_gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_counted_and_given_back() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let refused = IntCounter::new("r", "r").unwrap();
        let cap = VariantCap::new(2, gauge.clone(), refused.clone());
        let a = cap.try_take().unwrap();
        let _b = cap.try_take().unwrap();
        assert!(cap.try_take().is_none());
        cap.count_refused();
        assert_eq!((gauge.get(), refused.get()), (2, 1));
        drop(a);
        assert_eq!(gauge.get(), 1);
        assert!(cap.try_take().is_some());
    }
}
