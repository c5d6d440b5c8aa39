//! permessage-deflate (RFC 7692) payloads: a message deflated on its own
//! (no context carried from one message to the next, so the result can be
//! shared by every connection that negotiated the extension), and client
//! messages inflated under a size limit.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The RSV1 bit of a frame's first byte: "this message is compressed".
pub const RSV1: u8 = 0x40;

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 removes
/// it from the frame and the receiver appends it again (§7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compression level of shared frames: each message is compressed once for
/// every subscriber, so the default level's extra CPU is paid only once.
const LEVEL: u32 = 6;

/// Smallest and largest LZ77 window (as a power of two) zlib can deflate
/// with. A client may ask for 8 (RFC 7692 allows 8 … 15), which zlib
/// can't produce: such a client gets compressed only messages of at most
/// 256 bytes (no back-reference can reach further than that), the rest
/// uncompressed, which the RFC allows at any time.
pub const MIN_WINDOW_BITS: u8 = 9;
pub const MAX_WINDOW_BITS: u8 = 15;

/// `payload` deflated on its own with a `2^window_bits` window, as
/// permessage-deflate carries it: raw deflate, sync-flushed, the trailing
/// `00 00 ff ff` removed.
pub fn deflate_message(payload: &[u8], window_bits: u8) -> Vec<u8> {
    let bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
    let mut c = Compress::new_with_window_bits(Compression::new(LEVEL), false, bits);
    sync_flushed(&mut c, payload)
}

/// `payload` through `c` (which may hold earlier messages' context), as
/// permessage-deflate carries it: sync-flushed, the trailing
/// `00 00 ff ff` removed.
fn sync_flushed(c: &mut Compress, payload: &[u8]) -> Vec<u8> {
    let start = c.total_in();
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let done = (c.total_in() - start) as usize;
        c.compress_vec(&payload[done..], &mut out, FlushCompress::Sync)
            .expect("deflating a complete in-memory buffer cannot fail");
        // Finished once all input is in and the flush did not fill the
        // buffer (a full buffer may hold a partial flush).
        if (c.total_in() - start) as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    out
}

/// One connection's own compressor, for a client that lets the server
/// keep its context (`websocket.deflate_context_takeover`): each message
/// may refer back into the ones before it, so similar messages compress
/// better, at the price of this state (about 315 KiB at a 15-bit window,
/// measured in BENCHMARKS.md) for the connection's life. Every message that goes through it must be
/// sent: the client's inflater follows the same history.
pub struct ContextDeflater {
    inner: Compress,
}

impl ContextDeflater {
    /// A compressor with a `2^window_bits` window (9 … 15).
    pub fn new(window_bits: u8) -> ContextDeflater {
        let bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        ContextDeflater {
            inner: Compress::new_with_window_bits(Compression::new(LEVEL), false, bits),
        }
    }

    /// A complete, final, unmasked data frame with RSV1 set around
    /// `payload` deflated after the messages before it.
    pub fn frame(&mut self, opcode: u8, payload: &[u8]) -> Bytes {
        let deflated = sync_flushed(&mut self.inner, payload);
        super::ws_frame::encode_first(0x80 | RSV1 | opcode, &deflated)
    }
}

/// A complete, final, unmasked text frame with RSV1 set around `payload`
/// deflated on its own.
pub fn encode_text_deflated(payload: &[u8], window_bits: u8) -> Bytes {
    encode_deflated(super::ws_frame::OP_TEXT, payload, window_bits)
}

/// A complete, final, unmasked data frame for a peer that accepts a
/// `2^window_bits` window: RSV1 set around `payload` deflated on its own,
/// or the plain frame when that window can't be honoured (8 bits, for
/// more than 256 bytes).
pub fn encode_deflated(opcode: u8, payload: &[u8], window_bits: u8) -> Bytes {
    if window_bits < MIN_WINDOW_BITS && payload.len() > 1 << window_bits {
        return super::ws_frame::encode(opcode, payload);
    }
    let deflated = deflate_message(payload, window_bits);
    super::ws_frame::encode_first(0x80 | RSV1 | opcode, &deflated)
}

/// Why a compressed client message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message size limit (close 1009).
    TooBig,
    /// Not a valid deflate stream (close 1007, invalid payload data).
    Corrupt,
}

/// Inflates client messages. With context takeover (the client did not
/// agree to `client_no_context_takeover`) one inflater lives as long as
/// the connection, since each message may refer back to the previous ones;
/// otherwise it is reset after every message.
pub struct Inflater {
    inner: Decompress,
    keep_context: bool,
}

impl Inflater {
    pub fn new(keep_context: bool) -> Inflater {
        Inflater {
            // 15 bits: enough for any window a client may use.
            inner: Decompress::new(false),
            keep_context,
        }
    }

