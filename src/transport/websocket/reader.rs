//! The reading side of a WebSocket session: bytes in, events out.
//!
//! The session reads whatever the client sent into [`Decoder::buffer`]
//! (only once bytes are there: an idle connection holds no read buffer),
//! then [`Decoder::decode`] turns every *complete* frame in it into
//! events. A frame is known complete from its header alone (the scan
//! below), and only complete frames are handed to fastwebsockets, over an
//! in-memory cursor: so its `read_frame`, which is not cancel-safe and
//! keeps an 8 KiB buffer, never waits on the socket and lives only while
//! bytes are being decoded. Automatic pong and close are off: the session
//! answers them itself, after checking close frames the way RFC 6455 asks
//! (fastwebsockets would echo an over-long one).

use fastwebsockets::{OpCode, WebSocketError};

use super::deflate::ClientInflate;
use crate::protocol::deflate::{InflateError, RSV1};
use crate::protocol::ws_frame::MAX_CONTROL_PAYLOAD;

/// What the reader tells the session.
#[derive(Debug)]
pub enum Inbound {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame, valid: echo this code.
    Close(u16),
    /// The client broke the protocol: close with this code and reason.
    Violation(u16, &'static str),
}

/// Close codes a peer may send (RFC 6455 §7.4).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Collects fragmented data frames into one message, bounded in size.
struct Assembler {
    max: usize,
    buf: Vec<u8>,
    opcode: Option<OpCode>,
    /// How far `buf` is known to be valid UTF-8, for text messages.
    checked: usize,
    /// The message being assembled came with RSV1: `buf` is deflated.
    compressed: bool,
    /// permessage-deflate was negotiated: how client messages inflate.
    inflate: Option<Box<ClientInflate>>,
}

impl Assembler {
    fn new(max: usize) -> Self {
        Assembler {
            max,
            buf: Vec::new(),
            opcode: None,
            checked: 0,
            compressed: false,
            inflate: None,
        }
    }

    /// Feeds one data frame that may carry RSV1 (RFC 7692 §6: set on the
    /// first frame of a compressed message only, and only when
    /// permessage-deflate was negotiated).
    fn push_frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        rsv1: bool,
        payload: &[u8],
    ) -> Result<Option<Inbound>, Inbound> {
        if rsv1 && (self.inflate.is_none() || opcode == OpCode::Continuation) {
            return Err(Inbound::Violation(1002, "unexpected RSV1 bit"));
        }
        if opcode != OpCode::Continuation && self.opcode.is_none() {
            self.compressed = rsv1;
        }
        if !self.compressed {
            return self.push(opcode, fin, payload);
        }
        // Deflated: collected as is (bounded like any message), inflated
        // and checked once whole.
        self.push_raw(opcode, payload)?;
        if !fin {
            return Ok(None);
        }
        let compressed = std::mem::take(&mut self.buf);
        let opcode = self.opcode.take();
        self.compressed = false;
        let inflate = self.inflate.as_mut().expect("checked above");
        let data = inflate
            .inflate(&compressed, self.max)
            .map_err(|e| match e {
                InflateError::TooBig => Inbound::Violation(1009, "message too big once inflated"),
                InflateError::Corrupt => Inbound::Violation(1007, "invalid compressed data"),
            })?;
        if opcode == Some(OpCode::Binary) {
            return Ok(Some(Inbound::Binary(data)));
        }
        String::from_utf8(data)
            .map(|text| Some(Inbound::Text(text)))
            .map_err(|_| Inbound::Violation(1007, "invalid UTF-8 in a text message"))
    }

    /// Sequence and size checks of one data frame, its payload appended.
    fn push_raw(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), Inbound> {
        match (opcode, self.opcode) {
            (OpCode::Continuation, None) => {
                return Err(Inbound::Violation(
                    1002,
                    "continuation frame without a message",
                ))
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(Inbound::Violation(
                    1002,
                    "new message before the last one finished",
                ))
            }
            (OpCode::Text | OpCode::Binary, None) => self.opcode = Some(opcode),
            _ => {}
        }
        if self.buf.len() + payload.len() > self.max {
            return Err(Inbound::Violation(1009, "message too big"));
        }
        self.buf.extend_from_slice(payload);
        Ok(())
    }

