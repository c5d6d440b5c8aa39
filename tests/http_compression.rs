//! gzip and brotli on HTTP answers (docs/http.md), over real sockets
//! against the real binary: long-poll (one and several messages), SSE
//! streams (decoded incrementally, resumed with Last-Event-ID, ended with a
//! valid trailer), bridged copies (from a backend that answers gzip, and
//! one that answers a decompression bomb), `Vary`, the minimum size, the
//! off switch, and compress-once (clients get byte-identical bodies).

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::{http, RawHttpConn, Response};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const T5: Duration = Duration::from_secs(5);

/// A realistic state message of ~2 KB: an order book snapshot.
fn order_book(seq: u64) -> Value {
    let side = |base: f64, sign: f64| -> Vec<Value> {
        (0..25)
            .map(|i| {
                json!([
                    base + sign * i as f64 * 0.25,
                    10 + (i * 7 + seq) % 90,
                    format!("v{}", i % 3)
                ])
            })
            .collect()
    };
    json!({"symbol": "BTC-EUR", "seq": seq, "bids": side(40000.0, -1.0), "asks": side(40000.5, 1.0)})
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a valid gzip body");
    out
}

fn unbrotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096)
        .read_to_end(&mut out)
        .expect("a valid brotli body");
    out
}

/// The body as the client would see it after decoding its Content-Encoding.
fn decoded(r: &Response) -> Vec<u8> {
    match r.header("content-encoding") {
        None => r.body.clone(),
        Some("gzip") => gunzip(&r.body),
        Some("br") => unbrotli(&r.body),
        Some(other) => panic!("unexpected content-encoding {other}"),
    }
}

fn varies_on_encoding(r: &Response) -> bool {
    r.head
        .header_all("vary")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("accept-encoding"))
}

async fn poll(gw: &Gateway, query: &str, accept: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept-Encoding", a)).into_iter().collect();
    http(
        "GET",
        &gw.public_url(&format!("/rt/poll/{query}")),
        &headers,
        None,
    )
    .await
}

#[tokio::test]
async fn long_poll_answers_decode_to_the_plain_answer_in_gzip_and_br() {
    let gw = Gateway::start(&[]).await;
    let id = gw.publish_json("book", &order_book(1)).await;
    let query = format!("book?since={}&timeout=0", id - 1);

    let plain = poll(&gw, &query, None).await;
    assert_eq!(plain.status(), 200);
    assert_eq!(
        plain.header("content-encoding"),
        None,
        "no Accept-Encoding: identity"
    );
    assert!(varies_on_encoding(&plain), "{:?}", plain.head);
    assert!(
        plain.body.len() > 1000,
        "a realistic message: {}",
        plain.body.len()
    );

    let gz = poll(&gw, &query, Some("gzip")).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(varies_on_encoding(&gz));
    assert_eq!(decoded(&gz), plain.body, "gzip decodes to the plain answer");
    assert!(
        gz.body.len() < plain.body.len() / 2,
        "{} vs {}",
        gz.body.len(),
        plain.body.len()
    );

    let br = poll(&gw, &query, Some("gzip, deflate, br")).await;
    assert_eq!(br.header("content-encoding"), Some("br"), "br wins a tie");
    assert_eq!(decoded(&br), plain.body);

    // q-values: gzip preferred, br refused, identity refused.
    let q = poll(&gw, &query, Some("br;q=0.2, gzip;q=0.9, identity;q=0")).await;
    assert_eq!(q.header("content-encoding"), Some("gzip"));
    let none = poll(&gw, &query, Some("br;q=0, gzip;q=0")).await;
    assert_eq!(none.header("content-encoding"), None);
    assert_eq!(none.body, plain.body);

    // Compressed once per message: a second client gets the same bytes.
    let again = poll(&gw, &query, Some("gzip")).await;
    assert_eq!(again.body, gz.body, "the shared compressed answer");

    let before = gw
        .metric(
            "pollbridge_compression_bytes_total",
            &[("transport", "longpoll"), ("stage", "before")],
        )
        .await
        .unwrap_or(0.0);
    let after = gw
        .metric(
            "pollbridge_compression_bytes_total",
            &[("transport", "longpoll"), ("stage", "after")],
        )
        .await
        .unwrap_or(0.0);
    // Four compressed deliveries: gz, br, q, again.
    assert_eq!(before, 4.0 * plain.body.len() as f64);
    assert_eq!(after, (3 * gz.body.len() + br.body.len()) as f64);
}

