//! What both kinds of feed share about when to poll: the task that polls
//! while a feed is wanted, the back-off while the backend fails, and the
//! demand that keeps a feed alive.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::Bus;
use crate::gateway::Gateway;
use crate::protocol::channel::ChannelName;

use super::UpstreamClient;

/// A feed's task (snapshot or incremental), as the route's bookkeeping
/// starts it: it follows the feed's channel and polls the backend while the
/// feed is wanted, and ends when it is not (or at shutdown).
pub trait Poller: Send + Sync + 'static {
    fn poll_while_wanted(
        self: Arc<Self>,
        gw: Arc<Gateway>,
        client: Arc<UpstreamClient>,
    ) -> impl Future<Output = ()> + Send;
}

/// Longest wait between polls while the backend keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before the next poll after `failures` failed ones in a row:
/// the interval, doubling per failure up to 30 s (or the interval, if longer).
pub fn next_poll_delay(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    (interval * 2u32.saturating_pow(failures.min(16))).min(MAX_BACKOFF.max(interval))
}

/// When a legacy client last asked for a feed.
pub struct Demand {
    /// Milliseconds since `epoch` of the last legacy poll.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Demand {
    pub fn new() -> Demand {
        Demand {
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A legacy client asked for the feed.
    pub fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Nobody wants the feed: no legacy poll for `idle_timeout` and no
    /// subscriber of its channel on this node.
    pub fn is_idle(&self, gw: &Gateway, channel: &ChannelName, idle_timeout: Duration) -> bool {
        if self.idle_for() < idle_timeout {
            return false;
        }
        let subs = gw.bus.subscriber_counts(channel);
        subs.websocket + subs.sse + subs.longpoll == 0
    }
}
