//! One compressed response stream stitched from pieces: what a compressed
//! SSE connection and a large compressed long-poll answer (gzip or brotli)
//! are both made of (see [`crate::protocol::compress`] for why pieces
//! concatenate).
//!
//! A [`Stitcher`] is one stream's few bytes of state (its header written
//! or not, the running CRC32 and length for the trailer). Whatever many
//! clients get — a message's SSE event, its envelope, the separator between
//! envelopes — goes in as a piece compressed once and shared (cached on the
//! message); only what is this stream's alone (an SSE `retry:` head, a
//! long-poll answer's opening and closing, keep-alives) is compressed here,
//! as a piece of its own. Pieces shorter than `compression.min_bytes` are
//! carried stored (deflate stored blocks, uncompressed brotli meta-blocks):
//! a few bytes of framing, no compression work.
//! Every piece counts in `pollbridge_compression_bytes_total` for the
//! stream's transport.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::http::encoding::Compression;
use crate::metrics::Metrics;
pub use crate::protocol::compress::STORED;
use crate::protocol::compress::{Coding, Piece, StitchedStream};
use crate::protocol::Transport;

/// One compressed stream's state.
pub struct Stitcher {
    stream: StitchedStream,
    compression: Compression,
    metrics: Arc<Metrics>,
    transport: Transport,
}

impl Stitcher {
    pub fn new(
        coding: Coding,
        compression: Compression,
        metrics: Arc<Metrics>,
        transport: Transport,
    ) -> Stitcher {
        Stitcher {
            stream: StitchedStream::new(coding),
            compression,
            metrics,
            transport,
        }
    }

    /// The coding of this stream: the one its pieces must be in.
    pub fn coding(&self) -> Coding {
        self.stream.coding()
    }

    /// The level a piece of `len` plain bytes is compressed at: stored
    /// below `compression.min_bytes`.
    pub fn level_for(&self, len: usize) -> u32 {
        if len < self.compression.min_bytes {
            return STORED;
        }
        match self.coding() {
            Coding::Gzip => self.compression.levels.gzip.max(1),
            // Qualities 0 and 1 can't make pieces (see compress.rs).
            Coding::Brotli => self.compression.levels.brotli.max(2),
        }
    }

    /// Appends a piece (shared, or made by [`own`](Self::own)) to `out`.
    pub fn push(&mut self, piece: &Piece, out: &mut BytesMut) {
        let before = out.len();
        self.stream.push(piece, out);
        self.count(piece.plain_len, out.len() - before);
    }

    /// Appends bytes of this stream alone, compressed now, to `out`.
    pub fn push_own(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let piece = Piece::new(self.coding(), chunk, self.level_for(chunk.len()));
        self.push(&piece, out);
    }

    /// Bytes of this stream alone, compressed now.
    pub fn own(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(chunk.len() / 2 + 32);
        self.push_own(chunk, &mut out);
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
            .record(self.transport, before, after);
    }
}
