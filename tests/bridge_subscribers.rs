//! Subscribers of an incremental bridge route's channel on the gateway's
//! fast paths (issue 17, item 2: "a WebSocket, SSE or long-poll subscriber
//! of the channel gets each item as a message with a bus id"): a plain SSE
//! stream written by the publisher (lean HTTP/1.1, direct mode), a long-poll
//! parked on its connection and a parked WebSocket each get every new item
//! of a room once, as one message, with the same bus ids — and these
//! subscribers alone keep the room's feed polled past `idle_timeout`.
//!
//! The backend is the README's toy backend (`examples/toy-backend`), a real
//! process; the gateway is the real binary.

mod common;

use std::time::Duration;

use common::toy_backend::{feed_channel, ToyBackend};
use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// `(bus id, item)` of the messages a subscriber got, in order.
type Seen = Vec<(u64, Value)>;

/// A raw keep-alive long-poll of `channel` after `since` (plain HTTP/1.1,
/// no compression: the shape the lean path parks).
fn poll_request(channel: &str, since: u64) -> Vec<u8> {
    format!("GET /rt/poll/{channel}?since={since}&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        .into_bytes()
}

/// Long-polls from `since` until `n` messages came; each answer's messages
/// as `(id, data)`.
async fn long_poll(stream: &mut TcpStream, channel: &str, mut since: u64, n: usize) -> Seen {
    let mut buf = Vec::new();
    let mut seen = Seen::new();
    while seen.len() < n {
        stream
            .write_all(&poll_request(channel, since))
            .await
            .unwrap();
        let (raw, head_len) = read_length_answer(stream, &mut buf, T).await;
        let body: Value = serde_json::from_slice(&raw[head_len..]).expect("a JSON answer");
        assert_eq!(body["truncated"], false, "{body}");
        for m in body["messages"].as_array().expect("messages") {
            assert_eq!(m["channel"], channel, "{m}");
            seen.push((m["id"].as_u64().expect("a bus id"), m["data"].clone()));
        }
        since = body["last_id"].as_u64().expect("last_id");
    }
    seen
}

#[tokio::test]
async fn items_reach_parked_and_direct_subscribers_who_alone_keep_the_feed_polled() {
    let backend = ToyBackend::start();
    backend.post_message("lobby", "before").await;
    let gw = Gateway::builder()
        .config(&format!(
            "upstream = \"{}\"\n[[bridge]]\npath = \"/api/messages\"\nchannel = \"chat\"\n\
             mode = \"incremental\"\nitems = \"/messages\"\ninterval = \"100ms\"\n\
             idle_timeout = \"300ms\"\n",
            backend.url()
        ))
        .start()
        .await;
    let channel = feed_channel("chat", "room=lobby");

    // A page load starts the room's feed; its first poll publishes the
    // backend's latest page.
    let page = get(&gw.public_url("/api/messages?room=lobby")).await;
    assert_eq!(page.status(), 200, "{}", page.text());
    let last_id = eventually(T, "the feed's first items on the channel", || async {
        let (_, body) = gw.poll(&channel, "since=0&timeout=0").await;
        body["last_id"].as_u64().filter(|id| *id > 0)
    })
    .await;

    // Three subscribers, each on its fast path: a plain SSE stream (written
    // by the publisher), a parked WebSocket, a parked long-poll.
    let mut sse = SseClient::open(
        gw.public,
        &format!("/rt/sse/{channel}?since={last_id}"),
        &[],
    )
    .await;
    let retry = sse.conn.read_chunk().await.unwrap().expect("retry chunk");
    assert!(retry.starts_with(b"retry: "), "{retry:?}");
    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/{channel}"))).await;
    ws.expect_control("subscribed", T5).await;
    gw.wait_metric("pollbridge_ws_parked_connections", &[], 1.0)
        .await;
    let mut stream = TcpStream::connect(gw.public).await.unwrap();
    let poll_channel = channel.clone();
    let long_poller =
        tokio::spawn(async move { long_poll(&mut stream, &poll_channel, last_id, 2).await });
    gw.wait_metric("pollbridge_longpoll_parked_polls", &[], 1.0)
        .await;

    // No legacy poll from here on: the feed lives on its subscribers alone.
    // Wait well past idle_timeout, so a feed that did not count them would
    // have stopped polling and the items below would never come.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let items = [
        backend.post_message("lobby", "one").await,
        backend.post_message("lobby", "two").await,
    ];

    let from_ws: Seen = ws
        .collect_envelopes(2, T)
        .await
        .iter()
        .map(|e| {
            assert_eq!(e["channel"], channel.as_str(), "{e}");
            (e["id"].as_u64().expect("a bus id"), e["data"].clone())
        })
        .collect();
    let mut from_sse = Seen::new();
    while from_sse.len() < 2 {
        let ev = sse.expect_event(T).await;
        assert_eq!(ev.event, None, "{ev:?}");
        let envelope = ev.json();
        assert_eq!(envelope["channel"], channel.as_str(), "{envelope}");
        from_sse.push((ev.message_id().expect("an id"), envelope["data"].clone()));
    }
    let from_long_poll = tokio::time::timeout(T, long_poller)
        .await
        .expect("the long-poller got both items")
        .expect("long-poller");

    // Each item once, as one message, in the backend's order, with
    // consecutive bus ids after the feed's first page — the same on every
    // transport.
    let expected: Seen = items
        .iter()
        .enumerate()
        .map(|(i, item)| (last_id + 1 + i as u64, item.clone()))
        .collect();
    assert_eq!(from_ws, expected, "WebSocket");
    assert_eq!(from_sse, expected, "SSE");
    assert_eq!(from_long_poll, expected, "long-poll");
    // A stream channel: every item kept, none replaced by the next.
    let listed = get(&gw.admin_url("/channels?limit=1000")).await.json();
    let room = listed["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["channel"] == channel.as_str())
        .unwrap_or_else(|| panic!("no {channel} in {listed}"));
    assert_eq!(room["mode"], "stream", "{room}");
}
