//! State channels (`[[channels]] mode = "state"`): newest value wins. A
//! slow subscriber is never disconnected for lag — its queue keeps only the
//! newest message — and gets the newest value when it reads again; polls
//! and resumes from an older cursor get only the latest with
//! `"conflated": true`; `conflate_interval` throttles each subscriber to one
//! update per interval. A `stream` channel under the same load still cuts
//! the slow reader off.

mod common;

use std::time::{Duration, Instant};

use common::ws::{parse_frames, RawFrame, OP_CLOSE, OP_TEXT};
use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[channels]]
pattern = "price.*"
mode = "state"

[[channels]]
pattern = "tick.*"
mode = "state"
conflate_interval = "200ms"
"#;

const UPDATES: u64 = 10_000;
const BATCH: u64 = 250;
/// About 2 KB per update: 10,000 of them (20 MB) are far more than the
/// socket buffers between the gateway and a reader that stopped.
const PAD: usize = 2_000;

fn update(i: u64) -> Value {
    json!({"n": i, "pad": "x".repeat(PAD)})
}

async fn gateway() -> Gateway {
    Gateway::start_with_config(
        CONFIG,
        // The pause is well under this; a socket that accepts nothing for
        // this long would be dropped as dead.
        &["--ws-write-timeout", "60s"],
    )
    .await
}

/// A WebSocket subscriber with a 4 KiB receive buffer that reads its
/// `subscribed` message and then nothing.
async fn stalled_subscriber(gw: &Gateway, channel: &str) -> RawWs {
    let conn = RawHttpConn::connect_small_rcvbuf(gw.public, 4096)
        .await
        .expect("connect");
    let (mut ws, _) = RawWs::handshake(conn, &format!("/rt/ws/{channel}"))
        .await
        .expect("handshake");
    let sub = ws.next_json(T5).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    ws
}

/// Most bytes the kernel may buffer for one socket's sends
/// (`net.ipv4.tcp_wmem` max; 4 MiB when unreadable).
fn send_buffer_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// Big updates for the first phase: enough of them (one per request) that
/// their frames overflow any send buffer the kernel may give the gateway's
/// socket, so its writer really blocks on the stalled reader.
const BIG_PAD: usize = 16 * 1024;

fn fill_count() -> u64 {
    (send_buffer_max() * 3 / 2 / BIG_PAD as u64).clamp(300, 2_000)
}

/// Publishes updates `from..=to` on `channel` in batches; returns the peak
/// RSS seen after each batch.
async fn publish_updates(gw: &Gateway, channel: &str, from: u64, to: u64) -> u64 {
    let mut peak = gw.rss_kib();
    let mut next = from;
    while next <= to {
        let last = (next + BATCH - 1).min(to);
        let items: Vec<(&str, Value)> = (next..=last).map(|i| (channel, update(i))).collect();
        let ids = gw.publish_batch_ok(&items).await;
        assert_eq!(ids, (next..=last).collect::<Vec<_>>(), "ids of the batch");
        peak = peak.max(gw.rss_kib());
        next = last + 1;
    }
    peak
}

