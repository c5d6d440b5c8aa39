//! Idle upstream connections between requests: a last-in-first-out list
//! under a mutex held for one push or pop (the connection used last is the
//! likeliest still open), at most `proxy.pool_max_idle` of them, each
//! closed after `proxy.pool_idle_timeout` unused, by a reaper task that
//! runs while the pool holds any.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::codec::Upstream;

pub struct Pool {
    idle: Mutex<Idle>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Idle {
    conns: Vec<Upstream>,
    /// A reaper task is running.
    reaping: bool,
}

/// The reaper's period at most: a short `pool_idle_timeout` still closes
/// connections close to on time, a long one is checked at least this often.
const REAP_EVERY_MAX: Duration = Duration::from_secs(5);
const REAP_EVERY_MIN: Duration = Duration::from_millis(50);

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Idle::default()),
            max_idle,
            idle_timeout,
        })
    }

    fn fresh(&self, up: &Upstream, now: Instant) -> bool {
        now.saturating_duration_since(up.idle_since) < self.idle_timeout
    }

    /// The newest idle connection that can take a request now; the stale
    /// or closed ones met on the way are closed.
    pub fn take(&self) -> Option<Upstream> {
        let now = Instant::now();
        let mut closed = Vec::new();
        let found = {
            let mut idle = self.idle.lock();
            let mut found = None;
            while let Some(mut up) = idle.conns.pop() {
                if self.fresh(&up, now) && up.usable() {
                    found = Some(up);
                    break;
                }
                closed.push(up);
            }
            found
        };
        // Closed outside the lock.
        drop(closed);
        found
    }

    /// Keeps an idle connection for the next request (closes it when the
    /// pool is full).
    pub fn put(self: &Arc<Self>, mut up: Upstream) {
        if self.max_idle == 0 {
            return;
        }
        // The reaper needs a runtime; there is none while one shuts down
        // (a body dropped then), and the connection is not needed then.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        up.idle_since = Instant::now();
        up.reused = true;
        let start_reaper = {
            let mut idle = self.idle.lock();
            if idle.conns.len() >= self.max_idle {
                false
            } else {
                idle.conns.push(up);
                !std::mem::replace(&mut idle.reaping, true)
            }
        };
        if start_reaper {
            let every = (self.idle_timeout / 2).clamp(REAP_EVERY_MIN, REAP_EVERY_MAX);
            runtime.spawn(reap(Arc::downgrade(self), every));
        }
    }
}

/// Closes connections idle for longer than `pool_idle_timeout` or closed
/// by the upstream; ends when the pool is empty or gone.
async fn reap(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut idle = pool.idle.lock();
            let mut kept = Vec::with_capacity(idle.conns.len());
            for mut up in idle.conns.drain(..) {
                if pool.fresh(&up, now) && up.usable() {
                    kept.push(up);
                } else {
                    closed.push(up);
                }
            }
            idle.conns = kept;
            if idle.conns.is_empty() {
                idle.reaping = false;
                drop(idle);
                return;
            }
        }
        drop(closed);
    }
}