#[tokio::test]
async fn a_multi_message_answer_and_a_held_poll_are_compressed() {
    let gw = Gateway::start(&[]).await;
    for seq in 1..=3 {
        gw.publish_json("multi", &order_book(seq)).await;
    }
    let plain = poll(&gw, "multi?since=0&timeout=0", None).await;
    assert_eq!(plain.json()["messages"].as_array().unwrap().len(), 3);
    for accept in ["gzip", "br"] {
        let r = poll(&gw, "multi?since=0&timeout=0", Some(accept)).await;
        assert_eq!(r.header("content-encoding"), Some(accept));
        assert_eq!(decoded(&r), plain.body, "{accept}");
    }

    // A held poll answered by a publish.
    let url = gw.public_url("/rt/poll/multi?since=3&timeout=10");
    let held =
        tokio::spawn(async move { http("GET", &url, &[("Accept-Encoding", "gzip")], None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.publish_json("multi", &order_book(4)).await;
    let r = held.await.unwrap();
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let v: Value = serde_json::from_slice(&decoded(&r)).unwrap();
    assert_eq!(v["messages"][0]["data"], order_book(4));
}

#[tokio::test]
async fn small_answers_and_the_off_switch_go_uncompressed() {
    let gw = Gateway::start(&[]).await;
    gw.publish_json("small", &json!({"score": "2-1"})).await;
    let r = poll(&gw, "small?since=0&timeout=0", Some("gzip, br")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.header("content-encoding"),
        None,
        "under compression.min_bytes"
    );
    assert!(varies_on_encoding(&r), "it could have been compressed");

    let off = Gateway::builder()
        .config("[compression]\nenabled = false\n")
        .start()
        .await;
    off.publish_json("book", &order_book(1)).await;
    let r = poll(&off, "book?since=0&timeout=0", Some("gzip, br")).await;
    assert_eq!(r.header("content-encoding"), None);
    assert!(!varies_on_encoding(&r), "{:?}", r.head);
    assert_eq!(r.json()["messages"][0]["data"], order_book(1));
}

/// An SSE client that inflates a gzip stream as its chunks arrive.
struct GzipSse {
    conn: RawHttpConn,
    /// Every body byte (compressed) so far.
    raw: Vec<u8>,
    /// Body chunks as they came.
    chunks: Vec<Vec<u8>>,
    inflater: flate2::Decompress,
    header_skipped: bool,
    text: Vec<u8>,
}

impl GzipSse {
    async fn open(gw: &Gateway, path: &str, extra: &[(&str, &str)]) -> GzipSse {
        let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
        let mut headers = vec![("Accept", "text/event-stream"), ("Accept-Encoding", "gzip")];
        headers.extend_from_slice(extra);
        conn.send_request("GET", path, &headers, None)
            .await
            .unwrap();
        let head = conn.read_head().await.unwrap();
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("content-encoding"), Some("gzip"), "{head:?}");
        assert!(head
            .header("vary")
            .is_some_and(|v| v.contains("Accept-Encoding")));
        GzipSse {
            conn,
            raw: Vec::new(),
            chunks: Vec::new(),
            inflater: flate2::Decompress::new(false),
            header_skipped: false,
            text: Vec::new(),
        }
    }

    /// Reads chunks until the decoded text holds `needle`; returns the text.
    async fn until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + T5;
        while !String::from_utf8_lossy(&self.text).contains(needle) {
            let chunk = tokio::time::timeout_at(deadline, self.conn.read_chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {needle:?} within 5 s; so far {:?}",
                        String::from_utf8_lossy(&self.text)
                    )
                })
                .unwrap()
                .expect("stream open");
            self.push(chunk);
        }
        String::from_utf8_lossy(&self.text).into_owned()
    }

    fn push(&mut self, chunk: Vec<u8>) {
        self.raw.extend_from_slice(&chunk);
        self.chunks.push(chunk.clone());
        let mut input = &chunk[..];
        if !self.header_skipped {
            assert_eq!(&chunk[..3], &[0x1f, 0x8b, 8], "a gzip header first");
            input = &input[10..];
            self.header_skipped = true;
        }
        let mut out = Vec::with_capacity(input.len() * 20 + 1024);
        self.inflater
            .decompress_vec(input, &mut out, flate2::FlushDecompress::Sync)
            .expect("valid deflate so far");
        self.text.extend_from_slice(&out);
    }
}

