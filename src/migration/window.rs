//! Distinct clients seen in a sliding window, in constant memory: one
//! HyperLogLog per slice of the window, merged when counted.

use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use hyperloglogplus::{HyperLogLog, HyperLogLogPF};

/// A sketch of [`ClientHash`]es, which it takes as they are.
type Sketch = HyperLogLogPF<u64, BuildHasherDefault<Prehashed>>;

/// A client key as the sketches take it: SipHash-1-3 (zero keys) of the
/// key, the hash the sketches always used. Computed once per poll
/// however many windows the poll is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHash(u64);

impl ClientHash {
    pub fn of(client: u64) -> ClientHash {
        let mut hasher = DefaultHasher::new();
        client.hash(&mut hasher);
        ClientHash(hasher.finish())
    }
}

/// Hands a [`ClientHash`] (hashed as a `u64`) to the sketch unchanged.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are inserted; anything else still spreads (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

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
    /// Before this instant [`rotate`](Self::rotate) has nothing to do (no
    /// slice to start or drop); `None`: never (the arithmetic overflowed).
    next_rotation: Option<Instant>,
}

impl DistinctWindow {
    pub fn new(window: Duration) -> DistinctWindow {
        let mut w = DistinctWindow {
            slice_len: (window / SLICES as u32).max(Duration::from_millis(1)),
            slices: vec![(Instant::now(), sketch())],
            next_rotation: None,
        };
        w.next_rotation = w.rotation_due();
        w
    }

    /// The first instant at which the newest slice is full or the oldest
    /// one leaves the window.
    fn rotation_due(&self) -> Option<Instant> {
        let newest = self.slices.last()?.0.checked_add(self.slice_len);
        let oldest = self.slices.first()?.0.checked_add(self.horizon());
        match (newest, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn horizon(&self) -> Duration {
        self.slice_len * SLICES as u32
    }

    #[inline]
    fn rotate(&mut self, now: Instant) {
        // Most calls (every poll) come well within the newest slice.
        if self.next_rotation.is_some_and(|due| now >= due) {
            self.rotate_now(now);
        }
    }

    #[cold]
    fn rotate_now(&mut self, now: Instant) {
        let newest = self.slices.last().map(|(t, _)| *t).unwrap_or(now);
        if now.duration_since(newest) >= self.slice_len {
            self.slices.push((now, sketch()));
        }
        let horizon = self.horizon();
        self.slices
            .retain(|(t, _)| now.duration_since(*t) < horizon);
        if self.slices.is_empty() {
            self.slices.push((now, sketch()));
        }
        self.next_rotation = self.rotation_due();
    }

    /// Records one client.
    pub fn insert(&mut self, client: ClientHash, now: Instant) {
        self.rotate(now);
        self.slices
            .last_mut()
            .expect("never empty")
            .1
            .insert(&client.0);
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
                w.insert(
                    ClientHash::of(client * 7919 + 13),
                    now + Duration::from_millis(round),
                );
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
            w.insert(ClientHash::of(c), t0);
        }
        assert!(w.estimate(t0) > 90.0);
        assert_eq!(w.estimate(t0 + Duration::from_secs(6)).round(), 0.0);
    }

    /// The sketches count exactly what they counted when they hashed the
    /// client keys themselves (SipHash-1-3 with zero keys).
    #[test]
    fn prehashed_clients_count_as_before() {
        type Before = HyperLogLogPF<u64, BuildHasherDefault<DefaultHasher>>;
        let mut before = Before::new(PRECISION, BuildHasherDefault::default()).unwrap();
        let mut after = sketch();
        for client in (0..3000u64).map(|c| c.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            before.insert(&client);
            after.insert(&ClientHash::of(client).0);
        }
        assert_eq!(before.count(), after.count());
    }

    /// The slices kept are those of a rotation on every call.
    #[test]
    fn rotation_only_when_due_keeps_the_same_slices() {
        let window = Duration::from_secs(5);
        let mut w = DistinctWindow::new(window);
        let t0 = w.slices[0].0;
        let slice_len = w.slice_len;
        let mut starts = vec![t0];
        for step in 0..400u64 {
            // Uneven steps, some inside a slice, some across several.
            let now = t0 + Duration::from_millis(step * step % 997 + step * 37);
            w.insert(ClientHash::of(step), now);
            // The reference: the rotation as it ran on every call.
            let newest = *starts.last().unwrap();
            if now.duration_since(newest) >= slice_len {
                starts.push(now);
            }
            starts.retain(|t| now.duration_since(*t) < window);
            if starts.is_empty() {
                starts.push(now);
            }
            let kept: Vec<Instant> = w.slices.iter().map(|(t, _)| *t).collect();
            assert_eq!(kept, starts, "step {step}");
        }
    }
}