/// The envelope in a text frame.
fn envelope(frame: &RawFrame) -> Value {
    serde_json::from_slice(&frame.payload).expect("text frame is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_state_subscriber_is_kept_and_gets_the_newest_value_next() {
    let gw = gateway().await;
    let mut slow = stalled_subscriber(&gw, "price.eurusd").await;
    let conflated_before = gw
        .metric("pollbridge_conflated_total", &[("transport", "websocket")])
        .await
        .unwrap_or(0.0);

    let paused_at = Instant::now();
    let rss_before = gw.rss_kib();
    // Phase 1: ~16 KB updates one by one until the socket is full and the
    // gateway's writer blocks; phase 2: the rest, ~2 KB each, in batches.
    let fill = fill_count();
    let mut rss_peak = rss_before;
    for i in 1..=fill {
        let id = gw
            .publish_json("price.eurusd", &json!({"n": i, "pad": "y".repeat(BIG_PAD)}))
            .await;
        assert_eq!(id, i);
        if i.is_multiple_of(50) {
            rss_peak = rss_peak.max(gw.rss_kib());
        }
    }
    rss_peak = rss_peak.max(publish_updates(&gw, "price.eurusd", fill + 1, UPDATES).await);
    eprintln!(
        "published {fill} × 16 KB one by one, then {} × 2 KB in batches, in {:?}; \
         RSS {rss_before} KiB, peak {rss_peak} KiB",
        UPDATES - fill,
        paused_at.elapsed()
    );
    // Queued as they were, 10,000 updates would hold 20 MB of payload
    // (twice, with their frames); conflated, the queue holds one.
    assert!(
        rss_peak < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_peak} KiB while a stalled \
         state subscriber was sent 20 MB"
    );

    let conflated = eventually(T10, "conflated_total{websocket} grows", || async {
        gw.metric("pollbridge_conflated_total", &[("transport", "websocket")])
            .await
            .filter(|v| *v >= conflated_before + (UPDATES as f64) * 0.5)
    })
    .await;
    eprintln!("conflated_total{{transport=websocket}}: {conflated_before} → {conflated}");

    // Still connected after the pause: a few more seconds of nothing must
    // not get it dropped either (no lag disconnect on a state channel).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        paused_at.elapsed() < Duration::from_secs(50),
        "paused too long: {:?}",
        paused_at.elapsed()
    );
    let channels = get(&gw.admin_url("/channels")).await.json();
    let price = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "price.eurusd")
        .cloned()
        .expect("price.eurusd in /channels");
    assert_eq!(price["subscribers"]["websocket"], 1, "{price}");
    assert_eq!(price["history"], 1, "state history keeps the latest only");

    // Read again: what was already on its way (socket buffers, the write in
    // progress) comes first, in order, then the newest value — not the
    // thousands in between.
    let mut ids = Vec::new();
    let mut stale_bytes = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ids.last() != Some(&UPDATES) {
        let frame = match tokio::time::timeout_at(deadline, slow.read_frame()).await {
            Err(_) => panic!(
                "no update {UPDATES} within 30 s of reading again (got {} frames, last {:?})",
                ids.len(),
                ids.last()
            ),
            Ok(Err(e)) => panic!("slow subscriber's socket failed: {e} after {ids:?}"),
            Ok(Ok(None)) => panic!(
                "slow state subscriber was disconnected after {} frames (last {:?})",
                ids.len(),
                ids.last()
            ),
            Ok(Ok(Some(f))) => f,
        };
        match frame.opcode {
            OP_TEXT => {
                let env = envelope(&frame);
                assert!(env.get("type").is_none(), "control message {env}");
                let id = env["id"].as_u64().expect("id");
                assert_eq!(env["data"]["n"], id, "payload of {id}");
                if let Some(&prev) = ids.last() {
                    assert!(id > prev, "out of order: {id} after {prev}");
                }
                if id != UPDATES {
                    stale_bytes += frame.payload.len();
                }
                ids.push(id);
            }
            OP_CLOSE => panic!(
                "slow state subscriber closed with {:?} after {} frames",
                frame.close_code(),
                ids.len()
            ),
            _ => {}
        }
    }
    let before_newest = ids.len() - 1;
    eprintln!(
        "after the pause: {} frames, {before_newest} of them ({stale_bytes} bytes) already on \
         their way: {:?} … {:?}",
        ids.len(),
        &ids[..ids.len().min(5)],
        &ids[ids.len().saturating_sub(3)..]
    );
    // The socket really was full: megabytes were stuck in it...
    assert!(
        stale_bytes >= 1 << 20,
        "only {stale_bytes} bytes were on their way: the writer never blocked"
    );
    // ...and after them came the newest value, none of the thousands of
    // updates published while the writer was blocked.
    let skipped: Vec<u64> = ids[..before_newest]
        .iter()
        .copied()
        .filter(|id| *id > fill)
        .collect();
    assert!(
        skipped.is_empty(),
        "updates published while the writer was blocked were delivered before the newest: \
         {skipped:?}"
    );
    assert!(
        ids.len() < (UPDATES / 2) as usize,
        "{} of {UPDATES} updates were delivered: not conflated",
        ids.len()
    );

    // Every later update, in order.
    for i in UPDATES + 1..=UPDATES + 5 {
        gw.publish_json("price.eurusd", &json!({"n": i})).await;
        let env = slow.next_json(T5).await;
        assert_eq!(env["id"], i, "{env}");
        assert_eq!(env["data"]["n"], i, "{env}");
    }
    gw.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stream_subscriber_under_the_same_load_is_disconnected() {
    let gw = gateway().await;
    let mut slow = stalled_subscriber(&gw, "feed.orders").await;

    publish_updates(&gw, "feed.orders", 1, UPDATES).await;
    let dropped = eventually(
        Duration::from_secs(15),
        "dropped_total{reason=slow_consumer,transport=websocket} > 0",
        || async {
            gw.metric(
                "pollbridge_dropped_total",
                &[("reason", "slow_consumer"), ("transport", "websocket")],
            )
            .await
            .filter(|v| *v > 0.0)
        },
    )
    .await;
    eprintln!("dropped_total{{slow_consumer, websocket}} = {dropped}");

    let (bytes, reset) = slow
        .conn
        .read_to_end_within(Duration::from_secs(20))
        .await
        .expect("the slow stream subscriber's connection was never closed");
    let frames = parse_frames(&bytes);
    let delivered = frames.iter().filter(|f| f.opcode == OP_TEXT).count() as u64;
    let close = frames.iter().find(|f| f.opcode == OP_CLOSE);
    eprintln!(
        "slow stream subscriber: {delivered} messages, then {} (reset: {reset})",
        match close {
            Some(c) => format!("close {:?}", c.close_code()),
            None => "EOF without a close frame".into(),
        }
    );
    assert!(delivered < UPDATES, "it got all {delivered}: never dropped");
    if let Some(close) = close {
        assert_eq!(close.close_code(), Some(1013), "slow consumer close code");
    }
    gw.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_and_resumes_from_an_old_cursor_get_only_the_latest_conflated() {
    let gw = gateway().await;
    let items: Vec<(&str, Value)> = (1..=100).map(|i| ("price.gold", json!({"n": i}))).collect();
    gw.publish_batch_ok(&items).await;

    // Long-poll from cursor 1: just the latest, flagged.
    let (status, body) = gw.poll("price.gold", "since=1&timeout=0").await;
    assert_eq!(status, 200, "{body}");
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{body}");
    assert_envelope(&messages[0], "price.gold", 100, &json!({"n": 100}));
    assert_eq!(body["last_id"], 100, "{body}");
    assert_eq!(body["conflated"], true, "{body}");
    assert_eq!(body["truncated"], false, "{body}");

    // From the latest but one: nothing was skipped, so no flag.
    let (_, body) = gw.poll("price.gold", "since=99&timeout=0").await;
    assert_eq!(body["messages"][0]["id"], 100, "{body}");
    assert!(body.get("conflated").is_none(), "{body}");
    // Up to date: nothing.
    let (_, body) = gw.poll("price.gold", "since=100&timeout=0").await;
    assert_eq!(body["messages"], json!([]), "{body}");

    // The same held long-poll from cursor 1 answers at once.
    let started = Instant::now();
    let (_, body) = gw.poll("price.gold", "since=1&timeout=10").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(body["conflated"], true, "{body}");

    // WebSocket resume from cursor 1.
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/price.gold?since=1")).await;
    let ack = ws.expect_control("subscribed", T5).await;
    assert_eq!(ack["conflated"], true, "{ack}");
    assert_eq!(ack["truncated"], false, "{ack}");
    let env = ws.next_envelope(T5).await;
    assert_envelope(&env, "price.gold", 100, &json!({"n": 100}));
    ws.expect_no_envelope(Duration::from_millis(300)).await;
    // The same with a subscribe command on an open connection.
    gw.publish_batch_ok(&[
        ("price.silver", json!({"n": 1})),
        ("price.silver", json!({"n": 2})),
        ("price.silver", json!({"n": 3})),
    ])
    .await;
    ws.send_json(&json!({"type": "subscribe", "channel": "price.silver", "since": 1}))
        .await;
    let ack = ws.expect_control("subscribed", T5).await;
    assert_eq!(ack["channel"], "price.silver", "{ack}");
    assert_eq!(ack["conflated"], true, "{ack}");
    let env = ws.next_envelope(T5).await;
    assert_envelope(&env, "price.silver", 3, &json!({"n": 3}));
    ws.expect_no_envelope(Duration::from_millis(300)).await;

    // SSE resume from cursor 1: a `conflated` event, then the latest.
    let mut sse = SseClient::open(gw.public, "/rt/sse/price.gold", &[("Last-Event-ID", "1")]).await;
    let ev = sse.expect_event(T5).await;
    assert_eq!(ev.event.as_deref(), Some("conflated"), "{ev:?}");
    let ev = sse.expect_event(T5).await;
    assert_eq!(ev.message_id(), Some(100), "{ev:?}");
    sse.expect_no_event(Duration::from_millis(300)).await;

    // History keeps only the latest.
    let channels = get(&gw.admin_url("/channels")).await.json();
    let gold = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "price.gold")
        .cloned()
        .expect("price.gold in /channels");
    assert_eq!(gold["mode"], "state", "{gold}");
    assert_eq!(gold["history"], 1, "{gold}");
    assert_eq!(gold["last_id"], 100, "{gold}");
}

