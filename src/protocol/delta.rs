//! Delta updates on `state` channels: a message carries, instead of its
//! whole `data`, a JSON Patch (RFC 6902, see [`json_patch`]) against the
//! message before it — computed once per message and shared by every
//! subscriber whose last value is that predecessor (the same base for all
//! of them).
//!
//! The hub links each message of a `state` channel to its predecessor's
//! `data` when it records it ([`Message::link_base`]); nothing else is kept.
//! The patch is made lazily, the first time a transport asks for it, and
//! checked on the server: applying it to the base must give exactly the
//! new value, and its envelope must be smaller than the whole one — else there is no
//! delta and every client gets the whole value.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use super::compress::{Coding, Piece};
use super::json_patch;

use super::{Epoch, Message};

/// A message's delta state, boxed and set only on `state` channels, so
/// every other message pays one pointer-sized slot for it.
#[derive(Debug, Default)]
pub struct DeltaSlot(OnceLock<Box<Linked>>);

/// The predecessor's value a message may be a delta against, and the
/// message's delta encodings once made.
#[derive(Debug)]
struct Linked {
    base: Base,
    encoded: OnceLock<Option<DeltaEncoded>>,
}

/// The previous message's id and `data` (a slice of its envelope: no copy,
/// and it keeps no older message alive).
#[derive(Debug)]
struct Base {
    id: u64,
    data: Bytes,
}

/// A message's delta encodings, made once and shared.
#[derive(Debug)]
pub struct DeltaEncoded {
    /// The id the patch applies to.
    pub base: u64,
    /// `{"channel":"…","id":N,"base":M,"delta":<patch>}`.
    pub envelope: Bytes,
    /// Bytes of the patch (the `delta` member).
    pub patch_len: usize,
    ws_frame: OnceLock<Bytes>,
    sse_event: OnceLock<Bytes>,
    poll_answer: OnceLock<Bytes>,
    /// The SSE event compressed on its own per coding, for compressed
    /// streams: shared by every subscriber at this base, like the event.
    sse_pieces: [OnceLock<Piece>; 2],
}

impl DeltaEncoded {
    /// [`sse_event`](Self::sse_event) compressed in `coding` once, at
    /// `level` (the first caller's): the piece every compressed SSE stream
    /// of that coding at this base carries.
    pub fn sse_piece(&self, msg: &Message, coding: Coding, level: u32) -> &Piece {
        self.sse_pieces[super::message::coding_slot(coding)]
            .get_or_init(|| Piece::new(coding, self.sse_event(msg), level))
    }

    /// The delta envelope as one WebSocket text frame.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws_frame
            .get_or_init(|| super::ws_frame::encode_text(&self.envelope))
    }

    /// The long-poll answer carrying this delta alone (see
    /// [`Message::poll_answer`]).
    pub fn poll_answer(&self, msg: &Message) -> &Bytes {
        self.poll_answer.get_or_init(|| {
            super::poll_answer::encode_answer(
                std::iter::once(&self.envelope),
                msg.id,
                msg.epoch,
                false,
                false,
            )
        })
    }

    /// The delta envelope as one SSE event, with the message's cursor as id.
    pub fn sse_event(&self, msg: &Message) -> &Bytes {
        self.sse_event.get_or_init(|| {
            let mut out = BytesMut::with_capacity(
                super::message::sse_head_len(msg) + self.envelope.len() + 2,
            );
            super::message::put_sse_head(&mut out, msg);
            out.put_slice(&self.envelope);
            out.put_slice(b"\n\n");
            out.freeze()
        })
    }
}

impl Message {
    /// Records `prev` as the value this message may be a delta against:
    /// only the channel's message just before it, in the same epoch.
    pub fn link_base(&self, prev: &Message) {
        if prev.channel == self.channel && prev.epoch == self.epoch && prev.id + 1 == self.id {
            let data = prev.envelope.slice_ref(prev.data());
            let base = Base { id: prev.id, data };
            let _ = self.delta.0.set(Box::new(Linked {
                base,
                encoded: OnceLock::new(),
            }));
        }
    }

    /// The id of the message this one may be a delta against, if linked.
    pub fn base_id(&self) -> Option<u64> {
        self.delta.0.get().map(|l| l.base.id)
    }

    /// This message as a delta for a client whose last value on the
    /// channel is `(last_id, epoch)`: None when that is not this message's
    /// base, or when no delta reproduces the value in fewer bytes (the
    /// client then gets the whole value).
    pub fn delta_after(&self, last_id: u64, epoch: Epoch) -> Option<&DeltaEncoded> {
        let linked = self.delta.0.get()?;
        if linked.base.id != last_id || epoch != self.epoch {
            return None;
        }
        linked
            .encoded
            .get_or_init(|| encode(self, &linked.base))
            .as_ref()
    }
}

