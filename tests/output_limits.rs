//! Clients that never read must not pin the gateway's memory (issue 16,
//! item 1): long-poll answers are paged by `longpoll.max_answer_bytes` and
//! streamed, SSE catch-up is written as the socket drains, HTTP answers
//! have a write deadline, and unsent output is bounded per client and in
//! total, each drop counted in `pollbridge_slow_clients_closed_total`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A JSON string payload of about `size` bytes whose text names its index.
fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut s = format!("\"m{i:05}-");
    while s.len() < size - 1 {
        s.push_str("abcdefghijklmnopqrstuvwxyz");
    }
    s.truncate(size - 1);
    s.push('"');
    s.into_bytes()
}

/// Publishes `count` messages of `size` bytes on `channel`.
async fn fill(gw: &Gateway, channel: &str, count: usize, size: usize) {
    for i in 0..count {
        let (status, body) = gw
            .publish(channel, &payload(i, size), "application/json")
            .await;
        assert_eq!(status, 200, "publish {i} on {channel}: {body}");
    }
}

/// Opens a connection with a tiny receive buffer, sends `GET path` and
/// never reads.
async fn never_reading(gw: &Gateway, path: &str) -> RawHttpConn {
    let mut conn = RawHttpConn::connect_small_rcvbuf(gw.public, 4096)
        .await
        .unwrap();
    conn.send_request("GET", path, &[("Accept", "*/*")], None)
        .await
        .unwrap();
    conn
}

async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metric(name, labels).await.unwrap_or(0.0)
}

async fn closed_for(gw: &Gateway, reason: &str, transport: Option<&str>) -> f64 {
    let mut labels = vec![("reason", reason)];
    if let Some(t) = transport {
        labels.push(("transport", t));
    }
    metric(gw, "pollbridge_slow_clients_closed_total", &labels).await
}

/// Highest RSS seen over `t`, sampled every 100 ms.
async fn peak_rss_kib(gw: &Gateway, t: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + t;
    let mut peak = gw.rss_kib();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(gw.rss_kib());
    }
    peak
}

