//! A compressed SSE stream (gzip or brotli) whose events are compressed
//! once per message and shared by every connection.
//!
//! Each connection's stream is a [`Stitcher`] (the machinery long-poll
//! answers share): its header before the first bytes, then, per event, the
//! event's cached piece — the message's SSE event compressed on its own
//! ([`Message::sse_piece`]), made once, on the first connection that sends
//! it; a delta event's piece once per message and base, next to the shared
//! delta ([`DeltaEncoded::sse_piece`]) — and, when the stream ends, the
//! coding's end (gzip: an empty final block and the trailer, whose CRC32 is
//! combined from the pieces'). Each piece ends where a decoder flushes, so
//! a client decodes every event as soon as it arrives (`curl --compressed
//! -N`, browsers' `EventSource`).
//!
//! The replayed history is stitched from the same shared pieces
//! ([`Replay::next_coded`](super::replay::Replay::next_coded)). What is per
//! connection (the `retry:` head, truncation notices, keep-alives, the
//! farewell `retry:`) is compressed on the spot, as a piece of its own.
//! [`chunk`] puts a delivery's events together, compressed or not.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::stitch::Stitcher;
#[cfg(doc)]
use crate::protocol::delta::DeltaEncoded;
use crate::protocol::Message;

/// Which encoding of its message an SSE event is: what decides where its
/// compressed piece comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The message's whole value ([`Message::sse_event`]).
    Whole,
    /// The message as a delta against the value of id `base`.
    Delta { base: u64 },
}

/// One event of a chunk: its bytes and what they are.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub bytes: Bytes,
    pub kind: EventKind,
}

/// One chunk of `events` (of `messages`), with the `notices` (index of the
/// message they precede, their text): stitched from the shared pieces on a
/// compressed stream, else the events' shared encodings (a single event is
/// sent as it is, no copy). `None` without events.
pub fn chunk(
    stitcher: Option<&mut Stitcher>,
    notices: &[(usize, Bytes)],
    messages: &[Arc<Message>],
    events: &[SseEvent],
) -> Option<Bytes> {
    match (events, stitcher) {
        ([], _) => None,
        (many, Some(stitcher)) => Some(self::events(stitcher, notices, messages, many)),
        // The common case: one event, its shared encoding, no copy.
        ([only], None) if notices.is_empty() => Some(only.bytes.clone()),
        (many, None) => {
            let size = many.iter().map(|e| e.bytes.len()).sum::<usize>()
                + notices.iter().map(|(_, n)| n.len()).sum::<usize>();
            let mut out = BytesMut::with_capacity(size);
            let mut notices = notices.iter().peekable();
            for (i, event) in many.iter().enumerate() {
                if let Some((_, notice)) = notices.next_if(|(at, _)| *at == i) {
                    out.put_slice(notice);
                }
                out.put_slice(&event.bytes);
            }
            Some(out.freeze())
        }
    }
}

/// The events of `messages` on the compressed stream `stitcher`, each from
/// its shared piece, with the `notices` (index of the message they
/// precede, their text) compressed on the spot.
pub fn events(
    stitcher: &mut Stitcher,
    notices: &[(usize, Bytes)],
    messages: &[Arc<Message>],
    events: &[SseEvent],
) -> Bytes {
    let mut out = BytesMut::new();
    let mut notices = notices.iter().peekable();
    for (i, (m, event)) in messages.iter().zip(events).enumerate() {
        if let Some((_, notice)) = notices.next_if(|(at, _)| *at == i) {
            stitcher.push_own(notice, &mut out);
        }
        let (coding, level) = (stitcher.coding(), stitcher.level_for(event.bytes.len()));
        // Each event's piece is compressed once and shared: the whole
        // value's by every subscriber, a delta's by every subscriber at
        // its base.
        match event.kind {
            EventKind::Whole => stitcher.push(m.sse_piece(coding, level), &mut out),
            EventKind::Delta { base } => match m.delta_after(base, m.epoch) {
                Some(delta) => stitcher.push(delta.sse_piece(m, coding, level), &mut out),
                // Not reached: the event was made from this delta.
                None => stitcher.push_own(&event.bytes, &mut out),
            },
        }
    }
    out.freeze()
}

/// Where an uncompressed chunk goes on a stream that may be compressed.
pub fn wire(gzip: &mut Option<Stitcher>, chunk: Bytes) -> Bytes {
    match gzip {
        Some(gzip) => gzip.own(&chunk),
        None => chunk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::encoding::Compression;
    use crate::metrics::Metrics;
    use crate::protocol::compress::{Coding, Levels};
    use crate::protocol::Transport;
    use crate::protocol::{ChannelName, Epoch};
    use crate::transport::stitch::STORED;
    use std::io::Read;
    use std::time::Instant;

    fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
            Coding::Brotli => brotli::Decompressor::new(data, 4096).read_to_end(&mut out),
        }
        .expect("a valid stream");
        out
    }

    fn score(id: u64, n: u64) -> Arc<Message> {
        let ch = ChannelName::new("score").unwrap();
        let data = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(300));
        let epoch = Epoch::parse(b"e1").unwrap();
        Arc::new(Message::new(ch, epoch, id, data.as_bytes(), Instant::now()))
    }

    #[test]
    fn whole_and_delta_events_make_one_stream_of_shared_pieces() {
        for coding in [Coding::Gzip, Coding::Brotli] {
            let (a, b) = (score(1, 1), score(2, 2));
            b.link_base(&a);
            let delta = b.delta_after(1, b.epoch).expect("a delta");
            let events = [
                SseEvent {
                    // A copy, not the cached event: the kind decides, not
                    // where the bytes live.
                    bytes: Bytes::copy_from_slice(a.sse_event()),
                    kind: EventKind::Whole,
                },
                SseEvent {
                    bytes: delta.sse_event(&b).clone(),
                    kind: EventKind::Delta { base: 1 },
                },
            ];
            let compression = Compression {
                enabled: true,
                min_bytes: 100,
                levels: Levels::default(),
            };
            let metrics = Arc::new(Metrics::new());
            let mut stream = Stitcher::new(coding, compression, metrics, Transport::Sse);
            let notice = Bytes::from_static(b"event: truncated\ndata: {}\n\n");
            let mut out = super::events(
                &mut stream,
                &[(1, notice.clone())],
                &[a.clone(), b.clone()],
                &events,
            )
            .to_vec();
            out.extend_from_slice(&stream.finish().expect("an end"));
            let plain = [&a.sse_event()[..], &notice, delta.sse_event(&b)].concat();
            assert_eq!(decode(coding, &out), plain, "{coding:?}");
            // Asked again for a stored piece, each message hands back the
            // piece it made (compressed) for the stream: made once, then
            // shared.
            let whole = &a.sse_piece(coding, STORED).bytes;
            let delta_piece = &delta.sse_piece(&b, coding, STORED).bytes;
            for (what, piece, event) in [
                ("whole value", whole, a.sse_event()),
                ("delta", delta_piece, delta.sse_event(&b)),
            ] {
                assert!(piece.len() < event.len(), "{coding:?} {what}: compressed");
                assert!(
                    out.windows(piece.len()).any(|w| w == &piece[..]),
                    "{coding:?}: the {what} went out as its shared piece"
                );
            }
            assert!(stream.finish().is_none(), "one end");
        }
    }
}