#[tokio::test]
async fn sse_gzip_stream_decodes_event_by_event_resumes_and_ends_with_a_valid_trailer() {
    let gw = Gateway::start(&[]).await;
    let mut a = GzipSse::open(&gw, "/rt/sse/live", &[]).await;
    let mut b = GzipSse::open(&gw, "/rt/sse/live", &[]).await;
    let mut plain = common::sse::SseClient::open(gw.public, "/rt/sse/live", &[]).await;
    assert_eq!(plain.head.header("content-encoding"), None);
    a.until("retry:").await;
    b.until("retry:").await;

    let mut ids = Vec::new();
    for seq in 1..=3 {
        let id = gw.publish_json("live", &order_book(seq)).await;
        ids.push(id);
        let needle = format!("\"seq\":{seq},");
        // Each event is decoded as soon as it arrives (sync-flushed).
        let text_a = a.until(&needle).await;
        b.until(&needle).await;
        let ev = plain.expect_event(T5).await;
        assert_eq!(ev.json()["data"], order_book(seq));
        assert!(text_a.ends_with("\n\n"), "whole events only: {text_a:?}");
    }
    // The same decoded stream as the plain client's, event for event.
    let text = String::from_utf8_lossy(&a.text).into_owned();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| e.contains("data: {\"channel\""))
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    for (event, seq) in events.iter().zip(1..) {
        let data = event.split("data: ").nth(1).unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["data"], order_book(seq));
    }
    // Compressed once: the last event's bytes are the same on both streams.
    assert_eq!(
        a.chunks.last(),
        b.chunks.last(),
        "a shared, compressed-once event"
    );

    // A reconnect with Last-Event-ID replays what followed, compressed.
    let last = format!("{}", ids[0]);
    let mut resumed = GzipSse::open(&gw, "/rt/sse/live", &[("Last-Event-ID", &last)]).await;
    let text = resumed.until("\"seq\":3,").await;
    assert!(!text.contains("\"seq\":1,"), "{text}");
    assert!(text.contains("\"seq\":2,"), "{text}");

    // Shutdown ends the streams: the whole body is one valid gzip member
    // (CRC32 and length in the trailer match).
    gw.sigterm();
    for client in [&mut a, &mut resumed] {
        loop {
            match client.conn.read_chunk().await {
                Ok(Some(chunk)) => client.raw.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => panic!("stream did not end cleanly: {e}"),
            }
        }
        let whole = String::from_utf8(gunzip(&client.raw)).unwrap();
        assert!(whole.starts_with("retry: "), "{whole}");
        assert!(whole.contains("\"seq\":3,"), "{whole}");
    }
}

/// A backend that answers `body`, gzip-compressed when asked, and records
/// the `Accept-Encoding` it was sent.
struct GzipBackend {
    addr: std::net::SocketAddr,
    accept_seen: Arc<Mutex<Vec<String>>>,
}

