//! Helpers for the migration-at-scale tests (`tests/migration.rs`,
//! `tests/conflation.rs`, `tests/reconnect_storm.rs`): pollers with their
//! own source address on 127.0.0.x, the admin `/stats` report, reconnect
//! hints (`retry=<ms>` close reasons, SSE `retry:` fields) and a WebSocket
//! client that tells an admission refusal (503 + `Retry-After`) apart from
//! other failures.
//!
//! Every network step is bounded by a timeout.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::http::find;
use super::{get, Gateway, SseClient};

/// Bound on each step of a poller's request.
const STEP: Duration = Duration::from_secs(10);

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no answer in time"),
    )
}

/// The `i`-th simulated legacy client's source address: 127.0.0.2 …
/// 127.0.0.251 (250 addresses), then round again.
pub fn source_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8)
}

/// A keep-alive HTTP/1.1 client whose socket is bound to a chosen source
/// address before connecting, so the gateway sees a distinct client IP.
pub struct Poller {
    stream: TcpStream,
    buf: Vec<u8>,
    host: String,
}

/// One answer: status, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct PollAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl PollAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Poller {
    /// Connects to `server` from `source` (port chosen by the kernel).
    pub async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> io::Result<Poller> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let stream = tokio::time::timeout(STEP, socket.connect(server))
            .await
            .map_err(|_| timed_out("connect"))??;
        stream.set_nodelay(true)?;
        Ok(Poller {
            stream,
            buf: Vec::new(),
            host: server.to_string(),
        })
    }

    /// The address the gateway sees.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// `GET path` with extra headers on this connection (kept alive);
    /// the answer must carry a `Content-Length`.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<PollAnswer> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tokio::time::timeout(STEP, self.stream.write_all(req.as_bytes()))
            .await
            .map_err(|_| timed_out("write request"))??;
        tokio::time::timeout(STEP, self.read_answer())
            .await
            .map_err(|_| timed_out("answer"))?
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a whole answer",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_answer(&mut self) -> io::Result<PollAnswer> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("answer without Content-Length: {head:?}"),
                )
            })?;
        while self.buf.len() < len {
            self.fill().await?;
        }
        let body = self.buf.drain(..len).collect();
        Ok(PollAnswer {
            status,
            headers,
            body,
        })
    }
}

/// The admin `GET /stats` report.
pub async fn stats(gw: &Gateway) -> Value {
    let r = get(&gw.admin_url("/stats")).await;
    assert_eq!(r.status(), 200, "GET /stats: {}", r.text());
    r.json()
}

/// `migration.legacy_clients_by_route.{route}` from `/stats` (computed live).
pub async fn live_legacy_clients(gw: &Gateway, route: &str) -> f64 {
    let s = stats(gw).await;
    s["migration"]["legacy_clients_by_route"][route]
        .as_f64()
        .unwrap_or_else(|| panic!("no legacy_clients_by_route.{route} in {}", s["migration"]))
}

/// The `retry=<ms>` hint in a close reason.
pub fn retry_hint(reason: &str) -> Option<u64> {
    let at = reason.find("retry=")?;
    let digits: String = reason[at + "retry=".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Reads an SSE body to its end (bounded by `t`) and returns the raw text,
/// `retry:` and comment lines included.
pub async fn sse_raw_until_end(sse: &mut SseClient, t: Duration) -> String {
    let deadline = tokio::time::Instant::now() + t;
    let mut text = Vec::new();
    if sse.head.is_chunked() {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            sse.conn.timeout = left.max(Duration::from_millis(1));
            match sse.conn.read_chunk().await {
                Ok(Some(data)) => text.extend_from_slice(&data),
                Ok(None) => break,
                Err(e) => panic!(
                    "SSE stream did not end cleanly within {t:?}: {e} (so far {:?})",
                    String::from_utf8_lossy(&text)
                ),
            }
        }
    } else {
        let (rest, _) = sse
            .conn
            .read_to_end_within(t)
            .await
            .expect("SSE stream did not end in time");
        text.extend_from_slice(&rest);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The value of the last `retry:` field in an event-stream text.
pub fn last_sse_retry(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("retry:"))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
}

/// A WebSocket on tokio-tungstenite.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a WebSocket connect failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The upgrade was answered with an HTTP error.
    Refused {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// No listener, reset, timeout…
    Io(String),
}

/// Opens a WebSocket; an HTTP refusal comes back with its status,
/// `Retry-After` and body.
pub async fn ws_connect(url: &str, t: Duration) -> Result<Ws, ConnectError> {
    use tokio_tungstenite::tungstenite::Error;
    match tokio::time::timeout(t, tokio_tungstenite::connect_async(url)).await {
        Err(_) => Err(ConnectError::Io("handshake timed out".into())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(Error::Http(resp))) => Err(ConnectError::Refused {
            status: resp.status().as_u16(),
            retry_after: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(ConnectError::Io(e.to_string())),
    }
}

/// What a WebSocket read gave, for clients that keep their own state.
#[derive(Debug)]
pub enum WsRead {
    /// A text frame parsed as JSON.
    Json(Value),
    /// A close frame: code and reason.
    Close(Option<u16>, String),
    /// Ended without a close frame.
    Ended(String),
    Timeout,
}

/// Reads the next text or close frame (pings, pongs and binary frames are
/// skipped).
pub async fn ws_read(ws: &mut Ws, t: Duration) -> WsRead {
    let deadline = tokio::time::Instant::now() + t;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return WsRead::Timeout,
            Ok(n) => n,
        };
        return match next {
            None => WsRead::Ended("stream ended".into()),
            Some(Err(e)) => WsRead::Ended(e.to_string()),
            Some(Ok(Message::Text(s))) => match serde_json::from_str(&s) {
                Ok(v) => WsRead::Json(v),
                Err(e) => panic!("text frame is not JSON ({e}): {s:?}"),
            },
            Some(Ok(Message::Close(frame))) => match frame {
                Some(f) => WsRead::Close(Some(u16::from(f.code)), f.reason.to_string()),
                None => WsRead::Close(None, String::new()),
            },
            Some(Ok(_)) => continue,
        };
    }
}

/// After a close frame: let tungstenite send its answer and see the end of
/// the stream (bounded), so the server's close handshake completes.
pub async fn ws_finish(mut ws: Ws, t: Duration) {
    let _ = tokio::time::timeout(t, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}
