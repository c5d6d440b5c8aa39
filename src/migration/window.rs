//! Distinct clients seen in a sliding window, in constant memory: one
//! HyperLogLog per slice of the window, merged when counted.

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use hyperloglogplus::{HyperLogLog, HyperLogLogPF};

type Sketch = HyperLogLogPF<u64, BuildHasherDefault<DefaultHasher>>;

/// 2^12 registers: about 1.6 % standard error, 4 KiB per slice.
const PRECISION: u8 = 12;
/// The window is cut into this many slices; the oldest is dropped whole.
const SLICES: usize = 5;

fn sketch() -> Sketch {
    Sketch::new(PRECISION, BuildHasherDefault::default()).expect("valid precision")
}

/// Distinct client keys seen in the last `window`.
pub struct DistinctWindow {
    slice_len: Duration,
    /// Newest last; each with the instant its slice started.
    slices: Vec<(Instant, Sketch)>,
}

impl DistinctWindow {
    pub fn new(window: Duration) -> DistinctWindow {
        DistinctWindow {
            slice_len: (window / SLICES as u32).max(Duration::from_millis(1)),
            slices: vec![(Instant::now(), sketch())],
        }
    }

    fn rotate(&mut self, now: Instant) {
        let newest = self.slices.last().map(|(t, _)| *t).unwrap_or(now);
        if now.duration_since(newest) >= self.slice_len {
            self.slices.push((now, sketch()));
        }
        let horizon = self.slice_len * SLICES as u32;
        self.slices
            .retain(|(t, _)| now.duration_since(*t) < horizon);
        if self.slices.is_empty() {
            self.slices.push((now, sketch()));
        }
    }

    /// Records one client (a hash of who it is).
    pub fn insert(&mut self, client: u64, now: Instant) {
        self.rotate(now);
        self.slices
            .last_mut()
            .expect("never empty")
            .1
            .insert(&client);
    }

    /// Estimated distinct clients over the window.
    pub fn estimate(&mut self, now: Instant) -> f64 {
        self.rotate(now);
        let mut union = sketch();
        for (_, slice) in &self.slices {
            union.merge(slice).expect("same precision");
        }
        union.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_clients_within_a_few_percent() {
        let mut w = DistinctWindow::new(Duration::from_secs(300));
        let now = Instant::now();
        for round in 0..20 {
            for client in 0..500u64 {
                w.insert(client * 7919 + 13, now + Duration::from_millis(round));
            }
        }
        let est = w.estimate(now);
        assert!((est - 500.0).abs() / 500.0 < 0.05, "estimate {est}");
    }

    #[test]
    fn old_clients_leave_the_window() {
        let mut w = DistinctWindow::new(Duration::from_secs(5));
        let t0 = Instant::now();
        for c in 0..100u64 {
            w.insert(c, t0);
        }
        assert!(w.estimate(t0) > 90.0);
        assert_eq!(w.estimate(t0 + Duration::from_secs(6)).round(), 0.0);
    }
}
