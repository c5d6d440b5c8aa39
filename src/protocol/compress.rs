//! gzip and brotli encodings of the gateway's HTTP answers, and the pieces
//! an SSE stream is compressed from.
//!
//! An answer shared by many clients (one message's long-poll answer, a
//! bridged copy) is compressed once and the result shared, so these are
//! plain functions of bytes. An SSE stream is one gzip member per
//! connection, but its events are shared by every subscriber: each event
//! is deflated on its own ([`DeflatePiece`]: a fresh compressor, a sync
//! flush, no final block), and a connection's stream is its gzip header,
//! the pieces of the events it gets, in order, and — when the stream ends —
//! an empty final block and the trailer. Sync-flushed non-final deflate
//! pieces concatenate into one valid deflate stream (each ends on a byte
//! boundary and none refers back across its start), and the trailer's
//! CRC32 is combined from the pieces' CRCs ([`GzipStream`]), so nothing is
//! compressed per connection.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};

/// A content coding the gateway can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Gzip,
    Brotli,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        }
    }

    /// The coding a `Content-Encoding` token names, if it is one of these.
    pub fn from_token(token: &str) -> Option<Coding> {
        let token = token.trim();
        if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if token.eq_ignore_ascii_case("br") {
            Some(Coding::Brotli)
        } else {
            None
        }
    }
}

/// `data` decoded from `coding`, at most `limit` bytes of it: more is an
/// error (a decompression bomb costs `limit` bytes, never more), as is a
/// body that isn't valid in its coding.
pub fn decode(coding: Coding, data: &[u8], limit: usize) -> Result<Bytes, String> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Coding::Brotli => Box::new(brotli::Decompressor::new(data, 4096)),
    };
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not valid {}: {e}", coding.token()))?;
    if out.len() > limit {
        return Err(format!(
            "decodes to more than {limit} bytes ({} bomb?)",
            coding.token()
        ));
    }
    Ok(Bytes::from(out))
}

/// How hard to compress (`compression.gzip_level`, `compression.brotli_quality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// 1 (fast) to 9 (small).
    pub gzip: u32,
    /// 0 (fast) to 11 (small).
    pub brotli: u32,
}

impl Default for Levels {
    fn default() -> Self {
        Levels { gzip: 6, brotli: 5 }
    }
}

/// Brotli's window: 256 KiB bounds the encoder's memory; answers bigger
/// than that are streamed uncompressed anyway.
const BROTLI_WINDOW_BITS: u32 = 18;

/// `data` in `coding`, as one complete body.
pub fn encode(coding: Coding, data: &[u8], levels: Levels) -> Bytes {
    match coding {
        Coding::Gzip => gzip(data, levels.gzip),
        Coding::Brotli => brotli(data, levels.brotli),
    }
}

/// `data` as one gzip member.
pub fn gzip(data: &[u8], level: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() / 3 + 32);
    out.put_slice(&GZIP_HEADER);
    let piece = DeflatePiece::new(data, level);
    out.put_slice(&piece.bytes);
    out.put_slice(&FINAL_EMPTY_BLOCK);
    out.put_u32_le(piece.crc.clone().finalize());
    out.put_u32_le(data.len() as u32);
    out.freeze()
}

/// `data` as one brotli stream.
pub fn brotli(data: &[u8], quality: u32) -> Bytes {
    let mut out = Vec::with_capacity(data.len() / 3 + 32);
    {
        let mut writer =
            brotli::CompressorWriter::new(&mut out, 4096, quality.min(11), BROTLI_WINDOW_BITS);
        writer
            .write_all(data)
            .expect("writing into a Vec cannot fail");
    }
    Bytes::from(out)
}

/// A gzip header: deflate, no name, no time, unknown OS.
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// An empty final deflate block (fixed Huffman codes, end of block at
/// once): what ends a stream of sync-flushed pieces.
pub const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// Some bytes deflated on their own, sync-flushed, without a final block,
/// with their CRC32 and length: a piece any deflate stream can carry at a
/// byte boundary.
#[derive(Debug, Clone)]
pub struct DeflatePiece {
    /// The raw deflate bytes (ending with the sync flush's `00 00 ff ff`).
    pub bytes: Bytes,
    /// The CRC32 of the uncompressed bytes.
    crc: crc32fast::Hasher,
    /// Length of the uncompressed bytes.
    pub plain_len: usize,
}

