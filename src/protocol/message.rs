//! A published message and its encodings, each made once and shared by
//! every subscriber (`Bytes` clones are reference counts, not copies).

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::compress::{Coding, Levels, Piece};
use super::{ChannelName, Epoch};

/// What a publisher sent, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A JSON value, already validated and with insignificant whitespace
    /// removed (so it fits on one SSE `data:` line).
    Json(Bytes),
    /// Any other body, delivered as a JSON string.
    Text(String),
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    BadJson(String),
    #[error("body is not valid UTF-8 text")]
    NotUtf8,
}

impl Payload {
    /// A JSON payload from raw bytes: checked by [`check_json`] (the one
    /// check of every publish path: HTTP, batch, WebSocket, bridge), then
    /// minified. Numbers keep the digits they were sent with.
    ///
    /// [`check_json`]: super::json_check::check_json
    pub fn json(raw: &[u8]) -> Result<Payload, PayloadError> {
        super::json_check::check_json(raw).map_err(PayloadError::BadJson)?;
        Ok(Payload::Json(minify_json(raw)))
    }

    /// A text payload from raw bytes.
    pub fn text(raw: &[u8]) -> Result<Payload, PayloadError> {
        std::str::from_utf8(raw)
            .map(|s| Payload::Text(s.to_owned()))
            .map_err(|_| PayloadError::NotUtf8)
    }

    /// The `data` member of the envelope, as JSON text.
    pub fn to_json_bytes(&self) -> Bytes {
        match self {
            Payload::Json(bytes) => bytes.clone(),
            Payload::Text(text) => {
                Bytes::from(serde_json::to_vec(text).expect("a string always serialises"))
            }
        }
    }
}

