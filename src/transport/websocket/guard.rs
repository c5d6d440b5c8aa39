//! One connection's command and publish rates (`[limits.ws]`): what the
//! session asks before it runs a command. Past a rate the command is not
//! run and the client gets an error answer; a client that keeps at it
//! (more than `refusals_before_close` refusals, forgiven at one per
//! second) is closed with 1008.
//!
//! A session creates its guard on its first command, so the many idle
//! connections that never send one carry only an empty pointer.

use std::time::{Duration, Instant};

use super::command::CommandError;
use crate::config::WsClientLimits;
use crate::metrics::FloodMetrics;
use crate::net::bucket::TokenBucket;

/// Why a command was refused, in `FloodMetrics::commands_refused` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Commands = 0,
    Publishes = 1,
    PublishBytes = 2,
    /// A publish that would create a channel past `max_client_channels`
    /// (counted here, checked by [`ClientChannels`](crate::bus::client_channels)).
    ClientChannels = 3,
}

/// A refused command: the error to answer with, or the close reason when
/// the client has run out of patience.
#[derive(Debug)]
pub enum Refusal {
    Answer(CommandError),
    Close(String),
}

pub struct CommandGuard {
    commands: Option<TokenBucket>,
    publishes: Option<TokenBucket>,
    publish_bytes: Option<TokenBucket>,
    /// Refusals left before the connection is closed.
    patience: TokenBucket,
}

fn bucket(rate: f64, burst: f64, now: Instant) -> Option<TokenBucket> {
    (rate > 0.0).then(|| TokenBucket::new(rate, burst.max(1.0), now))
}

impl CommandGuard {
    pub fn new(limits: &WsClientLimits, now: Instant) -> CommandGuard {
        CommandGuard {
            commands: bucket(limits.command_rate as f64, limits.command_burst as f64, now),
            publishes: bucket(limits.publish_rate as f64, limits.publish_burst as f64, now),
            publish_bytes: bucket(
                limits.publish_bytes_rate as f64,
                limits.publish_bytes_burst as f64,
                now,
            ),
            patience: TokenBucket::new(1.0, limits.refusals_before_close as f64, now),
        }
    }

    /// Any command (even one that won't parse) takes one command token.
    pub fn command(&mut self, now: Instant, metrics: &FloodMetrics) -> Result<(), Refusal> {
        let Some(commands) = &mut self.commands else {
            return Ok(());
        };
        match commands.take(1.0, now) {
            Ok(()) => Ok(()),
            Err(wait) => Err(self.refuse(Limit::Commands, wait, now, metrics)),
        }
    }

    /// A publish of `bytes` payload bytes takes a publish token and that
    /// many byte tokens (none of either when refused).
    pub fn publish(
        &mut self,
        bytes: usize,
        now: Instant,
        metrics: &FloodMetrics,
    ) -> Result<(), Refusal> {
        if let Some(publishes) = &mut self.publishes {
            if let Err(wait) = publishes.take(1.0, now) {
                return Err(self.refuse(Limit::Publishes, wait, now, metrics));
            }
        }
        if let Some(publish_bytes) = &mut self.publish_bytes {
            if let Err(wait) = publish_bytes.take(bytes as f64, now) {
                // Not published after all: its publish token goes back.
                if let Some(publishes) = &mut self.publishes {
                    publishes.refund(1.0);
                }
                return Err(self.refuse(Limit::PublishBytes, wait, now, metrics));
            }
        }
        Ok(())
    }

    fn refuse(
        &mut self,
        limit: Limit,
        wait: Duration,
        now: Instant,
        metrics: &FloodMetrics,
    ) -> Refusal {
        metrics.commands_refused[limit as usize].inc();
        if self.patience.take(1.0, now).is_err() {
            metrics.abuse_closes.inc();
            return Refusal::Close(format!(
                "too many commands refused for exceeding {}",
                limit.what()
            ));
        }
        let retry_ms = wait.as_millis().max(1);
        let (code, message) = match limit {
            Limit::Commands => (
                "rate_limited",
                format!(
                    "too many commands: {} exceeded; retry in {retry_ms} ms",
                    limit.what()
                ),
            ),
            Limit::Publishes | Limit::PublishBytes | Limit::ClientChannels => (
                "publish_rate_limited",
                format!(
                    "too many publishes: {} exceeded; not published; retry in {retry_ms} ms",
                    limit.what()
                ),
            ),
        };
        Refusal::Answer(CommandError::new(code, message).retry_after_ms(retry_ms as u64))
    }
}

impl Limit {
    fn what(self) -> &'static str {
        match self {
            Limit::Commands => "limits.ws.command_rate",
            Limit::Publishes => "limits.ws.publish_rate",
            Limit::PublishBytes => "limits.ws.publish_bytes_rate",
            Limit::ClientChannels => "limits.ws.max_client_channels",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn limits() -> WsClientLimits {
        WsClientLimits {
            command_rate: 10,
            command_burst: 5,
            publish_rate: 2,
            publish_burst: 2,
            publish_bytes_rate: 100,
            publish_bytes_burst: 300,
            refusals_before_close: 3,
            max_client_channels: 10,
        }
    }

    #[test]
    fn commands_past_the_burst_are_refused_then_the_connection_closed() {
        let metrics = Metrics::new();
        let m = &metrics.floods;
        let t0 = Instant::now();
        let mut g = CommandGuard::new(&limits(), t0);
        for _ in 0..5 {
            assert!(g.command(t0, m).is_ok());
        }
        for _ in 0..3 {
            match g.command(t0, m) {
                Err(Refusal::Answer(e)) => assert_eq!(e.code, "rate_limited"),
                other => panic!("expected an error answer, got {other:?}"),
            }
        }
        assert!(matches!(g.command(t0, m), Err(Refusal::Close(_))));
        assert_eq!(m.commands_refused[Limit::Commands as usize].get(), 4);
        assert_eq!(m.abuse_closes.get(), 1);
        // The rate refills.
        assert!(g.command(t0 + Duration::from_millis(100), m).is_ok());
    }

    #[test]
    fn publishes_are_limited_by_count_and_bytes() {
        let metrics = Metrics::new();
        let m = &metrics.floods;
        let t0 = Instant::now();
        let mut g = CommandGuard::new(&limits(), t0);
        assert!(g.publish(250, t0, m).is_ok());
        match g.publish(100, t0, m) {
            Err(Refusal::Answer(e)) => assert_eq!(e.code, "publish_rate_limited"),
            other => panic!("bytes: {other:?}"),
        }
        assert!(
            g.publish(10, t0, m).is_ok(),
            "small enough for what is left"
        );
        match g.publish(1, t0, m) {
            Err(Refusal::Answer(e)) => assert_eq!(e.code, "publish_rate_limited"),
            other => panic!("count: {other:?}"),
        }
        assert_eq!(m.commands_refused[Limit::PublishBytes as usize].get(), 1);
        assert_eq!(m.commands_refused[Limit::Publishes as usize].get(), 1);
    }

    #[test]
    fn unlimited_when_rates_are_zero() {
        let metrics = Metrics::new();
        let t0 = Instant::now();
        let mut g = CommandGuard::new(
            &WsClientLimits {
                command_rate: 0,
                publish_rate: 0,
                publish_bytes_rate: 0,
                ..limits()
            },
            t0,
        );
        for _ in 0..10_000 {
            assert!(g.command(t0, &metrics.floods).is_ok());
            assert!(g.publish(1 << 20, t0, &metrics.floods).is_ok());
        }
    }
}
