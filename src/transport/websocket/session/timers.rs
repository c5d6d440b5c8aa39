//! The session's clocks: how often it ticks, pings and the idle close on
//! a tick, and the close at its subscriber token's expiry.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWrite;

use super::{End, SendProgress, Session};
use crate::protocol::ws_frame as frame;

impl<W: AsyncWrite + SendProgress + Unpin> Session<W> {
    /// How often the session checks for silence: often enough to ping on
    /// time and to drop a silent client within half its idle timeout (and,
    /// with parking on, to park after `park_after`).
    pub(super) fn tick_period(&self) -> Duration {
        let cfg = &self.gw.config.websocket;
        let mut period = cfg.ping_interval.min(cfg.idle_timeout / 2);
        if !cfg.park_after.is_zero() && W::PARKS {
            period = period.min(cfg.park_after);
        }
        period.max(Duration::from_millis(100))
    }

    pub(super) async fn on_tick(&mut self) -> Result<(), End> {
        let cfg = &self.gw.config.websocket;
        let now = Instant::now();
        match on_silence(
            now.saturating_duration_since(self.last_heard.instant()),
            self.ping_sent,
            cfg.ping_interval,
            cfg.idle_timeout,
        ) {
            Silence::Fine => Ok(()),
            Silence::Ping { late } => {
                if late {
                    // A ping that goes out late (a parked session is checked
                    // once a second; a busy worker) still leaves the client
                    // the whole `idle_timeout - ping_interval` to answer it:
                    // silence is counted as if it had gone out on time.
                    self.last_heard = Heard::at(now.checked_sub(cfg.ping_interval).unwrap_or(now));
                }
                self.ping_sent = true;
                self.write_frames(&[frame::encode(frame::OP_PING, b"")])
                    .await
            }
            Silence::Close => Err(End::Close(1001, "no answer to ping".into())),
        }
    }

    /// Closes the session at `at` at the latest (an earlier deadline
    /// already armed stays). A deadline the clock cannot reach is none.
    pub(super) fn expire_at(&mut self, at: Option<SystemTime>) {
        let Some(at) = at else { return };
        let left = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let Some(deadline) = tokio::time::Instant::now().checked_add(left) else {
            return;
        };
        match &mut self.expiry {
            Some(armed) if armed.deadline() <= deadline => {}
            Some(armed) => armed.as_mut().reset(deadline),
            None => self.expiry = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
}

/// When a client was last heard from, as a session keeps it: tenths of a
/// second since the process's first session, in 4 bytes rather than an
/// `Instant`'s 16 (every idle connection keeps one; with the boxed
/// inflater this puts a parked session in jemalloc's 192-byte class, see
/// `sizes`). Rounded up, so silence is never over-counted: a ping or the
/// idle close is never early, and at most a tenth of a second late (the
/// ticks that check it are coarser). 13 years fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Heard(u32);

/// A tenth of a second, `Heard`'s unit.
const HEARD_UNIT: Duration = Duration::from_millis(100);

fn heard_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Heard {
    pub(super) fn now() -> Heard {
        Heard::at(Instant::now())
    }

    /// `at`, rounded up to the unit (a time before the epoch is the epoch).
    pub(super) fn at(at: Instant) -> Heard {
        let nanos = at.saturating_duration_since(heard_epoch()).as_nanos();
        let units = nanos.div_ceil(HEARD_UNIT.as_nanos());
        Heard(u32::try_from(units).unwrap_or(u32::MAX))
    }

    pub(super) fn instant(self) -> Instant {
        heard_epoch() + HEARD_UNIT * self.0
    }
}

/// What a session's silence calls for.
#[derive(Debug, PartialEq, Eq)]
enum Silence {
    Fine,
    /// Ping the client; `late` if the ping is overdue.
    Ping {
        late: bool,
    },
    /// The client did not answer a ping in time.
    Close,
}

/// The rule: ping after `ping_interval` of silence; close after
/// `idle_timeout` of silence, but only once a ping was sent (a ping that
/// is overdue is sent, not skipped).
fn on_silence(
    silent: Duration,
    ping_sent: bool,
    ping_interval: Duration,
    idle: Duration,
) -> Silence {
    if !ping_sent {
        return match silent >= ping_interval {
            true => Silence::Ping {
                late: silent > ping_interval,
            },
            false => Silence::Fine,
        };
    }
    match silent >= idle {
        true => Silence::Close,
        false => Silence::Fine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_ping_overdue_past_the_idle_timeout_is_sent_not_a_close() {
        // Parked session checked late: 2.5 s silent, 1 s pings, 2 s idle.
        assert_eq!(
            on_silence(S * 5 / 2, false, S, S * 2),
            Silence::Ping { late: true }
        );
        assert_eq!(
            on_silence(S, false, S, S * 2),
            Silence::Ping { late: false }
        );
        assert_eq!(on_silence(S / 2, false, S, S * 2), Silence::Fine);
    }

    #[test]
    fn heard_rounds_up_so_silence_is_never_over_counted() {
        let before = Instant::now();
        let heard = Heard::now();
        let after = Instant::now();
        // Never before the moment it records, at most a unit after it.
        assert!(heard.instant() >= before);
        assert!(heard.instant() <= after + HEARD_UNIT);
        let later = before + S * 7 / 2;
        assert!(Heard::at(later).instant() >= later);
        assert!(Heard::at(later).instant() < later + HEARD_UNIT);
        assert_eq!(std::mem::size_of::<Heard>(), 4);
    }

    #[test]
    fn a_pinged_client_is_closed_only_after_the_idle_timeout() {
        assert_eq!(on_silence(S * 3 / 2, true, S, S * 2), Silence::Fine);
        assert_eq!(on_silence(S * 2, true, S, S * 2), Silence::Close);
    }
}
