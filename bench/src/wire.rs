//! Byte-level parsing and encoding shared by the client workers and the
//! floor servers: WebSocket frames (RFC 6455 §5.2), HTTP/1.1 chunked
//! bodies, SSE events, and the two envelope fields the bench reads (`id`
//! and the payload's publish timestamp `t`). Everything works on borrowed
//! slices: nothing here allocates per message.

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        i += hay[i..=last_start].iter().position(|&b| b == needle[0])?;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The unsigned decimal at the start of `s`, and how many digits it took.
pub fn parse_u64(s: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some((value, digits))
}

/// The number after `key` (e.g. `"id":`) in `s`.
pub fn field_u64(s: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(s, key)? + key.len();
    parse_u64(&s[at..]).map(|(v, _)| v)
}

/// What the bench reads from an envelope
/// `{"channel":"c","id":N,"data":{"t":T,"pad":"…"}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub id: u64,
    /// Publish time, unix microseconds.
    pub t_us: u64,
}

/// The stamp of one envelope; `None` for control messages (`{"type":…}`)
/// and anything that lacks either field.
pub fn envelope_stamp(env: &[u8]) -> Option<Stamp> {
    if env.starts_with(b"{\"type\"") {
        return None;
    }
    Some(Stamp {
        id: field_u64(env, b"\"id\":")?,
        t_us: field_u64(env, b"\"t\":")?,
    })
}

/// Calls `f` with the stamp of every envelope in a long-poll answer
/// `{"messages":[…],"last_id":N,…}` and returns `last_id`. Envelopes are
/// found by their `{"channel":` opening, which the bench's payloads never
/// contain.
pub fn poll_answer(body: &[u8], mut f: impl FnMut(Stamp)) -> Option<u64> {
    const OPEN: &[u8] = b"{\"channel\":";
    let tail = find(body, b"\"last_id\":")?;
    let last_id = field_u64(&body[tail..], b"\"last_id\":")?;
    let messages = &body[..tail];
    let mut at = find(messages, OPEN);
    while let Some(start) = at {
        let rest = &messages[start + OPEN.len()..];
        let end = find(rest, OPEN).map_or(messages.len(), |n| start + OPEN.len() + n);
        if let Some(stamp) = envelope_stamp(&messages[start..end]) {
            f(stamp);
        }
        at = (end < messages.len()).then_some(end);
    }
    Some(last_id)
}

/// `{"t":<t_us>,"pad":"xxx…"}`, padded to `size` bytes (never shorter
/// than the unpadded form, 29–31 bytes).
pub fn payload(t_us: u64, size: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"{\"t\":");
    push_u64(out, t_us);
    out.extend_from_slice(b",\"pad\":\"");
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}");
}

/// A message's `data`: `payload` padding, or with `state` a ~2 KB league
/// table snapshot that changes a little with every message (what a state
/// channel carries), its publish time first.
pub fn data(t_us: u64, size: usize, state: bool, out: &mut Vec<u8>) {
    if !state {
        return payload(t_us, size, out);
    }
    out.extend_from_slice(b"{\"t\":");
    push_u64(out, t_us);
    out.extend_from_slice(b",\"league\":\"premier\",\"table\":[");
    let round = (t_us / 1000) % 38;
    for i in 0..20u64 {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"pos\":");
        push_u64(out, i + 1);
        out.extend_from_slice(b",\"team\":\"");
        out.extend_from_slice(TEAMS[i as usize].as_bytes());
        out.extend_from_slice(b"\",\"played\":");
        push_u64(out, round);
        out.extend_from_slice(b",\"won\":");
        push_u64(out, (i * 7 + round) % 19);
        out.extend_from_slice(b",\"drawn\":");
        push_u64(out, (i * 3 + round) % 7);
        out.extend_from_slice(b",\"lost\":");
        push_u64(out, (i * 5 + round) % 13);
        out.extend_from_slice(b",\"goals\":");
        push_u64(out, (i * 11 + t_us) % 71);
        out.extend_from_slice(b",\"points\":");
        push_u64(out, 90 - i * 4 - round % 3);
        out.extend_from_slice(b",\"form\":\"WDLWW\"}");
    }
    out.extend_from_slice(b"]}");
}