    /// Inflates one whole message's payload (the frames' payloads
    /// concatenated), refusing to produce more than `max` bytes: a small
    /// bomb is stopped after `max + 1` bytes of output, not inflated.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let result = self.inflate_inner(compressed, max);
        if !self.keep_context || result.is_err() {
            self.inner.reset(false);
        }
        result
    }

    fn inflate_inner(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        // One byte of room past the limit tells "exactly max" from "more".
        let limit = max.saturating_add(1);
        let mut out = Vec::with_capacity((compressed.len() * 4).clamp(64, limit));
        for (i, input) in [compressed, &SYNC_TAIL[..]].into_iter().enumerate() {
            let mut used = 0;
            loop {
                if out.len() == out.capacity() {
                    let grow = out.capacity().max(64).min(limit - out.len());
                    out.reserve_exact(grow);
                }
                let (in_before, out_before) = (self.inner.total_in(), out.len());
                let status = self
                    .inner
                    .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                used += (self.inner.total_in() - in_before) as usize;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // The client ended the stream (BFINAL): nothing may
                    // follow in the message, and the next starts afresh.
                    if i == 0 && used < input.len() {
                        return Err(InflateError::Corrupt);
                    }
                    self.inner.reset(false);
                    return Ok(out);
                }
                let stuck = used == input.len() || self.inner.total_in() == in_before;
                if stuck && out.len() < out.capacity() && out.len() == out_before {
                    break;
                }
                if used == input.len() && out.len() < out.capacity() {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate_with_flate2(deflated: &[u8]) -> Vec<u8> {
        let mut input = deflated.to_vec();
        input.extend_from_slice(&SYNC_TAIL);
        let mut out = Vec::new();
        // A sync-flushed stream has no end: read until the data runs out.
        let mut reader = flate2::read::DeflateDecoder::new(&input[..]);
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut s = String::from("{\"board\":[");
        let mut i = 0;
        while s.len() < len {
            s.push_str(&format!(
                "{{\"team\":\"t{}\",\"score\":{}}},",
                i % 17,
                i * 7 % 101
            ));
            i += 1;
        }
        s.into_bytes()
    }

    #[test]
    fn deflated_frames_inflate_back_to_the_payload() {
        for len in [0, 1, 100, 3000, 70_000] {
            let payload = sample(len);
            for bits in [9, 12, 15] {
                let deflated = deflate_message(&payload, bits);
                assert!(!deflated.ends_with(&SYNC_TAIL));
                assert_eq!(
                    inflate_with_flate2(&deflated),
                    payload,
                    "len {len} bits {bits}"
                );
                let mut ours = Inflater::new(false);
                assert_eq!(ours.inflate(&deflated, 100_000).unwrap(), payload);
            }
        }
        let payload = sample(3000);
        let frame = encode_text_deflated(&payload, 15);
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        assert_eq!(frame[1], 126);
        let len = u16::from_be_bytes([frame[2], frame[3]]) as usize;
        assert_eq!(frame.len(), 4 + len);
        assert!(len < payload.len() / 3, "JSON compresses: {len}");
        assert_eq!(inflate_with_flate2(&frame[4..]), payload);
    }

    #[test]
    fn a_context_deflater_refers_back_to_earlier_messages() {
        let mut ours = ContextDeflater::new(15);
        let mut client = Inflater::new(true);
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let frame = ours.frame(super::super::ws_frame::OP_TEXT, &sample(2000));
            assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
            let body = frame_body(&frame);
            assert_eq!(client.inflate(body, 10_000).unwrap(), sample(2000));
            sizes.push(body.len());
        }
        // The second and third are back-references to the first: far
        // smaller than a message deflated on its own.
        let alone = deflate_message(&sample(2000), 15).len();
        assert_eq!(sizes[0], alone);
        assert!(sizes[1] * 5 < alone, "{sizes:?} vs {alone}");
        // Without the context they can't be inflated.
        let next = ours.frame(1, &sample(2000));
        assert!(Inflater::new(false)
            .inflate(frame_body(&next), 10_000)
            .is_err());
    }

    /// A server frame's payload (no mask).
    fn frame_body(frame: &[u8]) -> &[u8] {
        match frame[1] & 0x7f {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = deflate_message(&vec![b'a'; 10_000_000], 15);
        assert!(bomb.len() < 20_000);
        let mut inflater = Inflater::new(true);
        assert_eq!(inflater.inflate(&bomb, 65_536), Err(InflateError::TooBig));
        // Exactly at the limit is fine.
        let exact = deflate_message(&vec![b'b'; 65_536], 15);
        assert_eq!(inflater.inflate(&exact, 65_536).unwrap().len(), 65_536);
        assert_eq!(
            Inflater::new(false).inflate(b"\xff\xff\xff", 100),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn context_takeover_messages_refer_back() {
        // A client compressor that keeps its context: the second message
        // is mostly a back-reference into the first.
        let mut client = Compress::new(Compression::new(6), false);
        let mut frames = Vec::new();
        for _ in 0..2 {
            let mut out = Vec::with_capacity(4096);
            client
                .compress_vec(&sample(1000), &mut out, FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - 4);
            frames.push(out);
        }
        assert!(frames[1].len() < frames[0].len() / 4);
        let mut keeping = Inflater::new(true);
        for frame in &frames {
            assert_eq!(keeping.inflate(frame, 10_000).unwrap(), sample(1000));
        }
        // Without the context the second can't be inflated.
        let mut fresh = Inflater::new(false);
        fresh.inflate(&frames[0], 10_000).unwrap();
        assert!(fresh.inflate(&frames[1], 10_000).is_err());
    }
}
