//! Unit tests of parked long-polls on a channel's list.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;
use crate::bus::hub::{Hub, Offered, WaitingPoll};
use crate::config::{ChannelRules, HistoryConfig};
use crate::metrics::Metrics;

/// A poll that records what it was offered, taking it (or not).
#[derive(Default)]
struct Recorder {
    offered: Mutex<Vec<Vec<u64>>>,
    woken: Mutex<usize>,
    refuse: bool,
}

impl WaitingPoll for Recorder {
    fn offer(&self, msgs: &[Arc<Message>], cursor: Cursor, _: &mut DeliveryTally<'_>) -> Offered {
        let fresh: Vec<u64> = msgs
            .iter()
            .map(|m| m.id)
            .filter(|&id| id > cursor.id)
            .collect();
        self.offered.lock().push(fresh.clone());
        if self.refuse || fresh.is_empty() {
            Offered::NotForIt
        } else {
            Offered::Taken
        }
    }

    fn wake(&self) {
        *self.woken.lock() += 1;
    }

    fn cancel(&self) -> bool {
        true
    }
}

fn hub() -> Hub {
    Hub::new(
        ChannelRules::new(vec![]),
        HistoryConfig::default(),
        Arc::new(Metrics::new()),
    )
}

fn name(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn park(hub: &Hub, ch: &ChannelName, since: Since) -> (Arc<Recorder>, Parking) {
    let rec = Arc::new(Recorder::default());
    let poll: Arc<dyn WaitingPoll> = rec.clone();
    let parking = hub.park_poll(ch, since, &poll, 100);
    (rec, parking)
}

#[test]
fn a_parked_poll_is_offered_the_next_batch_once() {
    let hub = hub();
    let ch = name("news");
    hub.publish_next(&ch, &Bytes::from("1"));
    let (rec, parking) = park(&hub, &ch, Since::plain(1));
    let Parking::Parked(_registration, cursor) = parking else {
        panic!("nothing after 1: parked");
    };
    assert_eq!(cursor.id, 1);
    assert_eq!(hub.subscriber_counts(&ch).longpoll, 1);
    hub.publish_next_many(&ch, &[Bytes::from("2"), Bytes::from("3")]);
    hub.publish_next(&ch, &Bytes::from("4"));
    assert_eq!(
        *rec.offered.lock(),
        vec![vec![2, 3]],
        "one batch, then off the list"
    );
    assert_eq!(hub.subscriber_counts(&ch).longpoll, 0);
}

#[test]
fn a_poll_behind_is_not_parked_but_answered_from_history() {
    let hub = hub();
    let ch = name("news");
    hub.publish_next(&ch, &Bytes::from("1"));
    hub.publish_next(&ch, &Bytes::from("2"));
    let (rec, parking) = park(&hub, &ch, Since::plain(1));
    let Parking::Read(read) = parking else {
        panic!("2 is after 1: read");
    };
    assert_eq!(read.messages.iter().map(|m| m.id).collect::<Vec<_>>(), [2]);
    hub.publish_next(&ch, &Bytes::from("3"));
    assert!(rec.offered.lock().is_empty(), "never listed");
}

#[test]
fn a_poll_let_go_leaves_the_list_and_an_unused_channel_is_forgotten() {
    let hub = hub();
    let ch = name("quiet");
    let (rec, parking) = park(&hub, &ch, Since::plain(0));
    let Parking::Parked(registration, _) = parking else {
        panic!("an empty channel: parked");
    };
    assert_eq!(hub.channel_count(), 1);
    drop(registration);
    assert_eq!(hub.channel_count(), 0, "nothing else used it");
    hub.publish_next(&ch, &Bytes::from("1"));
    assert!(rec.offered.lock().is_empty());
}

#[test]
fn a_poll_that_wants_none_of_a_batch_is_put_back() {
    let hub = hub();
    let ch = name("news");
    let epoch = Epoch::parse(b"e1").unwrap();
    hub.reset(&ch, epoch);
    let rec = Arc::new(Recorder::default());
    let poll: Arc<dyn WaitingPoll> = rec.clone();
    // Listed ahead of this node (a shared bus's read): 1 and 2 are known.
    let listed = hub
        .list_poll(&ch, Cursor::new(2, epoch), &poll)
        .expect("nothing after 2 here");
    hub.publish_next(&ch, &Bytes::from("1"));
    hub.publish_next(&ch, &Bytes::from("2"));
    assert_eq!(hub.subscriber_counts(&ch).longpoll, 1, "still waiting");
    hub.publish_next(&ch, &Bytes::from("3"));
    assert_eq!(rec.offered.lock().last(), Some(&vec![3]));
    assert_eq!(hub.subscriber_counts(&ch).longpoll, 0);
    listed.taken();
}

#[test]
fn a_shared_bus_poll_is_not_listed_behind_what_this_node_recorded() {
    let hub = hub();
    let ch = name("news");
    hub.publish_next(&ch, &Bytes::from("1"));
    let poll: Arc<dyn WaitingPoll> = Arc::new(Recorder::default());
    let epoch = hub.epoch(&ch);
    assert!(hub.list_poll(&ch, Cursor::new(0, epoch), &poll).is_none());
    assert!(hub
        .list_poll(&ch, Cursor::new(0, Epoch::NONE), &poll)
        .is_none());
    assert!(hub.list_poll(&ch, Cursor::new(1, epoch), &poll).is_some());
    // A cursor of another sequence: this node has some of the current one.
    let old = Epoch::parse(b"abc").unwrap();
    assert!(hub.list_poll(&ch, Cursor::new(9, old), &poll).is_none());
}

#[test]
fn a_listed_cursor_can_move_into_the_sequence_read() {
    let hub = hub();
    let ch = name("news");
    let epoch = Epoch::parse(b"e2").unwrap();
    hub.reset(&ch, epoch);
    let rec = Arc::new(Recorder::default());
    let poll: Arc<dyn WaitingPoll> = rec.clone();
    // A plain id: no sequence yet. A reset to the read's keeps it listed
    // only once its cursor is in that sequence.
    let listed = hub
        .list_poll(&ch, Cursor::new(0, Epoch::NONE), &poll)
        .expect("an empty channel");
    listed.set_cursor(Cursor::new(0, epoch));
    hub.reset(&ch, epoch);
    assert_eq!(*rec.woken.lock(), 0);
    hub.publish_next(&ch, &Bytes::from("1"));
    assert_eq!(*rec.offered.lock(), vec![vec![1]]);
    listed.taken();
}

#[test]
fn a_new_sequence_or_a_forgotten_channel_wakes_the_polls() {
    let hub = hub();
    let ch = name("news");
    let (rec, parking) = park(&hub, &ch, Since::plain(0));
    let Parking::Parked(_registration, _) = parking else {
        panic!("parked");
    };
    // At id 0 a poll had nothing of any sequence: a new one's first
    // message is its next, so a reset keeps it.
    let other = Epoch::parse(b"ff").unwrap();
    hub.reset(&ch, other);
    assert_eq!(*rec.woken.lock(), 0, "nothing lost at id 0");
    hub.publish_next(&ch, &Bytes::from("1"));
    assert_eq!(*rec.offered.lock(), vec![vec![1]]);
    let (behind, parking) = park(&hub, &ch, Since::plain(1));
    let Parking::Parked(_behind_registration, _) = parking else {
        panic!("parked");
    };
    let third = Epoch::parse(b"fe").unwrap();
    hub.reset(&ch, third);
    assert_eq!(*behind.woken.lock(), 1, "its cursor is of the old sequence");
    let other = third;
    // A poll listed at the new sequence waits on through a reset to it.
    let (kept, parking) = park(&hub, &ch, Since::at(0, other));
    let Parking::Parked(_kept_registration, _) = parking else {
        panic!("parked");
    };
    hub.reset(&ch, other);
    assert_eq!(*kept.woken.lock(), 0);
    hub.forget(&ch);
    assert_eq!(*kept.woken.lock(), 1);
}
