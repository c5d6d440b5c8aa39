//! permessage-deflate with context takeover, an opt-in
//! (`websocket.deflate_context_takeover`): a client that doesn't rule it
//! out gets its own compressor (each message deflated against the ones
//! before it) and keeps its own compression context for what it sends,
//! within `websocket.max_deflate_contexts` connections, counted in
//! `pollbridge_ws_deflate_contexts_connections`; past the cap a connection
//! gets the default answer (shared frames), never a refusal.

mod common;

use common::ws::masked_frame;
use common::{Gateway, Head, RawHttpConn, RawWs, T5};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

const CHROMIUM_OFFER: &str = "permessage-deflate; client_max_window_bits";
const NO_TAKEOVER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

const CONFIG: &str = r#"
[websocket]
deflate_context_takeover = true
max_deflate_contexts = 1

[[channels]]
pattern = "chat.*"
allow_client_publish = true
"#;

/// A scoreboard of about 2 KB; consecutive rounds differ in a few numbers.
fn scoreboard(round: u64) -> Value {
    let teams: Vec<Value> = (0..24)
        .map(|i| json!({"team": format!("Team {i:02}"), "points": (i * 13 + round * 3) % 97, "form": "WWLDW"}))
        .collect();
    json!({"league": "premier", "round": round, "table": teams})
}

async fn connect(gw: &Gateway, path: &str) -> (RawWs, Head) {
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    RawWs::handshake_with(conn, path, &[("Sec-WebSocket-Extensions", CHROMIUM_OFFER)])
        .await
        .unwrap()
}

/// The next server frame: (RSV1 set, payload).
async fn read_frame(ws: &mut RawWs) -> (bool, Vec<u8>) {
    tokio::time::timeout(T5, async {
        loop {
            let buf = ws.conn.buffer_mut();
            if buf.len() >= 2 {
                let (head, len) = match buf[1] & 0x7f {
                    126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                    126 | 127 => (usize::MAX / 2, 0),
                    n => (2, n as usize),
                };
                if buf.len() >= head + len {
                    let rsv1 = buf[0] & 0x40 != 0;
                    let frame: Vec<u8> = buf.drain(..head + len).collect();
                    return (rsv1, frame[head..].to_vec());
                }
            }
            assert!(ws.conn.fill_buffer().await.unwrap() > 0, "EOF");
        }
    })
    .await
    .expect("no frame within 5s")
}

/// Inflates one message's payload with `d` (kept across messages when the
/// sender keeps its context).
fn inflate(d: &mut Decompress, data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 16);
    let before = d.total_in();
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid deflate data");
    assert_eq!((d.total_in() - before) as usize, input.len());
    out
}

/// Reads frames until an envelope (not a `{"type":…}` control message);
/// compressed ones are inflated with `d`. Returns it and its compressed
/// size.
async fn next_envelope(ws: &mut RawWs, d: &mut Decompress) -> (Value, usize) {
    loop {
        let (rsv1, data) = read_frame(ws).await;
        let text = if rsv1 {
            inflate(d, &data)
        } else {
            data.clone()
        };
        let v: Value = serde_json::from_slice(&text).unwrap();
        if v.get("type").is_none() {
            assert!(rsv1, "an envelope this long is compressed");
            return (v, data.len());
        }
    }
}

fn client_deflate(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    out.truncate(out.len() - 4);
    out
}

async fn contexts(gw: &Gateway) -> f64 {
    gw.metric("pollbridge_ws_deflate_contexts_connections", &[])
        .await
        .expect("registered from startup")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_takeover_is_opt_in_capped_and_exact() {
    let gw = Gateway::start_with_config(CONFIG, &[]).await;
    assert_eq!(contexts(&gw).await, 0.0);

    // The first connection keeps context both ways: nothing ruled out.
    let (mut own, head) = connect(&gw, "/rt/ws/chat.board").await;
    assert_eq!(
        head.header("sec-websocket-extensions"),
        Some("permessage-deflate")
    );
    assert_eq!(contexts(&gw).await, 1.0);
    // The cap (1) is reached: the next one is negotiated as by default.
    let (mut shared, head) = connect(&gw, "/rt/ws/chat.board").await;
    assert_eq!(head.header("sec-websocket-extensions"), Some(NO_TAKEOVER));
    assert_eq!(contexts(&gw).await, 1.0);

    let mut own_inflater = Decompress::new(false);
    let mut sizes = Vec::new();
    for round in 1..=4 {
        gw.publish_json("chat.board", &scoreboard(round)).await;
        let (env, size) = next_envelope(&mut own, &mut own_inflater).await;
        assert_eq!(env["data"], scoreboard(round), "round {round}");
        sizes.push(size);
        // The shared frame inflates on its own, every time.
        let (env, shared_size) = next_envelope(&mut shared, &mut Decompress::new(false)).await;
        assert_eq!(env["data"], scoreboard(round));
        if round > 1 {
            // Against the round before: smaller than on its own (this
            // repetitive table already deflates well alone).
            assert!(size * 3 < shared_size * 2, "{size} vs {shared_size}");
        }
    }

    // What the client sends may keep its context too.
    let mut client = Compress::new(Compression::default(), false);
    for n in 0..3 {
        let cmd = json!({"type": "publish", "channel": "chat.board", "data": {"n": n, "pad": "y".repeat(500)}});
        let data = client_deflate(&mut client, cmd.to_string().as_bytes());
        own.conn.write_all(&client_frame(&data)).await.unwrap();
        // The `published` ack is skipped: a control message.
        let (env, _) = next_envelope(&mut own, &mut own_inflater).await;
        assert_eq!(env["data"]["n"], n, "{env}");
    }

    // Closing gives the place back: the next connection keeps context.
    drop(own);
    let deadline = tokio::time::Instant::now() + T5;
    while contexts(&gw).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot not given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_again, head) = connect(&gw, "/rt/ws/chat.board").await;
    assert_eq!(
        head.header("sec-websocket-extensions"),
        Some("permessage-deflate")
    );
    assert_eq!(contexts(&gw).await, 1.0);
}

/// A masked, compressed, final text frame.
fn client_frame(data: &[u8]) -> Vec<u8> {
    let mut frame = masked_frame(true, 0x1, data);
    frame[0] |= 0x40;
    frame
}

#[tokio::test]
async fn off_by_default() {
    let gw = Gateway::start(&[]).await;
    let (_ws, head) = connect(&gw, "/rt/ws/chat.board").await;
    assert_eq!(head.header("sec-websocket-extensions"), Some(NO_TAKEOVER));
    assert_eq!(contexts(&gw).await, 0.0);
}
