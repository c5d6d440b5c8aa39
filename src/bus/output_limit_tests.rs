//! The output limits (`net::output`) acting on real subscriber queues.

use crate::bus::{QueueClosed, SubscriberQueue};
use crate::config::ChannelMode;
use crate::config::LimitsConfig;
use crate::metrics::{Metrics, SlowClose};
use crate::net::output::*;
use crate::protocol::Transport;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn budget(limit: usize, hard: usize, soft: usize, soft_time: Duration) -> Arc<OutputBudget> {
    let limits = LimitsConfig {
        max_pending_output_bytes: limit,
        client_output_hard_bytes: hard,
        client_output_soft_bytes: soft,
        client_output_soft_time: soft_time,
        ..LimitsConfig::default()
    };
    OutputBudget::new(&limits, Arc::new(Metrics::new()))
}

fn msg(id: u64, size: usize) -> Arc<crate::protocol::Message> {
    let data = format!("\"{}\"", "x".repeat(size));
    Arc::new(crate::protocol::Message::new(
        crate::protocol::channel::ChannelName::new("c").unwrap(),
        crate::protocol::Epoch::NONE,
        id,
        data.as_bytes(),
        Instant::now(),
    ))
}

#[test]
fn a_queue_past_the_hard_limit_is_closed_and_its_bytes_released() {
    let b = budget(1 << 30, 10_000, 8_000, Duration::from_secs(60));
    let q = SubscriberQueue::for_client(1000, Transport::Sse, &b);
    for id in 1..=4 {
        q.push(&msg(id, 2_000), ChannelMode::Stream);
    }
    assert!(b.pending() > 8_000);
    q.push(&msg(5, 2_000), ChannelMode::Stream);
    let mut out = Vec::new();
    assert_eq!(q.try_drain(&mut out, 10), Err(QueueClosed::OutputLimit));
    assert_eq!(b.pending(), 0);
    assert_eq!(
        b.metrics
            .slow_closed_count(Transport::Sse, SlowClose::HardLimit),
        1
    );
}

#[test]
fn draining_releases_and_dropping_the_queue_releases_the_rest() {
    let b = budget(1 << 30, 1 << 30, 1 << 29, Duration::from_secs(60));
    let q = SubscriberQueue::for_client(1000, Transport::WebSocket, &b);
    for id in 1..=3 {
        q.push(&msg(id, 100), ChannelMode::Stream);
    }
    let one = msg(1, 100).envelope.len();
    assert_eq!(b.pending(), 3 * one);
    let mut out = Vec::new();
    q.try_drain(&mut out, 2).unwrap();
    assert_eq!(b.pending(), one);
    drop(q);
    assert_eq!(b.pending(), 0);
}

#[test]
fn the_reaper_drops_the_largest_first_and_soft_limits_expire() {
    let b = budget(300_000, 1 << 30, 1 << 29, Duration::from_secs(60));
    let small = SubscriberQueue::for_client(1000, Transport::Sse, &b);
    let large = SubscriberQueue::for_client(1000, Transport::WebSocket, &b);
    for id in 1..=2 {
        small.push(&msg(id, 70_000), ChannelMode::Stream);
    }
    for id in 1..=4 {
        large.push(&msg(id, 70_000), ChannelMode::Stream);
    }
    assert!(b.pending() > 300_000);
    b.enforce();
    let mut out = Vec::new();
    assert_eq!(large.try_drain(&mut out, 10), Err(QueueClosed::OutputLimit));
    assert!(small.try_drain(&mut out, 10).is_ok());

    let soft = budget(1 << 30, 1 << 30, 1_000, Duration::ZERO);
    let answer = standalone_account(&soft, Transport::LongPoll, 100_000);
    soft.enforce();
    assert!(answer.is_killed());
    assert_eq!(
        soft.metrics
            .slow_closed_count(Transport::LongPoll, SlowClose::SoftLimit),
        1
    );
    drop(answer);
    assert_eq!(soft.pending(), 0);
}

/// HTTP/2 streams are stall-watched: pending output without progress for
/// `limits.write_timeout` is dropped as a write timeout; output that
/// moves, or none pending, is not.
#[test]
fn stall_watched_output_without_progress_is_dropped_at_the_write_timeout() {
    let limits = LimitsConfig {
        write_timeout: Duration::from_millis(50),
        ..LimitsConfig::default()
    };
    let b = OutputBudget::new(&limits, Arc::new(Metrics::new()));
    let stalled = standalone_account(&b, Transport::LongPoll, 100_000);
    let moving = standalone_account(&b, Transport::LongPoll, 100_000);
    let unwatched = standalone_account(&b, Transport::LongPoll, 100_000);
    let idle = SubscriberQueue::for_client(1000, Transport::Sse, &b);
    for account in [&stalled, &moving] {
        account.watch_stalls();
    }
    idle.output().unwrap().watch_stalls();
    std::thread::sleep(Duration::from_millis(80));
    moving.sub(1_000);
    b.enforce();
    assert!(stalled.is_killed());
    assert!(!moving.is_killed() && !unwatched.is_killed());
    assert!(!idle.output().unwrap().is_killed(), "nothing pending");
    assert_eq!(
        b.metrics
            .slow_closed_count(Transport::LongPoll, SlowClose::WriteTimeout),
        1
    );
    // Output queued after a quiet spell starts its stall clock then.
    idle.push(&msg(1, 100), ChannelMode::Stream);
    b.enforce();
    assert!(!idle.output().unwrap().is_killed());
}