    /// Feeds one data frame; returns a complete message when `fin`.
    fn push(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<Inbound>, Inbound> {
        self.push_raw(opcode, payload)?;
        let is_text = self.opcode == Some(OpCode::Text);
        if is_text {
            // Check as we go so invalid text fails fast; an incomplete
            // character at the end of a fragment is fine until `fin`.
            match std::str::from_utf8(&self.buf[self.checked..]) {
                Ok(_) => self.checked = self.buf.len(),
                Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
                Err(_) => return Err(Inbound::Violation(1007, "invalid UTF-8 in a text message")),
            }
        }
        if !fin {
            return Ok(None);
        }
        let data = std::mem::take(&mut self.buf);
        self.opcode = None;
        self.checked = 0;
        if is_text {
            Ok(Some(Inbound::Text(
                String::from_utf8(data).expect("validated above"),
            )))
        } else {
            Ok(Some(Inbound::Binary(data)))
        }
    }
}

fn violation_for(err: &WebSocketError) -> Option<Inbound> {
    match err {
        WebSocketError::InvalidUTF8 => Some(Inbound::Violation(1007, "invalid UTF-8")),
        WebSocketError::FrameTooLarge => Some(Inbound::Violation(1009, "message too big")),
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => None,
        _ => Some(Inbound::Violation(1002, "protocol error")),
    }
}

/// Where one frame ends, from its header, or why it can't be accepted
/// before its payload arrives.
enum Scan {
    /// The whole frame is in the buffer and is this long.
    Complete(usize),
    /// More bytes are needed.
    Partial,
    Refused(Inbound),
}

fn scan_frame(buf: &[u8], max_message: usize) -> Scan {
    if buf.len() < 2 {
        return Scan::Partial;
    }
    if buf[1] & 0x80 == 0 {
        // RFC 6455 §5.1: a server must close on an unmasked client frame.
        return Scan::Refused(Inbound::Violation(1002, "client frames must be masked"));
    }
    let (extra, short) = match buf[1] & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(n as u64)),
    };
    let header = 2 + extra + 4;
    if buf.len() < header {
        return Scan::Partial;
    }
    let payload = short.unwrap_or_else(|| {
        let mut len = [0u8; 8];
        len[8 - extra..].copy_from_slice(&buf[2..2 + extra]);
        u64::from_be_bytes(len)
    });
    if payload > max_message as u64 {
        return Scan::Refused(Inbound::Violation(1009, "message too big"));
    }
    let total = header + payload as usize;
    if buf.len() < total {
        Scan::Partial
    } else {
        Scan::Complete(total)
    }
}

/// Frames in, [`Inbound`] events out, across reads.
pub struct Decoder {
    /// Bytes read and not yet decoded: empty (no allocation) while idle.
    buf: Vec<u8>,
    /// Boxed, and only while frames are decoded or a fragmented message is
    /// incomplete: an idle connection holds the empty pointer (it was 64
    /// bytes inline in every session).
    assembler: Option<Box<Assembler>>,
    /// The inflater, kept here while no assembler is. Boxed: most
    /// connections negotiate no compression, and every session holds a
    /// decoder (8 bytes instead of 16; see `session::sizes`).
    inflate: Option<Box<ClientInflate>>,
    /// `limits.max_message_bytes`, at most 4 GiB - 1 (`u32`: 8 bytes less
    /// in every session, see `session::sizes`).
    max_message: u32,
    /// A close or a violation was reported: nothing more is decoded.
    ended: bool,
}

impl Decoder {
    /// `read_ahead`: bytes that arrived with the handshake; `inflate`:
    /// set when permessage-deflate was negotiated.
    pub fn new(max_message: usize, read_ahead: Vec<u8>, inflate: Option<ClientInflate>) -> Decoder {
        Decoder {
            buf: read_ahead,
            assembler: None,
            inflate: inflate.map(Box::new),
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            ended: false,
        }
    }

    /// What an idle decoder keeps while its session is parked: only the
    /// inflater (everything else is empty, or the configured limit).
    pub fn into_parked(self) -> Option<Box<ClientInflate>> {
        debug_assert!(self.is_idle(), "only an idle decoder is parked");
        self.inflate
    }

    /// The idle decoder of a session that runs again
    /// ([`into_parked`](Self::into_parked)).
    pub fn unparked(max_message: usize, inflate: Option<Box<ClientInflate>>) -> Decoder {
        let mut decoder = Decoder::new(max_message, Vec::new(), None);
        decoder.inflate = inflate;
        decoder
    }

