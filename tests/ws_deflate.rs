//! permessage-deflate (RFC 7692) over real sockets: what the handshake
//! answers, that every subscriber that negotiated it gets the same
//! compressed frame (direct and queued delivery), that it inflates to the
//! envelope a plain client gets, compressed client commands (fragments;
//! no context takeover, 1007 for a client that keeps its context anyway),
//! the decompression bomb (1009) and RSV1 without negotiation (1002).

mod common;

use common::ws::masked_frame;
use common::{metric_value, Gateway, Head, RawHttpConn, RawWs, T5};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

const CHROMIUM_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The gateway's answer to any plain offer.
const NO_TAKEOVER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A scoreboard snapshot of about 2 KB: what a state channel carries.
fn scoreboard(round: u64) -> Value {
    let teams: Vec<Value> = (0..24)
        .map(|i| {
            json!({
                "team": format!("Team {i:02}"),
                "played": round,
                "won": (i * 7 + round) % 11,
                "lost": (i * 3 + round) % 9,
                "points": (i * 13 + round * 3) % 97,
                "form": "WWLDW",
            })
        })
        .collect();
    json!({"league": "premier", "round": round, "table": teams})
}

/// One whole server frame as it crossed the wire, header included.
async fn read_raw_frame(ws: &mut RawWs) -> Vec<u8> {
    tokio::time::timeout(T5, async {
        loop {
            let buf = ws.conn.buffer_mut();
            if let Some(len) = frame_len(buf) {
                return buf.drain(..len).collect();
            }
            assert!(ws.conn.fill_buffer().await.unwrap() > 0, "EOF");
        }
    })
    .await
    .expect("no frame within 5s")
}

/// The next server frame that is not a control message (`{"type":…}`,
/// sent uncompressed).
async fn read_envelope_frame(ws: &mut RawWs) -> Vec<u8> {
    loop {
        let frame = read_raw_frame(ws).await;
        let (rsv1, data) = payload(&frame);
        let control =
            !rsv1 && serde_json::from_slice::<Value>(data).is_ok_and(|v| v.get("type").is_some());
        if !control {
            return frame;
        }
    }
}

/// The length of the complete (unmasked) frame at the start of `buf`.
fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    let (head, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => (
            10,
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
        ),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (buf.len() >= head + len).then_some(head + len)
}

/// The payload of a server frame, and whether RSV1 is set.
fn payload(frame: &[u8]) -> (bool, &[u8]) {
    let head = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (frame[0] & 0x40 != 0, &frame[head..])
}

/// Inflates a permessage-deflate payload with a `2^bits` window.
fn inflate(deflated: &[u8], bits: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, bits);
    let mut input = deflated.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid deflate stream");
    assert_eq!(d.total_in() as usize, input.len());
    out
}