const TEAMS: [&str; 20] = [
    "Arsenal",
    "Aston Villa",
    "Bournemouth",
    "Brentford",
    "Brighton",
    "Burnley",
    "Chelsea",
    "Crystal Palace",
    "Everton",
    "Fulham",
    "Leeds United",
    "Liverpool",
    "Manchester City",
    "Manchester United",
    "Newcastle United",
    "Nottingham Forest",
    "Sunderland",
    "Tottenham",
    "West Ham",
    "Wolverhampton",
];

/// `{"channel":"c","id":N,"data":<payload>}`, as the gateway encodes it.
pub fn envelope(channel: &str, id: u64, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"channel\":\"");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\",\"id\":");
    push_u64(out, id);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
}

/// Appends a decimal number without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Index just past the blank line that ends an HTTP head.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// Status and `Content-Length` of a complete response head (`head_end`
/// bytes long).
pub fn response_head(head: &[u8]) -> std::io::Result<(u16, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response
        .parse(head)
        .map_err(|e| std::io::Error::other(format!("bad response head: {e}")))?;
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .ok_or_else(|| std::io::Error::other("response without content-length"))?;
    Ok((response.code.unwrap_or(0), length))
}

/// One WebSocket frame, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// With its status code, if the frame carried one.
    Close(Option<u16>),
    Continuation,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A server must not mask (RFC 6455 §5.1).
    Masked,
    TooLarge(u64),
    BadOpcode(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Masked => write!(f, "masked server frame"),
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes"),
            FrameError::BadOpcode(op) => write!(f, "opcode {op:#x}"),
        }
    }
}

/// The complete frame at the start of `buf` and its length on the wire;
/// `Ok(None)` while it is incomplete.
pub fn next_frame(buf: &[u8], max: usize) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
            10,
        ),
        n => (u64::from(n), 2),
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let total = head + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[head..total];
    let frame = match buf[0] & 0x0f {
        0 => Frame::Continuation,
        1 => Frame::Text(body),
        2 => Frame::Binary(body),
        8 => Frame::Close((body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]))),
        9 => Frame::Ping(body),
        10 => Frame::Pong,
        op => return Err(FrameError::BadOpcode(op)),
    };
    Ok(Some((frame, total)))
}

/// A permessage-deflate message's payload inflated (the gateway deflates
/// each message on its own, so `d` is reset afterwards).
pub fn inflate(deflated: &[u8], d: &mut flate2::Decompress) -> std::io::Result<Vec<u8>> {
    let out = inflate_keeping(deflated, d)?;
    d.reset(false);
    Ok(out)
}

/// A permessage-deflate message's payload inflated with `d`, which keeps
/// its context for the next (a gateway with context takeover).
pub fn inflate_keeping(deflated: &[u8], d: &mut flate2::Decompress) -> std::io::Result<Vec<u8>> {
    let start = d.total_in() as usize;
    let mut input = Vec::with_capacity(deflated.len() + 4);
    input.extend_from_slice(deflated);
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(deflated.len() * 8 + 64);
    loop {
        let used = d.total_in() as usize - start;
        d.decompress_vec(&input[used..], &mut out, flate2::FlushDecompress::Sync)
            .map_err(std::io::Error::other)?;
        if d.total_in() as usize - start == input.len() && out.len() < out.capacity() {
            break;
        }
        if out.len() > 16 << 20 {
            return Err(std::io::Error::other("inflated message over 16 MiB"));
        }
        out.reserve(out.capacity());
    }
    Ok(out)
}