    /// True once a close frame or a violation was decoded: the client has
    /// nothing more to say that we would read.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Nothing read is waiting to be decoded and no message is half
    /// assembled: the session may park (see `websocket::park`).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.assembler.is_none() && !self.ended
    }

    /// Where the session appends what it reads.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// How many bytes of whole frames are here, each frame's RSV1 bits
    /// (see [`take_rsv1`]; cleared before fastwebsockets, which refuses any
    /// RSV bit, sees the frame), and whether the next frame is already
    /// refused by its header.
    fn scan(&mut self) -> (usize, Vec<(bool, bool)>, Option<Inbound>) {
        let mut complete = 0;
        let mut rsv1 = Vec::new();
        loop {
            match scan_frame(&self.buf[complete..], self.max_message as usize) {
                Scan::Complete(len) => {
                    rsv1.push(take_rsv1(&mut self.buf[complete]));
                    complete += len;
                }
                Scan::Partial => return (complete, rsv1, None),
                Scan::Refused(violation) => return (complete, rsv1, Some(violation)),
            }
        }
    }

    /// Lets the assembler's box go unless a message is half-assembled (the
    /// inflater, if any, is kept).
    fn release_assembler(&mut self) {
        if self
            .assembler
            .as_ref()
            .is_some_and(|a| a.opcode.is_none() && a.buf.is_empty())
        {
            self.inflate = self.assembler.take().and_then(|mut a| a.inflate.take());
        }
    }

    /// Decodes every complete frame read so far into `out`. After a close
    /// frame or a protocol violation (both end up in `out`) it stops for
    /// good and returns true.
    pub async fn decode(&mut self, out: &mut Vec<Inbound>) -> bool {
        if self.ended {
            self.buf = Vec::new();
            return true;
        }
        let (complete, rsv1, refused) = self.scan();
        if !rsv1.is_empty() {
            let assembler = make_assembler(
                &mut self.assembler,
                &mut self.inflate,
                self.max_message as usize,
            );
            let (mut ws, _unused) = fastwebsockets::after_handshake_split(
                std::io::Cursor::new(&self.buf[..complete]),
                tokio::io::sink(),
                fastwebsockets::Role::Server,
            );
            ws.set_auto_close(false);
            ws.set_auto_pong(false);
            // fastwebsockets refuses a frame whose length is >= this.
            ws.set_max_message_size((self.max_message as usize).saturating_add(1));
            for (rsv1, deflated_text) in rsv1 {
                // Never waits: the whole frame is in the cursor.
                let frame = ws
                    .read_frame(&mut |_| async { Ok::<(), std::convert::Infallible>(()) })
                    .await;
                let event = |f: fastwebsockets::Frame<'_>| {
                    let opcode = if deflated_text {
                        OpCode::Text
                    } else {
                        f.opcode
                    };
                    frame_event(assembler, opcode, f.fin, rsv1, &f.payload)
                };
                match frame.map(event) {
                    Ok(Ok(Some(event))) => {
                        let last = matches!(event, Inbound::Close(_) | Inbound::Violation(..));
                        out.push(event);
                        if last {
                            self.ended = true;
                            break;
                        }
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(violation)) => {
                        out.push(violation);
                        self.ended = true;
                        break;
                    }
                    Err(err) => {
                        // A complete frame can't end early: anything here
                        // is a protocol error.
                        out.push(
                            violation_for(&err)
                                .unwrap_or(Inbound::Violation(1002, "protocol error")),
                        );
                        self.ended = true;
                        break;
                    }
                }
            }
        }
        if !self.ended {
            if let Some(violation) = refused {
                out.push(violation);
                self.ended = true;
            }
        }
        self.release_assembler();
        if self.ended || complete == self.buf.len() {
            // Nothing pending: hold no buffer while idle.
            self.buf = Vec::new();
        } else {
            self.buf.drain(..complete);
        }
        self.ended
    }
}

/// The decoder's assembler, made (with the inflater, if any) on first use.
fn make_assembler<'a>(
    slot: &'a mut Option<Box<Assembler>>,
    inflate: &mut Option<Box<ClientInflate>>,
    max_message: usize,
) -> &'a mut Assembler {
    slot.get_or_insert_with(|| {
        let mut assembler = Assembler::new(max_message);
        assembler.inflate = inflate.take();
        Box::new(assembler)
    })
}

/// Clears RSV1 in a frame's first byte; returns whether it was set, and
/// whether the frame was a compressed text frame, which is then marked
/// binary: fastwebsockets would check a whole text frame's (deflated)
/// payload for UTF-8. Its text is checked once inflated.
fn take_rsv1(first: &mut u8) -> (bool, bool) {
    let rsv1 = *first & RSV1 != 0;
    let text = *first & 0x0f == 0x1;
    *first &= !RSV1;
    if rsv1 && text {
        *first = (*first & 0xf0) | 0x2;
    }
    (rsv1, rsv1 && text)
}