/// A client compressor: raw deflate, sync-flushed, tail removed.
fn deflate(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A masked client frame with the given first byte (FIN, RSV, opcode).
fn client_frame(first: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = masked_frame(first & 0x80 != 0, first & 0x0f, data);
    frame[0] = first;
    frame
}

async fn connect(gw: &Gateway, path: &str, offer: Option<&str>) -> (RawWs, Head) {
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let extra: Vec<(&str, &str)> = offer
        .map(|o| vec![("Sec-WebSocket-Extensions", o)])
        .unwrap_or_default();
    RawWs::handshake_with(conn, path, &extra).await.unwrap()
}

async fn answer_to(gw: &Gateway, offers: &[&str]) -> Option<String> {
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let extra: Vec<(&str, &str)> = offers
        .iter()
        .map(|o| ("Sec-WebSocket-Extensions", *o))
        .collect();
    let (_ws, head) = RawWs::handshake_with(conn, "/rt/ws/n", &extra)
        .await
        .unwrap();
    head.header("sec-websocket-extensions").map(str::to_string)
}

#[tokio::test]
async fn the_handshake_answers_offers_and_declines_bad_ones() {
    let gw = Gateway::start(&[]).await;
    // No context takeover either way, offered or not: the gateway keeps
    // no compressor or inflater per connection.
    assert_eq!(
        answer_to(&gw, &[CHROMIUM_OFFER]).await.as_deref(),
        Some(NO_TAKEOVER)
    );
    assert_eq!(
        answer_to(
            &gw,
            &["permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"]
        )
        .await
        .as_deref(),
        Some(&*format!("{NO_TAKEOVER}; server_max_window_bits=12"))
    );
    // A bad first offer is declined, the second (in another header) taken.
    assert_eq!(
        answer_to(
            &gw,
            &[
                "permessage-deflate; server_max_window_bits=7",
                "permessage-deflate; client_no_context_takeover"
            ]
        )
        .await
        .as_deref(),
        Some(NO_TAKEOVER)
    );
    // Nothing acceptable, or garbage: upgraded all the same, uncompressed.
    assert_eq!(answer_to(&gw, &["permessage-deflate; bogus=1"]).await, None);
    assert_eq!(answer_to(&gw, &["\"unterminated"]).await, None);
    assert_eq!(answer_to(&gw, &[]).await, None);

    let off = Gateway::start_with_config("[websocket]\ncompression = \"off\"\n", &[]).await;
    assert_eq!(answer_to(&off, &[CHROMIUM_OFFER]).await, None);
}

/// Subscribers that negotiated deflate get byte-identical compressed
/// frames, which inflate to exactly what a plain subscriber gets; each
/// delivery is counted in the compression metrics.
async fn check_shared_frames(gw: &Gateway) {
    let mut deflating = Vec::new();
    for _ in 0..3 {
        let (ws, head) = connect(gw, "/rt/ws/board", Some(CHROMIUM_OFFER)).await;
        assert!(head.header("sec-websocket-extensions").is_some());
        deflating.push(ws);
    }
    let (mut plain, head) = connect(gw, "/rt/ws/board", None).await;
    assert_eq!(head.header("sec-websocket-extensions"), None);
    let (mut small_window, _) = connect(
        gw,
        "/rt/ws/board",
        Some("permessage-deflate; server_max_window_bits=9"),
    )
    .await;

    for round in 1..=3 {
        gw.publish_json("board", &scoreboard(round)).await;
        let plain_frame = read_envelope_frame(&mut plain).await;
        let (rsv1, envelope) = payload(&plain_frame);
        assert!(!rsv1, "a client that did not negotiate gets plain frames");
        let parsed: Value = serde_json::from_slice(envelope).unwrap();
        assert_eq!(parsed["data"], scoreboard(round));

        let mut frames = Vec::new();
        for ws in &mut deflating {
            frames.push(read_envelope_frame(ws).await);
        }
        assert!(frames.iter().all(|f| f == &frames[0]), "byte-identical");
        let (rsv1, deflated) = payload(&frames[0]);
        assert!(rsv1, "compressed");
        assert_eq!(frames[0][0], 0xC1, "FIN + RSV1 + text");
        assert!(
            deflated.len() * 3 < envelope.len(),
            "{} bytes",
            deflated.len()
        );
        assert_eq!(inflate(deflated, 15), envelope);

        let small = read_envelope_frame(&mut small_window).await;
        let (rsv1, deflated) = payload(&small);
        assert!(rsv1);
        assert_eq!(inflate(deflated, 9), envelope, "fits a 512-byte window");
    }

    // Below compression_min_bytes: plain, even where deflate was agreed.
    gw.publish_json("board", &json!({"x": 1})).await;
    let frame = read_envelope_frame(&mut deflating[0]).await;
    let (rsv1, data) = payload(&frame);
    assert!(!rsv1);
    assert!(data.starts_with(b"{\"channel\":\"board\""));

    let metrics = gw.metrics().await;
    let stage = |s| {
        metric_value(
            &metrics,
            "pollbridge_compression_bytes_total",
            &[("transport", "websocket"), ("stage", s)],
        )
        .unwrap()
    };
    // 3 rounds × 4 compressed deliveries.
    assert!(stage("before") > 12.0 * 1500.0, "{}", stage("before"));
    assert!(stage("after") * 3.0 < stage("before"));
}

#[tokio::test]
async fn direct_mode_subscribers_share_one_compressed_frame() {
    let gw = Gateway::start(&[]).await;
    check_shared_frames(&gw).await;
}

#[tokio::test]
async fn queued_subscribers_share_one_compressed_frame() {
    // A throttling rule anywhere takes every session out of direct mode:
    // each one writes what its queue holds.
    let gw = Gateway::start_with_config(
        "[[channels]]\npattern = \"slow.*\"\nmode = \"state\"\nconflate_interval = \"50ms\"\n",
        &[],
    )
    .await;
    check_shared_frames(&gw).await;
}

#[tokio::test]
async fn a_channel_rule_turns_compression_off() {
    let gw =
        Gateway::start_with_config("[[channels]]\npattern = \"raw.*\"\ncompress = false\n", &[])
            .await;
    let (mut ws, _) = connect(&gw, "/rt/ws/raw.feed", Some(CHROMIUM_OFFER)).await;
    gw.publish_json("raw.feed", &scoreboard(1)).await;
    let frame = read_envelope_frame(&mut ws).await;
    let (rsv1, data) = payload(&frame);
    assert!(!rsv1);
    let parsed: Value = serde_json::from_slice(data).unwrap();
    assert_eq!(parsed["data"], scoreboard(1));
}

#[tokio::test]
async fn compressed_client_commands_are_inflated() {
    let gw = Gateway::start_with_config(
        "[[channels]]\npattern = \"chat.*\"\nallow_client_publish = true\n",
        &[],
    )
    .await;
    // The answer says client_no_context_takeover: the client starts each
    // message with a fresh compressor.
    let (mut ws, head) = connect(&gw, "/rt/ws", Some(CHROMIUM_OFFER)).await;
    assert_eq!(head.header("sec-websocket-extensions"), Some(NO_TAKEOVER));
    let fresh = || Compress::new(Compression::default(), false);
    for channel in ["chat.a", "chat.b"] {
        let cmd = json!({"type": "subscribe", "channel": channel}).to_string();
        let data = deflate(&mut fresh(), cmd.as_bytes());
        ws.conn.write_all(&client_frame(0xC1, &data)).await.unwrap();
        let ack = ws.next_json(T5).await;
        assert_eq!(ack["type"], "subscribed", "{ack}");
        assert_eq!(ack["channel"], channel);
    }
    // A fragmented compressed publish: RSV1 on the first frame only.
    let text = "x".repeat(3000);
    let cmd = json!({"type": "publish", "channel": "chat.a", "data": {"text": text}}).to_string();
    let data = deflate(&mut fresh(), cmd.as_bytes());
    let (first, rest) = data.split_at(data.len() / 2);
    ws.conn.write_all(&client_frame(0x41, first)).await.unwrap();
    ws.conn.write_all(&client_frame(0x80, rest)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame = read_raw_frame(&mut ws).await;
        let (rsv1, data) = payload(&frame);
        let value: Value = if rsv1 {
            serde_json::from_slice(&inflate(data, 15)).unwrap()
        } else {
            serde_json::from_slice(data).unwrap()
        };
        got.push(value);
    }
    let published = got.iter().find(|v| v["type"] == "published").expect("ack");
    assert_eq!(published["channel"], "chat.a");
    let envelope = got.iter().find(|v| v.get("type").is_none()).expect("echo");
    assert_eq!(envelope["data"]["text"], text.as_str());
}

#[tokio::test]
async fn a_client_that_keeps_its_context_anyway_gets_1007() {
    let gw = Gateway::start(&[]).await;
    let (mut ws, head) = connect(&gw, "/rt/ws", Some(CHROMIUM_OFFER)).await;
    assert_eq!(head.header("sec-websocket-extensions"), Some(NO_TAKEOVER));
    // One compressor for both messages, against the answer: the second
    // refers back into the first, which the gateway did not keep.
    let mut client = Compress::new(Compression::default(), false);
    let cmd = json!({"type": "subscribe", "channel": "news"}).to_string();
    let first = deflate(&mut client, cmd.as_bytes());
    ws.conn
        .write_all(&client_frame(0xC1, &first))
        .await
        .unwrap();
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");
    let second = deflate(&mut client, cmd.as_bytes());
    ws.conn
        .write_all(&client_frame(0xC1, &second))
        .await
        .unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1007));
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn a_decompression_bomb_gets_1009() {
    let gw = Gateway::start(&[]).await;
    let (mut ws, _) = connect(&gw, "/rt/ws/n", Some(CHROMIUM_OFFER)).await;
    // 10 MB of spaces in ~10 KB: far past limits.max_message_bytes (64 KiB).
    let mut c = Compress::new(Compression::best(), false);
    let bomb = deflate(&mut c, &vec![b' '; 10_000_000]);
    assert!(bomb.len() < 64 * 1024);
    ws.conn.write_all(&client_frame(0xC1, &bomb)).await.unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1009));
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn rsv1_without_negotiation_is_a_protocol_error() {
    let gw = Gateway::start(&[]).await;
    let (mut ws, _) = connect(&gw, "/rt/ws/n", None).await;
    let mut c = Compress::new(Compression::default(), false);
    let data = deflate(&mut c, br#"{"type":"subscribe","channel":"m"}"#);
    ws.conn.write_all(&client_frame(0xC1, &data)).await.unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1002));

    // Negotiated, but RSV1 on a continuation frame: also 1002.
    let (mut ws, _) = connect(&gw, "/rt/ws/n", Some(CHROMIUM_OFFER)).await;
    ws.conn
        .write_all(&client_frame(0x01, b"{\"type\":"))
        .await
        .unwrap();
    ws.conn.write_all(&client_frame(0xC0, b"x")).await.unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1002));
}

/// A Python 3 that has the `websockets` library (scripts/setup.sh installs
/// Debian's python3-websockets; a pyenv `python3` may shadow it).
fn python_with_websockets() -> String {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = std::process::Command::new(python)
            .args(["-c", "import websockets"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python.to_string();
        }
    }
    panic!("no python3 with the websockets library: run scripts/setup.sh");
}

#[tokio::test]
async fn python_websockets_interoperates_with_compression() {
    let gw = Gateway::start_with_config(
        "[[channels]]\npattern = \"py.*\"\nallow_client_publish = true\n",
        &[],
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ws_deflate_interop.py");
    let run = tokio::process::Command::new(python_with_websockets())
        .arg(script)
        .arg(gw.ws_url("/rt/ws/py.board"))
        .arg(gw.admin_url(""))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("interop script timed out")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("interop: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The gateway compressed what it sent the Python client.
    let after = gw
        .metric(
            "pollbridge_compression_bytes_total",
            &[("transport", "websocket"), ("stage", "after")],
        )
        .await
        .unwrap();
    assert!(after > 0.0);
}