/// An unmasked, final server frame (what the floor sends).
pub fn server_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A client control frame (payload ≤ 125 bytes), masked with the all-zero
/// key so the payload goes out unchanged.
pub fn client_control_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let payload = &payload[..payload.len().min(125)];
    out.push(0x80 | opcode);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// Decoder of an HTTP/1.1 `Transfer-Encoding: chunked` body, fed in
/// whatever pieces the socket returns.
#[derive(Debug, Default)]
pub struct Dechunk {
    state: ChunkState,
    remaining: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The last chunk was seen; trailers and the rest are ignored.
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ChunkError;

impl Dechunk {
    /// Appends the body bytes in `input` to `out`. Returns true once the
    /// zero-length last chunk has been read.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => {
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let digit = (b as char).to_digit(16).expect("hex") as usize;
                            self.remaining = self.remaining * 16 + digit;
                            if self.remaining > 1 << 30 {
                                return Err(ChunkError);
                            }
                        }
                        b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\n' => self.end_size(),
                        _ => return Err(ChunkError),
                    }
                    i += 1;
                }
                ChunkState::Extension => {
                    if b == b'\n' {
                        self.end_size();
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.end_size();
                    i += 1;
                }
                ChunkState::Data => {
                    let take = self.remaining.min(input.len() - i);
                    out.extend_from_slice(&input[i..i + take]);
                    self.remaining -= take;
                    i += take;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    self.state = match b {
                        b'\r' => ChunkState::DataLf,
                        b'\n' => ChunkState::Size,
                        _ => return Err(ChunkError),
                    };
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::Size;
                    i += 1;
                }
                ChunkState::Done => return Ok(true),
            }
        }
        Ok(self.state == ChunkState::Done)
    }

    fn end_size(&mut self) {
        self.state = if self.remaining == 0 {
            ChunkState::Done
        } else {
            ChunkState::Data
        };
    }
}

/// Takes every complete SSE event (ended by a blank line) off the front of
/// `buf`, calling `f` with the value of each of its `data:` lines. Returns
/// the number of events taken.
pub fn take_sse_events(buf: &mut Vec<u8>, mut f: impl FnMut(&[u8])) -> usize {
    let mut start = 0;
    let mut events = 0;
    while let Some(len) = find(&buf[start..], b"\n\n") {
        for line in buf[start..start + len].split(|&b| b == b'\n') {
            if let Some(value) = line.strip_prefix(b"data:") {
                f(value.strip_prefix(b" ").unwrap_or(value));
            }
        }
        start += len + 2;
        events += 1;
    }
    buf.drain(..start);
    events
}

