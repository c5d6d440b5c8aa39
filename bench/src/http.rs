//! A blocking HTTP/1.1 keep-alive client for the orchestrator: publishing
//! through the admin API and reading `/stats` and `/metrics`. One
//! connection, reused; reconnects once if the server closed it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::wire;

pub struct Http {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            request: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one request; returns the status and the body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        )?;
        if let Some(ct) = content_type {
            write!(self.request, "content-type: {ct}\r\n")?;
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        let fresh = self.stream.is_none();
        match self.exchange() {
            Ok(answer) => Ok(answer),
            Err(_) if !fresh => {
                self.stream = None;
                self.exchange()
            }
            Err(e) => Err(e),
        }
    }

    /// GET returning the body, failing on a non-200.
    pub fn get(&mut self, path: &str) -> io::Result<Vec<u8>> {
        let (status, body) = self.request("GET", path, None, b"")?;
        if status != 200 {
            return Err(io::Error::other(format!("GET {path}: status {status}")));
        }
        Ok(body)
    }

    fn exchange(&mut self) -> io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(s);
        }
        let result = self.exchange_on_stream();
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange_on_stream(&mut self) -> io::Result<(u16, Vec<u8>)> {
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(&self.request)?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let end = loop {
            if let Some(end) = wire::head_end(&self.buf) {
                break end;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::other("response head too large"));
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let (status, length, chunked, close) = {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            response
                .parse(&self.buf[..end])
                .map_err(|e| io::Error::other(format!("bad response: {e}")))?;
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            };
            (
                response.code.unwrap_or(0),
                header("content-length").and_then(|v| v.trim().parse::<usize>().ok()),
                header("transfer-encoding").is_some_and(|v| v.contains("chunked")),
                header("connection").is_some_and(|v| v.contains("close")),
            )
        };
        let mut body = Vec::new();
        if chunked {
            let mut dechunk = wire::Dechunk::default();
            let mut done = dechunk
                .feed(&self.buf[end..], &mut body)
                .map_err(|_| io::Error::other("bad chunked body"))?;
            for _ in 0..1_000_000 {
                if done {
                    break;
                }
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                done = dechunk
                    .feed(&chunk[..n], &mut body)
                    .map_err(|_| io::Error::other("bad chunked body"))?;
            }
        } else {
            let length = length.unwrap_or(0);
            body.extend_from_slice(&self.buf[end..]);
            for _ in 0..1_000_000 {
                if body.len() >= length {
                    break;
                }
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
        }
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

/// Sum of every sample of a Prometheus counter family in a `/metrics`
/// text (e.g. `pollbridge_dropped_total`).
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_family() {
        let text = "# HELP x\npollbridge_dropped_total{transport=\"sse\"} 2\n\
                    pollbridge_dropped_total{transport=\"websocket\"} 3\n\
                    pollbridge_dropped_total_other 7\npollbridge_published 1\n";
        assert_eq!(metric_sum(text, "pollbridge_dropped_total"), 5.0);
    }
}
