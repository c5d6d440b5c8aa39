//! The cap on channels that client publishes bring into being
//! (`limits.ws.max_client_channels`): each channel a WebSocket client
//! publishes on is counted from its first client publish until
//! `history.max_age` after its last (when its history has aged out). A
//! client publish on one more channel past the cap is refused
//! (`too_many_channels`). Counted per node, the same for every bus.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::protocol::channel::ChannelName;

pub struct ClientChannels {
    max: usize,
    /// How long a channel counts after its last client publish.
    ttl: Duration,
    /// Channel → its last client publish.
    seen: Mutex<HashMap<ChannelName, Instant>>,
    gauge: prometheus::IntGauge,
}

/// A client publish would create one channel more than allowed.
#[derive(Debug)]
pub struct TooManyChannels(pub usize);

impl ClientChannels {
    pub fn new(max: usize, ttl: Duration, gauge: prometheus::IntGauge) -> ClientChannels {
        ClientChannels {
            max,
            ttl,
            seen: Mutex::new(HashMap::new()),
            gauge,
        }
    }

    /// Counts a client publish on `channel`, or refuses it.
    pub fn admit(&self, channel: &ChannelName, now: Instant) -> Result<(), TooManyChannels> {
        let mut seen = self.seen.lock();
        if let Some(last) = seen.get_mut(channel) {
            *last = now;
            return Ok(());
        }
        if seen.len() >= self.max {
            // Only when full: the scan is paid by the publishes that
            // would otherwise be refused.
            let ttl = self.ttl;
            seen.retain(|_, last| now.saturating_duration_since(*last) < ttl);
            if seen.len() >= self.max {
                self.gauge.set(seen.len() as i64);
                return Err(TooManyChannels(self.max));
            }
        }
        seen.insert(channel.clone(), now);
        self.gauge.set(seen.len() as i64);
        Ok(())
    }

    /// Forgets channels whose history has aged out.
    pub fn sweep(&self, now: Instant) {
        let mut seen = self.seen.lock();
        let ttl = self.ttl;
        seen.retain(|_, last| now.saturating_duration_since(*last) < ttl);
        self.gauge.set(seen.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn new_channels_past_the_cap_are_refused_until_old_ones_age_out() {
        let gauge = prometheus::IntGauge::new("g", "g").unwrap();
        let cc = ClientChannels::new(2, Duration::from_secs(60), gauge.clone());
        let t0 = Instant::now();
        assert!(cc.admit(&name("a"), t0).is_ok());
        assert!(cc.admit(&name("b"), t0).is_ok());
        assert!(cc.admit(&name("a"), t0).is_ok(), "known channels pass");
        assert!(cc.admit(&name("c"), t0).is_err());
        assert_eq!(gauge.get(), 2);
        let later = t0 + Duration::from_secs(61);
        assert!(cc.admit(&name("c"), later).is_ok());
        cc.sweep(later);
        assert_eq!(gauge.get(), 1);
    }
}
