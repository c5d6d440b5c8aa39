//! The output limits of issue 16 (item 1) on the paths added after it:
//! a parked WebSocket (`websocket.park_after`, the publisher writes to its
//! socket while no task runs) and a plain SSE stream on the lean HTTP/1.1
//! path in direct mode (the publisher writes its events). A client that
//! never reads is still dropped at its hard limit, at its soft limit held
//! too long, or by the write deadline, each counted, while a reading
//! client of the same channel gets everything. (A parked long-poll's
//! answer is one message under 16 KiB, written by the publisher only as
//! far as the socket takes it at once; the rest is the connection's, under
//! `limits.write_timeout`.)

mod common;

use std::time::Duration;

use common::*;

const MSG: usize = 60 * 1024;
const T30: Duration = Duration::from_secs(30);

/// A JSON string of `size` bytes.
fn payload(size: usize) -> Vec<u8> {
    let mut s = vec![b'x'; size];
    s[0] = b'"';
    s[size - 1] = b'"';
    s
}

/// Publishes `count` messages of [`MSG`] bytes on `channel`.
async fn fill(gw: &Gateway, channel: &str, count: usize) {
    let body = payload(MSG);
    for i in 0..count {
        let (status, answer) = gw.publish(channel, &body, "application/json").await;
        assert_eq!(status, 200, "publish {i} on {channel}: {answer}");
    }
}

async fn closed_for(gw: &Gateway, reason: &str, transport: &str) -> f64 {
    let labels = [("reason", reason), ("transport", transport)];
    gw.metric("pollbridge_slow_clients_closed_total", &labels)
        .await
        .unwrap_or(0.0)
}

/// A WebSocket subscriber of `channel` with a tiny receive buffer that
/// reads its `subscribed` answer and then nothing, parked.
async fn parked_never_reading_ws(gw: &Gateway, channel: &str) -> RawWs {
    let conn = RawHttpConn::connect_small_rcvbuf(gw.public, 4096)
        .await
        .unwrap();
    let (mut ws, _) = RawWs::handshake(conn, &format!("/rt/ws/{channel}"))
        .await
        .unwrap();
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");
    gw.wait_metric("pollbridge_ws_parked_connections", &[], 1.0)
        .await;
    ws
}

/// A plain live SSE stream on the lean path with a tiny receive buffer
/// that reads nothing: its socket is lent to the publisher once the head
/// is out (`transport::sse_direct`).
async fn never_reading_live_sse(gw: &Gateway, channel: &str) -> RawHttpConn {
    let mut conn = RawHttpConn::connect_small_rcvbuf(gw.public, 4096)
        .await
        .unwrap();
    let path = format!("/rt/sse/{channel}");
    conn.send_request("GET", &path, &[("Accept", "*/*")], None)
        .await
        .unwrap();
    gw.wait_metric("pollbridge_connections", &[("transport", "sse")], 1.0)
        .await;
    conn
}

/// A reading WebSocket subscriber that must get `count` messages in order.
async fn reader(gw: &Gateway, channel: &str, count: u64) -> tokio::task::JoinHandle<()> {
    let mut fast = WsClient::connect(&gw.ws_url(&format!("/rt/ws/{channel}"))).await;
    fast.expect_control("subscribed", T5).await;
    tokio::spawn(async move {
        for i in 1..=count {
            let env = fast.next_envelope(T30).await;
            assert_eq!(env["id"], i, "out of order");
        }
    })
}

