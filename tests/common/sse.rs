//! A server-sent events client on a raw socket (chunked or raw body).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::http::{Head, RawHttpConn};

/// One event: the fields of a block of lines ended by a blank line.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The message id in the event's `id:` (the cursor `N-E`: id and
    /// epoch).
    pub fn message_id(&self) -> Option<u64> {
        let id = self.id.as_deref()?;
        id.split_once('-').map_or(id, |(n, _)| n).parse().ok()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

pub struct SseClient {
    pub conn: RawHttpConn,
    pub head: Head,
    chunked: bool,
    /// Decoded body bytes not parsed into events yet.
    text: Vec<u8>,
    ended: bool,
    /// Comment lines seen so far (keep-alives).
    pub comments: usize,
}

impl SseClient {
    /// Sends the GET and reads the response head (whatever its status).
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<SseClient> {
        let mut conn = RawHttpConn::connect(addr).await?;
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        conn.send_request("GET", path, &all, None).await?;
        let head = conn.read_head().await?;
        Ok(SseClient::from_parts(conn, head))
    }

    /// A client on a connection whose response head was read already.
    pub fn from_parts(conn: RawHttpConn, head: Head) -> SseClient {
        let chunked = head.is_chunked();
        SseClient {
            conn,
            head,
            chunked,
            text: Vec::new(),
            ended: false,
            comments: 0,
        }
    }

    /// Connects and asserts a `200 text/event-stream` head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let c = Self::connect(addr, path, headers)
            .await
            .unwrap_or_else(|e| panic!("SSE connect {path}: {e}"));
        assert_eq!(c.head.status, 200, "SSE {path}: {:?}", c.head);
        let ct = c.head.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("text/event-stream"),
            "SSE {path}: content-type {ct:?}"
        );
        c
    }

    /// The next event with data or an event name (comment-only blocks are
    /// counted and skipped); `Ok(None)` when the stream ended.
    pub async fn next_event(&mut self, t: Duration) -> io::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(block) = self.take_block() {
                match self.parse_block(&block) {
                    Some(ev) => return Ok(Some(ev)),
                    None => continue,
                }
            }
            if self.ended {
                return Ok(None);
            }
            let more = tokio::time::timeout_at(deadline, self.pull())
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no SSE event"))??;
            if !more {
                self.ended = true;
            }
        }
    }

    /// The next event; panics on timeout or end of stream.
    pub async fn expect_event(&mut self, t: Duration) -> SseEvent {
        match self.next_event(t).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("SSE stream ended"),
            Err(e) => panic!("SSE: {e} within {t:?}"),
        }
    }

    /// Asserts that no event arrives within `t` (comments are fine).
    pub async fn expect_no_event(&mut self, t: Duration) {
        match self.next_event(t).await {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            other => panic!("SSE: expected no event, got {other:?}"),
        }
    }

    /// Waits for the end of the stream; `Err` on timeout.
    pub async fn wait_end(&mut self, t: Duration) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(e),
                // A reset also ends the stream.
                Err(_) => return Ok(()),
            }
        }
    }

    /// Reads more body bytes; `false` at the end of the body.
    async fn pull(&mut self) -> io::Result<bool> {
        if self.chunked {
            match self.conn.read_chunk().await? {
                Some(data) => {
                    self.text.extend_from_slice(&data);
                    Ok(true)
                }
                None => Ok(false),
            }
        } else {
            let buffered = std::mem::take(self.conn.buffer_mut());
            if !buffered.is_empty() {
                self.text.extend_from_slice(&buffered);
                return Ok(true);
            }
            if self.conn.fill_buffer().await? == 0 {
                return Ok(false);
            }
            let data = std::mem::take(self.conn.buffer_mut());
            self.text.extend_from_slice(&data);
            Ok(true)
        }
    }

    /// Takes one block (text up to a blank line) off the decoded text.
    fn take_block(&mut self) -> Option<String> {
        // Normalise CRLF to LF as we go; the spec allows both.
        if self.text.contains(&b'\r') {
            let s = String::from_utf8_lossy(&self.text).replace("\r\n", "\n");
            self.text = s.into_bytes();
        }
        let pos = super::http::find(&self.text, b"\n\n")?;
        let block: Vec<u8> = self.text.drain(..pos + 2).collect();
        Some(String::from_utf8_lossy(&block[..pos]).into_owned())
    }

    fn parse_block(&mut self, block: &str) -> Option<SseEvent> {
        let mut ev = SseEvent::default();
        let mut has_data = false;
        for line in block.split('\n') {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "id" => ev.id = Some(value.to_string()),
                "event" => ev.event = Some(value.to_string()),
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
        (has_data || ev.event.is_some()).then_some(ev)
    }
}
