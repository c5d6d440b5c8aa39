//! gzip and brotli encodings of the gateway's HTTP answers, and the pieces
//! a stitched stream is made of.
//!
//! An answer shared by many clients (one message's long-poll answer, a
//! bridged copy) is compressed once and the result shared, so these are
//! plain functions of bytes. A stitched stream (an SSE connection, a large
//! long-poll answer) is one compressed stream per client whose content is
//! mostly shared: each shared part is compressed on its own into a
//! [`Piece`], and a client's stream is a header, the pieces it gets, in
//! order, and an end ([`StitchedStream`]). Nothing is compressed per client
//! but what is its own.
//!
//! - **gzip**: a piece is raw deflate from a fresh compressor, sync-flushed,
//!   without a final block. Such pieces concatenate into one valid deflate
//!   stream (each ends on a byte boundary and none refers back across its
//!   start); the end is an empty final block and the trailer, whose CRC32
//!   is combined from the pieces' CRCs.
//! - **brotli**: a piece is a *bare, catable, byte-aligned* brotli stream
//!   (the `brotli` crate's `catable` / `bare_stream` / `byte_align`
//!   parameters): no stream header and no last meta-block, its first two
//!   bytes stored (so the literal context of the bytes before it does not
//!   matter), no back-reference or distance-cache entry reaching before its
//!   start and no static-dictionary reference (whose meaning depends on the
//!   position in the stream), ending on a byte boundary. The stream header
//!   is the window bits followed by an empty metadata block (padding to a
//!   byte), the end a last, empty meta-block. Brotli qualities 0 and 1 use
//!   encoders that ignore `catable`, so pieces are made at quality 2 or
//!   more. Small pieces are stored: uncompressed meta-blocks, built here.
//!
//! Both kinds of piece end on a boundary the decoder flushes at, so a
//! client decodes each SSE event as soon as its piece arrives.

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
    let piece = Piece::deflate(data, level);
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
/// once): what ends a gzip stream of sync-flushed pieces.
pub const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// A brotli stream's header: window bits 18 (`0011`), then an empty
/// metadata meta-block (not last, `MNIBBLES` = 0, no skip bytes) padding to
/// a byte boundary, where pieces start.
pub const BROTLI_HEADER: [u8; 2] = [0x63, 0x00];

/// A brotli stream's end: a last, empty meta-block.
pub const BROTLI_END: [u8; 1] = [0x03];

/// The brotli window of stitched streams (the header's): pieces are made
/// with at most this window.
const STITCHED_BROTLI_WINDOW_BITS: u32 = 18;

/// Level 0 for either coding: stored, not compressed.
pub const STORED: u32 = 0;

/// Some bytes compressed on their own into a piece any stitched stream of
/// its coding can carry (see the module doc), with the CRC32 and length of
/// the bytes (a gzip trailer needs them).
#[derive(Debug, Clone)]
pub struct Piece {
    /// The compressed bytes.
    pub bytes: Bytes,
    /// The CRC32 of the uncompressed bytes (gzip pieces only).
    crc: crc32fast::Hasher,
    /// Length of the uncompressed bytes.
    pub plain_len: usize,
}

impl Piece {
    /// `data` as a piece of `coding` at `level` (gzip 1-9, brotli quality
    /// 2-11; [`STORED`]: not compressed).
    pub fn new(coding: Coding, data: &[u8], level: u32) -> Piece {
        match coding {
            Coding::Gzip => Piece::deflate(data, level),
            Coding::Brotli => Piece::brotli(data, level),
        }
    }

    /// `data` deflated at `level` (0: stored blocks), sync-flushed.
    pub fn deflate(data: &[u8], level: u32) -> Piece {
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
        Piece {
            bytes: Bytes::from(out),
            crc,
            plain_len: data.len(),
        }
    }

    /// `data` as a bare, catable, byte-aligned brotli piece at `quality`
    /// (at least 2), or stored meta-blocks for [`STORED`].
    pub fn brotli(data: &[u8], quality: u32) -> Piece {
        let bytes = if quality == STORED || data.is_empty() {
            brotli_stored(data)
        } else {
            // A window no larger than the piece needs (less to allocate),
            // never larger than the stream header's.
            let needed = usize::BITS - (data.len() + 16).leading_zeros();
            let params = brotli::enc::BrotliEncoderParams {
                quality: quality.clamp(2, 11) as i32,
                lgwin: needed.clamp(10, STITCHED_BROTLI_WINDOW_BITS) as i32,
                size_hint: data.len(),
                catable: true,
                appendable: true,
                bare_stream: true,
                byte_align: true,
                use_dictionary: false,
                ..Default::default()
            };
            let mut out = Vec::with_capacity(data.len() / 2 + 64);
            let mut input = data;
            brotli::BrotliCompress(&mut input, &mut out, &params)
                .expect("brotli into a Vec cannot fail");
            Bytes::from(out)
        };
        Piece {
            bytes,
            crc: crc32fast::Hasher::new(),
            plain_len: data.len(),
        }
    }
}

