//! Unit tests of the hub: ids, history bounds, cursors, subscriptions,
//! slow subscribers, epochs and the node-wide history budget.

use super::*;
use std::time::Duration;

use crate::protocol::Transport;

use crate::bus::queue::QueueClosed;
use crate::config::ChannelRule;

fn hub_with(size: usize, rules: Vec<ChannelRule>) -> Hub {
    let history = HistoryConfig {
        size,
        ..HistoryConfig::default()
    };
    Hub::new(ChannelRules::new(rules), history, Arc::new(Metrics::new()))
}

fn name(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn ids(read: &HistoryRead) -> Vec<u64> {
    read.messages.iter().map(|m| m.id).collect()
}

#[test]
fn ids_start_at_one_and_history_is_bounded() {
    let hub = hub_with(3, vec![]);
    let ch = name("news");
    for i in 1..=5u64 {
        assert_eq!(hub.publish_next(&ch, &Bytes::from("1")).id, i);
    }
    let all = hub.read(&ch, Some(Since::plain(0)), 100);
    assert_eq!(ids(&all), vec![3, 4, 5]);
    assert!(all.truncated);
    let recent = hub.read(&ch, Some(Since::plain(3)), 100);
    assert_eq!(ids(&recent), vec![4, 5]);
    assert!(!recent.truncated);
    assert_eq!(recent.last_id, 5);
    let none = hub.read(&ch, Some(Since::plain(5)), 100);
    assert!(none.messages.is_empty());
    assert_eq!(none.last_id, 5);
    let limited = hub.read(&ch, Some(Since::plain(2)), 1);
    assert_eq!(ids(&limited), vec![3]);
    assert_eq!(limited.last_id, 3);
}

#[test]
fn cursor_from_the_future_is_a_reset() {
    let hub = hub_with(10, vec![]);
    let ch = name("news");
    hub.publish_next(&ch, &Bytes::from("1"));
    let read = hub.read(&ch, Some(Since::plain(500)), 100);
    assert!(read.truncated);
    assert_eq!(ids(&read), vec![1]);
    let unknown = hub.read(&name("never"), Some(Since::plain(3)), 100);
    assert!(unknown.truncated);
    assert!(unknown.messages.is_empty());
}

#[test]
fn subscription_continues_exactly_after_history() {
    let hub = hub_with(100, vec![]);
    let ch = name("news");
    for _ in 0..3 {
        hub.publish_next(&ch, &Bytes::from("1"));
    }
    let q = SubscriberQueue::new(16, Transport::WebSocket);
    let (sub, read) = hub.subscribe(&ch, Some(Since::plain(1)), &q, 100);
    assert_eq!(ids(&read), vec![2, 3]);
    hub.publish_next(&ch, &Bytes::from("1"));
    let mut out = Vec::new();
    q.try_drain(&mut out, 10).unwrap();
    assert_eq!(out.iter().map(|m| m.id).collect::<Vec<_>>(), vec![4]);
    assert_eq!(hub.stats()[0].subscribers.websocket, 1);
    drop(sub);
    assert_eq!(hub.stats()[0].subscribers.websocket, 0);
}

#[test]
fn slow_subscriber_is_cut_off() {
    let hub = hub_with(100, vec![]);
    let ch = name("flood");
    let slow = SubscriberQueue::new(4, Transport::WebSocket);
    let fast = SubscriberQueue::new(1000, Transport::Sse);
    let (_s1, _) = hub.subscribe(&ch, None, &slow, 0);
    let (_s2, _) = hub.subscribe(&ch, None, &fast, 0);
    for _ in 0..10 {
        hub.publish_next(&ch, &Bytes::from("1"));
    }
    let mut out = Vec::new();
    assert_eq!(slow.try_drain(&mut out, 100), Err(QueueClosed::Overflow));
    fast.try_drain(&mut out, 100).unwrap();
    assert_eq!(out.len(), 10);
    assert_eq!(
        slow.overflow_dropped(),
        5,
        "4 queued + the one that overflowed"
    );
    assert_eq!(hub.stats()[0].subscribers.websocket, 0);
}

#[test]
fn state_channel_keeps_latest_and_flags_conflation() {
    let rules = vec![ChannelRule {
        pattern: "price.*".into(),
        mode: ChannelMode::State,
        allow_client_publish: false,
        auth: Default::default(),
        conflate_interval: None,
        compress: true,
    }];
    let hub = hub_with(100, rules);
    let ch = name("price.eur");
    for _ in 0..100 {
        hub.publish_next(&ch, &Bytes::from("1"));
    }
    let read = hub.read(&ch, Some(Since::plain(1)), 100);
    assert_eq!(ids(&read), vec![100]);
    assert!(read.conflated && !read.truncated);
    let next = hub.read(&ch, Some(Since::plain(99)), 100);
    assert_eq!(ids(&next), vec![100]);
    assert!(!next.conflated);
}

#[test]
fn read_start_rules() {
    use ChannelMode::{State, Stream};
    let epoch = Epoch::parse(b"e1").unwrap();
    let rs = |since, last_id, first_kept, mode| {
        let seq = Sequence {
            epoch,
            last_id,
            first_kept,
        };
        let plain = read_start(Since::plain(since), seq, mode);
        // The same id with the channel's own epoch reads the same.
        assert_eq!(read_start(Since::at(since, epoch), seq, mode), plain);
        plain
    };
    let plain = |after| ReadStart {
        after,
        truncated: false,
        conflated: false,
    };
    // Inside history, at its edge, and at the newest message.
    assert_eq!(rs(5, 10, 3, Stream), plain(5));
    assert_eq!(rs(2, 10, 3, Stream), plain(2));
    assert_eq!(rs(10, 10, 3, Stream), plain(10));
    // Older than history.
    assert_eq!(
        rs(1, 10, 3, Stream),
        ReadStart {
            truncated: true,
            ..plain(1)
        }
    );
    // From the future: a reset, and truncated.
    assert_eq!(
        rs(50, 10, 3, Stream),
        ReadStart {
            truncated: true,
            ..plain(0)
        }
    );
    assert_eq!(
        rs(50, 10, 1, Stream),
        ReadStart {
            truncated: true,
            ..plain(0)
        }
    );
    // Nothing kept, cursor current: not truncated.
    assert_eq!(rs(10, 10, 11, Stream), plain(10));
    assert_eq!(rs(0, 0, 1, Stream), plain(0));
    // State channels conflate instead, but only if something is kept.
    assert_eq!(
        rs(1, 10, 10, State),
        ReadStart {
            conflated: true,
            ..plain(1)
        }
    );
    assert_eq!(rs(1, 10, 11, State), plain(1));
}

#[test]
fn forget_closes_subscribers_and_resets_the_channel() {
    let hub = hub_with(10, vec![]);
    let ch = name("lost");
    let q = SubscriberQueue::new(8, Transport::WebSocket);
    let (sub, _) = hub.subscribe(&ch, None, &q, 0);
    hub.publish_next(&ch, &Bytes::from("1"));
    hub.forget(&ch);
    let mut out = Vec::new();
    assert_eq!(
        q.try_drain(&mut out, 10),
        Ok(()),
        "queued messages stay readable"
    );
    assert_eq!(q.try_drain(&mut out, 10), Err(QueueClosed::Shutdown));
    assert_eq!(hub.last_id(&ch), 0);
    drop(sub);
    hub.forget(&name("never-seen"));
    assert_eq!(hub.publish_next(&ch, &Bytes::from("1")).id, 1);
}

#[test]
fn deliver_ignores_duplicates() {
    let hub = hub_with(10, vec![]);
    let ch = name("x");
    let epoch = Epoch::parse(b"e1").unwrap();
    let m = |id| Arc::new(Message::new(ch.clone(), epoch, id, b"1", Instant::now()));
    assert!(hub.deliver(m(1)));
    assert!(hub.deliver(m(2)));
    assert!(!hub.deliver(m(2)));
    assert!(!hub.deliver(m(1)));
    assert_eq!(hub.last_id(&ch), 2);
}

#[test]
fn sweep_forgets_idle_empty_channels_only() {
    let history = HistoryConfig {
        size: 10,
        max_age: Duration::from_secs(60),
        idle_channel_ttl: Duration::from_secs(1),
        ..HistoryConfig::default()
    };
    let hub = Hub::new(ChannelRules::default(), history, Arc::new(Metrics::new()));
    hub.publish_next(&name("old"), &Bytes::from("1"));
    let q = SubscriberQueue::new(4, Transport::Sse);
    let (_sub, _) = hub.subscribe(&name("watched"), None, &q, 0);
    let later = Instant::now() + Duration::from_secs(120);
    hub.sweep(later);
    let names: Vec<_> = hub.stats().into_iter().map(|s| s.channel).collect();
    assert_eq!(names, vec!["watched"]);
}

fn hub_with_bytes(max_bytes: usize, max_total_bytes: usize) -> Hub {
    let history = HistoryConfig {
        size: 1000,
        max_bytes,
        max_total_bytes,
        ..HistoryConfig::default()
    };
    Hub::new(ChannelRules::default(), history, Arc::new(Metrics::new()))
}

#[test]
fn history_is_bounded_in_bytes_per_channel_and_resume_says_truncated() {
    let hub = hub_with_bytes(1000, 1 << 20);
    let ch = name("big");
    let data = Bytes::from(vec![b'1'; 300]);
    for _ in 0..10 {
        hub.publish_next(&ch, &data);
    }
    let stats = &hub.stats()[0];
    assert!(stats.history_bytes <= 1000, "{stats:?}");
    assert_eq!(
        stats.history, 3,
        "three 332-byte envelopes of 300-byte payloads fit in 1000"
    );
    let read = hub.read(&ch, Some(Since::plain(0)), 100);
    assert!(read.truncated);
    assert_eq!(ids(&read), vec![8, 9, 10]);
    // One message larger than the limit is still kept (the newest).
    hub.publish_next(&ch, &Bytes::from(vec![b'1'; 5000]));
    assert_eq!(ids(&hub.read(&ch, Some(Since::plain(10)), 100)), vec![11]);
    assert_eq!(hub.history_bytes(), hub.stats()[0].history_bytes);
}

#[test]
fn node_budget_evicts_the_oldest_of_any_channel_first() {
    let hub = hub_with_bytes(1 << 20, 8000);
    let data = Bytes::from(vec![b'1'; 1000]);
    let (a, b) = (name("a"), name("b"));
    for _ in 0..4 {
        hub.publish_next(&a, &data);
    }
    for _ in 0..6 {
        hub.publish_next(&b, &data);
    }
    assert!(hub.history_bytes() <= 8000, "{}", hub.history_bytes());
    // a's messages are the oldest: they went first; b kept its newest.
    let read_a = hub.read(&a, Some(Since::plain(0)), 100);
    assert!(
        read_a.truncated && read_a.messages.is_empty(),
        "{:?}",
        ids(&read_a)
    );
    let read_b = hub.read(&b, Some(Since::plain(0)), 100);
    assert_eq!(*ids(&read_b).last().unwrap(), 6);
    assert!(ids(&read_b).len() >= 5);
    assert_eq!(
        hub.history_bytes(),
        hub.stats().iter().map(|s| s.history_bytes).sum::<usize>()
    );
}

#[test]
fn a_channel_nothing_uses_is_forgotten_when_its_last_subscriber_leaves() {
    let hub = hub_with(10, vec![]);
    let q = SubscriberQueue::new(4, Transport::WebSocket);
    for i in 0..100 {
        let (sub, _) = hub.subscribe(&name(&format!("churn.{i}")), Some(Since::plain(0)), &q, 10);
        drop(sub);
    }
    assert_eq!(hub.channel_count(), 0);
    // A channel with history, or another subscriber, stays.
    let (s1, _) = hub.subscribe(&name("kept"), None, &q, 0);
    let (s2, _) = hub.subscribe(&name("kept"), None, &q, 0);
    drop(s1);
    assert_eq!(hub.channel_count(), 1);
    hub.publish_next(&name("kept"), &Bytes::from("1"));
    drop(s2);
    assert_eq!(hub.channel_count(), 1);
    assert_eq!(hub.last_id(&name("kept")), 1);
}

#[test]
fn stats_pages_in_name_order() {
    let hub = hub_with(10, vec![]);
    for n in ["d", "b", "a", "c", "e"] {
        hub.publish_next(&name(n), &Bytes::from("1"));
    }
    let page = |after: Option<&str>, limit| -> Vec<String> {
        hub.stats_page(after, limit)
            .into_iter()
            .map(|s| s.channel)
            .collect()
    };
    assert_eq!(page(None, 2), vec!["a", "b"]);
    assert_eq!(page(Some("b"), 2), vec!["c", "d"]);
    assert_eq!(page(Some("d"), 2), vec!["e"]);
    assert!(page(Some("e"), 2).is_empty());
}

mod epoch_tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(
            ChannelRules::default(),
            HistoryConfig::default(),
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn a_cursor_of_another_epoch_is_truncated_and_starts_over() {
        let hub = hub();
        let ch = ChannelName::new("e").unwrap();
        for _ in 0..3 {
            hub.publish_next(&ch, &Bytes::from("1"));
        }
        let epoch = hub.epoch(&ch);
        assert!(!epoch.is_none());
        let same = hub.read(&ch, Some(Since::at(2, epoch)), 10);
        assert_eq!((same.truncated, same.messages.len()), (false, 1));
        assert_eq!(same.epoch, epoch);
        let other = Epoch::parse(b"abc").unwrap();
        let lost = hub.read(&ch, Some(Since::at(2, other)), 10);
        assert!(lost.truncated);
        assert_eq!(
            lost.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // At id 0 nothing of the other sequence was had: nothing lost.
        let fresh = hub.read(&ch, Some(Since::at(0, other)), 10);
        assert!(!fresh.truncated);
        assert_eq!(fresh.messages.len(), 3);
    }

    #[test]
    fn deliver_of_a_new_epoch_starts_the_channel_over_and_counts_once() {
        let hub = hub();
        let ch = ChannelName::new("r").unwrap();
        let (a, b) = (Epoch::parse(b"a").unwrap(), Epoch::parse(b"b").unwrap());
        let m = |e, id| Arc::new(Message::new(ch.clone(), e, id, b"1", Instant::now()));
        let q = SubscriberQueue::new(16, Transport::Sse);
        let (_sub, _) = hub.subscribe(&ch, None, &q, 0);
        // The first epoch seen is adopted silently.
        assert!(hub.deliver(m(a, 1)) && hub.deliver(m(a, 2)));
        assert_eq!(hub.metrics().bus_epoch_resets.get(), 0);
        // A new sequence: id 1 is new again, and the old history is gone.
        assert!(hub.deliver(m(b, 1)));
        assert_eq!(hub.metrics().bus_epoch_resets.get(), 1);
        assert_eq!((hub.epoch(&ch), hub.last_id(&ch)), (b, 1));
        let read = hub.read(&ch, Some(Since::at(0, b)), 10);
        assert_eq!(read.messages.len(), 1);
        // The subscriber got every message, epochs and all, in order.
        let mut out = Vec::new();
        q.try_drain(&mut out, 10).unwrap();
        let got: Vec<_> = out.iter().map(|m| (m.epoch, m.id)).collect();
        assert_eq!(got, [(a, 1), (a, 2), (b, 1)]);
    }
}
