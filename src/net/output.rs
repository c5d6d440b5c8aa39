//! Output limits: what unsent output may cost, per client and in total.
//!
//! Modelled on Redis's `client-output-buffer-limit`. A client's *pending
//! output* is what the gateway has committed to send it and its socket has
//! not taken yet: the live messages queued for a WebSocket or SSE
//! subscriber, and the unsent rest of a streamed long-poll answer. (Catch-up
//! from history is produced chunk by chunk as the socket drains, from the
//! messages' shared encodings, so it commits nothing ahead.) Counted as if
//! nothing were shared, which over-counts and so errs on the safe side.
//!
//! - **Hard limit** (`limits.client_output_hard_bytes`): a client past it
//!   is dropped at once.
//! - **Soft limit** (`limits.client_output_soft_bytes`): a client that
//!   stays past it for `limits.client_output_soft_time` is dropped.
//! - **Budget** (`limits.max_pending_output_bytes`): the sum over all
//!   clients. Past it the clients with the most pending output are dropped
//!   first, and new large long-poll answers are refused (`503`).
//!
//! Counting is two relaxed atomic adds (the client's and the total) where
//! output is queued or produced; a WebSocket written directly by the
//! publisher queues nothing and counts nothing. Only clients that come to
//! hold [`TRACK_ABOVE`] bytes are registered (once, under a lock) with the
//! reaper, which looks at them twice a second.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::LimitsConfig;
use crate::metrics::{Metrics, SlowClose};
use crate::net::meter::ConnMeter;
use crate::protocol::Transport;

/// Clients holding at least this much pending output are watched by the
/// reaper (soft-limit timers, budget).
pub const TRACK_ABOVE: usize = 64 * 1024;

/// How often the reaper looks, besides when the budget is exceeded.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// The gateway-wide account of pending output.
pub struct OutputBudget {
    limit: usize,
    hard: usize,
    soft: usize,
    soft_time: Duration,
    /// `limits.write_timeout`: how long a stall-watched account
    /// ([`OutputAccount::watch_stalls`]) may hold output without progress.
    stall_time: Duration,
    /// Sum of every client's pending output.
    pending: AtomicUsize,
    /// Time zero for the soft-limit clocks (milliseconds in an atomic).
    epoch: Instant,
    /// Clients that came to hold [`TRACK_ABOVE`] bytes.
    tracked: Mutex<Vec<Weak<OutputAccount>>>,
    /// Wakes the reaper when the budget is exceeded.
    over: tokio::sync::Notify,
    pub(crate) metrics: Arc<Metrics>,
}

/// What adding output to an account found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Past the hard limit, or past the soft limit for too long: the
    /// caller drops the client.
    Drop(SlowClose),
}

impl OutputBudget {
    pub fn new(limits: &LimitsConfig, metrics: Arc<Metrics>) -> Arc<OutputBudget> {
        metrics
            .output_budget_bytes
            .set(limits.max_pending_output_bytes as i64);
        Arc::new(OutputBudget {
            limit: limits.max_pending_output_bytes,
            hard: limits.client_output_hard_bytes,
            soft: limits.client_output_soft_bytes,
            soft_time: limits.client_output_soft_time,
            stall_time: limits.write_timeout,
            pending: AtomicUsize::new(0),
            epoch: Instant::now(),
            tracked: Mutex::new(Vec::new()),
            over: tokio::sync::Notify::new(),
            metrics,
        })
    }

    /// A new client's account.
    pub fn account(self: &Arc<Self>, transport: Transport) -> Arc<OutputAccount> {
        Arc::new_cyclic(|me| OutputAccount {
            me: me.clone(),
            budget: self.clone(),
            transport,
            pending: AtomicUsize::new(0),
            soft_since: AtomicU64::new(0),
            progress_at: AtomicU64::new(0),
            stall_watched: AtomicBool::new(false),
            tracked: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            queue: OnceLock::new(),
            meter: OnceLock::new(),
        })
    }

    /// Pending output of all clients together.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether `bytes` more fit in the budget now. When they don't, the
    /// reaper is woken to make room.
    pub fn has_room_for(&self, bytes: usize) -> bool {
        let fits = self.pending().saturating_add(bytes) <= self.limit;
        if !fits {
            self.over.notify_one();
        }
        fits
    }

