//! A client's position in one channel: the last id delivered and the epoch
//! it belongs to. Every transport steps one through the messages it
//! writes, so history replays and live messages never duplicate and a new
//! sequence is told once.

use super::{cursor_text, Epoch, Message, Since};

/// Keeps the last id delivered on one channel, and the epoch (sequence)
/// it belongs to, and drops anything at or below it, so history replays
/// and live messages never duplicate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor {
    pub id: u64,
    pub epoch: Epoch,
}

/// What one message is to a client, by its [`Cursor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already delivered: skip it.
    Duplicate,
    /// The next message: deliver it.
    Next,
    /// The first message of a new sequence (the bus lost the channel's
    /// data): tell the client `truncated`, then deliver it.
    Restarted,
}

impl Cursor {
    pub fn new(id: u64, epoch: Epoch) -> Cursor {
        Cursor { id, epoch }
    }

    /// What `msg` is for this client; moves the cursor past it unless it is
    /// a duplicate. A message of another epoch starts a new sequence: when
    /// the client had something of the old one, that is a restart it must
    /// be told of (once: the cursor is in the new sequence from here on).
    #[inline]
    pub fn step(&mut self, msg: &Message) -> Step {
        if msg.epoch != self.epoch {
            let restarted = self.id > 0;
            *self = Cursor::new(msg.id, msg.epoch);
            return if restarted {
                Step::Restarted
            } else {
                Step::Next
            };
        }
        if msg.id > self.id {
            self.id = msg.id;
            Step::Next
        } else {
            Step::Duplicate
        }
    }

    /// The client's cursor, as `since` / `Last-Event-ID` take it back.
    pub fn since(&self) -> Since {
        Since::at(self.id, self.epoch)
    }

    /// The cursor as text (`N-E`).
    pub fn text(&self) -> String {
        cursor_text(self.id, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChannelName;

    #[test]
    fn cursor_steps_through_ids_and_epochs() {
        let ch = ChannelName::new("c").unwrap();
        let (a, b) = (Epoch::parse(b"a").unwrap(), Epoch::parse(b"b").unwrap());
        let m = |e, id| Message::new(ch.clone(), e, id, b"1", std::time::Instant::now());
        // A channel with no sequence yet: its first epoch is adopted.
        let mut c = Cursor::new(0, Epoch::NONE);
        assert_eq!(c.step(&m(a, 1)), Step::Next);
        assert_eq!(c.step(&m(a, 1)), Step::Duplicate);
        assert_eq!(c.step(&m(a, 2)), Step::Next);
        assert_eq!(c.text(), "2-a");
        // Ids start again in a new sequence: told once.
        assert_eq!(c.step(&m(b, 1)), Step::Restarted);
        assert_eq!(c.step(&m(b, 2)), Step::Next);
        assert_eq!(c.step(&m(b, 2)), Step::Duplicate);
        assert_eq!(c.since(), Since::at(2, b));
    }
}
