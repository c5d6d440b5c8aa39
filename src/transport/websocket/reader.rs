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

use super::frame::MAX_CONTROL_PAYLOAD;

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
            // fastwebsockets refuses an over-long ping but lets an
            // over-long pong through; every control frame must fit 125
            // bytes (RFC 6455 §5.5).
            OpCode::Pong if frame.payload.len() > MAX_CONTROL_PAYLOAD => {
                let _ = tx
                    .send(Inbound::Violation(1002, "pong frame over 125 bytes"))
                    .await;
                return;
            }
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

    /// Runs the reader over `bytes` (then end of stream) and collects what
    /// it tells the session.
    async fn events(bytes: Vec<u8>) -> Vec<Inbound> {
        let (ws, _) = fastwebsockets::after_handshake_split(
            std::io::Cursor::new(bytes),
            tokio::io::sink(),
            fastwebsockets::Role::Server,
        );
        let (tx, mut rx) = mpsc::channel(16);
        run(ws, 1000, tx).await;
        let mut out = Vec::new();
        while let Some(event) = rx.recv().await {
            out.push(event);
        }
        out
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
}
