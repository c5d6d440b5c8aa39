//! Byte-exact accounting: clients that count the bytes on their own
//! sockets run a scenario on every transport; afterwards the gateway's
//! `pollbridge_wire_bytes_total` equals their counts per transport and
//! direction, to the byte, and `pollbridge_payload_bytes_total` equals the
//! payload size of what was delivered.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::upstream::echo_upstream;
use common::ws::{RawWs, OP_CLOSE, OP_PING, OP_PONG};
use common::*;

const T: Duration = Duration::from_secs(5);

/// (transport, direction) → bytes, as the clients counted them.
type Counts = HashMap<(&'static str, &'static str), u64>;

async fn wire(gw: &Gateway) -> Counts {
    let text = gw.metrics().await;
    let mut counts = Counts::new();
    for transport in ["websocket", "longpoll", "sse", "proxy", "bridge"] {
        for direction in ["in", "out"] {
            let v = metric_value(
                &text,
                "pollbridge_wire_bytes_total",
                &[("transport", transport), ("direction", direction)],
            )
            .unwrap_or_else(|| panic!("no wire_bytes_total for {transport}/{direction}"));
            counts.insert((transport, direction), v as u64);
        }
    }
    counts
}

async fn payload_out(gw: &Gateway, transport: &str) -> u64 {
    gw.metric(
        "pollbridge_payload_bytes_total",
        &[("transport", transport), ("direction", "out")],
    )
    .await
    .unwrap_or_else(|| panic!("no payload_bytes_total for {transport}")) as u64
}

#[tokio::test]
async fn wire_and_payload_bytes_match_what_the_clients_counted() {
    let upstream = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &upstream.url()]).await;

    // Five messages of known payload sizes (compact JSON: delivered as is).
    let payloads: Vec<String> = (1..=5)
        .map(|i| format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(i * 10)))
        .collect();
    let size = |range: std::ops::Range<usize>| -> u64 {
        payloads[range].iter().map(|p| p.len() as u64).sum()
    };

    // WebSocket: subscribe, receive all five, ping, close handshake.
    let mut ws = RawWs::connect(gw.public, "/rt/ws/exact").await.unwrap();
    assert_eq!(ws.next_json(T).await["type"], "subscribed");
    for p in &payloads {
        gw.publish("exact", p.as_bytes(), "application/json").await;
    }
    for i in 1..=5u64 {
        assert_eq!(ws.next_json(T).await["id"], i);
    }
    ws.send_frame(true, OP_PING, b"are you there")
        .await
        .unwrap();
    let pong = ws.read_frame_within(T).await.unwrap().expect("a pong");
    assert_eq!(pong.opcode, OP_PONG);
    assert_eq!(pong.payload, b"are you there");
    ws.send_frame(true, OP_CLOSE, &1000u16.to_be_bytes())
        .await
        .unwrap();
    let close = ws
        .read_frame_within(T)
        .await
        .unwrap()
        .expect("a close echo");
    assert_eq!(close.close_code(), Some(1000));
    // The server closes the TCP connection after the close handshake.
    assert!(ws.read_frame_within(T).await.unwrap().is_none());
    let ws_counts = (ws.conn.bytes_written, ws.conn.bytes_read);
    drop(ws);

    // Long-poll: three polls on one keep-alive connection.
    let mut lp = RawHttpConn::connect(gw.public).await.unwrap();
    for (query, expected) in [
        ("since=0&timeout=0", 5),
        ("since=5&timeout=0", 0),
        ("since=3", 2),
    ] {
        let r = lp
            .request("GET", &format!("/rt/poll/exact?{query}"), &[], None)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json()["messages"].as_array().unwrap().len(), expected);
    }
    let lp_counts = (lp.bytes_written, lp.bytes_read);
    drop(lp);

    // SSE: replay of all five.
    let mut sse = sse::SseClient::open(gw.public, "/rt/sse/exact?since=0", &[]).await;
    for i in 1..=5 {
        assert_eq!(sse.expect_event(T).await.message_id(), Some(i));
    }
    let sse_counts = (sse.conn.bytes_written, sse.conn.bytes_read);
    drop(sse);

    // Proxy: two requests on one keep-alive connection, one with a body.
    let mut px = RawHttpConn::connect(gw.public).await.unwrap();
    let r = px.request("GET", "/api/one?x=1", &[], None).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = px
        .request(
            "POST",
            "/api/two",
            &[("Content-Type", "text/plain")],
            Some(b"hello upstream"),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let proxy_counts = (px.bytes_written, px.bytes_read);
    drop(px);

    let expected: Counts = [
        (("websocket", "in"), ws_counts.0),
        (("websocket", "out"), ws_counts.1),
        (("longpoll", "in"), lp_counts.0),
        (("longpoll", "out"), lp_counts.1),
        (("sse", "in"), sse_counts.0),
        (("sse", "out"), sse_counts.1),
        (("proxy", "in"), proxy_counts.0),
        (("proxy", "out"), proxy_counts.1),
        (("bridge", "in"), 0),
        (("bridge", "out"), 0),
    ]
    .into_iter()
    .collect();
    // Closing sockets is asynchronous on the server side; the counters
    // settle within moments.
    let mut last = Counts::new();
    for _ in 0..50 {
        last = wire(&gw).await;
        if last == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last, expected,
        "gateway counters (left) vs client sockets (right)"
    );

    // Payload: each delivery carries the message's data value.
    assert_eq!(payload_out(&gw, "websocket").await, size(0..5));
    assert_eq!(payload_out(&gw, "sse").await, size(0..5));
    assert_eq!(payload_out(&gw, "longpoll").await, size(0..5) + size(3..5));
    assert_eq!(payload_out(&gw, "proxy").await, 0);
    let delivered = |t: &'static str| {
        let gw = &gw;
        async move {
            gw.metric("pollbridge_messages_delivered_total", &[("transport", t)])
                .await
                .unwrap() as u64
        }
    };
    assert_eq!(delivered("websocket").await, 5);
    assert_eq!(delivered("sse").await, 5);
    assert_eq!(delivered("longpoll").await, 7);
}
