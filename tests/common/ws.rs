//! WebSocket clients: a well-behaved one (tokio-tungstenite) and a raw one
//! that writes frames by hand (invalid UTF-8, oversized frames, a client
//! that never reads).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::http::{Head, RawHttpConn};

/// What the next read from a WebSocket gave.
#[derive(Debug)]
pub enum WsEvent {
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    Binary(Vec<u8>),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
    /// The stream ended (or failed) without a close frame.
    Ended(String),
    Timeout,
}

/// A client on tokio-tungstenite that sorts what it receives into envelopes
/// (no `type` field) and control messages (with `type`).
pub struct WsClient {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
    envelopes: VecDeque<Value>,
    controls: VecDeque<Value>,
    /// The 101 response.
    pub response: tokio_tungstenite::tungstenite::handshake::client::Response,
}

pub fn is_envelope(v: &Value) -> bool {
    v.get("type").is_none()
}

impl WsClient {
    /// Connects; panics (with the status) if the upgrade is refused.
    pub async fn connect(url: &str) -> WsClient {
        match Self::try_connect(url).await {
            Ok(c) => c,
            Err(e) => panic!("WebSocket connect {url}: {e}"),
        }
    }

    pub async fn try_connect(url: &str) -> Result<WsClient, String> {
        let fut = tokio_tungstenite::connect_async(url);
        let (inner, response) = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    let body = resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    format!("HTTP {} {body}", resp.status().as_u16())
                }
                other => other.to_string(),
            })?;
        Ok(WsClient {
            inner,
            envelopes: VecDeque::new(),
            controls: VecDeque::new(),
            response,
        })
    }

    /// Reads the next frame of interest (pings and pongs are skipped).
    pub async fn recv(&mut self, t: Duration) -> WsEvent {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => return WsEvent::Timeout,
                Ok(n) => n,
            };
            return match next {
                None => WsEvent::Ended("stream ended".into()),
                Some(Err(e)) => WsEvent::Ended(e.to_string()),
                Some(Ok(Message::Text(s))) => match serde_json::from_str(&s) {
                    Ok(v) => WsEvent::Json(v),
                    Err(_) => WsEvent::Text(s),
                },
                Some(Ok(Message::Binary(b))) => WsEvent::Binary(b),
                Some(Ok(Message::Close(frame))) => WsEvent::Close(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            };
        }
    }

    /// Reads one JSON message into the queues; panics on anything else.
    async fn pump(&mut self, t: Duration, waiting_for: &str) {
        match self.recv(t).await {
            WsEvent::Json(v) if is_envelope(&v) => self.envelopes.push_back(v),
            WsEvent::Json(v) => self.controls.push_back(v),
            WsEvent::Timeout => panic!("WebSocket: no {waiting_for} within {t:?}"),
            other => panic!("WebSocket: waiting for {waiting_for}, got {other:?}"),
        }
    }

    /// The next envelope (control messages seen meanwhile are kept).
    pub async fn next_envelope(&mut self, t: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(v) = self.envelopes.pop_front() {
                return v;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.pump(left, "envelope").await;
        }
    }

    /// The next control message (envelopes seen meanwhile are kept).
    pub async fn next_control(&mut self, t: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(v) = self.controls.pop_front() {
                return v;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.pump(left, "control message").await;
        }
    }

    /// The next control message, which must have this `type`.
    pub async fn expect_control(&mut self, kind: &str, t: Duration) -> Value {
        let v = self.next_control(t).await;
        assert_eq!(
            v["type"], kind,
            "expected a {kind:?} control message, got {v}"
        );
        v
    }

    /// Collects `n` envelopes within `t` in total.
    pub async fn collect_envelopes(&mut self, n: usize, t: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + t;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Some(v) = self.envelopes.pop_front() {
                out.push(v);
                continue;
            }
            match self.recv(left).await {
                WsEvent::Json(v) if is_envelope(&v) => out.push(v),
                WsEvent::Json(v) => self.controls.push_back(v),
                WsEvent::Timeout => panic!(
                    "WebSocket: got {} of {n} envelopes within {t:?} (last: {:?})",
                    out.len(),
                    out.last()
                ),
                other => panic!(
                    "WebSocket: after {} of {n} envelopes got {other:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Asserts that no envelope arrives within `t`.
    pub async fn expect_no_envelope(&mut self, t: Duration) {
        if let Some(v) = self.envelopes.pop_front() {
            panic!("unexpected envelope {v}");
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                WsEvent::Timeout => return,
                WsEvent::Json(v) if is_envelope(&v) => panic!("unexpected envelope {v}"),
                WsEvent::Json(v) => self.controls.push_back(v),
                other => panic!("WebSocket: expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until a close frame and returns its code (`None`: no code);
    /// panics if the stream ends without a close frame or nothing comes.
    pub async fn expect_close(&mut self, t: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                WsEvent::Close(code) => return code,
                WsEvent::Timeout => panic!("WebSocket: no close frame within {t:?}"),
                WsEvent::Ended(why) => panic!("WebSocket ended without a close frame: {why}"),
                _ => {}
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.inner.send(Message::Text(text.to_string())),
        )
        .await
        .expect("WebSocket send timed out")
        .expect("WebSocket send failed");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_message(&mut self, m: Message) {
        tokio::time::timeout(Duration::from_secs(5), self.inner.send(m))
            .await
            .expect("WebSocket send timed out")
            .expect("WebSocket send failed");
    }

    /// Sends a close frame and waits (briefly) for the server's answer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.inner.next().await {}
        })
        .await;
    }
}

/// One raw frame as read from the wire.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A WebSocket client written by hand on a raw socket.
pub struct RawWs {
    pub conn: RawHttpConn,
}

pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

impl RawWs {
    /// Does the opening handshake on `conn`; returns the response head
    /// (which is a 101 when `Ok`).
    pub async fn handshake(mut conn: RawHttpConn, path: &str) -> io::Result<(RawWs, Head)> {
        conn.send_request(
            "GET",
            path,
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ],
            None,
        )
        .await?;
        let head = conn.read_head().await?;
        if head.status != 101 {
            return Err(io::Error::other(format!(
                "upgrade refused: {} {:?}",
                head.status, head.headers
            )));
        }
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "wrong Sec-WebSocket-Accept"
        );
        Ok((RawWs { conn }, head))
    }

    pub async fn connect(addr: SocketAddr, path: &str) -> io::Result<RawWs> {
        let conn = RawHttpConn::connect(addr).await?;
        Ok(Self::handshake(conn, path).await?.0)
    }

    /// Handshake with extra request headers (e.g. a subprotocol offer).
    pub async fn handshake_with(
        mut conn: RawHttpConn,
        path: &str,
        extra: &[(&str, &str)],
    ) -> io::Result<(RawWs, Head)> {
        let mut headers = vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        headers.extend_from_slice(extra);
        conn.send_request("GET", path, &headers, None).await?;
        let head = conn.read_head().await?;
        if head.status != 101 {
            return Err(io::Error::other(format!(
                "upgrade refused: {} {:?}",
                head.status, head.headers
            )));
        }
        Ok((RawWs { conn }, head))
    }

    /// Reads frames until a text frame and parses it as JSON.
    pub async fn next_json(&mut self, t: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.read_frame()).await {
                Err(_) => panic!("raw WebSocket: no text frame within {t:?}"),
                Ok(Err(e)) => panic!("raw WebSocket: {e}"),
                Ok(Ok(None)) => panic!("raw WebSocket: EOF"),
                Ok(Ok(Some(f))) => f,
            };
            match frame.opcode {
                OP_TEXT => {
                    return serde_json::from_slice(&frame.payload).unwrap_or_else(|e| {
                        panic!("text frame is not JSON ({e}): {:?}", frame.payload)
                    })
                }
                OP_CLOSE => panic!("raw WebSocket: closed ({:?})", frame.close_code()),
                _ => {}
            }
        }
    }

    /// Writes one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.conn
            .write_all(&masked_frame(fin, opcode, payload))
            .await
    }

    /// Reads one frame; `Ok(None)` at EOF. Cancel-safe.
    pub async fn read_frame(&mut self) -> io::Result<Option<RawFrame>> {
        loop {
            if let Some(frame) = take_frame(self.conn.buffer_mut()) {
                return Ok(Some(frame));
            }
            if self.conn.fill_buffer().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads one frame within `t`; panics on timeout.
    pub async fn read_frame_within(&mut self, t: Duration) -> io::Result<Option<RawFrame>> {
        tokio::time::timeout(t, self.read_frame())
            .await
            .unwrap_or_else(|_| panic!("raw WebSocket: no frame within {t:?}"))
    }

    /// Reads frames until a close frame and returns its code. Panics on
    /// timeout or when the connection ends without one.
    pub async fn expect_close(&mut self, t: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.read_frame()).await {
                Err(_) => panic!("raw WebSocket: no close frame within {t:?}"),
                Ok(Err(e)) => panic!("raw WebSocket: connection failed before a close frame: {e}"),
                Ok(Ok(None)) => panic!("raw WebSocket: EOF before a close frame"),
                Ok(Ok(Some(f))) => f,
            };
            if frame.opcode == OP_CLOSE {
                return frame.close_code();
            }
        }
    }
}

/// One client-to-server (masked) frame, encoded.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= 0xffff {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Splits bytes read from a socket into frames (a trailing partial frame
/// is left out).
pub fn parse_frames(bytes: &[u8]) -> Vec<RawFrame> {
    let mut buf = bytes.to_vec();
    let mut frames = Vec::new();
    while let Some(f) = take_frame(&mut buf) {
        frames.push(f);
    }
    frames
}

/// Takes one complete (unmasked, server-to-client) frame off the buffer.
fn take_frame(buf: &mut Vec<u8>) -> Option<RawFrame> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7f) as usize;
    let mut pos = 2;
    if len == 126 {
        if buf.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize;
        pos = 10;
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < pos + len {
        return None;
    }
    let mut payload: Vec<u8> = buf[pos..pos + len].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    buf.drain(..pos + len);
    Some(RawFrame {
        fin,
        opcode,
        payload,
    })
}
