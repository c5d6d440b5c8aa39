//! Compressed HTTP streams stitched from pieces compressed once and shared
//! (docs/http.md, "Stitched streams"): gzip and brotli SSE streams carrying
//! deltas, and large long-poll answers, over real sockets against the real
//! binary. Each
//! stream is decoded as a client would and checked against what was
//! published.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use common::http::{http, RawHttpConn, Response};
use common::*;
use serde_json::{json, Value};

const T5: Duration = Duration::from_secs(5);

const STATE: &str = r#"
[[channels]]
pattern = "score.*"
mode = "state"
"#;

/// A ~2 KB order book whose `seq`-th version changes a few numbers.
fn order_book(seq: u64) -> Value {
    let side = |base: f64, sign: f64| -> Vec<Value> {
        (0..25)
            .map(|i| {
                json!([
                    base + sign * i as f64 * 0.25,
                    10 + (i * 7 + if i % 6 == 0 { seq } else { 0 }) % 90,
                    format!("v{}", i % 3)
                ])
            })
            .collect()
    };
    json!({"symbol": "BTC-EUR", "seq": seq, "bids": side(40000.0, -1.0), "asks": side(40000.5, 1.0)})
}

/// What a decoder gives for a stream cut anywhere: everything it can
/// decode so far (a cut stream ends in an error, after its data).
fn decode_prefix(coding: &str, raw: &[u8]) -> Vec<u8> {
    let mut reader: Box<dyn Read + '_> = match coding {
        "gzip" => Box::new(flate2::read::GzDecoder::new(raw)),
        "br" => Box::new(brotli::Decompressor::new(raw, 4096)),
        other => panic!("no decoder for {other}"),
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A whole stream, which must be valid to its end.
fn decode_all(coding: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(raw).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(raw, 4096).read_to_end(&mut out),
        other => panic!("no decoder for {other}"),
    }
    .unwrap_or_else(|e| panic!("not a valid {coding} stream: {e}"));
    out
}

/// An SSE client of a compressed stream, decoding what has arrived.
struct CodedSse {
    coding: &'static str,
    conn: RawHttpConn,
    raw: Vec<u8>,
}

impl CodedSse {
    async fn open(gw: &Gateway, path: &str, coding: &'static str) -> CodedSse {
        let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
        let headers = [("Accept", "text/event-stream"), ("Accept-Encoding", coding)];
        conn.send_request("GET", path, &headers, None)
            .await
            .unwrap();
        let head = conn.read_head().await.unwrap();
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("content-encoding"), Some(coding), "{head:?}");
        CodedSse {
            coding,
            conn,
            raw: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8(decode_prefix(self.coding, &self.raw)).expect("UTF-8 events")
    }

    /// Reads until the decoded text holds `needle`: each event decodes as
    /// soon as its bytes are in.
    async fn until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + T5;
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            let chunk = tokio::time::timeout_at(deadline, self.conn.read_chunk())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} within 5 s; so far {text:?}"))
                .unwrap()
                .expect("stream open");
            self.raw.extend_from_slice(&chunk);
        }
    }

    /// The message envelopes of the decoded events.
    fn envelopes(&self) -> Vec<Value> {
        self.text()
            .split("\n\n")
            .filter_map(|event| event.split("data: ").nth(1))
            .filter(|data| data.starts_with("{\"channel\""))
            .map(|data| serde_json::from_str(data).expect("a JSON envelope"))
            .collect()
    }
}

/// RFC 6902 `replace` / `add` / `remove` on objects and arrays, enough for
/// the order book's patches, written independently of the gateway's code.
fn apply_patch(doc: &mut Value, ops: &Value) {
    for op in ops.as_array().expect("a patch is a list") {
        let path = op["path"].as_str().expect("path");
        let (parent, key) = path.rsplit_once('/').expect("a member path");
        let target = doc.pointer_mut(parent).expect("parent exists");
        match (target, op["op"].as_str().expect("op")) {
            (Value::Object(m), "remove") => {
                m.remove(key).expect("member to remove");
            }
            (Value::Object(m), _) => {
                m.insert(key.to_string(), op["value"].clone());
            }
            (Value::Array(a), "remove") => {
                a.remove(key.parse().unwrap());
            }
            (Value::Array(a), "add") => a.insert(key.parse().unwrap(), op["value"].clone()),
            (Value::Array(a), _) => a[key.parse::<usize>().unwrap()] = op["value"].clone(),
            (other, _) => panic!("{op} on {other}"),
        }
    }
}