const MSG: usize = 60 * 1024;
const HISTORY: usize = 400;
const BUDGET: u64 = 8 * 1024 * 1024;
/// Room for what every connection costs whatever it reads (hyper's read
/// and write buffers, one chunk in hand each, task memory) and allocator
/// slack: 24 connections × ~200 KiB, rounded up generously. On 7fca619
/// each of these polls alone copied the whole 24 MB history into its answer.
const MARGIN: u64 = 24 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_polls_and_sse_streams_leave_rss_within_the_budget() {
    let gw = Gateway::start_with_config(
        &format!(
            r#"
[history]
size = {HISTORY}
max_bytes = 268435456
max_total_bytes = 1073741824
[limits]
max_pending_output_bytes = {BUDGET}
write_timeout = "60s"
longpoll_rate_per_ip = 1000
[longpoll]
max_answer_bytes = 262144
"#
        ),
        &[],
    )
    .await;
    fill(&gw, "big", HISTORY, MSG).await;
    // Warm up: one reader pages through the whole channel and one SSE
    // stream replays it, so the baseline includes what serving them costs.
    let mut since = 0;
    while since < HISTORY as u64 {
        let (status, body) = gw.poll("big", &format!("since={since}&timeout=0")).await;
        assert_eq!(status, 200, "{:.300}", body.to_string());
        since = body["last_id"].as_u64().unwrap();
    }
    let mut sse = SseClient::open(gw.public, "/rt/sse/big?since=0", &[]).await;
    for i in 1..=HISTORY {
        let ev = sse.expect_event(T10).await;
        assert_eq!(ev.message_id(), Some(i as u64));
    }
    drop(sse);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw.rss_kib();

    let mut stuck = Vec::new();
    for _ in 0..16 {
        stuck.push(never_reading(&gw, "/rt/poll/big?since=0").await);
    }
    for _ in 0..8 {
        stuck.push(never_reading(&gw, "/rt/sse/big?since=0").await);
    }
    // Meanwhile everyone else is served: a publish, a poll, an SSE
    // subscriber and a WebSocket subscriber of the same channel.
    gw.assert_still_serving().await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/big")).await;
    ws.expect_control("subscribed", T5).await;
    let id = gw.publish_json("big", &json!({"live": true})).await;
    let env = ws.next_envelope(T10).await;
    assert_eq!(env["id"], id, "{env}");
    let (status, body) = gw.poll("big", &format!("since={}&timeout=0", id - 1)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["messages"][0]["data"]["live"],
        true,
        "{:.300}",
        body.to_string()
    );

    let peak = peak_rss_kib(&gw, Duration::from_secs(3)).await;
    let grown = peak.saturating_sub(before) * 1024;
    eprintln!(
        "RSS before {before} KiB, peak with 24 never-reading clients {peak} KiB (+{} KiB)",
        grown / 1024
    );
    assert!(
        grown <= BUDGET + MARGIN,
        "24 never-reading clients grew RSS by {} KiB (from {before} KiB), more than the {} KiB budget + {} KiB margin",
        grown / 1024,
        BUDGET / 1024,
        MARGIN / 1024
    );
    let pending = metric(&gw, "pollbridge_output_pending_bytes", &[]).await;
    assert!(pending <= BUDGET as f64, "pending output {pending}");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_deadline_closes_clients_that_take_nothing() {
    let gw = Gateway::start_with_config(
        &format!(
            r#"
[history]
size = {HISTORY}
max_bytes = 268435456
max_total_bytes = 1073741824
[limits]
write_timeout = "2s"
[longpoll]
max_answer_bytes = 16777216
"#
        ),
        &[],
    )
    .await;
    // 24 MB: far more than the socket buffers of a client that reads nothing.
    fill(&gw, "stuck", HISTORY, MSG).await;
    let mut polls = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..2 {
        polls.push(never_reading(&gw, "/rt/poll/stuck?since=0").await);
        streams.push(never_reading(&gw, "/rt/sse/stuck?since=0").await);
    }
    eventually(
        Duration::from_secs(20),
        "4 clients closed by the write deadline",
        || async {
            let n = closed_for(&gw, "write_timeout", None).await;
            (n >= 4.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        closed_for(&gw, "write_timeout", Some("longpoll")).await,
        2.0
    );
    assert_eq!(closed_for(&gw, "write_timeout", Some("sse")).await, 2.0);
    // The connections are closed: what the sockets held, then the end,
    // well short of the whole answer.
    for conn in polls.iter_mut().chain(streams.iter_mut()) {
        let (bytes, _reset) = conn
            .read_to_end_within(T10)
            .await
            .expect("the gateway closed the connection");
        assert!(
            bytes.len() < HISTORY * MSG / 2,
            "got {} bytes: the answer was not cut off",
            bytes.len()
        );
    }
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn long_poll_pages_return_every_message_exactly_once() {
    const MAX: usize = 32 * 1024;
    let gw = Gateway::start(&["--longpoll-max-answer-bytes", &MAX.to_string()]).await;
    // Sizes from 100 bytes to 40 KB: some pages hold many, one message is
    // larger than a page and comes alone.
    let sizes: Vec<usize> = (0..60)
        .map(|i| match i {
            17 => 40_000,
            _ => 100 + (i * 997) % 12_000,
        })
        .collect();
    for (i, size) in sizes.iter().enumerate() {
        let (status, body) = gw
            .publish("pages", &payload(i, *size), "application/json")
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut seen = Vec::new();
    let mut since = 0u64;
    let mut pages = 0;
    while since < sizes.len() as u64 {
        let r = get(&gw.public_url(&format!("/rt/poll/pages?since={since}&timeout=0"))).await;
        assert_eq!(r.status(), 200, "{:.300}", r.text());
        let body: Value = r.json();
        let messages = body["messages"].as_array().unwrap();
        assert!(
            !messages.is_empty(),
            "a page behind the last id is never empty: {since}"
        );
        assert_eq!(body["truncated"], false, "paging is not a loss");
        let ids: Vec<u64> = messages.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(
            body["last_id"],
            *ids.last().unwrap(),
            "last_id is the last one included"
        );
        let bytes: usize = messages.iter().map(|m| m.to_string().len()).sum();
        assert!(
            messages.len() == 1 || bytes <= MAX,
            "a page of {} messages holds {bytes} bytes, over {MAX}",
            messages.len()
        );
        for (m, id) in messages.iter().zip(&ids) {
            let i = (*id - 1) as usize;
            assert_eq!(
                m["data"].as_str().unwrap().len(),
                sizes[i] - 2,
                "message {id} whole"
            );
        }
        seen.extend(ids);
        since = body["last_id"].as_u64().unwrap();
        pages += 1;
    }
    let expected: Vec<u64> = (1..=sizes.len() as u64).collect();
    assert_eq!(seen, expected, "every message once, in order");
    assert!(pages >= 10, "{pages} pages: the answers were not capped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_past_their_hard_output_limit_are_dropped_and_others_get_everything() {
    const COUNT: u64 = 200;
    let gw = Gateway::start(&[
        "--client-output-hard-bytes",
        "2097152",
        "--client-output-soft-bytes",
        "1048576",
        "--longpoll-max-answer-bytes",
        "1048576",
    ])
    .await;
    let conn = RawHttpConn::connect_small_rcvbuf(gw.public, 4096)
        .await
        .unwrap();
    let (mut slow_ws, _) = RawWs::handshake(conn, "/rt/ws/live").await.unwrap();
    assert_eq!(slow_ws.next_json(T5).await["type"], "subscribed");
    let slow_sse = never_reading(&gw, "/rt/sse/live").await;
    let mut fast = WsClient::connect(&gw.ws_url("/rt/ws/live")).await;
    fast.expect_control("subscribed", T5).await;
    let reader = tokio::spawn(async move {
        for i in 1..=COUNT {
            let env = fast.next_envelope(Duration::from_secs(30)).await;
            assert_eq!(env["id"], i, "out of order");
        }
    });
    // 12 MB: more than socket buffers plus the 2 MiB limit.
    fill(&gw, "live", COUNT as usize, MSG).await;
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reading client got everything in time")
        .unwrap();
    eventually(T10, "both never-reading subscribers dropped", || async {
        let ws = closed_for(&gw, "output_hard_limit", Some("websocket")).await;
        let sse = closed_for(&gw, "output_hard_limit", Some("sse")).await;
        (ws == 1.0 && sse == 1.0).then_some(())
    })
    .await;
    // Once it reads again it gets what its socket held, then the end: a
    // 1013 close if the gateway could still write one, else just EOF.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match slow_ws.read_frame_within(left).await {
            Ok(Some(frame)) if frame.opcode == common::ws::OP_CLOSE => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) if left > Duration::ZERO => break,
            other => panic!("the dropped WebSocket did not end: {other:?}"),
        }
    }
    drop(slow_sse);
    gw.assert_still_serving().await;
}

async fn pending_output(gw: &Gateway) -> f64 {
    metric(gw, "pollbridge_output_pending_bytes", &[]).await
}

/// Opens a never-reading SSE subscriber of `channel` and publishes until it
/// holds about `target` bytes more of queued output: first its socket
/// buffers fill (nothing counted), then its queue grows by one message per
/// publish. The gauge is refreshed twice a second.
async fn hold_output(gw: &Gateway, channel: &str, target: f64) -> (RawHttpConn, f64) {
    let conn = never_reading(gw, &format!("/rt/sse/{channel}")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = pending_output(gw).await;
    let mut published = 0;
    while pending_output(gw).await <= base {
        assert!(published < 400, "the socket of {channel} never filled");
        fill(gw, channel, 20, MSG).await;
        published += 20;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let envelope = (MSG + 40) as f64;
    let now = pending_output(gw).await - base;
    let more = ((target - now) / envelope).max(0.0) as usize;
    fill(gw, channel, more, MSG).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let held = pending_output(gw).await - base;
    (conn, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_output_budget_large_answers_get_503_and_the_largest_consumer_is_dropped() {
    const MIB: f64 = 1024.0 * 1024.0;
    const BUDGET: f64 = 4.0 * MIB;
    let gw = Gateway::start(&[
        "--max-pending-output-bytes",
        "4194304",
        "--longpoll-max-answer-bytes",
        "3145728",
    ])
    .await;
    // A channel whose history is one ~2 MiB answer.
    fill(&gw, "history", 34, MSG).await;
    let (status, _) = gw.poll("history", "since=0&timeout=0").await;
    assert_eq!(status, 200, "the budget has room");

    let (a, held) = hold_output(&gw, "a", 3.0 * MIB).await;
    assert!(held > 2.2 * MIB && held <= BUDGET, "held {held} bytes");
    // A large answer no longer fits: 503 with Retry-After and a JSON body.
    let r = get(&gw.public_url("/rt/poll/history?since=0&timeout=0")).await;
    assert_eq!(r.status(), 503, "{:.300}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.head);
    assert_eq!(r.json()["error"], "output_budget_exhausted");
    assert_eq!(
        metric(
            &gw,
            "pollbridge_output_refused_total",
            &[("transport", "longpoll")]
        )
        .await,
        1.0
    );
    // A small one is served.
    let (status, _) = gw.poll("history", "since=33&timeout=0").await;
    assert_eq!(status, 200, "a small answer is served");
    // Once the client holding the output is gone, the large answer is too.
    drop(a);
    eventually(T10, "the large answer served again", || async {
        let r = get(&gw.public_url("/rt/poll/history?since=0&timeout=0")).await;
        (r.status() == 200).then_some(())
    })
    .await;
    assert_eq!(closed_for(&gw, "output_budget", None).await, 0.0);

    // One consumer holds ~1 MiB; a second one grows until the total passes
    // the budget: the largest, the second, is dropped, the first is not.
    eventually(T10, "nothing pending", || async {
        (pending_output(&gw).await == 0.0).then_some(())
    })
    .await;
    let (_c, held_c) = hold_output(&gw, "c", MIB).await;
    let _b = never_reading(&gw, "/rt/sse/b").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fill(&gw, "b", 150, MSG).await;
    eventually(T10, "the largest consumer dropped", || async {
        (closed_for(&gw, "output_budget", Some("sse")).await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(closed_for(&gw, "output_budget", None).await, 1.0);
    let left = pending_output(&gw).await;
    assert!(
        (left - held_c).abs() < 256.0 * 1024.0,
        "left {left} bytes pending, the smaller consumer held {held_c}"
    );
    gw.assert_still_serving().await;
}