/// One frame's event (None: a fragment of a message still arriving).
fn frame_event(
    assembler: &mut Assembler,
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    payload: &[u8],
) -> Result<Option<Inbound>, Inbound> {
    Ok(Some(match opcode {
        OpCode::Text | OpCode::Binary | OpCode::Continuation => {
            return assembler.push_frame(opcode, fin, rsv1, payload)
        }
        _ if rsv1 => return Err(Inbound::Violation(1002, "RSV1 on a control frame")),
        OpCode::Ping => Inbound::Ping(payload.to_vec()),
        // fastwebsockets refuses an over-long ping but lets an
        // over-long pong through; every control frame must fit 125
        // bytes (RFC 6455 §5.5).
        OpCode::Pong if payload.len() > MAX_CONTROL_PAYLOAD => {
            return Err(Inbound::Violation(1002, "pong frame over 125 bytes"))
        }
        OpCode::Pong => Inbound::Pong,
        OpCode::Close => check_close(payload),
    }))
}

fn check_close(payload: &[u8]) -> Inbound {
    match payload.len() {
        0 => Inbound::Close(1000),
        1 => Inbound::Violation(1002, "close frame with a 1-byte payload"),
        n if n > MAX_CONTROL_PAYLOAD => Inbound::Violation(1002, "close frame over 125 bytes"),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                Inbound::Violation(1002, "invalid close code")
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                Inbound::Violation(1007, "invalid UTF-8 in close reason")
            } else {
                Inbound::Close(code)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<Option<Inbound>, Inbound>) -> u16 {
        match r {
            Err(Inbound::Violation(c, _)) => c,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn fragments_are_reassembled() {
        let mut a = Assembler::new(100);
        assert!(a.push(OpCode::Text, false, b"hel").unwrap().is_none());
        assert!(a
            .push(OpCode::Continuation, false, b"lo ")
            .unwrap()
            .is_none());
        match a.push(OpCode::Continuation, true, b"world").unwrap() {
            Some(Inbound::Text(t)) => assert_eq!(t, "hello world"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_and_invalid_fails_fast() {
        let mut a = Assembler::new(100);
        let e = "é".as_bytes();
        assert!(a.push(OpCode::Text, false, &e[..1]).unwrap().is_none());
        assert!(matches!(
            a.push(OpCode::Continuation, true, &e[1..]),
            Ok(Some(Inbound::Text(_)))
        ));
        let mut b = Assembler::new(100);
        assert_eq!(code(b.push(OpCode::Text, false, &[0xff])), 1007);
    }

    #[test]
    fn limits_and_sequence_errors() {
        let mut a = Assembler::new(4);
        assert!(a.push(OpCode::Binary, false, b"abc").unwrap().is_none());
        assert_eq!(code(a.push(OpCode::Continuation, true, b"de")), 1009);
        assert_eq!(
            code(Assembler::new(9).push(OpCode::Continuation, true, b"x")),
            1002
        );
        let mut c = Assembler::new(9);
        c.push(OpCode::Text, false, b"a").unwrap();
        assert_eq!(code(c.push(OpCode::Text, true, b"b")), 1002);
    }

    /// A client frame (masked, as clients must) with the given first byte
    /// (FIN, RSV and opcode bits).
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `bytes` to a decoder in one go and collects the events.
    async fn events(bytes: Vec<u8>) -> Vec<Inbound> {
        let mut decoder = Decoder::new(1000, bytes, None);
        let mut out = Vec::new();
        decoder.decode(&mut out).await;
        out
    }

    /// The same bytes fed one at a time give the same events, and nothing
    /// is buffered once every frame is decoded.
    #[tokio::test]
    async fn frames_split_across_reads_decode_the_same() {
        let mut bytes = client_frame(0x01, b"hel");
        bytes.extend(client_frame(0x89, b"ping"));
        bytes.extend(client_frame(0x80, &[b'x'; 300]));
        let whole = events(bytes.clone()).await;
        let mut decoder = Decoder::new(1000, Vec::new(), None);
        let mut out = Vec::new();
        for b in &bytes {
            decoder.buffer().push(*b);
            decoder.decode(&mut out).await;
        }
        assert_eq!(format!("{whole:?}"), format!("{out:?}"));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(decoder.buffer().capacity(), 0);
    }

    #[tokio::test]
    async fn unmasked_and_oversized_frames_are_refused_by_their_header() {
        // Unmasked text frame "hi".
        let got = events(vec![0x81, 0x02, b'h', b'i']).await;
        assert!(
            matches!(got.as_slice(), [Inbound::Violation(1002, _)]),
            "{got:?}"
        );
        // A header announcing 2,000 bytes (limit 1,000): refused before
        // any payload arrives.
        let got = events(vec![0x82, 0x80 | 126, 0x07, 0xD0, 1, 2, 3, 4]).await;
        assert!(
            matches!(got.as_slice(), [Inbound::Violation(1009, _)]),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn control_frames_inside_a_fragmented_message_pass_through() {
        // Autobahn 5.6-5.9: a ping between fragments is answered at once,
        // and the message is still reassembled around it.
        let mut bytes = client_frame(0x01, b"hel"); // text, not final
        bytes.extend(client_frame(0x89, b"ping")); // ping
        bytes.extend(client_frame(0x8A, b"")); // pong
        bytes.extend(client_frame(0x80, b"lo")); // final continuation
        bytes.extend(client_frame(0x88, &[3, 232])); // close 1000
        let got = events(bytes).await;
        assert!(
            matches!(
                got.as_slice(),
                [
                    Inbound::Ping(p),
                    Inbound::Pong,
                    Inbound::Text(t),
                    Inbound::Close(1000)
                ] if p == b"ping" && t == "hello"
            ),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn over_long_control_frames_are_violations() {
        let long = [b'a'; 126];
        for opcode in [0x89u8, 0x8A, 0x88] {
            let got = events(client_frame(opcode, &long)).await;
            assert!(
                matches!(got.as_slice(), [Inbound::Violation(1002, _)]),
                "opcode {opcode:#x}: {got:?}"
            );
        }
        // Right at the limit is fine.
        let got = events(client_frame(0x8A, &long[..125])).await;
        assert!(matches!(got.as_slice(), [Inbound::Pong]), "{got:?}");
    }

    #[test]
    fn close_frames_are_checked() {
        assert!(matches!(check_close(&[]), Inbound::Close(1000)));
        assert!(matches!(check_close(&[3, 232]), Inbound::Close(1000)));
        assert!(matches!(check_close(&[3]), Inbound::Violation(1002, _)));
        assert!(matches!(
            check_close(&[0x03, 0xED]),
            Inbound::Violation(1002, _)
        )); // 1005
        assert!(matches!(
            check_close(&[3, 232, 0xff]),
            Inbound::Violation(1007, _)
        ));
        let mut long = vec![3, 232];
        long.extend(std::iter::repeat_n(b'a', 124));
        assert!(matches!(check_close(&long), Inbound::Violation(1002, _)));
    }

    async fn deflate_events(bytes: Vec<u8>, negotiated: bool) -> Vec<Inbound> {
        let inflate = negotiated.then(|| {
            ClientInflate::new(super::super::deflate::Deflate {
                server_window_bits: 15,
                client_no_context_takeover: true,
                server_context_takeover: false,
            })
        });
        let mut decoder = Decoder::new(1000, bytes, inflate);
        let mut out = Vec::new();
        decoder.decode(&mut out).await;
        out
    }

    #[tokio::test]
    async fn compressed_frames_inflate_only_when_negotiated() {
        let text = r#"{"type":"subscribe","channel":"abc"}"#;
        let deflated = crate::protocol::deflate::deflate_message(text.as_bytes(), 15);
        // Whole, and in two fragments (RSV1 on the first only).
        let mut bytes = client_frame(0xC1, &deflated);
        let (a, b) = deflated.split_at(5);
        bytes.extend(client_frame(0x41, a));
        bytes.extend(client_frame(0x80, b));
        let got = deflate_events(bytes.clone(), true).await;
        assert!(
            matches!(got.as_slice(), [Inbound::Text(x), Inbound::Text(y)] if x == text && y == text),
            "{got:?}"
        );
        let got = deflate_events(bytes, false).await;
        assert!(
            matches!(got.as_slice(), [Inbound::Violation(1002, _)]),
            "{got:?}"
        );
        // RSV1 on a ping, or inflating to invalid UTF-8.
        let got = deflate_events(client_frame(0xC9, b""), true).await;
        assert!(
            matches!(got.as_slice(), [Inbound::Violation(1002, _)]),
            "{got:?}"
        );
        let bad = crate::protocol::deflate::deflate_message(&[0xff, 0xfe], 15);
        let got = deflate_events(client_frame(0xC1, &bad), true).await;
        assert!(
            matches!(got.as_slice(), [Inbound::Violation(1007, _)]),
            "{got:?}"
        );
        // Past the 1,000-byte limit once inflated.
        let big = crate::protocol::deflate::deflate_message(&[b' '; 5000], 15);
        let got = deflate_events(client_frame(0xC2, &big), true).await;
        assert!(
            matches!(got.as_slice(), [Inbound::Violation(1009, _)]),
            "{got:?}"
        );
    }
}
