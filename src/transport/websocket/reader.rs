//! The reading half of a WebSocket session: frames in, events out.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so it runs in its own
//! task and never inside a `select!`; it hands the session whole messages
//! and control frames over a small channel. Automatic pong and close are
//! off: the session answers them itself, after checking close frames the
//! way RFC 6455 asks (fastwebsockets would echo an over-long one).

use fastwebsockets::{OpCode, WebSocketError, WebSocketRead};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

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
}

impl Assembler {
    fn new(max: usize) -> Self {
        Assembler {
            max,
            buf: Vec::new(),
            opcode: None,
            checked: 0,
        }
    }

    /// Feeds one data frame; returns a complete message when `fin`.
    fn push(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<Inbound>, Inbound> {
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

/// Reads until the peer closes, breaks the protocol or goes away.
pub async fn run<R: AsyncRead + Unpin>(
    mut ws: WebSocketRead<R>,
    max_message: usize,
    tx: mpsc::Sender<Inbound>,
) {
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    // fastwebsockets refuses a frame whose length is >= this.
    ws.set_max_message_size(max_message.saturating_add(1));
    let mut assembler = Assembler::new(max_message);
    loop {
        let frame = match ws
            .read_frame(&mut |_| async { Ok::<(), std::convert::Infallible>(()) })
            .await
        {
            Ok(frame) => frame,
            Err(err) => {
                if let Some(v) = violation_for(&err) {
                    let _ = tx.send(v).await;
                }
                return;
            }
        };
        let event = match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                match assembler.push(frame.opcode, frame.fin, &frame.payload) {
                    Ok(Some(message)) => message,
                    Ok(None) => continue,
                    Err(violation) => {
                        let _ = tx.send(violation).await;
                        return;
                    }
                }
            }
            OpCode::Ping => Inbound::Ping(frame.payload.to_vec()),
            OpCode::Pong => Inbound::Pong,
            OpCode::Close => {
                let event = check_close(&frame.payload);
                let _ = tx.send(event).await;
                return;
            }
        };
        if tx.send(event).await.is_err() {
            return; // the session has ended
        }
    }
}

fn check_close(payload: &[u8]) -> Inbound {
    match payload.len() {
        0 => Inbound::Close(1000),
        1 => Inbound::Violation(1002, "close frame with a 1-byte payload"),
        n if n > 125 => Inbound::Violation(1002, "close frame over 125 bytes"),
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
}
