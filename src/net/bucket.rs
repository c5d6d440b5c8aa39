//! A token bucket: `rate` tokens per second, holding at most `capacity`.
//! The flood limits (WebSocket commands and publishes, backend auth) each
//! keep one per client or per gateway.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, capacity: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.refilled = now;
    }

    /// Takes `n` tokens, or none and says how long until `n` are there.
    /// More than the bucket holds counts as a full bucket, so a large
    /// request is slowed down, never refused for good.
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let n = n.min(self.capacity);
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        let missing = n - self.tokens;
        Err(Duration::from_secs_f64(
            (missing / self.rate.max(f64::MIN_POSITIVE)).min(3600.0),
        ))
    }

    /// Puts back tokens taken for something that did not happen after all.
    pub fn refund(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.capacity);
    }

    /// True once the bucket has refilled completely (nothing to remember).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        for _ in 0..3 {
            assert!(b.take(1.0, t0).is_ok());
        }
        let wait = b.take(1.0, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(b.take(1.0, t0 + Duration::from_millis(100)).is_ok());
        assert!(!b.is_full(t0 + Duration::from_millis(100)));
        assert!(b.is_full(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_take_larger_than_the_bucket_takes_a_full_one() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 50.0, t0);
        assert!(b.take(80.0, t0).is_ok());
        let wait = b.take(80.0, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
    }
}
