//! The session's clocks: how often it ticks, pings and the idle close on
//! a tick, and the close at its subscriber token's expiry.

use std::time::{Duration, SystemTime};

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
        let (ping_interval, idle_timeout) = (cfg.ping_interval, cfg.idle_timeout);
        let silent = self.last_heard.elapsed();
        if silent >= idle_timeout {
            return Err(End::Close(1001, "no answer to ping".into()));
        }
        if silent >= ping_interval && !self.ping_sent {
            self.ping_sent = true;
            self.write_frames(&[frame::encode(frame::OP_PING, b"")])
                .await?;
        }
        Ok(())
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
