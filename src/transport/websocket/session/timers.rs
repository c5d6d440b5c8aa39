//! The session's clocks: how often it ticks, pings and the idle close on
//! a tick, and the close at its subscriber token's expiry.

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
            now - self.last_heard,
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
                    self.last_heard = now.checked_sub(cfg.ping_interval).unwrap_or(now);
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
    fn a_pinged_client_is_closed_only_after_the_idle_timeout() {
        assert_eq!(on_silence(S * 3 / 2, true, S, S * 2), Silence::Fine);
        assert_eq!(on_silence(S * 2, true, S, S * 2), Silence::Close);
    }
}
