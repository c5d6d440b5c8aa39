//! The proxy's upstream codec against hyper's client: the same upstream
//! answers (well-formed and broken) proxied by a gateway with the codec
//! (`proxy.codec = true`, the default) and one with hyper's client
//! (`--proxy-codec false`) must give the client the same bytes — or, where
//! hyper tolerates an ambiguous answer, the codec must refuse it with a
//! 502 and relay nothing of it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One scripted upstream answer.
struct Case {
    name: &'static str,
    answer: &'static [u8],
    /// The upstream closes the connection after writing it (needed where
    /// the body is delimited by the close, or cut short).
    close: bool,
    expect: Expect,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// Relayed: both give the client the same bytes (with a 2xx–5xx head
    /// from the upstream).
    Same,
    /// Both refuse (502), or both break off the answer midway: the same
    /// bytes all the same.
    SameRefused,
    /// The fault is in the body, after the head: both break off the
    /// client's answer, which must never look complete.
    Broken,
    /// hyper tolerates it, the codec refuses with a 502 (ambiguous framing
    /// an edge should not pass on).
    CodecRefuses,
}

use Expect::*;

const CASES: &[Case] = &[
    Case { name: "content-length", answer: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", close: false, expect: Same },
    Case { name: "content-length 0", answer: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", close: false, expect: Same },
    Case { name: "chunked", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", close: false, expect: Same },
    Case { name: "chunked with extensions", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b;c\r\nhello\r\n6 ; q=\"x\"\r\n world\r\n0;last\r\n\r\n", close: false, expect: Same },
    Case { name: "chunked with trailers", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\nX-More: 1\r\n\r\n", close: false, expect: Same },
    Case { name: "chunked upper-case hex", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", close: false, expect: Same },
    Case { name: "204 with a content-length", answer: b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", close: false, expect: Same },
    Case { name: "304", answer: b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", close: false, expect: Same },
    Case { name: "close-delimited", answer: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", close: true, expect: Same },
    Case { name: "HTTP/1.0 close-delimited", answer: b"HTTP/1.0 200 OK\r\n\r\nold style", close: true, expect: Same },
    Case { name: "HTTP/1.0 keep-alive", answer: b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", close: false, expect: Same },
    Case { name: "100 continue first", answer: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close: false, expect: Same },
    Case { name: "103 early hints first", answer: b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close: false, expect: Same },
    Case { name: "non-canonical reason", answer: b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok", close: false, expect: Same },
    Case { name: "hop-by-hop answer headers", answer: b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nok", close: false, expect: Same },
    Case { name: "connection close", answer: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", close: true, expect: Same },
    Case { name: "404 with a body", answer: b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", close: false, expect: Same },
    Case { name: "many headers", answer: b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nA: 3\r\nSet-Cookie: x=1\r\nSet-Cookie: y=2\r\nContent-Length: 1\r\n\r\nz", close: false, expect: Same },
    // Broken answers both refuse (502 before any byte of the answer).
    Case { name: "obs-fold", answer: b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok", close: true, expect: SameRefused },
    Case { name: "bare CR in the head", answer: b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok", close: true, expect: SameRefused },
    Case { name: "invalid content-length", answer: b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok", close: true, expect: SameRefused },
    Case { name: "two different content-lengths", answer: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", close: true, expect: SameRefused },
    Case { name: "HTTP/1.0 chunked", answer: b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", close: true, expect: SameRefused },
    Case { name: "not HTTP", answer: b"HELLO THERE\r\n\r\n", close: true, expect: SameRefused },
    Case { name: "closed before a head", answer: b"HTTP/1.1 200 OK\r\nContent-Len", close: true, expect: SameRefused },
    // Broken bodies: the head (if it went out before the fault) and part
    // of the body, then the client's connection is broken off; how much
    // went out depends on timing, for hyper as for the codec.
    Case { name: "bad chunk size", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nxx\r\n0\r\n\r\n", close: true, expect: Broken },
    Case { name: "huge chunk extension", answer: HUGE_EXTENSION, close: true, expect: Broken },
    Case { name: "LF in a chunk extension", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n", close: true, expect: Broken },
    Case { name: "chunk data without CRLF", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", close: true, expect: Broken },
    Case { name: "content-length cut short", answer: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close: true, expect: Broken },
    Case { name: "chunked cut short", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", close: true, expect: Broken },
    // Ambiguous framing hyper tolerates; the codec does not pass it on.
    Case { name: "content-length and chunked", answer: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", close: true, expect: CodecRefuses },
    Case { name: "two equal content-lengths", answer: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", close: true, expect: CodecRefuses },
    Case { name: "content-length list", answer: b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", close: true, expect: CodecRefuses },
    Case { name: "gzip, chunked", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", close: true, expect: CodecRefuses },
    Case { name: "transfer-encoding gzip", answer: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nokok", close: true, expect: CodecRefuses },
    Case { name: "101 to a plain request", answer: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", close: true, expect: CodecRefuses },
];

/// A chunk whose extension alone is over hyper's 16 KiB limit.
const HUGE_EXTENSION: &[u8] = {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n2;";
    const EXT: usize = 17 * 1024;
    const TAIL: &[u8] = b"\r\nok\r\n0\r\n\r\n";
    const LEN: usize = HEAD.len() + EXT + TAIL.len();
    static BYTES: [u8; LEN] = {
        let mut out = [b'e'; LEN];
        let mut i = 0;
        while i < HEAD.len() {
            out[i] = HEAD[i];
            i += 1;
        }
        let mut j = 0;
        while j < TAIL.len() {
            out[HEAD.len() + EXT + j] = TAIL[j];
            j += 1;
        }
        out
    };
    &BYTES
};

/// The requests each answer is tried with.
const METHODS: &[(&str, &[u8])] = &[
    ("GET", b""),
    ("HEAD", b""),
    ("POST", b"{\"a\":1}"),
    ("DELETE", b""),
];

/// An upstream answering `/case/N` with `CASES[N]`, as many requests per
/// connection as the case allows.
async fn scripted_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some((head, body_len)) = read_request(&mut s, &mut buf).await else {
                        return;
                    };
                    while buf.len() < body_len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..body_len);
                    let n: usize = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.strip_prefix("/case/"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let case = &CASES[n];
                    if s.write_all(case.answer).await.is_err() || case.close {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Reads one request head: its text and its body's `Content-Length`.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            let len = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            return Some((head, len));
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What the client got: every byte until the gateway closed, with the
/// `date` header's value blanked (it moves with the clock).
async fn fetch(gw: SocketAddr, method: &str, body: &[u8], case: usize) -> String {
    let mut s = TcpStream::connect(gw).await.unwrap();
    let mut req =
        format!("{method} /case/{case} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "case {case} {method}: the gateway never finished"
    );
    String::from_utf8_lossy(&got)
        .split("\r\n")
        .map(|line| {
            if line.to_ascii_lowercase().starts_with("date:") {
                "date: *"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Nothing, or a head whose body is short of what it announced.
fn incomplete(answer: &str) -> bool {
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return true;
    };
    let head = head.to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() < len;
    }
    head.contains("transfer-encoding: chunked") && !body.ends_with("0\r\n\r\n")
}

/// The gateway's own 502 (its JSON body, unless the request was HEAD).
fn is_502(answer: &str) -> bool {
    answer.starts_with("HTTP/1.1 502 ")
        && (answer.contains("upstream_unreachable") || answer.contains("content-length: 74\r\n"))
}

#[tokio::test]
async fn the_codec_relays_what_hyper_relays_and_refuses_the_ambiguous() {
    let (up, task) = scripted_upstream().await;
    let url = format!("http://{up}");
    let codec = Gateway::start(&["--upstream", &url]).await;
    let hyper = Gateway::start(&["--upstream", &url, "--proxy-codec", "false"]).await;
    let mut failures = Vec::new();
    for (n, case) in CASES.iter().enumerate() {
        for (method, body) in METHODS {
            let by_codec = fetch(codec.public, method, body, n).await;
            let by_hyper = fetch(hyper.public, method, body, n).await;
            let what = format!("{} × {method}", case.name);
            // A HEAD answer has no body: its framing is never read, so
            // body faults and ambiguous framing do not matter to it.
            let expect = match (case.expect, *method) {
                (SameRefused | Broken, "HEAD") => Same,
                (CodecRefuses, "HEAD") if by_codec == by_hyper => Same,
                (expect, _) => expect,
            };
            match expect {
                Same | SameRefused => {
                    if by_codec != by_hyper {
                        failures.push(format!(
                            "{what}: different bytes\n  codec: {by_codec:?}\n  hyper: {by_hyper:?}"
                        ));
                    } else if expect == Same && case.expect == Same && is_502(&by_codec) {
                        failures.push(format!("{what}: refused by both: {by_codec:?}"));
                    } else if expect == SameRefused
                        && by_codec.starts_with("HTTP/1.1 200 ")
                        && !by_codec.contains("content-length")
                        && !by_codec.contains("transfer-encoding")
                    {
                        failures.push(format!("{what}: relayed as whole: {by_codec:?}"));
                    }
                }
                Broken => {
                    for (by, answer) in [("codec", &by_codec), ("hyper", &by_hyper)] {
                        if !incomplete(answer) {
                            failures
                                .push(format!("{what}: {by} relayed it as a whole: {answer:?}"));
                        }
                    }
                }
                CodecRefuses => {
                    if !is_502(&by_codec) {
                        failures.push(format!("{what}: the codec relayed it: {by_codec:?}"));
                    }
                }
            }
        }
    }
    task.abort();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