/// Removes whitespace outside strings from valid JSON text.
fn minify_json(raw: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in raw {
        if in_string {
            out.put_u8(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            if b == b'"' {
                in_string = true;
            }
            out.put_u8(b);
        }
    }
    out.freeze()
}

/// A message as the bus delivers it.
#[derive(Debug)]
pub struct Message {
    pub channel: ChannelName,
    /// The channel's sequence number: 1, 2, 3… the same on every node.
    pub id: u64,
    /// The sequence `id` belongs to (see [`Epoch`]).
    pub epoch: Epoch,
    /// Length of the `data` value inside the envelope: the payload bytes.
    pub payload_len: usize,
    /// When this node's bus accepted (or received) the message; delivery
    /// latency is measured from here.
    pub published_at: Instant,
    /// `{"channel":"…","id":N,"data":…}`, encoded once.
    pub envelope: Bytes,
    ws_frame: OnceLock<Bytes>,
    /// The frame for connections that negotiated permessage-deflate.
    ws_deflated: OnceLock<Bytes>,
    /// Its variants for smaller windows, made only if a client asks.
    ws_deflated_small: OnceLock<Box<SmallWindowFrames>>,
    sse_event: OnceLock<Bytes>,
    /// [`sse_event`](Self::sse_event) as one HTTP/1.1 chunk, made only
    /// for SSE streams the publisher writes to (lean path).
    sse_chunk: OnceLock<Bytes>,
    poll_answer: OnceLock<Bytes>,
    /// The whole HTTP/1.1 answer (head and body) a parked long-poll gets,
    /// per head variant; boxed, made only on the lean path.
    poll_http: OnceLock<Box<[OnceLock<Bytes>; 2]>>,
    /// The compressed encodings, made on first demand (see [`compress`]).
    ///
    /// [`compress`]: super::compress
    compressed: Compressed,
    /// On `state` channels: the base this message may be a delta against,
    /// and its delta encodings ([`super::delta`]).
    pub(super) delta: super::delta::DeltaSlot,
}

/// A message's compressed encodings, each made once and shared.
#[derive(Debug, Default)]
struct Compressed {
    poll_gzip: OnceLock<Bytes>,
    poll_brotli: OnceLock<Bytes>,
    /// Boxed: only messages that go out on a stitched stream (a compressed
    /// SSE stream, a large compressed long-poll answer) have pieces.
    pieces: OnceLock<Box<Pieces>>,
}

/// A message's pieces for stitched compressed streams
/// ([`crate::transport::stitch`]), per coding (gzip, brotli), each made
/// once and shared.
#[derive(Debug, Default)]
struct Pieces {
    sse_event: [OnceLock<Piece>; 2],
    envelope: [OnceLock<Piece>; 2],
}

/// The slot of `coding` in a per-coding pair.
pub(super) fn coding_slot(coding: Coding) -> usize {
    match coding {
        Coding::Gzip => 0,
        Coding::Brotli => 1,
    }
}

impl Message {
    /// Builds the envelope around already-encoded `data` JSON.
    pub fn new(
        channel: ChannelName,
        epoch: Epoch,
        id: u64,
        data: &[u8],
        published_at: Instant,
    ) -> Message {
        let mut id_buf = itoa::Buffer::new();
        let id_text = id_buf.format(id);
        let mut env = BytesMut::with_capacity(34 + channel.as_str().len() + data.len());
        env.put_slice(b"{\"channel\":\"");
        // Channel names are restricted to characters that need no escaping.
        env.put_slice(channel.as_str().as_bytes());
        env.put_slice(b"\",\"id\":");
        env.put_slice(id_text.as_bytes());
        env.put_slice(b",\"data\":");
        env.put_slice(data);
        env.put_u8(b'}');
        Message {
            channel,
            id,
            epoch,
            payload_len: data.len(),
            published_at,
            envelope: env.freeze(),
            ws_frame: OnceLock::new(),
            ws_deflated: OnceLock::new(),
            ws_deflated_small: OnceLock::new(),
            sse_event: OnceLock::new(),
            sse_chunk: OnceLock::new(),
            poll_answer: OnceLock::new(),
            poll_http: OnceLock::new(),
            compressed: Compressed::default(),
            delta: Default::default(),
        }
    }

    /// The `data` value inside the envelope, as JSON text.
    pub fn data(&self) -> &[u8] {
        // The envelope ends with `"data":<data>}`.
        let end = self.envelope.len() - 1;
        &self.envelope[end - self.payload_len..end]
    }

    /// The envelope as one complete, unmasked WebSocket text frame.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws_frame
            .get_or_init(|| super::ws_frame::encode_text(&self.envelope))
    }

    /// The frame for a connection that negotiated permessage-deflate with
    /// a `2^window_bits` window: the envelope deflated once (no context
    /// takeover, RSV1 set) and shared by every such connection. The first
    /// caller decides with `compress` whether this message is compressed
    /// at all (size, channel rule); if not, or if deflating does not make
    /// it smaller, this is the plain [`ws_frame`](Self::ws_frame).
    pub fn ws_frame_deflated(
        &self,
        window_bits: u8,
        compress: impl FnOnce(&Message) -> bool,
    ) -> &Bytes {
        use super::deflate::{encode_text_deflated, MAX_WINDOW_BITS, MIN_WINDOW_BITS, RSV1};
        let full = self.ws_deflated.get_or_init(|| {
            let plain = self.ws_frame();
            if !compress(self) {
                return plain.clone();
            }
            let deflated = encode_text_deflated(&self.envelope, MAX_WINDOW_BITS);
            if deflated.len() < plain.len() {
                deflated
            } else {
                plain.clone()
            }
        });
        // Back-references never reach further than the message is long, so
        // the 15-bit frame also fits any window at least that large.
        let bits = window_bits.min(MAX_WINDOW_BITS);
        if full[0] & RSV1 == 0 || bits == MAX_WINDOW_BITS || self.envelope.len() <= 1 << bits {
            return full;
        }
        if bits < MIN_WINDOW_BITS {
            // A window zlib can't produce: uncompressed (see deflate.rs).
            return self.ws_frame();
        }
        let table = self.ws_deflated_small.get_or_init(Default::default);
        table[(bits - MIN_WINDOW_BITS) as usize]
            .get_or_init(|| encode_text_deflated(&self.envelope, bits))
    }

    /// The long-poll answer carrying this message alone:
    /// `{"messages":[<envelope>],"last_id":N,"truncated":false,"cursor":"N-E"}`.
    pub fn poll_answer(&self) -> &Bytes {
        self.poll_answer.get_or_init(|| {
            super::poll_answer::encode_answer(
                std::iter::once(&self.envelope),
                self.id,
                self.epoch,
                false,
                false,
            )
        })
    }

    /// The whole HTTP/1.1 answer of a poll carrying this message alone:
    /// the head `head` makes for a body of that length (one of two head
    /// variants, `variant` 0 or 1), then [`poll_answer`](Self::poll_answer).
    /// Made once per message and variant and shared by every parked poll
    /// the publisher answers (`transport::longpoll_park`).
    pub fn poll_http_answer(&self, variant: usize, head: impl FnOnce(usize) -> Bytes) -> &Bytes {
        let slots = self.poll_http.get_or_init(Default::default);
        slots[variant.min(1)].get_or_init(|| {
            let body = self.poll_answer();
            let head = head(body.len());
            let mut out = BytesMut::with_capacity(head.len() + body.len());
            out.put_slice(&head);
            out.put_slice(body);
            out.freeze()
        })
    }

    /// [`sse_event`](Self::sse_event) framed as one HTTP/1.1 chunk: the
    /// size line `size_line` makes for its length, the event, `\r\n` —
    /// the bytes the lean path writes for a chunk carrying this event
    /// alone. Made once and shared by every SSE stream the publisher
    /// writes to (`transport::sse_direct`).
    pub fn sse_http_chunk(&self, size_line: impl FnOnce(usize) -> Bytes) -> &Bytes {
        self.sse_chunk.get_or_init(|| {
            let event = self.sse_event();
            let size = size_line(event.len());
            let mut out = BytesMut::with_capacity(size.len() + event.len() + 2);
            out.put_slice(&size);
            out.put_slice(event);
            out.put_slice(b"\r\n");
            out.freeze()
        })
    }

    /// [`poll_answer`](Self::poll_answer) in `coding`, compressed once.
    pub fn poll_answer_encoded(&self, coding: Coding, levels: Levels) -> &Bytes {
        let cell = match coding {
            Coding::Gzip => &self.compressed.poll_gzip,
            Coding::Brotli => &self.compressed.poll_brotli,
        };
        cell.get_or_init(|| super::compress::encode(coding, self.poll_answer(), levels))
    }

    /// [`sse_event`](Self::sse_event) compressed on its own in `coding`,
    /// once (at the first caller's `level`): the piece every compressed SSE
    /// stream of that coding carries for this message.
    pub fn sse_piece(&self, coding: Coding, level: u32) -> &Piece {
        self.pieces().sse_event[coding_slot(coding)]
            .get_or_init(|| Piece::new(coding, self.sse_event(), level))
    }

    /// The envelope compressed on its own in `coding`, once: the piece
    /// every large compressed long-poll answer of that coding carries.
    pub fn envelope_piece(&self, coding: Coding, level: u32) -> &Piece {
        self.pieces().envelope[coding_slot(coding)]
            .get_or_init(|| Piece::new(coding, &self.envelope, level))
    }

    fn pieces(&self) -> &Pieces {
        self.compressed.pieces.get_or_init(Default::default)
    }

    /// The envelope as one SSE event: `id: N-E\ndata: <envelope>\n\n` (the
    /// id is the cursor, so a browser's `Last-Event-ID` carries the epoch).
    pub fn sse_event(&self) -> &Bytes {
        self.sse_event.get_or_init(|| {
            let mut out = BytesMut::with_capacity(sse_head_len(self) + self.envelope.len() + 2);
            put_sse_head(&mut out, self);
            out.put_slice(&self.envelope);
            out.put_slice(b"\n\n");
            out.freeze()
        })
    }
}

