//! A small HTTP/1.1 client on a raw TCP socket.
//!
//! Raw on purpose: tests count the bytes that cross their own sockets, send
//! malformed or half-finished requests, and keep one connection alive over
//! several requests. Every read is bounded by the connection's `timeout`, so
//! a gateway that never answers fails the test instead of hanging it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response head we accept before calling it a protocol error.
const MAX_HEAD: usize = 64 * 1024;

/// Reads one answer framed by `Content-Length` (none: no body) off a raw
/// socket, `buf` holding what was read ahead (what follows the answer stays
/// in it); returns the answer's raw bytes and the length of its head. Fails
/// the test if it does not arrive whole within `t`.
pub async fn read_length_answer(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    t: Duration,
) -> (Vec<u8>, usize) {
    let deadline = tokio::time::Instant::now() + t;
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head_len = end + 4;
            let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= head_len + len {
                return (buf.drain(..head_len + len).collect(), head_len);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no full answer in {t:?}: {buf:?}"))
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Status line and headers of a response.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub reason: String,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn is_chunked(&self) -> bool {
        self.header_all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} body is not JSON ({e}): {:?}",
                self.head.status,
                self.text()
            )
        })
    }
}

fn timed_out(what: &str, t: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no answer within {t:?}"),
    )
}

/// One client connection, counting the bytes it reads and writes.
pub struct RawHttpConn {
    stream: TcpStream,
    /// Bytes read from the socket but not consumed yet.
    buf: Vec<u8>,
    /// Bytes read from the socket so far.
    pub bytes_read: u64,
    /// Bytes written to the socket so far.
    pub bytes_written: u64,
    /// Bound on each request/response step.
    pub timeout: Duration,
    /// Value of the Host header when the caller gives none.
    host: String,
}