    fn now_ms(&self) -> u64 {
        // +1: 0 means "not past the soft limit".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Drops clients past the soft limit for too long and, while the
    /// budget is exceeded, the clients with the most pending output.
    pub fn enforce(&self) {
        let accounts: Vec<Arc<OutputAccount>> = {
            let mut tracked = self.tracked.lock();
            tracked.retain(|a| a.strong_count() > 0);
            tracked.iter().filter_map(Weak::upgrade).collect()
        };
        let now = self.now_ms();
        let soft_ms = self.soft_time.as_millis() as u64;
        let stall_ms = self.stall_time.as_millis() as u64;
        for account in &accounts {
            let since = account.soft_since.load(Ordering::Relaxed);
            if since != 0 && now.saturating_sub(since) >= soft_ms {
                account.kill(SlowClose::SoftLimit);
            } else if stall_ms > 0 && account.stalled_for(now) >= stall_ms {
                account.kill(SlowClose::WriteTimeout);
            }
        }
        let total = self.pending();
        if total > self.limit {
            // Bytes of clients already dropped are on their way out: only
            // the rest counts towards what must go.
            let leaving: usize = accounts
                .iter()
                .filter(|a| a.is_killed())
                .map(|a| a.pending())
                .sum();
            let mut over = total.saturating_sub(leaving).saturating_sub(self.limit);
            let mut candidates: Vec<&Arc<OutputAccount>> =
                accounts.iter().filter(|a| !a.is_killed()).collect();
            candidates.sort_by_key(|a| std::cmp::Reverse(a.pending()));
            for account in candidates {
                if over == 0 {
                    break;
                }
                over = over.saturating_sub(account.pending());
                account.kill(SlowClose::Budget);
            }
        }
        self.metrics.output_pending_bytes.set(self.pending() as i64);
    }

    /// Runs [`enforce`](Self::enforce) twice a second, and at once when
    /// the budget is exceeded, until the gateway stops.
    pub async fn run_reaper(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.over.notified() => {}
                _ = tokio::time::sleep(REAP_EVERY) => {}
            }
            self.enforce();
        }
    }
}

/// What an account closes to drop its client: the subscriber queue (the
/// bus implements it, so this layer needn't know the queue).
pub trait DropOnLimit: Send + Sync {
    /// Closes the client's queue because its output passed a limit.
    fn drop_on_limit(&self);
}

/// One client's pending output.
pub struct OutputAccount {
    /// Itself, for registering with the reaper.
    me: Weak<OutputAccount>,
    budget: Arc<OutputBudget>,
    transport: Transport,
    pending: AtomicUsize,
    /// When the pending output went past the soft limit (the budget's
    /// milliseconds), 0 while it is below.
    soft_since: AtomicU64,
    /// Stall-watched accounts only: when the output last made progress
    /// (the budget's milliseconds), or became pending after none was.
    progress_at: AtomicU64,
    /// Held to `limits.write_timeout` by the reaper ([`Self::watch_stalls`]).
    stall_watched: AtomicBool,
    /// Registered with the reaper.
    tracked: AtomicBool,
    killed: AtomicBool,
    /// The subscriber queue this account counts, closed to drop the client.
    queue: OnceLock<Weak<dyn DropOnLimit>>,
    /// The client's connection, aborted to drop a client stuck in a write.
    meter: OnceLock<Arc<ConnMeter>>,
}

impl OutputAccount {
    /// Counts `bytes` more pending output.
    pub fn add(&self, bytes: usize) -> Verdict {
        let budget = &self.budget;
        let pending = self.pending.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if pending == bytes && self.stall_watched.load(Ordering::Relaxed) {
            // Output pending again after none: its stall clock starts now.
            self.progress_at.store(budget.now_ms(), Ordering::Relaxed);
        }
        let total = budget.pending.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > budget.limit {
            budget.over.notify_one();
        }
        if pending >= TRACK_ABOVE && !self.tracked.swap(true, Ordering::Relaxed) {
            budget.tracked.lock().push(self.me.clone());
        }
        if pending > budget.hard {
            return Verdict::Drop(SlowClose::HardLimit);
        }
        if pending > budget.soft {
            let now = budget.now_ms();
            match self.soft_since.load(Ordering::Relaxed) {
                0 => self.soft_since.store(now, Ordering::Relaxed),
                since if now.saturating_sub(since) >= budget.soft_time.as_millis() as u64 => {
                    return Verdict::Drop(SlowClose::SoftLimit)
                }
                _ => {}
            }
        }
        Verdict::Fine
    }

