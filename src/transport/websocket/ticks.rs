//! One clock for every WebSocket session's ping and idle checks, instead
//! of a tokio timer per connection.
//!
//! A session used to hold a `tokio::time::Interval`: 32 bytes in its
//! future plus a boxed `Sleep` (112 bytes) per connection, idle or not
//! (BENCHMARKS.md, "Idle WebSocket memory"). Now it holds a [`Tick`] (a
//! slot number, 16 bytes) and the clock keeps the session's waker in a
//! shared table (24 bytes a slot): one thread per distinct period walks the
//! table and wakes every session once per period. The table is split in
//! shards walked one after another across the period, so the wake-ups are
//! spread over it rather than all at once.
//!
//! A thread, not a tokio task: wakers work across runtimes, and a clock
//! outlives any one runtime (the tests run many gateways, each on its own
//! runtime, in one process). Clocks are made per period, and a process has
//! as many periods as configurations with different ping settings:
//! usually one.

use std::io;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Shards of the table: the lock a session takes when polled is one of
/// these, and the clock wakes one shard's sessions at a time.
const SHARDS: usize = 64;

/// The clock never wakes more often than this (a short period walks
/// several shards per step).
const MIN_STEP: Duration = Duration::from_millis(10);

struct Slot {
    used: bool,
    /// The clock has ticked since the session last looked.
    ticked: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    /// Indexes of unused slots, reused before the table grows.
    free: Vec<u32>,
}

/// A shared clock ticking every `period` for each registered session.
pub struct Clock {
    period: Duration,
    shards: Box<[Mutex<Shard>]>,
    /// Spreads new sessions over the shards.
    next_shard: std::sync::atomic::AtomicUsize,
}

/// Every clock made so far, one per period; never freed (a handful per
/// process at most).
static CLOCKS: Mutex<Vec<&'static Clock>> = Mutex::new(Vec::new());

impl Clock {
    /// The clock ticking every `period`, started on first use.
    fn for_period(period: Duration) -> io::Result<&'static Clock> {
        let mut clocks = CLOCKS.lock();
        if let Some(clock) = clocks.iter().find(|c| c.period == period) {
            return Ok(clock);
        }
        let clock: &'static Clock = Box::leak(Box::new(Clock {
            period,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_shard: Default::default(),
        }));
        std::thread::Builder::new()
            .name("pollbridge-ws-ticks".into())
            .spawn(move || clock.run())?;
        clocks.push(clock);
        Ok(clock)
    }

    /// Wakes every session once per period, a group of shards per step.
    fn run(&self) {
        let steps =
            (self.period.as_nanos() / MIN_STEP.as_nanos()).clamp(1, SHARDS as u128) as usize;
        let step = self.period / steps as u32;
        let mut due = Instant::now();
        let mut woken = Vec::new();
        loop {
            for group in 0..steps {
                due += step;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                for shard in &self.shards[group * SHARDS / steps..(group + 1) * SHARDS / steps] {
                    let mut shard = shard.lock();
                    for slot in shard.slots.iter_mut().filter(|s| s.used) {
                        slot.ticked = true;
                        woken.extend(slot.waker.take());
                    }
                }
                // Woken outside the lock: a woken session may poll (and
                // lock its shard) at once on another thread.
                woken.drain(..).for_each(Waker::wake);
            }
        }
    }
}

/// A session's registration with the shared clock; unregistered on drop.
pub struct Tick {
    clock: &'static Clock,
    /// `slot * SHARDS + shard`.
    index: u32,
}

impl Tick {
    /// Registers a session with the clock ticking every `period`. Fails
    /// only if the clock's thread can't be started.
    pub fn register(period: Duration) -> io::Result<Tick> {
        let clock = Clock::for_period(period)?;
        let shard_index = clock
            .next_shard
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % SHARDS;
        let mut shard = clock.shards[shard_index].lock();
        let local = match shard.free.last() {
            Some(&free) => free as usize,
            None => shard.slots.len(),
        };
        let index = u32::try_from(local * SHARDS + shard_index)
            .map_err(|_| io::Error::other("too many WebSocket sessions for the clock"))?;
        let slot = Slot {
            used: true,
            ticked: false,
            waker: None,
        };
        match shard.free.pop() {
            Some(_) => shard.slots[local] = slot,
            None => shard.slots.push(slot),
        }
        Ok(Tick { clock, index })
    }

    fn place(&self) -> (usize, usize) {
        let index = self.index as usize;
        (index % SHARDS, index / SHARDS)
    }

    /// Ready once per period of the clock (the first time one period or
    /// less after registering).
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (shard, slot) = self.place();
        let mut shard = self.clock.shards[shard].lock();
        let slot = &mut shard.slots[slot];
        if std::mem::take(&mut slot.ticked) {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Tick {
    fn drop(&mut self) {
        let (shard, slot) = self.place();
        let mut shard = self.clock.shards[shard].lock();
        shard.slots[slot] = Slot {
            used: false,
            ticked: false,
            waker: None,
        };
        shard.free.push(slot as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_once_per_period_and_reuses_slots() {
        let period = Duration::from_millis(120);
        let mut tick = Tick::register(period).unwrap();
        let started = Instant::now();
        std::future::poll_fn(|cx| tick.poll_tick(cx)).await;
        std::future::poll_fn(|cx| tick.poll_tick(cx)).await;
        // Two ticks take more than one period and (allowing a slow,
        // shared machine) not unboundedly long.
        let took = started.elapsed();
        assert!(took > period / 2, "{took:?}");
        assert!(took < period * 20, "{took:?}");
        let index = tick.index;
        drop(tick);
        // A session that ends gives its slot back; the next in that
        // shard takes it instead of growing the table.
        let again: Vec<Tick> = (0..SHARDS)
            .map(|_| Tick::register(period).unwrap())
            .collect();
        assert!(again.iter().any(|t| t.index == index));
    }

    #[test]
    fn a_tick_is_small() {
        assert!(std::mem::size_of::<Tick>() <= 16);
        assert!(std::mem::size_of::<Slot>() <= 24);
    }
}
