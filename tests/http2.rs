//! HTTP/2 on the public listener (docs/http.md): `curl --http2` over TLS
//! (ALPN `h2`) gets long-poll and SSE answers, compressed or not, publishes
//! and reaches the reverse proxy; prior-knowledge cleartext HTTP/2 only
//! when `http2.cleartext` is set; and the limits hold on HTTP/2: the
//! advertised stream and header limits, an oversized head refused, a
//! rapid-reset flood closed with GOAWAY.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::h2::{frame, get_headers};
use common::security::TestCert;
use common::upstream::echo_upstream;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const T10: Duration = Duration::from_secs(10);

/// A TLS gateway with `config` (the certificate files are added).
async fn tls_gateway(cert: &TestCert, dir: &TempDir, config: &str) -> Gateway {
    let cert_path = dir.write("cert.pem", &cert.cert_pem);
    let key_path = dir.write("key.pem", &cert.key_pem);
    let toml = format!(
        "{config}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert_path.to_str().unwrap(),
        key_path.to_str().unwrap()
    );
    Gateway::builder().config(&toml).start().await
}

/// Runs curl with `args`; returns (exit success, stdout).
async fn curl(args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        T10,
        tokio::process::Command::new("curl")
            .args(["-s", "--max-time", "8"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl within 10 s")
    .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn resolve(gw: &Gateway) -> String {
    format!("localhost:{}:127.0.0.1", gw.public.port())
}

fn https(gw: &Gateway, path: &str) -> String {
    format!("https://localhost:{}{path}", gw.public.port())
}

/// `{"symbol":…,"bids":[…]}`: ~1 KB, so it is compressed.
fn book(seq: u64) -> Value {
    let levels: Vec<Value> = (0..30)
        .map(|i| json!([100.0 + i as f64, i * 3 + seq]))
        .collect();
    json!({"symbol": "ETH-EUR", "seq": seq, "bids": levels})
}

/// The JSON of the next `data:` line of curl's output.
async fn next_data(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    loop {
        let line = lines.next_line().await.unwrap().expect("SSE stream open");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str(data).unwrap();
        }
    }
}

/// Splits curl's `-w '\n%{http_version} %{http_code}'` tail off the body.
fn split_tail(out: &str) -> (&str, &str) {
    out.rsplit_once('\n').expect("curl -w tail")
}

#[tokio::test]
async fn curl_http2_over_tls_long_polls_streams_publishes_and_proxies() {
    let upstream = echo_upstream().await;
    let cert = TestCert::generate();
    let dir = TempDir::new();
    let config = format!(
        "upstream = \"{}\"\n\n[publish]\nkeys = [\"pub-key\"]\n",
        upstream.url()
    );
    let gw = tls_gateway(&cert, &dir, &config).await;
    let resolve = resolve(&gw);
    let base = [
        "-k",
        "--http2",
        "--resolve",
        resolve.as_str(),
        "-w",
        "\n%{http_version} %{http_code}",
    ];

    // Publishing over HTTP/2.
    let body = book(1).to_string();
    let mut args = base.to_vec();
    let url = https(&gw, "/rt/publish/h2book");
    args.extend([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Authorization: Bearer pub-key",
        "--data-binary",
        &body,
        &url,
    ]);
    let (ok, out) = curl(&args).await;
    let (answer, tail) = split_tail(&out);
    assert!(ok, "{out}");
    assert_eq!(tail, "2 200", "published over HTTP/2: {answer}");

    // Long-poll over HTTP/2, compressed and not.
    let url = https(&gw, "/rt/poll/h2book?since=0&timeout=0");
    for compressed in [false, true] {
        let mut args = base.to_vec();
        if compressed {
            args.push("--compressed");
        }
        args.push(&url);
        let (ok, out) = curl(&args).await;
        let (answer, tail) = split_tail(&out);
        assert!(ok && tail == "2 200", "{out}");
        let v: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(
            v["messages"][0]["data"],
            book(1),
            "compressed: {compressed}"
        );
    }

    // A held long-poll and an SSE stream share one HTTP/2 connection in
    // curl's hands; the SSE events are decoded as they arrive.
    let sse_url = https(&gw, "/rt/sse/h2book?since=1");
    let mut child = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-N",
            "--max-time",
            "8",
            "-k",
            "--http2",
            "--compressed",
            "--resolve",
            &resolve,
            &sse_url,
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for seq in 2..=3 {
        gw.publish_json("h2book", &book(seq)).await;
        let event = tokio::time::timeout(T10, next_data(&mut lines))
            .await
            .expect("an SSE event over HTTP/2");
        assert_eq!(event["data"], book(seq));
    }
    drop(child);

    // The reverse proxy over HTTP/2 (the upstream is spoken to in HTTP/1.1).
    let mut args = base.to_vec();
    let url = https(&gw, "/app/page?x=1");
    args.push(&url);
    let (ok, out) = curl(&args).await;
    let (_, tail) = split_tail(&out);
    assert!(ok && tail == "2 200", "proxied over HTTP/2: {out}");
}

#[tokio::test]
async fn cleartext_http2_needs_http2_cleartext() {
    let off = Gateway::start(&[]).await;
    off.publish_json("c", &json!(1)).await;
    let url = off.public_url("/rt/poll/c?since=0&timeout=0");
    let (ok, out) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]).await;
    assert!(!ok || !out.ends_with("\n2"), "no h2c by default: {out}");
    let (ok, out) = curl(&["-w", "\n%{http_version}", &url]).await;
    assert!(ok && out.ends_with("\n1.1"), "HTTP/1.1 as ever: {out}");

    let on = Gateway::builder()
        .config("[http2]\ncleartext = true\n")
        .start()
        .await;
    on.publish_json("c", &json!(1)).await;
    let url = on.public_url("/rt/poll/c?since=0&timeout=0");
    let (ok, out) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]).await;
    assert!(ok && out.ends_with("\n2"), "h2c when enabled: {out}");
    let (_, tail) = out.rsplit_once('\n').unwrap();
    let (body, _) = out.split_at(out.len() - tail.len() - 1);
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["messages"][0]["data"], 1);
    let (ok, out) = curl(&["-w", "\n%{http_version}", &url]).await;
    assert!(
        ok && out.ends_with("\n1.1"),
        "and HTTP/1.1 beside it: {out}"
    );
}