    /// `bytes` of pending output went to the socket (or were let go).
    pub fn sub(&self, bytes: usize) {
        let pending = self.pending.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        self.budget.pending.fetch_sub(bytes, Ordering::Relaxed);
        if bytes > 0 && self.stall_watched.load(Ordering::Relaxed) {
            self.progress_at
                .store(self.budget.now_ms(), Ordering::Relaxed);
        }
        if pending <= self.budget.soft && self.soft_since.load(Ordering::Relaxed) != 0 {
            self.soft_since.store(0, Ordering::Relaxed);
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Lets the account drop the client by closing its queue.
    pub fn attach_queue<Q: DropOnLimit + 'static>(&self, queue: Weak<Q>) {
        let queue: Weak<dyn DropOnLimit> = queue;
        let _ = self.queue.set(queue);
    }

    /// Lets the account drop the client by aborting its connection.
    pub fn attach_meter(&self, meter: &Arc<ConnMeter>) {
        let _ = self.meter.set(meter.clone());
    }

    /// Holds this output to `limits.write_timeout` from here: output that
    /// stays pending without progress that long is dropped
    /// (`reason="write_timeout"`). For an HTTP/2 stream, whose client's
    /// flow control can stall it while the connection's socket takes
    /// everything else, so the socket's write deadline never sees it.
    pub fn watch_stalls(&self) {
        self.progress_at
            .store(self.budget.now_ms(), Ordering::Relaxed);
        self.stall_watched.store(true, Ordering::Relaxed);
        if !self.tracked.swap(true, Ordering::Relaxed) {
            self.budget.tracked.lock().push(self.me.clone());
        }
    }

    /// How long (ms) stall-watched output has been pending without
    /// progress at `now`; 0 when none is pending or it is not watched.
    fn stalled_for(&self, now: u64) -> u64 {
        if !self.stall_watched.load(Ordering::Relaxed) || self.pending() == 0 || self.is_killed() {
            return 0;
        }
        now.saturating_sub(self.progress_at.load(Ordering::Relaxed))
    }

    /// Counts the drop and aborts the connection, for a caller that closes
    /// the queue itself (under its lock). False if already dropped.
    pub fn mark_dropped(&self, why: SlowClose) -> bool {
        if self.killed.swap(true, Ordering::Relaxed) {
            return false;
        }
        self.budget.metrics.slow_client_closed(self.transport, why);
        if let Some(meter) = self.meter.get() {
            meter.kill();
        }
        true
    }

    /// Drops the client: closes its queue and aborts its connection.
    pub fn kill(&self, why: SlowClose) {
        if !self.mark_dropped(why) {
            return;
        }
        if let Some(queue) = self.queue.get().and_then(Weak::upgrade) {
            queue.drop_on_limit();
        }
    }
}

impl Drop for OutputAccount {
    fn drop(&mut self) {
        let left = *self.pending.get_mut();
        if left > 0 {
            self.budget.pending.fetch_sub(left, Ordering::Relaxed);
        }
    }
}

/// An account for output that is not a queue (a streamed answer): it
/// registers itself with the reaper directly.
pub fn standalone_account(
    budget: &Arc<OutputBudget>,
    transport: Transport,
    bytes: usize,
) -> Arc<OutputAccount> {
    let account = budget.account(transport);
    account.pending.store(bytes, Ordering::Relaxed);
    budget.pending.fetch_add(bytes, Ordering::Relaxed);
    if bytes > budget.soft {
        account.soft_since.store(budget.now_ms(), Ordering::Relaxed);
    }
    if bytes >= TRACK_ABOVE {
        account.tracked.store(true, Ordering::Relaxed);
        budget.tracked.lock().push(account.me.clone());
    }
    account
}