/// Deflated frames for windows of 2^9 … 2^14 bytes.
type SmallWindowFrames = [OnceLock<Bytes>; 6];

/// What precedes a message's envelope in its SSE event: `id: N-E\ndata: `
/// (`id: N` while the channel has no epoch). One encoding for the cached
/// event and the streamed replay.
pub(crate) fn put_sse_head(out: &mut BytesMut, msg: &Message) {
    out.put_slice(b"id: ");
    out.put_slice(itoa::Buffer::new().format(msg.id).as_bytes());
    if !msg.epoch.is_none() {
        out.put_u8(b'-');
        out.put_slice(msg.epoch.encode(&mut [0; 16]).as_bytes());
    }
    out.put_slice(b"\ndata: ");
}

/// The length of [`put_sse_head`]'s bytes for `msg`.
pub(crate) fn sse_head_len(msg: &Message) -> usize {
    let epoch = if msg.epoch.is_none() {
        0
    } else {
        1 + msg.epoch.encode(&mut [0; 16]).len()
    };
    b"id: ".len() + itoa::Buffer::new().format(msg.id).len() + epoch + b"\ndata: ".len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let ch = ChannelName::new("news").unwrap();
        let epoch = Epoch::parse(b"e9").unwrap();
        let msg = Message::new(ch, epoch, 42, br#"{"a":1}"#, Instant::now());
        assert_eq!(
            &msg.envelope[..],
            br#"{"channel":"news","id":42,"data":{"a":1}}"#
        );
        assert_eq!(msg.payload_len, 7);
        assert_eq!(msg.data(), br#"{"a":1}"#);
        let parsed: serde_json::Value = serde_json::from_slice(&msg.envelope).unwrap();
        assert_eq!(parsed["data"]["a"], 1);
        assert_eq!(
            &msg.sse_event()[..],
            &b"id: 42-e9\ndata: {\"channel\":\"news\",\"id\":42,\"data\":{\"a\":1}}\n\n"[..]
        );
    }

    #[test]
    fn deflated_frames_are_made_once_and_fall_back_to_plain() {
        let ch = ChannelName::new("board").unwrap();
        let data = format!("[{}]", vec!["{\"team\":\"x\",\"score\":1}"; 100].join(","));
        let msg = Message::new(ch.clone(), Epoch::NONE, 1, data.as_bytes(), Instant::now());
        let mut asked = 0;
        let a = msg.ws_frame_deflated(15, |_| {
            asked += 1;
            true
        });
        assert_eq!(a[0], 0xC1);
        assert!(a.len() < msg.ws_frame().len() / 5);
        // Cached: the same buffer, the policy asked once.
        let b = msg.ws_frame_deflated(15, |_| unreachable!());
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(asked, 1);
        // A smaller window than the message: its own (cached) variant.
        let w9 = msg.ws_frame_deflated(9, |_| unreachable!());
        assert_eq!(w9[0], 0xC1);
        assert_eq!(w9.as_ptr(), msg.ws_frame_deflated(9, |_| true).as_ptr());
        // 8 bits can't be produced for a message this long: plain.
        assert_eq!(msg.ws_frame_deflated(8, |_| true), msg.ws_frame());
        // The policy said no: plain for everyone.
        let no = Message::new(ch, Epoch::NONE, 2, data.as_bytes(), Instant::now());
        assert_eq!(no.ws_frame_deflated(15, |_| false), no.ws_frame());
    }

    #[test]
    fn json_payloads_are_minified_but_strings_kept() {
        let p = Payload::json(b"{ \"a\" : [1, 2],\n \"s\": \"x  y\\\" z\" }").unwrap();
        assert_eq!(
            p.to_json_bytes(),
            Bytes::from_static(br#"{"a":[1,2],"s":"x  y\" z"}"#)
        );
        assert!(matches!(
            Payload::json(b"{nope"),
            Err(PayloadError::BadJson(_))
        ));
    }

    #[test]
    fn text_payloads_become_json_strings() {
        let p = Payload::text(b"line1\nline2 \"q\"").unwrap();
        assert_eq!(
            p.to_json_bytes(),
            Bytes::from_static(br#""line1\nline2 \"q\"""#)
        );
        assert_eq!(Payload::text(&[0xff, 0xfe]), Err(PayloadError::NotUtf8));
    }
}