/// `data` as uncompressed brotli meta-blocks of at most 64 KiB: each a
/// three-byte header (not last, four nibbles of length, uncompressed,
/// padding to the byte) and the bytes as they are.
fn brotli_stored(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 3 * data.len().div_ceil(1 << 16));
    for block in data.chunks(1 << 16) {
        // Bit 0 ISLAST = 0, bits 1-2 MNIBBLES = 4 (code 0), bits 3-18
        // MLEN - 1, bit 19 ISUNCOMPRESSED = 1.
        let header = ((block.len() as u32 - 1) << 3) | (1 << 19);
        out.put_slice(&header.to_le_bytes()[..3]);
        out.put_slice(block);
    }
    out.freeze()
}

/// One client's stream made of [`Piece`]s: writes the header before the
/// first piece and keeps, for gzip, the running CRC32 and length for the
/// trailer. A few bytes per stream.
#[derive(Debug)]
pub struct StitchedStream {
    coding: Coding,
    started: bool,
    finished: bool,
    crc: crc32fast::Hasher,
    /// Uncompressed length so far (gzip's trailer keeps it modulo 2^32).
    plain_len: u64,
}

impl StitchedStream {
    pub fn new(coding: Coding) -> StitchedStream {
        StitchedStream {
            coding,
            started: false,
            finished: false,
            crc: crc32fast::Hasher::new(),
            plain_len: 0,
        }
    }

    pub fn coding(&self) -> Coding {
        self.coding
    }

    fn start(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.started = true;
            out.put_slice(match self.coding {
                Coding::Gzip => &GZIP_HEADER[..],
                Coding::Brotli => &BROTLI_HEADER[..],
            });
        }
    }

    /// Appends `piece` (a piece of this stream's coding; after the header,
    /// if it is the first) to `out`.
    pub fn push(&mut self, piece: &Piece, out: &mut BytesMut) {
        debug_assert!(!self.finished, "a piece after the end");
        self.start(out);
        out.put_slice(&piece.bytes);
        if self.coding == Coding::Gzip {
            self.crc.combine(&piece.crc);
        }
        self.plain_len += piece.plain_len as u64;
    }

    /// Appends the end of the stream (header too if nothing was sent).
    /// Once.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.start(out);
        self.finished = true;
        match self.coding {
            Coding::Gzip => {
                out.put_slice(&FINAL_EMPTY_BLOCK);
                out.put_u32_le(self.crc.clone().finalize());
                out.put_u32_le(self.plain_len as u32);
            }
            Coding::Brotli => out.put_slice(&BROTLI_END),
        }
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
        let pieces: Vec<Piece> = events.iter().map(|e| Piece::deflate(e, 6)).collect();
        let mut stream = StitchedStream::new(Coding::Gzip);
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
        let mut stream = StitchedStream::new(Coding::Gzip);
        let mut out = BytesMut::new();
        stream.finish(&mut out);
        stream.finish(&mut out);
        assert_eq!(gunzip(&out), b"");
        let mut stream = StitchedStream::new(Coding::Brotli);
        let mut out = BytesMut::new();
        stream.finish(&mut out);
        assert_eq!(unbrotli(&out), b"");
    }

    fn unbrotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .expect("valid brotli");
        out
    }

    /// What a brotli decoder gives for a stream cut after some pieces.
    fn unbrotli_prefix(data: &[u8]) -> Vec<u8> {
        let mut reader = brotli::Decompressor::new(data, 4096);
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn brotli_pieces_make_one_valid_stream_at_every_quality_and_stored() {
        // Events alike enough that a piece could refer to its predecessor
        // if it were allowed to, and unlike enough to matter.
        let events: Vec<Vec<u8>> = (0..40u64)
            .map(|i| {
                let rows: Vec<String> = (0..(i * 7 % 40))
                    .map(|j| format!("[{}.25,{},\"v{}\"]", 40000 - j, (j * 7 + i) % 90, j % 3))
                    .collect();
                format!(
                    "id: {i}\ndata: {{\"n\":{i},\"rows\":[{}]}}\n\n",
                    rows.join(",")
                )
                .into_bytes()
            })
            .collect();
        for quality in [STORED, 1, 2, 5, 9, 11] {
            let mut stream = StitchedStream::new(Coding::Brotli);
            let mut out = BytesMut::new();
            let mut prefix_lens = Vec::new();
            for (i, event) in events.iter().enumerate() {
                // Stored and compressed pieces mixed, as on a real stream.
                let q = if i % 5 == 4 { STORED } else { quality };
                stream.push(&Piece::brotli(event, q), &mut out);
                prefix_lens.push(out.len());
            }
            stream.finish(&mut out);
            assert_eq!(unbrotli(&out), events.concat(), "quality {quality}");
            // Each prefix decodes to exactly the events so far.
            for (i, len) in prefix_lens.iter().enumerate().step_by(3) {
                assert_eq!(
                    unbrotli_prefix(&out[..*len]),
                    events[..=i].concat(),
                    "quality {quality}, after event {i}"
                );
            }
            if quality >= 2 {
                let plain: usize = events.iter().map(Vec::len).sum();
                assert!(
                    out.len() * 4 < plain * 3,
                    "compressed: {} of {plain}",
                    out.len()
                );
            }
        }
        // A stored piece longer than one meta-block.
        let big = vec![b'z'; 200_000];
        let mut stream = StitchedStream::new(Coding::Brotli);
        let mut out = BytesMut::new();
        stream.push(&Piece::brotli(&big, STORED), &mut out);
        stream.finish(&mut out);
        assert_eq!(unbrotli(&out), big);
    }
}
