//! Parked WebSocket sessions: an idle session holds neither a tokio task
//! nor a tokio registration of its socket (issue 20).
//!
//! A session with nothing to do for `websocket.park_after` (nothing
//! queued, its socket lent to the publishers for direct delivery, no
//! partial frame read; see `Session::may_park`) ends its task and leaves
//! its state here, boxed, with its socket in one process-wide epoll set.
//! Publishers keep writing to the socket directly while it is parked.
//! A new task is spawned on the gateway's runtime ([`unpark`]) when:
//! - the socket is readable or closed (the client sent something),
//! - its queue wakes it: direct mode ended (a short write, a message the
//!   publisher cannot write directly), or the queue was closed (output
//!   limits, slow consumer, shutdown) — the queue holds a waker that
//!   unparks, made from the entry's token without an allocation,
//! - it is due for a ping or its idle timeout (the scan below),
//! - the operator's `POST /disconnect` or shutdown cancelled its kick
//!   token (the scan below, within a second).
//!
//! **One owner at a time.** Whoever takes an entry out of the table under
//! its lock owns the session; everything else that would unpark it finds
//! the slot empty (or of a newer generation) and does nothing. An entry is
//! complete (epoll registration, queue waker) before the lock is let go,
//! so a wake-up that comes while parking finds it; a message queued just
//! before the waker was registered is seen by that registration itself
//! (the session stays running). The epoll registration is level-triggered
//! and one-shot: bytes that arrived before parking wake it at once.
//!
//! Shutdown waits for parked sessions: each holds a token of the gateway's
//! task tracker until it is running again.

use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::task::{Context, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::session::ParkedSession;
use crate::net::deadlines;

/// How often parked sessions are checked for pings and idle timeouts due
/// (a [`Tick`] in each table slot: up to a tenth of a second later still)
/// and for a kick or shutdown (a lock per slot:
/// `CancellationToken::is_cancelled` on the gateway's shared token). A ping
/// goes out, a kick or shutdown reaches a parked session, within this.
/// Every 200 ms cost 0.1-0.2 µs per parked connection and second
/// (`pollbridge-bench idle`); once a second, a fifth of that.
const SCAN: Duration = Duration::from_secs(1);

/// A parked session as the table holds it.
pub(super) type Parked = Box<ParkedSession>;

/// Why a parked session runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// The socket reported readable or closed.
    Readable,
    /// Its queue woke it (direct mode ended, or the queue closed).
    Queue,
    /// A ping or its idle timeout is due.
    Due,
    /// Kicked or shut down.
    Kick,
}

/// A parked session's slot holds this and its due time: no copy of its
/// descriptor (read from the session when it is taken out, which happens
/// once), so a slot is 48 bytes, not 56.
struct Entry {
    session: Parked,
    /// The session's kick token (a clone: shared by the gateway's sessions,
    /// so checking it touches one cache line, not the boxed session —
    /// reading each session's own cost 0.04 µs per parked connection and
    /// second, +50 %).
    kick: CancellationToken,
    handle: tokio::runtime::Handle,
    /// Holds the gateway's shutdown until the session runs again.
    _tracked: TaskTrackerToken,
}

#[derive(Default)]
struct Slot {
    /// Bumped whenever the slot is freed: a token names one use of it.
    generation: u32,
    /// When the clock must run its session (ping or idle timeout), in the
    /// registry's ticks: 4 bytes instead of an `Instant`'s 16, in a slot
    /// every parked session holds (here, beside `generation`, rather than
    /// in `Entry`, where it would take 8 with its padding).
    due: Tick,
    entry: Option<Entry>,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

fn token(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

fn split(token: u64) -> (usize, u32) {
    ((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32)
}

/// The process's parked sessions (one for every gateway in it: tests run
/// several).
pub(super) struct Registry {
    epoll: RawFd,
    table: Mutex<Table>,
}

/// A time as the table keeps it: the deadline wheel's tick
/// (`net::deadlines::tick_of`, tenths of a second; 13 years fit).
type Tick = u32;

fn tick(at: Instant, up: bool) -> Tick {
    deadlines::tick_of(at, up).min(Tick::MAX as u64) as Tick
}

/// The registry, started on first use (its epoll set and thread).
fn registry() -> io::Result<&'static Registry> {
    static REGISTRY: OnceLock<Result<&'static Registry, String>> = OnceLock::new();
    let made = REGISTRY.get_or_init(|| {
        // SAFETY: plain epoll_create1(2).
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error().to_string());
        }
        let registry: &'static Registry = Box::leak(Box::new(Registry {
            epoll,
            table: Mutex::default(),
        }));
        std::thread::Builder::new()
            .name("pollbridge-ws-park".into())
            .spawn(move || registry.run())
            .map_err(|e| e.to_string())?;
        Ok(registry)
    });
    made.as_ref()
        .copied()
        .map_err(|e| io::Error::other(format!("websocket park registry: {e}")))
}

