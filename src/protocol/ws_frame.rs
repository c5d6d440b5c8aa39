//! Server-to-client WebSocket frames, encoded once into shared buffers.
//!
//! Server frames are never masked (RFC 6455 §5.1), so a frame is a 2–10
//! byte header and the payload. Data frames for published messages are
//! built once per message and written to every subscriber as-is.

use bytes::{BufMut, Bytes, BytesMut};

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest control-frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// One complete, final frame.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    encode_first(0x80 | opcode, payload)
}

/// One frame whose first byte (FIN, RSV bits, opcode) is `first`.
pub fn encode_first(first: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(first);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

pub fn encode_text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// A close frame with a status code and a reason cut to fit a control
/// frame (at a character boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        assert_eq!(&encode_text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = encode_text(&[b'x'; 200]);
        assert_eq!(&medium[..4], &[0x81, 126, 0, 200]);
        assert_eq!(medium.len(), 204);
        let big = encode_text(&vec![b'x'; 70_000]);
        assert_eq!(big[1], 127);
        assert_eq!(big.len(), 70_010);
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let frame = close(1013, &"é".repeat(100));
        assert!(frame.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert_eq!(&frame[2..4], &1013u16.to_be_bytes());
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