/// Links each of `msgs` (one channel's, in id order, just recorded) to the
/// message before it: the channel's previous latest `prev`, then each other.
pub fn link_chain(prev: Option<&Message>, msgs: &[std::sync::Arc<Message>]) {
    let mut prev = prev;
    for msg in msgs {
        if let Some(p) = prev {
            msg.link_base(p);
        }
        prev = Some(msg);
    }
}

/// The delta envelope of `msg` against `base`, if a patch is exact and
/// smaller than the whole envelope.
fn encode(msg: &Message, base: &Base) -> Option<DeltaEncoded> {
    let patch = patch_for(&base.data, msg.data())?;
    let mut id_buf = itoa::Buffer::new();
    let mut base_buf = itoa::Buffer::new();
    let mut env = BytesMut::with_capacity(48 + msg.channel.as_str().len() + patch.len());
    env.put_slice(b"{\"channel\":\"");
    env.put_slice(msg.channel.as_str().as_bytes());
    env.put_slice(b"\",\"id\":");
    env.put_slice(id_buf.format(msg.id).as_bytes());
    env.put_slice(b",\"base\":");
    env.put_slice(base_buf.format(base.id).as_bytes());
    env.put_slice(b",\"delta\":");
    env.put_slice(&patch);
    env.put_u8(b'}');
    // Smaller than the whole envelope, or not worth a delta.
    if env.len() >= msg.envelope.len() {
        return None;
    }
    Some(DeltaEncoded {
        base: base.id,
        envelope: env.freeze(),
        patch_len: patch.len(),
        ws_frame: OnceLock::new(),
        sse_event: OnceLock::new(),
        poll_answer: OnceLock::new(),
        sse_pieces: Default::default(),
    })
}

/// A JSON Patch turning JSON text `prev` into `next`, serialised, or None
/// when the texts don't parse or the patch doesn't reproduce `next`
/// exactly (checked by applying it: cheap insurance for a diff that runs
/// on every message).
pub fn patch_for(prev: &[u8], next: &[u8]) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(prev).ok()?;
    let next: Value = serde_json::from_slice(next).ok()?;
    let ops = json_patch::diff(&doc, &next);
    json_patch::apply(&mut doc, &ops).ok()?;
    if doc != next {
        return None;
    }
    serde_json::to_vec(&ops).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChannelName;
    use serde_json::json;
    use std::time::Instant;

    #[test]
    fn patches_are_checked_and_serialised() {
        let patch = patch_for(br#"{"a":1,"b":[1,2]}"#, br#"{"a":null,"b":[1]}"#).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&patch).unwrap(),
            json!([{"op": "replace", "path": "/a", "value": null},
                   {"op": "remove", "path": "/b/1"}])
        );
        assert_eq!(patch_for(b"{nope", b"{}"), None);
    }

    fn msg(epoch: Epoch, id: u64, data: &str) -> Message {
        let ch = ChannelName::new("score").unwrap();
        Message::new(ch, epoch, id, data.as_bytes(), Instant::now())
    }

    #[test]
    fn a_delta_is_made_once_for_its_base_only() {
        let e = Epoch::parse(b"e1").unwrap();
        let big = "x".repeat(200);
        let first = msg(e, 4, &format!(r#"{{"a":1,"big":"{big}"}}"#));
        let second = msg(e, 5, &format!(r#"{{"a":2,"big":"{big}"}}"#));
        assert!(second.delta_after(4, e).is_none(), "not linked yet");
        second.link_base(&first);
        assert_eq!(second.base_id(), Some(4));
        let d = second.delta_after(4, e).expect("a delta");
        assert_eq!(
            &d.envelope[..],
            br#"{"channel":"score","id":5,"base":4,"delta":[{"op":"replace","path":"/a","value":2}]}"#
        );
        assert!(std::ptr::eq(d, second.delta_after(4, e).unwrap()));
        assert!(second.delta_after(3, e).is_none());
        assert!(second
            .delta_after(4, Epoch::parse(b"e2").unwrap())
            .is_none());
        assert!(std::str::from_utf8(d.sse_event(&second))
            .unwrap()
            .starts_with("id: 5-e1\ndata: {\"channel\":\"score\",\"id\":5,\"base\":4,"));
        // Only the message just before, in the same epoch, is a base.
        let third = msg(e, 7, "{}");
        third.link_base(&second);
        assert_eq!(third.base_id(), None);
    }

    #[test]
    fn messages_of_other_channels_pay_one_slot() {
        assert!(std::mem::size_of::<DeltaSlot>() <= 16);
    }

    #[test]
    fn no_delta_when_it_is_not_smaller() {
        let e = Epoch::parse(b"e1").unwrap();
        let first = msg(e, 1, r#"{"a":1}"#);
        let second = msg(e, 2, r#"{"b":2}"#);
        second.link_base(&first);
        assert!(second.delta_after(1, e).is_none());
    }
}