impl RawHttpConn {
    pub async fn connect(addr: SocketAddr) -> io::Result<RawHttpConn> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connect", Duration::from_secs(5)))??;
        Ok(Self::from_stream(stream, addr))
    }

    /// Connects with a small receive buffer, so that a client that stops
    /// reading pushes back on the server quickly.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> io::Result<RawHttpConn> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_recv_buffer_size(rcvbuf)?;
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .map_err(|_| timed_out("connect", Duration::from_secs(5)))??;
        Ok(Self::from_stream(stream, addr))
    }

    fn from_stream(stream: TcpStream, addr: SocketAddr) -> RawHttpConn {
        stream.set_nodelay(true).ok();
        RawHttpConn {
            stream,
            buf: Vec::new(),
            bytes_read: 0,
            bytes_written: 0,
            timeout: Duration::from_secs(10),
            host: addr.to_string(),
        }
    }

    /// Writes raw bytes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let t = self.timeout;
        tokio::time::timeout(t, self.stream.write_all(bytes))
            .await
            .map_err(|_| timed_out("write", t))??;
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }

    /// Sends a request head (and body, if any). Adds `Host` unless given and
    /// `Content-Length` when a body is given without a length or
    /// `Transfer-Encoding` header.
    pub async fn send_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<()> {
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !has("host") {
            head.push_str(&format!("Host: {}\r\n", self.host));
        }
        if let Some(body) = body {
            if !has("content-length") && !has("transfer-encoding") {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
        }
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = body {
            bytes.extend_from_slice(body);
        }
        self.write_all(&bytes).await
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF. Cancel-safe.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        self.bytes_read += n as u64;
        Ok(n)
    }

    /// Reads whatever arrives next (bounded by `timeout`), including bytes
    /// already buffered. Empty at EOF.
    pub async fn read_some(&mut self) -> io::Result<Vec<u8>> {
        if self.buf.is_empty() {
            let t = self.timeout;
            tokio::time::timeout(t, self.fill())
                .await
                .map_err(|_| timed_out("read", t))??;
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads until the peer closes (or resets) the connection, within `t`.
    /// Returns the bytes read and whether it ended in a reset.
    pub async fn read_to_end_within(&mut self, t: Duration) -> io::Result<(Vec<u8>, bool)> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Err(timed_out("read to EOF", t)),
                Ok(Ok(0)) => return Ok((std::mem::take(&mut self.buf), false)),
                Ok(Ok(_)) => {}
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Ok((std::mem::take(&mut self.buf), true))
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Reads a response head.
    pub async fn read_head(&mut self) -> io::Result<Head> {
        let t = self.timeout;
        tokio::time::timeout(t, self.read_head_inner())
            .await
            .map_err(|_| timed_out("response head", t))?
    }

    async fn read_head_inner(&mut self) -> io::Result<Head> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                let head_bytes: Vec<u8> = self.buf.drain(..pos + 4).collect();
                return parse_head(&head_bytes[..pos]);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a response head (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Reads one chunk of a chunked body: `Some(data)`, or `None` at the
    /// terminating zero-size chunk (trailers consumed). Cancel-safe: nothing
    /// is consumed until the whole chunk is buffered.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let t = self.timeout;
        tokio::time::timeout(t, self.read_chunk_untimed())
            .await
            .map_err(|_| timed_out("chunk", t))?
    }

    async fn read_chunk_untimed(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(result) = self.try_take_chunk()? {
                return Ok(result);
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a chunked body",
                ));
            }
        }
    }

    /// `Ok(None)`: not enough bytes buffered yet.
    fn try_take_chunk(&mut self) -> io::Result<Option<Option<Vec<u8>>>> {
        let Some(line_end) = find(&self.buf, b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size line {size_text:?}"),
            )
        })?;
        if size == 0 {
            // Trailers end with an empty line.
            let rest = &self.buf[line_end + 2..];
            if rest.starts_with(b"\r\n") {
                self.buf.drain(..line_end + 4);
                return Ok(Some(None));
            }
            return match find(rest, b"\r\n\r\n") {
                Some(p) => {
                    self.buf.drain(..line_end + 2 + p + 4);
                    Ok(Some(None))
                }
                None => Ok(None),
            };
        }
        let start = line_end + 2;
        if self.buf.len() < start + size + 2 {
            return Ok(None);
        }
        let data = self.buf[start..start + size].to_vec();
        if &self.buf[start + size..start + size + 2] != b"\r\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk not followed by CRLF",
            ));
        }
        self.buf.drain(..start + size + 2);
        Ok(Some(Some(data)))
    }

    /// Reads the body that belongs to `head` (answering a request made with
    /// `method`).
    pub async fn read_body(&mut self, head: &Head, method: &str) -> io::Result<Vec<u8>> {
        let t = self.timeout;
        tokio::time::timeout(t, self.read_body_inner(head, method))
            .await
            .map_err(|_| timed_out("response body", t))?
    }

    async fn read_body_inner(&mut self, head: &Head, method: &str) -> io::Result<Vec<u8>> {
        if method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&head.status)
            || head.status == 204
            || head.status == 304
        {
            return Ok(Vec::new());
        }
        if head.is_chunked() {
            let mut body = Vec::new();
            while let Some(chunk) = self.read_chunk_untimed().await? {
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        if let Some(len) = head.content_length() {
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("body ended after {} of {len} bytes", self.buf.len()),
                    ));
                }
            }
            return Ok(self.buf.drain(..len).collect());
        }
        // No length: the body runs to EOF.
        while self.fill().await? != 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads a whole response.
    pub async fn read_response(&mut self, method: &str) -> io::Result<Response> {
        let head = self.read_head().await?;
        let body = self.read_body(&head, method).await?;
        Ok(Response { head, body })
    }

    /// Sends a request and reads its response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        self.send_request(method, path, headers, body).await?;
        self.read_response(method).await
    }

    /// Bytes buffered but not consumed (for protocol layers on top).
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Reads more bytes into the buffer (for protocol layers on top).
    pub async fn fill_buffer(&mut self) -> io::Result<usize> {
        self.fill().await
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(bytes: &[u8]) -> io::Result<Head> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP/1 status line: {status_line:?}"),
        ));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status code"))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Head {
        status,
        reason,
        headers,
    })
}

/// Splits `http://IP:PORT/path?query` into the address and the path.
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("only http:// URLs: {url}"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .parse()
        .unwrap_or_else(|_| panic!("URL authority must be IP:PORT: {url}"));
    (addr, path.to_string())
}

/// One request on a fresh connection (`Connection: close`).
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let (addr, path) = split_url(url);
    let mut conn = RawHttpConn::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !all
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        all.push(("Connection", "close"));
    }
    conn.request(method, &path, &all, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// `GET url` on a fresh connection.
pub async fn get(url: &str) -> Response {
    http("GET", url, &[], None).await
}
