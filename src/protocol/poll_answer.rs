//! The long-poll answer's encoding:
//! `{"messages":[<envelope>,…],"last_id":N,"truncated":…,"cursor":"N-E"}`,
//! built from the messages' shared envelopes without re-encoding them.

use bytes::{BufMut, Bytes, BytesMut};

use super::{cursor_text, Epoch};

/// `],"last_id":N,"truncated":…,"cursor":"N-E"}`: what follows an answer's
/// messages.
pub fn put_closing(
    out: &mut BytesMut,
    last_id: u64,
    epoch: Epoch,
    truncated: bool,
    conflated: bool,
) {
    out.put_slice(b"],\"last_id\":");
    out.put_slice(itoa::Buffer::new().format(last_id).as_bytes());
    out.put_slice(if truncated {
        b",\"truncated\":true"
    } else {
        b",\"truncated\":false"
    });
    if conflated {
        out.put_slice(b",\"conflated\":true");
    }
    out.put_slice(b",\"cursor\":\"");
    out.put_slice(cursor_text(last_id, epoch).as_bytes());
    out.put_slice(b"\"}");
}

/// `{"messages":[…],"last_id":N,"truncated":false,"cursor":"N-E"}` built
/// from the shared envelopes, no re-encoding. `cursor` is what to send as
/// `since` next: `last_id` and its epoch.
pub fn encode_answer<'a>(
    envelopes: impl Iterator<Item = &'a Bytes> + Clone,
    last_id: u64,
    epoch: Epoch,
    truncated: bool,
    conflated: bool,
) -> Bytes {
    let size: usize = envelopes.clone().map(|e| e.len() + 1).sum();
    let mut out = BytesMut::with_capacity(size + 64);
    out.put_slice(b"{\"messages\":[");
    for (i, envelope) in envelopes.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(envelope);
    }
    put_closing(&mut out, last_id, epoch, truncated, conflated);
    out.freeze()
}