impl DeflatePiece {
    /// `data` deflated at `level` (0: stored blocks, no compression).
    pub fn new(data: &[u8], level: u32) -> DeflatePiece {
        let mut compressor = Compress::new(Compression::new(level.min(9)), false);
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = compressor.total_in() as usize;
            compressor
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflate into a Vec cannot fail");
            // Done when all input is in and the flush fit in the buffer.
            if compressor.total_in() as usize == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(data);
        DeflatePiece {
            bytes: Bytes::from(out),
            crc,
            plain_len: data.len(),
        }
    }
}

/// One connection's gzip stream made of shared [`DeflatePiece`]s: writes
/// the header before the first piece and keeps the running CRC32 and
/// length for the trailer. A few bytes per connection.
#[derive(Debug, Default)]
pub struct GzipStream {
    started: bool,
    finished: bool,
    crc: crc32fast::Hasher,
    /// Uncompressed length so far (the trailer keeps it modulo 2^32).
    plain_len: u64,
}

impl GzipStream {
    pub fn new() -> GzipStream {
        GzipStream::default()
    }

    /// Appends `piece` (after the header, if it is the first) to `out`.
    pub fn push(&mut self, piece: &DeflatePiece, out: &mut BytesMut) {
        debug_assert!(!self.finished, "a piece after the trailer");
        if !self.started {
            self.started = true;
            out.put_slice(&GZIP_HEADER);
        }
        out.put_slice(&piece.bytes);
        self.crc.combine(&piece.crc);
        self.plain_len += piece.plain_len as u64;
    }

    /// Appends the end of the stream (header too if nothing was sent):
    /// the empty final block and the trailer. Once.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        if !self.started {
            self.started = true;
            out.put_slice(&GZIP_HEADER);
        }
        self.finished = true;
        out.put_slice(&FINAL_EMPTY_BLOCK);
        out.put_u32_le(self.crc.clone().finalize());
        out.put_u32_le(self.plain_len as u32);
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn gzip_and_brotli_round_trip() {
        let data =
            br#"{"messages":[{"channel":"a","id":1,"data":{"x":[1,2,3,4,5,6,7]}}]}"#.repeat(20);
        assert_eq!(gunzip(&gzip(&data, 6)), data);
        let mut out = Vec::new();
        brotli::Decompressor::new(&brotli(&data, 5)[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert_eq!(gunzip(&gzip(b"", 6)), b"");
    }

    #[test]
    fn shared_pieces_make_one_valid_gzip_stream() {
        let events: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                format!(
                    "id: {i}\ndata: {{\"n\":{i},\"pad\":\"{}\"}}\n\n",
                    "x".repeat(i * 50)
                )
                .into_bytes()
            })
            .collect();
        let pieces: Vec<DeflatePiece> = events.iter().map(|e| DeflatePiece::new(e, 6)).collect();
        let mut stream = GzipStream::new();
        let mut out = BytesMut::new();
        let mut prefix_lens = Vec::new();
        for p in &pieces {
            stream.push(p, &mut out);
            prefix_lens.push(out.len());
        }
        stream.finish(&mut out);
        assert_eq!(gunzip(&out), events.concat());
        // Each prefix inflates to exactly the events so far (incremental
        // decoding: a sync flush hands the decoder all it has).
        for (i, len) in prefix_lens.iter().enumerate() {
            let mut inflater = flate2::Decompress::new(false);
            let mut plain = Vec::with_capacity(10_000);
            inflater
                .decompress_vec(&out[10..*len], &mut plain, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(plain, events[..=i].concat());
        }
    }

    #[test]
    fn decoding_is_bounded() {
        let data = vec![b'a'; 100_000];
        for coding in [Coding::Gzip, Coding::Brotli] {
            let packed = encode(coding, &data, Levels::default());
            assert_eq!(decode(coding, &packed, 100_000).unwrap(), data);
            let err = decode(coding, &packed, 99_999).unwrap_err();
            assert!(err.contains("more than 99999"), "{err}");
            assert!(decode(coding, b"not compressed at all", 1000).is_err());
        }
    }

    #[test]
    fn an_empty_stream_is_valid() {
        let mut stream = GzipStream::new();
        let mut out = BytesMut::new();
        stream.finish(&mut out);
        stream.finish(&mut out);
        assert_eq!(gunzip(&out), b"");
    }
}
