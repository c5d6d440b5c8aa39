//! A gzip-compressed SSE stream whose events are compressed once per
//! message and shared by every connection.
//!
//! One gzip member per connection ([`GzipStream`]): its header before the
//! first bytes, then, per message, the message's cached [`DeflatePiece`]
//! (its SSE event deflated on its own with a fresh compressor and a sync
//! flush, no final block — made once, on the first connection that sends
//! it), and, when the stream ends, an empty final block and the trailer
//! (CRC32 combined from the pieces', length). Because each piece ends with
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
use crate::protocol::{Message, Transport};

/// Deflate level 0: stored blocks.
const STORED: u32 = 0;

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
        events: &[Bytes],
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
            plain += event.len();
            let level = self.level_for(event.len());
            if event.as_ptr() == m.sse_event().as_ptr() {
                // The whole value: its piece is deflated once and shared.
                self.stream.push(m.sse_deflate(level), &mut out);
            } else {
                // A delta against this client's value: deflated here.
                self.stream.push(&DeflatePiece::new(event, level), &mut out);
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