/// Reads envelopes of one channel until id `last` arrives; returns
/// (arrival, id) pairs.
async fn ws_arrivals(mut ws: WsClient, last: u64, t: Duration) -> Vec<(Instant, u64)> {
    let deadline = Instant::now() + t;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv(left).await {
            WsEvent::Json(v) if ws::is_envelope(&v) => {
                let id = v["id"].as_u64().expect("id");
                got.push((Instant::now(), id));
                if id == last {
                    return got;
                }
            }
            WsEvent::Json(_) => {}
            other => panic!("WebSocket: after {got:?} got {other:?}"),
        }
    }
}

async fn sse_arrivals(mut sse: SseClient, last: u64, t: Duration) -> Vec<(Instant, u64)> {
    let deadline = Instant::now() + t;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = sse.expect_event(left).await;
        let id: u64 = ev.message_id().expect("numeric id");
        got.push((Instant::now(), id));
        if id == last {
            return got;
        }
    }
}

fn check_throttled(who: &str, got: &[(Instant, u64)], span: Duration) {
    let ids: Vec<u64> = got.iter().map(|(_, id)| *id).collect();
    eprintln!("{who}: {} updates: {ids:?}", ids.len());
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{who}: out of order {ids:?}"
    );
    assert_eq!(ids.last(), Some(&100), "{who}: the last one is the newest");
    // One per 200 ms over the publishing span, plus the first (sent at
    // once) and the final tick.
    let most = (span.as_millis() / 200) as usize + 2;
    assert!(
        ids.len() <= most,
        "{who}: {} updates for 100 published in {span:?} (at most {most} expected)",
        ids.len()
    );
    assert!(ids.len() >= 3, "{who}: only {ids:?}: throttled to nothing");
    for w in got.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= Duration::from_millis(150),
            "{who}: updates {} and {} only {gap:?} apart",
            w[0].1,
            w[1].1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflate_interval_sends_at_most_one_update_per_interval_newest_last() {
    let gw = gateway().await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/tick.btc")).await;
    ws.expect_control("subscribed", T5).await;
    let sse = SseClient::open(gw.public, "/rt/sse/tick.btc", &[]).await;

    let ws_reader = tokio::spawn(ws_arrivals(ws, 100, Duration::from_secs(10)));
    let sse_reader = tokio::spawn(sse_arrivals(sse, 100, Duration::from_secs(10)));

    // 100 updates over one second, one every 10 ms.
    let start = Instant::now();
    for i in 1..=100u64 {
        let id = gw.publish_json("tick.btc", &json!({"n": i})).await;
        assert_eq!(id, i);
        let due = start + Duration::from_millis(10 * i);
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
    }
    let span = start.elapsed();
    assert!(
        span < Duration::from_secs(3),
        "publishing 100 updates took {span:?}"
    );

    let ws_got = ws_reader.await.expect("WebSocket reader");
    let sse_got = sse_reader.await.expect("SSE reader");
    check_throttled("websocket", &ws_got, span);
    check_throttled("sse", &sse_got, span);

    for transport in ["websocket", "sse"] {
        let n = gw
            .metric("pollbridge_conflated_total", &[("transport", transport)])
            .await
            .unwrap_or(0.0);
        assert!(n >= 50.0, "conflated_total{{transport={transport}}} = {n}");
    }
}

