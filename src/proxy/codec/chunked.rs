//! Decoding a chunked answer body from the connection's read buffer.
//!
//! As strict as hyper's client decoder, or stricter: a chunk size is one to
//! sixteen hex digits (`httparse::parse_chunk_size`), optionally followed
//! by whitespace and an extension; an extension may not hold a bare LF and
//! all extensions of one body together stay under 16 KiB (hyper's
//! `CHUNKED_EXTENSIONS_LIMIT`); chunk data ends with exactly CRLF; the
//! trailer section is at most 16 KiB (hyper's `TRAILER_LIMIT`) and must
//! parse as header lines. Trailers are checked and dropped: the proxy
//! strips the `Trailer` header from the answer, so hyper's server would
//! not send them to the client either.

use bytes::{Buf, Bytes, BytesMut};

/// hyper's limit on the extension bytes of one body.
const EXTENSIONS_LIMIT: usize = 16 * 1024;
/// hyper's limit on the trailer section.
const TRAILER_LIMIT: usize = 16 * 1024;
/// Trailer fields at most (hyper's header count).
const MAX_TRAILERS: usize = 100;
/// Sixteen hex digits and a little whitespace before the extension starts.
const SIZE_PREFIX_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a chunk-size line.
    Size,
    /// This many bytes of chunk data to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section (often just CRLF).
    Trailers,
    Done,
}

/// Where a chunked body is.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// Extension bytes seen so far in this body.
    extensions: usize,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Chunk data, taken from the front of the buffer.
    Data(Bytes),
    /// More bytes are needed.
    NeedMore,
    /// The body is complete (its last chunk and trailers consumed).
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: State::Size,
            extensions: 0,
        }
    }

    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes what it can from the front of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Step::Done),
                State::Size => {
                    if !self.size_line(buf)? {
                        return Ok(Step::NeedMore);
                    }
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::DataEnd => match buf.get(..2) {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::Size;
                    }
                    Some(_) => return Err("chunk data not followed by CRLF"),
                    None if buf.first().is_some_and(|&b| b != b'\r') => {
                        return Err("chunk data not followed by CRLF")
                    }
                    None => return Ok(Step::NeedMore),
                },
                State::Trailers => {
                    if !self.trailers(buf)? {
                        return Ok(Step::NeedMore);
                    }
                }
            }
        }
    }

    /// Takes a chunk-size line off the front of `buf`; false when it is not
    /// complete yet.
    fn size_line(&mut self, buf: &mut BytesMut) -> Result<bool, &'static str> {
        if buf.is_empty() {
            return Ok(false);
        }
        if !buf[0].is_ascii_hexdigit() {
            return Err("invalid chunk size");
        }
        let (used, size) = match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => {
                // httparse takes any byte in an extension; hyper refuses a
                // bare LF there, and bounds them.
                if buf.contains(&b'\n') {
                    return Err("chunk extension contains a newline");
                }
                if buf.len() >= EXTENSIONS_LIMIT - self.extensions + SIZE_PREFIX_MAX {
                    return Err("chunk extensions over the limit");
                }
                return Ok(false);
            }
            Err(_) => return Err("invalid chunk size"),
        };
        let line = &buf[..used - 2];
        if line.contains(&b'\n') {
            return Err("chunk extension contains a newline");
        }
        if let Some(semi) = line.iter().position(|&b| b == b';') {
            self.extensions += line.len() - semi - 1;
            if self.extensions >= EXTENSIONS_LIMIT {
                return Err("chunk extensions over the limit");
            }
        }
        buf.advance(used);
        self.state = match size {
            0 => State::Trailers,
            n => State::Data(n),
        };
        Ok(true)
    }

    /// Takes the trailer section (checked, then dropped) off the front of
    /// `buf`; false when it is not complete yet.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<bool, &'static str> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(true);
        }
        if buf.len() < 2 {
            if buf.first().is_some_and(|&b| b == b'\n') {
                return Err("bare LF after the last chunk");
            }
            return Ok(false);
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() > TRAILER_LIMIT {
                return Err("trailers over the limit");
            }
            return Ok(false);
        };
        let section = end + 4;
        if section > TRAILER_LIMIT {
            return Err("trailers over the limit");
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        match httparse::parse_headers(&buf[..section], &mut fields) {
            Ok(httparse::Status::Complete((used, _))) if used == section => {}
            _ => return Err("invalid trailers"),
        }
        buf.advance(section);
        self.state = State::Done;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every data byte, or the error.
    fn decode(wire: &[u8]) -> Result<(Vec<u8>, usize), &'static str> {
        let mut buf = BytesMut::from(wire);
        let mut chunked = Chunked::new();
        let mut out = Vec::new();
        loop {
            match chunked.step(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::NeedMore => return Err("incomplete"),
                Step::Done => return Ok((out, buf.len())),
            }
        }
    }

    #[test]
    fn chunks_extensions_and_trailers() {
        assert_eq!(decode(b"3\r\nabc\r\n0\r\n\r\n"), Ok((b"abc".to_vec(), 0)));
        assert_eq!(
            decode(b"3;a=b\r\nabc\r\n2 ; x\r\nde\r\n0\r\nX-T: 1\r\n\r\nnext"),
            Ok((b"abcde".to_vec(), 4))
        );
        assert_eq!(decode(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap().0.len(), 10);
    }

    #[test]
    fn bad_framing_is_refused() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
            b"0\r\n\n",
        ] {
            let got = decode(wire);
            assert!(
                got.is_err() && got != Err("incomplete"),
                "{:?}: {got:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn extensions_are_bounded_over_the_whole_body() {
        let ext = "e".repeat(6000);
        let mut wire = String::new();
        for _ in 0..3 {
            wire.push_str(&format!("1;{ext}\r\nz\r\n"));
        }
        wire.push_str("0\r\n\r\n");
        assert_eq!(
            decode(wire.as_bytes()),
            Err("chunk extensions over the limit")
        );
        // A line that never ends is refused once it is too long to be valid.
        let mut buf = BytesMut::from(format!("1;{}", "e".repeat(20_000)).as_bytes());
        assert!(Chunked::new().step(&mut buf).is_err());
    }

    #[test]
    fn byte_by_byte_is_the_same() {
        let wire = b"3;q\r\nabc\r\n1\r\nd\r\n0\r\nT: x\r\n\r\n";
        let mut buf = BytesMut::new();
        let mut chunked = Chunked::new();
        let mut out = Vec::new();
        for &b in wire.iter() {
            buf.extend_from_slice(&[b]);
            loop {
                match chunked.step(&mut buf).unwrap() {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::Done => break,
                }
            }
        }
        assert!(chunked.is_done());
        assert_eq!(out, b"abcd");
    }
}
