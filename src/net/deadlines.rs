//! One coarse timer wheel for every parked long-poll's timeout, instead of
//! a tokio `Sleep` per held poll (a boxed timer entry of ~112 bytes, and
//! tokio's timer-wheel insert and removal under its driver lock per poll).
//!
//! A deadline is rounded UP to the wheel's [`GRANULARITY`] (100 ms): a
//! poll's timeout ends at most that much late, never early. The wheel keeps
//! each registration's waker in a sharded slot table (so registering and
//! dropping take one uncontended shard lock) and, per shard, a ring of
//! buckets of slot indexes by due tick. One thread advances the wheel once
//! per tick and wakes what is due, outside the locks.
//!
//! A thread, not a tokio task: wakers work across runtimes, and the wheel
//! outlives any one runtime (the tests run many gateways in one process),
//! as the WebSocket clock does (`transport::websocket::ticks`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How late a deadline may fire: the wheel's tick.
pub const GRANULARITY: Duration = Duration::from_millis(100);

/// Shards of the slot table.
const SHARDS: usize = 32;

/// Buckets per shard: a deadline further than this many ticks away waits
/// in its bucket for more than one turn of the ring.
const BUCKETS: usize = 512;

struct Slot {
    /// Bumped when the slot is freed, so a stale bucket entry is ignored.
    generation: u32,
    /// The tick at which it fires; `u64::MAX` when free.
    due: u64,
    fired: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Per due tick (mod `BUCKETS`): (slot, generation).
    buckets: Vec<Vec<(u32, u32)>>,
}

struct Wheel {
    started: Instant,
    /// The last tick the wheel's thread has handled.
    now: AtomicU64,
    shards: Box<[Mutex<Shard>]>,
    next_shard: AtomicU64,
}

static WHEEL: OnceLock<&'static Wheel> = OnceLock::new();

fn wheel() -> &'static Wheel {
    WHEEL.get_or_init(|| {
        let wheel: &'static Wheel = Box::leak(Box::new(Wheel {
            started: Instant::now(),
            now: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_shard: AtomicU64::new(0),
        }));
        // Without its thread no deadline would fire: a process that
        // cannot start one thread cannot serve either.
        std::thread::Builder::new()
            .name("pollbridge-deadlines".into())
            .spawn(move || wheel.run())
            .expect("start the deadline wheel's thread");
        wheel
    })
}

impl Wheel {
    fn run(&self) {
        let mut woken = Vec::new();
        let mut tick = 0u64;
        loop {
            tick += 1;
            let due = self.started + GRANULARITY * tick as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            self.now.store(tick, Ordering::Release);
            let bucket = tick as usize % BUCKETS;
            for shard in self.shards.iter() {
                let mut guard = shard.lock();
                let shard = &mut *guard;
                if shard.buckets.is_empty() {
                    continue;
                }
                let mut entries = std::mem::take(&mut shard.buckets[bucket]);
                entries.retain(|&(index, generation)| {
                    let slot = &mut shard.slots[index as usize];
                    if slot.generation != generation {
                        return false;
                    }
                    if slot.due > tick {
                        return true; // a later turn of the ring
                    }
                    slot.fired = true;
                    woken.extend(slot.waker.take());
                    false
                });
                shard.buckets[bucket] = entries;
            }
            // Woken outside the locks: a woken task may poll at once.
            woken.drain(..).for_each(Waker::wake);
        }
    }
}

/// The wheel's tick that `at` falls in (tenths of a second since the
/// wheel started), rounded up — a due time, never early — or down — now.
/// For a clock that keeps times in a few bytes (`websocket::park`'s
/// table) on the wheel's own scale.
pub fn tick_of(at: Instant, up: bool) -> u64 {
    let nanos = at.saturating_duration_since(wheel().started).as_nanos();
    let tick = GRANULARITY.as_nanos();
    let ticks = if up {
        nanos.div_ceil(tick)
    } else {
        nanos / tick
    };
    ticks.min(u64::MAX as u128) as u64
}

/// A registered deadline; unregistered on drop.
pub struct Deadline {
    /// `slot * SHARDS + shard`.
    index: u32,
}

impl Deadline {
    /// A deadline `after` from now, rounded up to the wheel's tick.
    pub fn after(after: Duration) -> Deadline {
        let wheel = wheel();
        let ticks = after.as_nanos().div_ceil(GRANULARITY.as_nanos()) as u64;
        // +1: the current tick may be nearly over.
        let due = wheel.now.load(Ordering::Acquire) + ticks.max(1) + 1;
        let shard_index =
            (wheel.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS as u64) as usize;
        let mut guard = wheel.shards[shard_index].lock();
        let shard = &mut *guard;
        if shard.buckets.is_empty() {
            shard.buckets = (0..BUCKETS).map(|_| Vec::new()).collect();
        }
        let local = match shard.free.pop() {
            Some(free) => free as usize,
            None => {
                shard.slots.push(Slot {
                    generation: 0,
                    due: u64::MAX,
                    fired: false,
                    waker: None,
                });
                shard.slots.len() - 1
            }
        };
        let slot = &mut shard.slots[local];
        slot.due = due;
        slot.fired = false;
        let generation = slot.generation;
        shard.buckets[due as usize % BUCKETS].push((local as u32, generation));
        Deadline {
            index: (local * SHARDS + shard_index) as u32,
        }
    }

    fn place(&self) -> (usize, usize) {
        let index = self.index as usize;
        (index % SHARDS, index / SHARDS)
    }

    /// Ready once the deadline has passed.
    pub fn poll_due(&self, cx: &mut Context<'_>) -> Poll<()> {
        let (shard, slot) = self.place();
        let mut shard = wheel().shards[shard].lock();
        let slot = &mut shard.slots[slot];
        if slot.fired {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let (shard, local) = self.place();
        let mut shard = wheel().shards[shard].lock();
        let slot = &mut shard.slots[local];
        slot.generation = slot.generation.wrapping_add(1);
        slot.due = u64::MAX;
        slot.fired = false;
        slot.waker = None;
        shard.free.push(local as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_after_the_deadline_rounded_up_by_at_most_the_granularity() {
        let started = Instant::now();
        let deadline = Deadline::after(Duration::from_millis(250));
        std::future::poll_fn(|cx| deadline.poll_due(cx)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        // Granularity and a slot of rounding, plus a slow shared machine.
        assert!(took < Duration::from_millis(250) + GRANULARITY * 2 + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_dropped_deadline_never_fires_and_its_slot_is_reused() {
        let early = Deadline::after(Duration::from_millis(100));
        let index = early.index;
        drop(early);
        // Twice round the shards: other tests may register in between.
        let later: Vec<Deadline> = (0..SHARDS * 2)
            .map(|_| Deadline::after(Duration::from_secs(60)))
            .collect();
        assert!(later.iter().any(|d| d.index == index), "slot reused");
        // The reused slot's stale bucket entry (100 ms) must not fire it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for d in &later {
            assert!(d.poll_due(&mut cx).is_pending());
        }
    }

    #[test]
    fn a_due_tick_is_never_early() {
        let at = wheel().started + Duration::from_millis(1_050);
        let due = tick_of(at, true);
        assert_eq!(due, 11);
        // Looked at just before `at`: not due; at or after it: due.
        assert!(due > tick_of(at - Duration::from_millis(1), false));
        assert!(due <= tick_of(at + Duration::from_millis(50), false));
    }

    #[test]
    fn a_deadline_is_small() {
        assert!(std::mem::size_of::<Deadline>() <= 4);
    }
}
