//! Parked WebSocket connections (`websocket.park_after`): an idle plain
//! connection is held without a task or a runtime registration, and still
//! gets its messages, answers pings and commands, is pinged and closed on
//! its idle timeout, gets 1012 on a disconnect and 1001 on shutdown, falls
//! back without loss when it reads slowly, and frees everything when it
//! closes (descriptors, subscriptions, gauges).

mod common;

use std::time::Duration;

use common::ws::{OP_CLOSE, OP_PING, OP_PONG};
use common::*;
use serde_json::{json, Value};

/// Parks after 200 ms of nothing (the clock's smallest period is 100 ms).
const PARK: &[&str] = &["--ws-park-after", "200ms"];

async fn parked(gw: &Gateway) -> f64 {
    gw.metric("pollbridge_ws_parked_connections", &[])
        .await
        .unwrap_or(-1.0)
}

async fn wait_parked(gw: &Gateway, n: f64) {
    gw.wait_metric("pollbridge_ws_parked_connections", &[], n)
        .await;
}

#[tokio::test]
async fn a_parked_connection_gets_messages_pongs_and_command_answers() {
    let gw = Gateway::start(PARK).await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/p")).await;
    ws.expect_control("subscribed", T5).await;
    wait_parked(&gw, 1.0).await;

    // Published messages are written directly: the session stays parked.
    gw.publish_json("p", &json!("one")).await;
    assert_envelope(&ws.next_envelope(T5).await, "p", 1, &json!("one"));
    assert_eq!(parked(&gw).await, 1.0, "a direct delivery unparked it");

    // A ping from the client wakes it; it answers with a pong.
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let (mut raw, _) = RawWs::handshake(conn, "/rt/ws/q").await.unwrap();
    assert_eq!(raw.next_json(T5).await["type"], "subscribed");
    wait_parked(&gw, 2.0).await;
    raw.send_frame(true, OP_PING, b"are you there")
        .await
        .unwrap();
    let pong = raw.read_frame_within(T5).await.unwrap().expect("a pong");
    assert_eq!(pong.opcode, OP_PONG);
    assert_eq!(pong.payload, b"are you there");

    // Commands after parking: subscribe, then unsubscribe.
    wait_parked(&gw, 2.0).await;
    ws.send_json(&json!({"type": "subscribe", "channel": "r"}))
        .await;
    let ack = ws.expect_control("subscribed", T5).await;
    assert_eq!(ack["channel"], "r", "{ack}");
    wait_parked(&gw, 2.0).await;
    gw.publish_json("r", &json!({"on": "r"})).await;
    assert_envelope(&ws.next_envelope(T5).await, "r", 1, &json!({"on": "r"}));
    ws.send_json(&json!({"type": "unsubscribe", "channel": "p"}))
        .await;
    let ack = ws.expect_control("unsubscribed", T5).await;
    assert_eq!(ack["channel"], "p", "{ack}");
    wait_parked(&gw, 2.0).await;
    gw.publish_json("p", &json!("two")).await;
    gw.publish_json("r", &json!("r2")).await;
    assert_envelope(&ws.next_envelope(T5).await, "r", 2, &json!("r2"));
    ws.expect_no_envelope(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_silent_parked_client_is_pinged_then_closed_on_its_idle_timeout() {
    let gw = Gateway::start(&[
        "--ws-park-after",
        "200ms",
        "--ws-ping-interval",
        "1s",
        "--ws-idle-timeout",
        "3s",
    ])
    .await;
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let (mut raw, _) = RawWs::handshake(conn, "/rt/ws/silent").await.unwrap();
    assert_eq!(raw.next_json(T5).await["type"], "subscribed");
    wait_parked(&gw, 1.0).await;
    // Never answered: a ping after ~1 s, then the close after ~3 s.
    let ping = raw.read_frame_within(T5).await.unwrap().expect("a ping");
    assert_eq!(ping.opcode, OP_PING, "{ping:?}");
    let close = raw
        .read_frame_within(Duration::from_secs(8))
        .await
        .unwrap()
        .expect("a close frame");
    assert_eq!(close.opcode, OP_CLOSE, "{close:?}");
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1001,
        "{close:?}"
    );
    eventually(T5, "the connection gauge back to 0", || async {
        let open = gw
            .metric("pollbridge_connections", &[("transport", "websocket")])
            .await;
        (open == Some(0.0) && parked(&gw).await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected_and_parked() {
    let gw = Gateway::start(&[
        "--ws-park-after",
        "200ms",
        "--ws-ping-interval",
        "1s",
        "--ws-idle-timeout",
        "2s",
    ])
    .await;
    // tokio-tungstenite answers pings while it reads.
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/alive")).await;
    ws.expect_control("subscribed", T5).await;
    // Several idle timeouts long: pinged (and unparked) each second.
    ws.expect_no_envelope(Duration::from_secs(5)).await;
    gw.publish_json("alive", &json!(1)).await;
    assert_envelope(&ws.next_envelope(T5).await, "alive", 1, &json!(1));
    wait_parked(&gw, 1.0).await;
}

#[tokio::test]
async fn parked_connections_get_1012_on_disconnect_and_1001_on_shutdown() {
    let mut gw = Gateway::start(PARK).await;
    let mut kicked = WsClient::connect(&gw.ws_url("/rt/ws/k")).await;
    kicked.expect_control("subscribed", T5).await;
    wait_parked(&gw, 1.0).await;
    let r = http("POST", &gw.admin_url("/disconnect"), &[], Some(b"")).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(kicked.expect_close(T5).await, Some(1012));

    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/s")).await;
    ws.expect_control("subscribed", T5).await;
    wait_parked(&gw, 1.0).await;
    gw.sigterm();
    assert_eq!(ws.expect_close(T5).await, Some(1001));
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[tokio::test]
async fn a_slow_parked_reader_falls_back_without_loss() {
    let gw = Gateway::start(&["--ws-park-after", "200ms", "--queue-length", "4096"]).await;
    let conn = RawHttpConn::connect_small_rcvbuf(gw.public, 4096)
        .await
        .unwrap();
    let (mut slow, _) = RawWs::handshake(conn, "/rt/ws/slow").await.unwrap();
    assert_eq!(slow.next_json(T5).await["type"], "subscribed");
    wait_parked(&gw, 1.0).await;
    // Far more than the socket buffers hold while the client reads
    // nothing (loopback send buffers grow to 4 MiB): direct mode ends
    // mid-stream and the session takes over.
    const TOTAL: u64 = 600;
    let body = "x".repeat(10_000);
    for chunk in (1..=TOTAL).collect::<Vec<_>>().chunks(50) {
        let items: Vec<(&str, Value)> = chunk
            .iter()
            .map(|i| ("slow", json!({ "i": i, "pad": body })))
            .collect();
        gw.publish_batch_ok(&items).await;
    }
    eventually(T5, "the session unparked", || async {
        (parked(&gw).await == 0.0).then_some(())
    })
    .await;
    for i in 1..=TOTAL {
        let env = slow.next_json(Duration::from_secs(10)).await;
        assert_eq!(env["id"], i, "lost or out of order: {env}");
        assert_eq!(env["data"]["i"], i, "{env}");
    }
    // Caught up and idle again: parked again.
    wait_parked(&gw, 1.0).await;
    gw.publish_json("slow", &json!("after")).await;
    let env = slow.next_json(T5).await;
    assert_eq!(env["id"], TOTAL + 1, "{env}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_parked_and_running_connections_leaks_nothing() {
    const EACH: usize = 500;
    let gw = Gateway::start(PARK).await;
    // Settle the gateway's own descriptors (the park registry's epoll set
    // and the clock start with the first connection).
    let mut first = WsClient::connect(&gw.ws_url("/rt/ws/leak")).await;
    first.expect_control("subscribed", T5).await;
    wait_parked(&gw, 1.0).await;
    first.close().await;
    wait_parked(&gw, 0.0).await;
    let fds_before = open_fds(gw.pid());

    // Parked, then closed: half with a close frame, half dropped.
    let mut clients = Vec::new();
    for _ in 0..EACH {
        let conn = RawHttpConn::connect(gw.public).await.unwrap();
        let (mut raw, _) = RawWs::handshake(conn, "/rt/ws/leak").await.unwrap();
        assert_eq!(raw.next_json(T5).await["type"], "subscribed");
        clients.push(raw);
    }
    wait_parked(&gw, EACH as f64).await;
    assert_eq!(
        gw.channel_subscribers("leak", "websocket").await,
        EACH as u64
    );
    // (Admin requests may hold a descriptor or two for a moment.)
    assert!(open_fds(gw.pid()) >= EACH);
    for (i, mut raw) in clients.drain(..).enumerate() {
        if i % 2 == 0 {
            let _ = raw.send_frame(true, OP_CLOSE, &1000u16.to_be_bytes()).await;
        }
    }
    // Running (not parked yet), then dropped at once.
    for _ in 0..EACH {
        let conn = RawHttpConn::connect(gw.public).await.unwrap();
        let (mut raw, _) = RawWs::handshake(conn, "/rt/ws/leak").await.unwrap();
        assert_eq!(raw.next_json(T5).await["type"], "subscribed");
        drop(raw);
    }

    eventually(Duration::from_secs(20), "everything let go", || async {
        let open = gw
            .metric("pollbridge_connections", &[("transport", "websocket")])
            .await;
        let subs = gw.channel_subscribers("leak", "websocket").await;
        let fds = open_fds(gw.pid());
        (open == Some(0.0) && subs == 0 && parked(&gw).await == 0.0 && fds <= fds_before)
            .then_some(())
    })
    .await;
}