/// One SSE event as the gateway writes it, wrapped in one HTTP chunk.
pub fn sse_chunk(id: u64, envelope: &[u8], out: &mut Vec<u8>) {
    let mut event = Vec::with_capacity(envelope.len() + 32);
    event.extend_from_slice(b"id: ");
    push_u64(&mut event, id);
    event.extend_from_slice(b"\ndata: ");
    event.extend_from_slice(envelope);
    event.extend_from_slice(b"\n\n");
    out.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
    out.extend_from_slice(&event);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_parses_fields() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(parse_u64(b"123x"), Some((123, 3)));
        assert_eq!(parse_u64(b"x"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
        let env = br#"{"channel":"c","id":42,"data":{"t":1700000000000001,"pad":"xx"}}"#;
        assert_eq!(
            envelope_stamp(env),
            Some(Stamp {
                id: 42,
                t_us: 1_700_000_000_000_001
            })
        );
        assert_eq!(
            envelope_stamp(br#"{"type":"subscribed","channel":"c","last_id":0}"#),
            None
        );
    }

    #[test]
    fn payload_has_the_requested_size_and_round_trips() {
        let mut p = Vec::new();
        payload(1_700_000_000_123_456, 100, &mut p);
        assert_eq!(p.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["t"], 1_700_000_000_123_456u64);
        let mut small = Vec::new();
        payload(7, 1, &mut small);
        assert_eq!(small, br#"{"t":7,"pad":""}"#);
        let mut env = Vec::new();
        envelope("ch", 3, &p, &mut env);
        let stamp = envelope_stamp(&env).unwrap();
        assert_eq!((stamp.id, stamp.t_us), (3, 1_700_000_000_123_456));
    }

    #[test]
    fn poll_answers_yield_every_envelope() {
        let mut body = b"{\"messages\":[".to_vec();
        for id in 1..=3 {
            if id > 1 {
                body.push(b',');
            }
            let mut p = Vec::new();
            payload(1000 + id, 60, &mut p);
            envelope("c", id, &p, &mut body);
        }
        body.extend_from_slice(b"],\"last_id\":3,\"truncated\":false}");
        let mut seen = Vec::new();
        assert_eq!(poll_answer(&body, |s| seen.push(s)), Some(3));
        assert_eq!(
            seen.iter().map(|s| (s.id, s.t_us)).collect::<Vec<_>>(),
            vec![(1, 1001), (2, 1002), (3, 1003)]
        );
        let empty = br#"{"messages":[],"last_id":9,"truncated":false}"#;
        assert_eq!(poll_answer(empty, |_| panic!("no messages")), Some(9));
    }

    #[test]
    fn frames_parse_incrementally() {
        let mut wire = Vec::new();
        server_frame(1, b"hello", &mut wire);
        let long = vec![b'a'; 300];
        server_frame(1, &long, &mut wire);
        server_frame(8, &1000u16.to_be_bytes(), &mut wire);
        assert_eq!(next_frame(&wire[..1], 1 << 20), Ok(None));
        let (f, n) = next_frame(&wire, 1 << 20).unwrap().unwrap();
        assert_eq!((f, n), (Frame::Text(b"hello"), 7));
        assert_eq!(next_frame(&wire[7..10], 1 << 20), Ok(None));
        let (f, m) = next_frame(&wire[7..], 1 << 20).unwrap().unwrap();
        assert_eq!((f, m), (Frame::Text(&long[..]), 304));
        let (f, _) = next_frame(&wire[7 + m..], 1 << 20).unwrap().unwrap();
        assert_eq!(f, Frame::Close(Some(1000)));
        assert_eq!(next_frame(&[0x81, 0x85], 10), Err(FrameError::Masked));
        assert_eq!(next_frame(&wire[7..], 100), Err(FrameError::TooLarge(300)));
        let mut pong = Vec::new();
        client_control_frame(10, b"hi", &mut pong);
        assert_eq!(pong, [0x8a, 0x82, 0, 0, 0, 0, b'h', b'i']);
    }

    #[test]
    fn dechunks_across_any_split() {
        let mut wire = Vec::new();
        sse_chunk(1, b"{\"a\":1}", &mut wire);
        wire.extend_from_slice(b"3;ext=1\r\n:\n\n\r\n");
        sse_chunk(2, b"{\"b\":2}", &mut wire);
        wire.extend_from_slice(b"0\r\n\r\n");
        for split in 0..wire.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            let done_first = d.feed(&wire[..split], &mut out).unwrap();
            // Done once `0\r\n` is in; the trailer's blank line is ignored.
            assert_eq!(done_first, split >= wire.len() - 2);
            assert!(d.feed(&wire[split..], &mut out).unwrap());
            assert_eq!(
                out,
                b"id: 1\ndata: {\"a\":1}\n\n:\n\nid: 2\ndata: {\"b\":2}\n\n".to_vec()
            );
        }
        assert_eq!(
            Dechunk::default().feed(b"zz\r\n", &mut Vec::new()),
            Err(ChunkError)
        );
    }

    #[test]
    fn sse_events_come_off_whole() {
        let mut buf = b"id: 1\ndata: one\n\n:\n\nid: 2\ndata:two\n\nid: 3\nda".to_vec();
        let mut seen = Vec::new();
        assert_eq!(take_sse_events(&mut buf, |d| seen.push(d.to_vec())), 3);
        assert_eq!(seen, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(buf, b"id: 3\nda");
    }
}