/// `websocket.write_timeout` drops a client "whose socket accepts nothing
/// for this long" (`--help`; the config doc: "a write to a client that
/// makes no progress for this long"). A client that reads steadily — only
/// slower than one batch of frames per timeout — makes progress all along
/// and must not be dropped.
///
/// (It once was dropped after 65 of 128 messages: the timeout bounded a
/// whole batch write; now it bounds a write during which the socket's send
/// queue doesn't drain at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_reader_slower_than_one_batch_per_write_timeout_is_not_dropped() {
    const MESSAGES: u64 = 128;
    const SIZE: usize = 60 * 1024;
    let gw = Gateway::start(&["--ws-write-timeout", "1s"]).await;
    // A fixed 64 KiB receive buffer (no autotuning): what the client has
    // not read stays in the gateway's socket.
    let conn = RawHttpConn::connect_small_rcvbuf(gw.public, 64 * 1024)
        .await
        .expect("connect");
    let (mut ws, _) = RawWs::handshake(conn, "/rt/ws/feed.big")
        .await
        .expect("handshake");
    let sub = ws.next_json(T5).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");

    // 128 × 60 KB (7.5 MB), well within the queue (1024) and history (1000).
    for first in (1..=MESSAGES).step_by(32) {
        let items: Vec<(&str, Value)> = (first..first + 32)
            .map(|i| ("feed.big", json!({"n": i, "pad": "z".repeat(SIZE)})))
            .collect();
        gw.publish_batch_ok(&items).await;
    }

    // Read about 1 MB/s: 64 KB, then 60 ms of rest. Progress all the time.
    let started = Instant::now();
    let mut got = 0u64;
    let mut reads = 0u64;
    let outcome = loop {
        while let Some(frame) = take_text(&mut ws) {
            let env = envelope(&frame);
            got += 1;
            assert_eq!(env["id"], got, "order");
        }
        if got == MESSAGES {
            break None;
        }
        if started.elapsed() > Duration::from_secs(30) {
            panic!("only {got} of {MESSAGES} within 30 s");
        }
        match tokio::time::timeout(T5, ws.conn.fill_buffer()).await {
            Err(_) => panic!("nothing to read for 5 s after {got} messages"),
            Ok(Ok(0)) => break Some("EOF".to_string()),
            Ok(Err(e)) => break Some(e.to_string()),
            Ok(Ok(_)) => {}
        }
        reads += 1;
        if reads.is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    };
    let close = ws.conn.buffer_mut().first().map(|b| *b & 0x0f == OP_CLOSE);
    eprintln!(
        "steady reader: {got} of {MESSAGES} in {:?}; ended: {outcome:?} (close frame: {close:?})",
        started.elapsed()
    );
    assert!(
        outcome.is_none(),
        "the gateway dropped a client that was reading steadily (~1 MB/s) after {got} of \
         {MESSAGES} messages ({:?}): ended with {outcome:?}",
        started.elapsed()
    );
}

/// Takes the next complete text frame off a raw WebSocket's buffer.
fn take_text(ws: &mut RawWs) -> Option<RawFrame> {
    loop {
        let buf = ws.conn.buffer_mut();
        let frames = parse_frames(buf);
        let first = frames.into_iter().next()?;
        // Remove exactly that frame from the buffer.
        let header = 2 + match buf[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        buf.drain(..header + first.payload.len());
        if first.opcode == OP_TEXT {
            return Some(first);
        }
    }
}