/// Parks `session` (see the module doc). Gives it back if it must keep
/// running: something came in meanwhile, or it could not be registered.
pub(super) fn park(session: Parked, due: Instant) -> Result<(), Parked> {
    let Ok(registry) = registry() else {
        return Err(session);
    };
    let fd = session.parked_fd();
    // Kicked meanwhile: it must run to close (checked again by the scan,
    // for a kick that comes after this).
    if session.is_kicked() {
        return Err(session);
    }
    let handle = match tokio::runtime::Handle::try_current() {
        Ok(h) => h,
        Err(_) => return Err(session),
    };
    let mut table = registry.table.lock();
    let index = match table.free.pop() {
        Some(i) => i,
        None => {
            table.slots.push(Slot::default());
            (table.slots.len() - 1) as u32
        }
    };
    let token = token(index, table.slots[index as usize].generation);
    // Its queue wakes it from now on; if something is queued already (or
    // the queue closed), it stays running.
    let waker = unpark_waker(token);
    if !session.register_park_waker(&mut Context::from_waker(&waker)) {
        table.free.push(index);
        return Err(session);
    }
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
        u64: token,
    };
    // SAFETY: epoll_ctl(2) adding a live descriptor the session owns; it is
    // deleted before the session runs again (`take`).
    let rc = unsafe { libc::epoll_ctl(registry.epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "websocket park: epoll_ctl");
        // The queue holds a waker with this token now: the slot's next
        // use gets another generation, so that waker stays a no-op.
        let slot = &mut table.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        table.free.push(index);
        return Err(session);
    }
    session.parked_gauge().inc();
    let tracked = session.tracker_token();
    let due = tick(due, true);
    let kick = session.kick_token();
    let slot = &mut table.slots[index as usize];
    slot.due = due;
    slot.entry = Some(Entry {
        session,
        kick,
        handle,
        _tracked: tracked,
    });
    Ok(())
}

/// Runs the session parked under `token` again, if it still is.
fn unpark(token: u64, why: Why) {
    let Ok(registry) = registry() else { return };
    let Some(entry) = registry.take(token) else {
        return;
    };
    let Entry {
        session,
        handle,
        _tracked,
        ..
    } = entry;
    session.parked_gauge().dec();
    let tasks = session.tasks();
    tasks.spawn_on(session.resume(why), &handle);
    // Let go after the spawn: the tracker never looks empty meanwhile.
    drop(_tracked);
}

impl Registry {
    /// Takes the entry under `token` out of the table and the epoll set.
    fn take(&self, token: u64) -> Option<Entry> {
        let (index, generation) = split(token);
        let mut table = self.table.lock();
        let slot = table.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        table.free.push(index as u32);
        // Under the lock: the slot can't be reused (and the descriptor
        // added again) before it is out of the set.
        let fd = entry.session.parked_fd();
        // SAFETY: epoll_ctl(2) deleting a descriptor the entry owns.
        unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        Some(entry)
    }

    /// Unparks on readiness, and every [`SCAN`] those due or kicked.
    fn run(&self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut next_scan = Instant::now() + SCAN;
        let mut due = Vec::new();
        loop {
            let wait = next_scan.saturating_duration_since(Instant::now());
            // SAFETY: epoll_wait(2) into a live buffer of `events.len()`.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll,
                    events.as_mut_ptr(),
                    events.len() as i32,
                    // Rounded up: a timeout of 0 would spin until the
                    // scan is due.
                    wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
                )
            };
            for event in events.iter().take(n.max(0) as usize) {
                let token = event.u64;
                unpark(token, Why::Readable);
            }
            let now = Instant::now();
            if now < next_scan {
                continue;
            }
            next_scan = now + SCAN;
            let now_tick = tick(now, false);
            {
                let table = self.table.lock();
                for (index, slot) in table.slots.iter().enumerate() {
                    let Some(entry) = &slot.entry else { continue };
                    let why = if entry.kick.is_cancelled() {
                        Why::Kick
                    } else if slot.due <= now_tick {
                        Why::Due
                    } else {
                        continue;
                    };
                    due.push((token(index as u32, slot.generation), why));
                }
            }
            for (token, why) in due.drain(..) {
                unpark(token, why);
            }
        }
    }
}

/// A waker that unparks the session parked under `token`: the token is
/// the waker's data, so making and cloning it allocates nothing. A wake
/// after the session ran again (or the slot was reused: another
/// generation) does nothing.
fn unpark_waker(token: u64) -> Waker {
    fn clone(data: *const ()) -> RawWaker {
        RawWaker::new(data, &VTABLE)
    }
    fn wake(data: *const ()) {
        unpark(data as u64, Why::Queue);
    }
    fn drop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop);
    // SAFETY: the vtable's functions only read the token back out of the
    // data pointer; nothing is owned or freed.
    unsafe { Waker::from_raw(RawWaker::new(token as usize as *const (), &VTABLE)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_a_slot_and_its_generation() {
        assert_eq!(split(token(7, 3)), (7, 3));
        assert_eq!(
            split(token(u32::MAX, u32::MAX)),
            (u32::MAX as usize, u32::MAX)
        );
    }

    #[test]
    fn a_stale_token_unparks_nothing() {
        // Nothing is parked under it: a no-op, not a panic.
        unpark(token(12345, 9), Why::Queue);
        unpark_waker(token(3, 1)).wake();
    }

    #[test]
    fn parked_state_stays_small() {
        // What the table holds per parked session besides the boxed
        // session itself.
        let entry = std::mem::size_of::<Slot>();
        eprintln!("park table slot: {entry} bytes");
        // 72 with an `Instant`; 56 with a copy of the descriptor.
        assert!(entry <= 48, "a park table slot grew to {entry} bytes");
    }
}