/// Raw HTTP/2 frames on a cleartext prior-knowledge connection.
struct H2 {
    sock: TcpStream,
    buf: Vec<u8>,
}

/// A frame: (type, flags, stream, payload).
type Frame = (u8, u8, u32, Vec<u8>);

impl H2 {
    async fn connect(gw: &Gateway) -> H2 {
        let mut sock = TcpStream::connect(gw.public).await.unwrap();
        sock.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        sock.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        H2 {
            sock,
            buf: Vec::new(),
        }
    }

    /// The next frame, or None at EOF.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9).collect();
                    let payload: Vec<u8> = self.buf.drain(..len).collect();
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    return Some((head[3], head[4], stream, payload));
                }
            }
            let mut tmp = [0u8; 16384];
            let n = tokio::time::timeout(T10, self.sock.read(&mut tmp))
                .await
                .expect("a frame within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// The server's SETTINGS, as (id, value) pairs.
    async fn settings(&mut self) -> Vec<(u16, u32)> {
        loop {
            let (kind, flags, _, payload) = self.next().await.expect("SETTINGS");
            if kind == 0x4 && flags & 0x1 == 0 {
                return payload
                    .chunks(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
            }
        }
    }
}

#[tokio::test]
async fn http2_limits_hold_streams_headers_and_rapid_reset() {
    let gw = Gateway::builder()
        .config("[http2]\ncleartext = true\nmax_concurrent_streams = 3\n\n[limits]\nmax_header_bytes = 8192\n")
        .start()
        .await;

    // The advertised limits.
    let mut h2 = H2::connect(&gw).await;
    let settings = h2.settings().await;
    assert!(
        settings.contains(&(0x3, 3)),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert!(
        settings.contains(&(0x6, 8192)),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );

    // A head over limits.max_header_bytes is refused with 431.
    let big = "a".repeat(10000);
    let block = get_headers("/rt/poll/x?timeout=0", &[("x-big", &big)]);
    // END_STREAM | END_HEADERS, in one frame (under the 16 KiB frame size).
    h2.sock
        .write_all(&frame(0x1, 0x5, 1, &block))
        .await
        .unwrap();
    let status = loop {
        let (kind, _, stream, payload) = h2.next().await.expect("an answer to the big head");
        if kind == 0x1 && stream == 1 {
            break payload;
        }
        assert!(
            kind != 0x3 || stream != 1,
            "stream 1 reset instead of answered 431"
        );
    };
    // `:status 431` is not in HPACK's static table: a literal, plain or
    // Huffman-coded ("431" is 0x69 0x90 0xff in HPACK's Huffman code).
    let literal_431 = status
        .windows(3)
        .any(|w| w == b"431" || w == [0x69, 0x90, 0xff]);
    assert!(literal_431, "431 expected: {status:?}");

    // Rapid reset: streams opened and cancelled at once, far past
    // http2.max_pending_accept_reset_streams, get the connection closed.
    let mut h2 = H2::connect(&gw).await;
    h2.settings().await;
    let mut flood = Vec::new();
    for i in 0..200u32 {
        let stream = 1 + 2 * i;
        flood.extend(frame(
            0x1,
            0x5,
            stream,
            &get_headers("/rt/poll/x?timeout=30", &[]),
        ));
        flood.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    let _ = h2.sock.write_all(&flood).await;
    let mut goaway = None;
    while let Some((kind, _, _, payload)) = h2.next().await {
        if kind == 0x7 {
            goaway = Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
            break;
        }
    }
    assert_eq!(
        goaway,
        Some(0xb),
        "GOAWAY ENHANCE_YOUR_CALM after the flood"
    );

    gw.assert_still_serving().await;
}