/// Rebuilds every value from whole envelopes and deltas, checks each
/// against what was published; returns how many came as deltas.
fn check_values(who: &str, envelopes: &[Value], published: &HashMap<u64, Value>) -> usize {
    let mut held: Option<(u64, Value)> = None;
    let mut deltas = 0;
    for env in envelopes {
        let id = env["id"].as_u64().expect("id");
        let value = match (&env["delta"], &mut held) {
            (Value::Null, _) => env["data"].clone(),
            (patch, Some((held_id, value))) => {
                assert_eq!(env["base"].as_u64(), Some(*held_id), "{who}: base");
                deltas += 1;
                let mut value = value.clone();
                apply_patch(&mut value, patch);
                value
            }
            (_, None) => panic!("{who}: a delta before any whole value"),
        };
        assert_eq!(Some(&value), published.get(&id), "{who}: value of #{id}");
        held = Some((id, value));
    }
    deltas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_sse_delta_subscribers_get_identical_correct_values() {
    sse_delta_subscribers_get_identical_correct_values("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brotli_sse_delta_subscribers_get_identical_correct_values() {
    sse_delta_subscribers_get_identical_correct_values("br").await;
}

/// Two delta subscribers of one state channel on `coding` streams, a
/// publish at a time: each event decodes as it arrives, every value is
/// rebuilt exactly, both streams are the same bytes, and each ends valid.
async fn sse_delta_subscribers_get_identical_correct_values(coding: &'static str) {
    let gw = Gateway::start_with_config(STATE, &[]).await;
    let path = "/rt/sse/score.g?delta=1";
    let mut a = CodedSse::open(&gw, path, coding).await;
    let mut b = CodedSse::open(&gw, path, coding).await;
    a.until("retry:").await;
    b.until("retry:").await;
    let mut published = HashMap::new();
    for seq in 1..=8 {
        let value = order_book(seq);
        let id = gw.publish_json("score.g", &value).await;
        published.insert(id, value);
        let needle = format!("\"id\":{id},");
        a.until(&needle).await;
        b.until(&needle).await;
    }
    let deltas_a = check_values("a", &a.envelopes(), &published);
    let deltas_b = check_values("b", &b.envelopes(), &published);
    assert_eq!(a.envelopes().len(), 8);
    assert_eq!((deltas_a, deltas_b), (7, 7), "whole first, then deltas");
    // Both streams are the same bytes: every event, whole or delta, went
    // out as its shared piece.
    assert_eq!(a.raw, b.raw, "identical compressed streams");

    gw.sigterm();
    for client in [&mut a, &mut b] {
        while let Some(chunk) = client.conn.read_chunk().await.expect("a clean end") {
            client.raw.extend_from_slice(&chunk);
        }
        let whole = String::from_utf8(decode_all(coding, &client.raw)).unwrap();
        assert!(whole.starts_with("retry: "), "{whole}");
    }
}

fn varies_on_encoding(r: &Response) -> bool {
    r.head
        .header_all("vary")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("accept-encoding"))
}

async fn longpoll_bytes(gw: &Gateway, stage: &str) -> f64 {
    gw.metric(
        "pollbridge_compression_bytes_total",
        &[("transport", "longpoll"), ("stage", stage)],
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_large_long_poll_answer_is_stitched_and_decodes_to_exactly_the_plain_answer() {
    let gw = Gateway::start(&[]).await;
    for seq in 1..=40 {
        gw.publish_json("big", &order_book(seq)).await;
    }
    let url = gw.public_url("/rt/poll/big?since=0&timeout=0");
    let plain = http("GET", &url, &[], None).await;
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.json()["messages"].as_array().unwrap().len(), 40);
    assert!(
        plain.body.len() > 16 * 1024,
        "more than one chunk: streamed ({} bytes)",
        plain.body.len()
    );
    assert_eq!(plain.header("content-encoding"), None);
    assert!(varies_on_encoding(&plain));

    let br = http(
        "GET",
        &url,
        &[("Accept-Encoding", "gzip, deflate, br")],
        None,
    )
    .await;
    assert_eq!(br.header("content-encoding"), Some("br"), "{:?}", br.head);
    assert_eq!(decode_all("br", &br.body), plain.body, "br decodes too");
    assert!(br.body.len() * 2 < plain.body.len());

    let gz = http("GET", &url, &[("Accept-Encoding", "gzip")], None).await;
    assert_eq!(gz.status(), 200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"), "{:?}", gz.head);
    assert!(varies_on_encoding(&gz));
    assert_eq!(
        decode_all("gzip", &gz.body),
        plain.body,
        "decodes to exactly the plain answer"
    );
    assert!(
        gz.body.len() * 2 < plain.body.len(),
        "{} of {} bytes",
        gz.body.len(),
        plain.body.len()
    );
    // Counted as compressed long-poll output: all of both answers, before
    // and after.
    assert_eq!(
        longpoll_bytes(&gw, "before").await,
        2.0 * plain.body.len() as f64
    );
    assert_eq!(
        longpoll_bytes(&gw, "after").await,
        (br.body.len() + gz.body.len()) as f64
    );

    // Counted as pending output while unsent, by its plain bytes, and
    // all of it released once sent.
    let pending = gw
        .metric("pollbridge_output_pending_bytes", &[])
        .await
        .unwrap_or(-1.0);
    assert_eq!(pending, 0.0, "the answers' output accounts are settled");

    // The pieces are shared: a second client gets the same bytes.
    let again = http("GET", &url, &[("Accept-Encoding", "gzip")], None).await;
    assert_eq!(again.body, gz.body);
    // A page of the answer (a cursor in the middle) too.
    let page = gw.public_url("/rt/poll/big?since=3&timeout=0");
    let plain_page = http("GET", &page, &[], None).await;
    let gz_page = http("GET", &page, &[("Accept-Encoding", "gzip")], None).await;
    assert_eq!(decode_all("gzip", &gz_page.body), plain_page.body);
}