async fn gzip_backend(body: Vec<u8>, compress: bool) -> GzipBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = accept_seen.clone();
    let gz = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&body).unwrap();
        enc.finish().unwrap()
    };
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (seen, gz, body) = (seen.clone(), gz.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let accept = head
                    .lines()
                    .find_map(|l| l.strip_prefix("accept-encoding:"))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default();
                let gzip = compress && accept.contains("gzip");
                seen.lock().unwrap().push(accept);
                let (payload, coding) = if gzip {
                    (&gz, "content-encoding: gzip\r\n")
                } else {
                    (&body, "")
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{coding}content-length: {}\r\nconnection: close\r\n\r\n",
                    payload.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.write_all(payload).await;
            });
        }
    });
    GzipBackend { addr, accept_seen }
}

fn bridge_config(backend: std::net::SocketAddr) -> String {
    format!(
        "upstream = \"http://{backend}\"\n\n[[bridge]]\npath = \"/api/book\"\n\
         channel = \"book\"\ninterval = \"100ms\"\n"
    )
}

#[tokio::test]
async fn bridged_copies_are_compressed_once_per_version_with_etags_and_304() {
    let book = serde_json::to_vec(&order_book(7)).unwrap();
    let backend = gzip_backend(book.clone(), true).await;
    let gw = Gateway::builder()
        .config(&bridge_config(backend.addr))
        .start()
        .await;
    let url = gw.public_url("/api/book");

    let plain = http("GET", &url, &[], None).await;
    assert_eq!(plain.status(), 200, "{}", plain.text());
    assert_eq!(plain.header("content-encoding"), None);
    let v: Value = serde_json::from_slice(&plain.body).unwrap();
    assert_eq!(
        v,
        order_book(7),
        "the backend's gzip body was decoded into the copy"
    );
    assert!(
        backend
            .accept_seen
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "gzip, br"),
        "the bridge asks for compressed bodies: {:?}",
        backend.accept_seen.lock().unwrap()
    );
    let etag = plain.header("etag").unwrap().to_string();

    let br = http("GET", &url, &[("Accept-Encoding", "br")], None).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert!(varies_on_encoding(&br));
    assert_eq!(decoded(&br), plain.body);
    let weak = br.header("etag").unwrap().to_string();
    assert_eq!(
        weak,
        format!("W/{etag}"),
        "a compressed copy has a weak ETag"
    );
    let br2 = http("GET", &url, &[("Accept-Encoding", "br")], None).await;
    assert_eq!(br2.body, br.body, "compressed once per version, shared");

    let gz = http("GET", &url, &[("Accept-Encoding", "gzip")], None).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(decoded(&gz), plain.body);

    // Revalidation still works with the weak ETag.
    let nm = http(
        "GET",
        &url,
        &[("Accept-Encoding", "br"), ("If-None-Match", &weak)],
        None,
    )
    .await;
    assert_eq!(nm.status(), 304);
    assert_eq!(nm.header("etag"), Some(weak.as_str()));
    assert!(varies_on_encoding(&nm));
    let nm = http("GET", &url, &[("If-None-Match", &etag)], None).await;
    assert_eq!(nm.status(), 304);
}

#[tokio::test]
async fn a_decompression_bomb_from_the_backend_is_an_upstream_error() {
    // 8 MiB of zeros: an 8 KiB gzip body, far past limits.max_message_bytes.
    let bomb = vec![0u8; 8 * 1024 * 1024];
    let backend = gzip_backend(bomb, true).await;
    let gw = Gateway::builder()
        .config(&bridge_config(backend.addr))
        .start()
        .await;
    let r = http("GET", &gw.public_url("/api/book"), &[], None).await;
    assert!(r.status() >= 500, "{} {}", r.status(), r.text());
    gw.assert_still_serving().await;
}