/// The reading client gets everything in time, and the slow one is
/// dropped for `reason`.
async fn served_while_the_slow_one_is_dropped(
    gw: &Gateway,
    fast: tokio::task::JoinHandle<()>,
    transport: &str,
    reason: &str,
) {
    tokio::time::timeout(Duration::from_secs(60), fast)
        .await
        .expect("the reading client got everything in time")
        .unwrap();
    gw.wait_metric(
        "pollbridge_slow_clients_closed_total",
        &[("transport", transport), ("reason", reason)],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_websocket_that_never_reads_is_dropped_at_its_hard_limit() {
    const COUNT: u64 = 200;
    let gw = Gateway::start(&[
        "--ws-park-after",
        "200ms",
        "--client-output-hard-bytes",
        "2097152",
        "--client-output-soft-bytes",
        "1048576",
        "--longpoll-max-answer-bytes",
        "1048576",
    ])
    .await;
    let slow = parked_never_reading_ws(&gw, "live").await;
    let fast = reader(&gw, "live", COUNT).await;
    // 12 MB: more than the socket buffers plus the 2 MiB limit.
    fill(&gw, "live", COUNT as usize).await;
    served_while_the_slow_one_is_dropped(&gw, fast, "websocket", "output_hard_limit").await;
    // The reading client is gone too (its task ended): nothing stays
    // open, parked or pending.
    gw.wait_metric("pollbridge_connections", &[("transport", "websocket")], 0.0)
        .await;
    gw.wait_metric("pollbridge_ws_parked_connections", &[], 0.0)
        .await;
    gw.wait_metric("pollbridge_output_pending_bytes", &[], 0.0)
        .await;
    drop(slow);
    gw.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_websocket_that_never_reads_is_closed_by_its_write_deadline() {
    let gw = Gateway::start(&["--ws-park-after", "200ms", "--ws-write-timeout", "1s"]).await;
    let _slow = parked_never_reading_ws(&gw, "stuck").await;
    // 3 MB: more than the socket buffers, well under every output limit
    // (8 MiB soft, 32 MiB hard) and the queue (1024 messages).
    fill(&gw, "stuck", 50).await;
    gw.wait_metric("pollbridge_connections", &[("transport", "websocket")], 0.0)
        .await;
    gw.wait_metric("pollbridge_ws_parked_connections", &[], 0.0)
        .await;
    for reason in ["output_hard_limit", "output_soft_limit", "output_budget"] {
        assert_eq!(closed_for(&gw, reason, "websocket").await, 0.0, "{reason}");
    }
    gw.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_mode_sse_stream_past_its_soft_limit_for_too_long_is_dropped() {
    const COUNT: u64 = 120;
    // Hard limit and write deadline far away: only the soft limit applies.
    let gw = Gateway::start(&[
        "--client-output-soft-bytes",
        "1048576",
        "--client-output-soft-time",
        "1s",
        "--client-output-hard-bytes",
        "268435456",
        "--max-pending-output-bytes",
        "536870912",
        "--write-timeout",
        "120s",
    ])
    .await;
    let mut slow = never_reading_live_sse(&gw, "soft").await;
    let fast = reader(&gw, "soft", COUNT).await;
    // 7 MB: the socket buffers fill, then more than 1 MiB stays queued.
    fill(&gw, "soft", COUNT as usize).await;
    served_while_the_slow_one_is_dropped(&gw, fast, "sse", "output_soft_limit").await;
    assert_eq!(closed_for(&gw, "output_hard_limit", "sse").await, 0.0);
    gw.wait_metric("pollbridge_connections", &[("transport", "sse")], 0.0)
        .await;
    let (bytes, _) = slow
        .read_to_end_within(T30)
        .await
        .expect("the gateway ended the stream");
    assert!(
        bytes.len() < COUNT as usize * MSG / 2,
        "got {} bytes: the stream was not cut off",
        bytes.len()
    );
    gw.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_mode_sse_stream_that_never_reads_is_closed_by_the_write_deadline() {
    let gw = Gateway::start(&["--write-timeout", "1s"]).await;
    let _slow = never_reading_live_sse(&gw, "stalled").await;
    // 3 MB: more than the socket buffers, under every output limit.
    fill(&gw, "stalled", 50).await;
    gw.wait_metric(
        "pollbridge_slow_clients_closed_total",
        &[("transport", "sse"), ("reason", "write_timeout")],
        1.0,
    )
    .await;
    gw.wait_metric("pollbridge_connections", &[("transport", "sse")], 0.0)
        .await;
    gw.assert_still_serving().await;
}
