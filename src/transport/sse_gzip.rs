//! A gzip-compressed SSE stream whose events are compressed once per
//! message and shared by every connection.
//!
//! One gzip member per connection ([`GzipStream`]): its header before the
//! first bytes, then, per message, the message's cached [`DeflatePiece`]
//! (its SSE event deflated on its own with a fresh compressor and a sync
//! flush, no final block — made once, on the first connection that sends
//! it), and, when the stream ends, an empty final block and the trailer
//! (CRC32 combined from the pieces', length). A delta event's piece is
//! made once per message and base, next to the shared delta
//! ([`DeltaEncoded::sse_deflate`]). Because each piece ends with
//! a sync flush, a client inflates every event as soon as it arrives
//! (`curl --compressed -N`, browsers' `EventSource`).
//!
//! What is per connection (the `retry:` head, truncation notices, the
//! replayed history's chunks, keep-alives, the farewell `retry:`) is
//! deflated on the spot, as a piece of its own. Events (and other pieces)
//! shorter than `compression.min_bytes` are carried as stored deflate
//! blocks: a few bytes of framing, no compression work.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::http::encoding::Compression;
use crate::metrics::Metrics;
use crate::protocol::compress::{DeflatePiece, GzipStream};
#[cfg(doc)]
use crate::protocol::delta::DeltaEncoded;
use crate::protocol::{Message, Transport};

/// Deflate level 0: stored blocks.
const STORED: u32 = 0;

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

/// One SSE connection's gzip stream.
pub struct SseGzip {
    stream: GzipStream,
    compression: Compression,
    metrics: Arc<Metrics>,
}

impl SseGzip {
    pub fn new(compression: Compression, metrics: Arc<Metrics>) -> SseGzip {
        SseGzip {
            stream: GzipStream::new(),
            compression,
            metrics,
        }
    }

    fn level_for(&self, len: usize) -> u32 {
        if len >= self.compression.min_bytes {
            self.compression.levels.gzip
        } else {
            STORED
        }
    }

    /// The events of `messages`, each from its shared piece, with the
    /// `notices` (index of the message they precede, their text) deflated
    /// on the spot.
    pub fn events(
        &mut self,
        notices: &[(usize, Bytes)],
        messages: &[Arc<Message>],
        events: &[SseEvent],
    ) -> Bytes {
        let mut out = BytesMut::new();
        let mut plain = 0;
        let mut notices = notices.iter().peekable();
        for (i, (m, event)) in messages.iter().zip(events).enumerate() {
            if let Some((_, notice)) = notices.next_if(|(at, _)| *at == i) {
                plain += notice.len();
                self.stream.push(
                    &DeflatePiece::new(notice, self.level_for(notice.len())),
                    &mut out,
                );
            }
            plain += event.bytes.len();
            let level = self.level_for(event.bytes.len());
            // Each event's piece is deflated once and shared: the whole
            // value's by every subscriber, a delta's by every subscriber at
            // its base.
            match event.kind {
                EventKind::Whole => self.stream.push(m.sse_deflate(level), &mut out),
                EventKind::Delta { base } => match m.delta_after(base, m.epoch) {
                    Some(delta) => self.stream.push(delta.sse_deflate(m, level), &mut out),
                    // Not reached: the event was made from this delta.
                    None => self
                        .stream
                        .push(&DeflatePiece::new(&event.bytes, level), &mut out),
                },
            }
        }
        self.count(plain, out.len());
        out.freeze()
    }

    /// Bytes of this connection alone, deflated now.
    pub fn own(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(chunk.len() / 2 + 32);
        self.stream.push(
            &DeflatePiece::new(chunk, self.level_for(chunk.len())),
            &mut out,
        );
        self.count(chunk.len(), out.len());
        out.freeze()
    }

    /// The end of the stream, once.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.stream.is_finished() {
            return None;
        }
        let mut out = BytesMut::with_capacity(20);
        self.stream.finish(&mut out);
        self.count(0, out.len());
        Some(out.freeze())
    }

    pub fn is_finished(&self) -> bool {
        self.stream.is_finished()
    }

    fn count(&self, before: usize, after: usize) {
        self.metrics
            .compression
            .record(Transport::Sse, before, after);
    }
}

/// Where an uncompressed chunk goes on a stream that may be compressed.
pub fn wire(gzip: &mut Option<SseGzip>, chunk: Bytes) -> Bytes {
    match gzip {
        Some(gzip) => gzip.own(&chunk),
        None => chunk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::compress::Levels;
    use crate::protocol::{ChannelName, Epoch};
    use std::io::Read;
    use std::time::Instant;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    fn score(id: u64, n: u64) -> Arc<Message> {
        let ch = ChannelName::new("score").unwrap();
        let data = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(300));
        let epoch = Epoch::parse(b"e1").unwrap();
        Arc::new(Message::new(ch, epoch, id, data.as_bytes(), Instant::now()))
    }

    #[test]
    fn whole_and_delta_events_make_one_stream_with_the_whole_values_shared_piece() {
        let (a, b) = (score(1, 1), score(2, 2));
        b.link_base(&a);
        let delta = b.delta_after(1, b.epoch).expect("a delta");
        let events = [
            SseEvent {
                // A copy, not the cached event: the kind decides, not where
                // the bytes live.
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
        let mut gzip = SseGzip::new(compression, Arc::new(Metrics::new()));
        let notice = Bytes::from_static(b"event: truncated\ndata: {}\n\n");
        let mut out = gzip
            .events(&[(1, notice.clone())], &[a.clone(), b.clone()], &events)
            .to_vec();
        out.extend_from_slice(&gzip.finish().expect("a trailer"));
        let plain = [&a.sse_event()[..], &notice, delta.sse_event(&b)].concat();
        assert_eq!(gunzip(&out), plain);
        // Asked again for a stored piece, each message hands back the piece
        // it made (compressed) for the stream: made once, then shared.
        let shared = &a.sse_deflate(STORED).bytes;
        assert!(
            out.windows(shared.len()).any(|w| w == &shared[..]),
            "the whole value went out as its shared piece"
        );
        let delta_piece = &delta.sse_deflate(&b, STORED).bytes;
        assert!(delta_piece.len() < delta.sse_event(&b).len(), "compressed");
        assert!(
            out.windows(delta_piece.len())
                .any(|w| w == &delta_piece[..]),
            "the delta went out as its shared piece"
        );
        assert!(gzip.finish().is_none(), "one trailer");
    }
}
