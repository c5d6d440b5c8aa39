//! The fan-out shards under races: concurrent publishers on one channel,
//! readers on every transport that stay, and readers that come and go
//! (subscribe / unsubscribe on a live WebSocket, SSE reconnects with
//! `since`, long-polls) while messages are being written. Every reader
//! must see every message it should, each once, in id order; a WebSocket
//! must see nothing of the channel after its `unsubscribed` answer. On the
//! in-memory bus and on two gateways sharing a Redis bus, with more shards
//! (`--workers 4`) than this machine has cores so the shards interleave.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::redis::*;
use common::ws::is_envelope;
use common::*;
use serde_json::{json, Value};

const CHANNEL: &str = "hot";
const PUBLISHERS: u64 = 4;
/// Publish requests per publisher: odd ones one message, even ones three.
const REQUESTS: u64 = 40;
/// Messages in all.
const TOTAL: u64 = PUBLISHERS * REQUESTS * 2;
const WORKERS: &[&str] = &[
    "--workers",
    "4",
    "--longpoll-rate-per-ip",
    "0",
    "--ws-command-rate",
    "0",
];

/// Publishes `REQUESTS` times on `gw`, paced so readers come and go during
/// the fan-out; data `{"p":p,"i":i}` lets the readers check each
/// publisher's own order.
async fn publisher(gw: Arc<Gateway>, p: u64) {
    let mut i = 0u64;
    for r in 0..REQUESTS {
        if r % 2 == 0 {
            gw.publish_json(CHANNEL, &json!({"p": p, "i": i})).await;
            i += 1;
        } else {
            let items: Vec<(&str, Value)> = (i..i + 3)
                .map(|i| (CHANNEL, json!({"p": p, "i": i})))
                .collect();
            assert_eq!(gw.publish_batch_ok(&items).await.len(), 3);
            i += 3;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks one reader's envelopes continue `cursor` without a gap or a
/// duplicate and keep each publisher's order; returns the new cursor.
fn follow(who: &str, cursor: u64, envelopes: &[Value], per_publisher: &mut [i64]) -> u64 {
    let mut cursor = cursor;
    for env in envelopes {
        let id = env["id"].as_u64().unwrap_or_else(|| panic!("{who}: {env}"));
        assert_eq!(env["channel"], CHANNEL, "{who}: {env}");
        assert_eq!(id, cursor + 1, "{who}: after {cursor} came {id}");
        cursor = id;
        let (p, i) = (
            env["data"]["p"].as_u64().unwrap(),
            env["data"]["i"].as_i64(),
        );
        let i = i.unwrap();
        assert!(
            i > per_publisher[p as usize],
            "{who}: publisher {p}'s message {i} after its {}",
            per_publisher[p as usize]
        );
        per_publisher[p as usize] = i;
    }
    cursor
}

/// A WebSocket that stays from before the first publish to the last.
async fn ws_stayer(public: SocketAddr, who: String) {
    let mut ws = WsClient::connect(&format!("ws://{public}/rt/ws/{CHANNEL}")).await;
    ws.expect_control("subscribed", T10).await;
    let got = ws
        .collect_envelopes(TOTAL as usize, Duration::from_secs(60))
        .await;
    follow(&who, 0, &got, &mut [-1; PUBLISHERS as usize]);
}

/// An SSE stream that stays.
async fn sse_stayer(public: SocketAddr, who: String) {
    let mut sse = SseClient::open(public, &format!("/rt/sse/{CHANNEL}"), &[]).await;
    let mut got = Vec::new();
    while (got.len() as u64) < TOTAL {
        got.push(sse.expect_event(Duration::from_secs(60)).await.json());
    }
    follow(&who, 0, &got, &mut [-1; PUBLISHERS as usize]);
}

/// A long-poll loop following its cursor: every poll subscribes and
/// leaves again.
async fn poller(public: SocketAddr, who: String) {
    let mut cursor = 0;
    let mut order = [-1; PUBLISHERS as usize];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cursor < TOTAL {
        assert!(tokio::time::Instant::now() < deadline, "{who}: at {cursor}");
        let url = format!("http://{public}/rt/poll/{CHANNEL}?since={cursor}&timeout=5");
        let r = get(&url).await;
        assert_eq!(r.status(), 200, "{who}: {}", r.text());
        let body = r.json();
        assert_eq!(body["truncated"], false, "{who}: {body}");
        cursor = follow(
            &who,
            cursor,
            body["messages"].as_array().unwrap(),
            &mut order,
        );
    }
}

/// One WebSocket that subscribes to the channel, reads a little, and
/// unsubscribes, again and again, resuming from its cursor, until it has
/// everything and the publishers are done. Reads frames in the order they
/// came, so a message after `unsubscribed` is caught.
async fn ws_churner(public: SocketAddr, who: String, done: Arc<AtomicBool>) {
    let mut ws = WsClient::connect(&format!("ws://{public}/rt/ws?channel=quiet")).await;
    ws.expect_control("subscribed", T10).await;
    let (mut cursor, mut order) = (0u64, [-1; PUBLISHERS as usize]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for round in 0u64.. {
        assert!(tokio::time::Instant::now() < deadline, "{who}: at {cursor}");
        let finished = done.load(Ordering::Acquire) && cursor == TOTAL;
        if finished {
            break;
        }
        ws.send_json(&json!({"type": "subscribe", "channel": CHANNEL, "since": cursor}))
            .await;
        let mut subscribed = false;
        let hold = tokio::time::Instant::now() + Duration::from_millis(10 + round % 4 * 10);
        let mut unsubscribing = false;
        loop {
            let now = tokio::time::Instant::now();
            if subscribed && !unsubscribing && now >= hold {
                ws.send_json(&json!({"type": "unsubscribe", "channel": CHANNEL}))
                    .await;
                unsubscribing = true;
            }
            let wait = if unsubscribing || !subscribed {
                T10
            } else {
                hold - now
            };
            match ws.recv(wait).await {
                WsEvent::Json(v) if v["type"] == "subscribed" && v["channel"] == CHANNEL => {
                    assert!(!subscribed, "{who}: {v}");
                    subscribed = true;
                }
                WsEvent::Json(v) if v["type"] == "unsubscribed" => break,
                WsEvent::Json(v) if is_envelope(&v) => {
                    assert!(
                        subscribed,
                        "{who}: {v} before `subscribed` / after `unsubscribed`"
                    );
                    cursor = follow(&who, cursor, &[v], &mut order);
                }
                WsEvent::Timeout if subscribed && !unsubscribing => {}
                other => panic!("{who}: round {round} at {cursor}: {other:?}"),
            }
        }
    }
}

/// An SSE reader that reconnects with `since` after every few events.
async fn sse_churner(public: SocketAddr, who: String, done: Arc<AtomicBool>) {
    let (mut cursor, mut order) = (0u64, [-1; PUBLISHERS as usize]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(done.load(Ordering::Acquire) && cursor == TOTAL) {
        assert!(tokio::time::Instant::now() < deadline, "{who}: at {cursor}");
        let path = format!("/rt/sse/{CHANNEL}?since={cursor}");
        let mut sse = SseClient::open(public, &path, &[]).await;
        for _ in 0..7 {
            match sse.next_event(Duration::from_millis(30)).await {
                Ok(Some(ev)) => cursor = follow(&who, cursor, &[ev.json()], &mut order),
                _ => break,
            }
        }
    }
}

/// Runs publishers on `publish_to` and every kind of reader on each of
/// `read_from`, and waits for all.
async fn race(publish_to: &[Arc<Gateway>], read_from: &[Arc<Gateway>]) {
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for (n, gw) in read_from.iter().enumerate() {
        let public = gw.public;
        for k in 0..4 {
            readers.push(tokio::spawn(ws_stayer(public, format!("ws {n}.{k}"))));
        }
        for k in 0..2 {
            readers.push(tokio::spawn(sse_stayer(public, format!("sse {n}.{k}"))));
            readers.push(tokio::spawn(poller(public, format!("poll {n}.{k}"))));
        }
        for k in 0..3 {
            let who = format!("ws churner {n}.{k}");
            readers.push(tokio::spawn(ws_churner(public, who, done.clone())));
        }
        let who = format!("sse churner {n}");
        readers.push(tokio::spawn(sse_churner(public, who, done.clone())));
    }
    // The stayers are subscribed once their stream is open; give the
    // handshakes a moment (not an assertion: a late stayer would fail
    // below for missing messages, never pass wrongly).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let gw = publish_to[p as usize % publish_to.len()].clone();
            tokio::spawn(publisher(gw, p))
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    done.store(true, Ordering::Release);
    for r in readers {
        tokio::time::timeout(Duration::from_secs(90), r)
            .await
            .expect("a reader hung")
            .expect("a reader failed");
    }
    for gw in read_from {
        let spans = gw.metric("pollbridge_fanout_seconds_count", &[]).await;
        assert!(spans.is_some_and(|n| n > 0.0), "fan-out spans: {spans:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_readers_on_every_transport_get_every_message_once_in_order() {
    let gw = Arc::new(Gateway::start(WORKERS).await);
    race(std::slice::from_ref(&gw), std::slice::from_ref(&gw)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_readers_on_two_nodes_of_a_redis_bus_get_every_message_once_in_order() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let a = Arc::new(start_gateway(&bus, WORKERS).await);
    let b = Arc::new(start_gateway(&bus, WORKERS).await);
    let both = [a, b];
    race(&both, &both).await;
}

#[tokio::test]
async fn workers_flag_is_checked() {
    for bad in ["0", "5000"] {
        let out = command()
            .args(["--workers", bad, "--check-config"])
            .output()
            .expect("run pollbridge");
        assert_eq!(out.status.code(), Some(2), "--workers {bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("workers"), "--workers {bad}: {err}");
    }
    let metrics = Gateway::start(&["--workers", "1"]).await.metrics().await;
    assert!(
        metrics.contains("pollbridge_fanout_seconds_count 0"),
        "pre-registered at 0"
    );
}
