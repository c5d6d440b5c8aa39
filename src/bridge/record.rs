//! An incremental feed's record of its channel: the items it carries, in
//! bus order, each with the backend's item id. It is how a client's cursor
//! (a backend item id) is found on the channel: an id is known only while
//! its item is in the record, and a cursor the record doesn't know is
//! answered by the backend itself (so nobody is ever shown a gap).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::protocol::Message;

struct Entry {
    item_id: Box<str>,
    message: Arc<Message>,
}

/// The newest `capacity` items of a channel.
pub struct Record {
    entries: VecDeque<Entry>,
    /// Backend item id → bus id, for every entry.
    bus_ids: HashMap<Box<str>, u64>,
    capacity: usize,
}

impl Record {
    pub fn new(capacity: usize) -> Record {
        Record {
            entries: VecDeque::new(),
            bus_ids: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends a message carrying the item `item_id`. Ignored (false) when
    /// the bus id is not newer than the last one (history and live delivery
    /// overlap on a shared bus) or the item is already recorded.
    pub fn push(&mut self, item_id: String, message: Arc<Message>) -> bool {
        if self
            .entries
            .back()
            .is_some_and(|last| last.message.epoch != message.epoch)
        {
            // The bus lost the channel and started a new sequence (its ids
            // restart): what the record knows is of the old one. Cursors it
            // forgets are answered by the backend, so nobody sees a gap.
            self.entries.clear();
            self.bus_ids.clear();
        }
        if message.id <= self.last_bus_id() || self.bus_ids.contains_key(item_id.as_str()) {
            return false;
        }
        let item_id: Box<str> = item_id.into();
        self.bus_ids.insert(item_id.clone(), message.id);
        self.entries.push_back(Entry { item_id, message });
        while self.entries.len() > self.capacity {
            let old = self.entries.pop_front().expect("longer than capacity");
            self.bus_ids.remove(&old.item_id);
        }
        true
    }

    /// The bus id of the newest item (0 when empty).
    pub fn last_bus_id(&self) -> u64 {
        self.entries.back().map_or(0, |e| e.message.id)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn knows(&self, item_id: &str) -> bool {
        self.bus_ids.contains_key(item_id)
    }

    /// The messages after the item `item_id`, oldest first; None when the
    /// record doesn't know that item.
    pub fn after(&self, item_id: &str) -> Option<impl Iterator<Item = &Arc<Message>>> {
        let bus_id = *self.bus_ids.get(item_id)?;
        let start = self.entries.partition_point(|e| e.message.id <= bus_id);
        Some(self.entries.range(start..).map(|e| &e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::channel::ChannelName;

    fn msg(id: u64, data: &str) -> Arc<Message> {
        let channel = ChannelName::new("m").unwrap();
        Arc::new(Message::new(
            channel,
            crate::protocol::Epoch::NONE,
            id,
            data.as_bytes(),
            std::time::Instant::now(),
        ))
    }

    fn after(record: &Record, cursor: &str) -> Option<Vec<u64>> {
        record.after(cursor).map(|m| m.map(|m| m.id).collect())
    }

    #[test]
    fn cursors_find_what_follows_and_unknown_ones_are_none() {
        let mut r = Record::new(3);
        assert!(r.push("124".into(), msg(1, "1")));
        assert!(r.push("a7".into(), msg(2, "2")));
        assert!(r.push("126".into(), msg(5, "3")));
        assert_eq!(after(&r, "124"), Some(vec![2, 5]));
        assert_eq!(after(&r, "126"), Some(vec![]));
        assert_eq!(after(&r, "999"), None);
        // Overlaps are ignored: an old bus id, a known item.
        assert!(!r.push("127".into(), msg(5, "x")));
        assert!(!r.push("124".into(), msg(6, "x")));
        // Past capacity the oldest item is forgotten: its id is unknown.
        assert!(r.push("127".into(), msg(7, "4")));
        assert_eq!(after(&r, "124"), None);
        assert!(!r.knows("124"));
        assert_eq!(after(&r, "a7"), Some(vec![5, 7]));
        assert_eq!(r.last_bus_id(), 7);
    }

    #[test]
    fn a_new_sequence_on_the_bus_starts_the_record_over() {
        let mut r = Record::new(3);
        assert!(r.push("124".into(), msg(1, "1")));
        assert!(r.push("125".into(), msg(2, "2")));
        let channel = ChannelName::new("m").unwrap();
        let restarted = Arc::new(Message::new(
            channel,
            crate::protocol::Epoch::random(),
            1,
            b"3",
            std::time::Instant::now(),
        ));
        assert!(r.push("126".into(), restarted));
        assert_eq!(after(&r, "124"), None);
        assert_eq!(after(&r, "126"), Some(vec![]));
        assert_eq!(r.last_bus_id(), 1);
    }
}
