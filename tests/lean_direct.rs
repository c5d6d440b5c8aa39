//! Held long-polls answered by the publisher (the lean HTTP/1.1 path parks
//! a poll that must wait and the fan-out writes its whole answer): the
//! answer is byte for byte the task path's, a client leaving a parked
//! poll frees it, timeouts still answer, and a burst of messages gives one
//! answer and leaves the rest for the next poll, without loss or
//! duplicate.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Reads one answer with a Content-Length body: its raw bytes (head and
/// body) and the body as JSON.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (Vec<u8>, Value) {
    let (raw, head_len) = read_length_answer(stream, buf, Duration::from_secs(10)).await;
    let head = String::from_utf8_lossy(&raw[..head_len]);
    assert!(
        head.contains("content-length: "),
        "no content-length: {head}"
    );
    let body = serde_json::from_slice(&raw[head_len..]).unwrap();
    (raw, body)
}

fn poll(channel: &str, since: u64, timeout: u32) -> Vec<u8> {
    format!("GET /rt/poll/{channel}?since={since}&timeout={timeout} HTTP/1.1\r\nHost: x\r\n\r\n")
        .into_bytes()
}

/// Waits until `n` polls are held (the in-flight gauge).
async fn held(gw: &Gateway, n: f64) {
    gw.wait_metric("pollbridge_connections", &[("transport", "longpoll")], n)
        .await;
}

/// Waits until `n` polls are parked (`pollbridge_longpoll_parked_polls`).
async fn parked(gw: &Gateway, n: f64) {
    gw.wait_metric("pollbridge_longpoll_parked_polls", &[], n)
        .await;
}

#[tokio::test]
async fn a_parked_poll_gets_the_task_paths_answer_byte_for_byte() {
    let gw = Gateway::start(&[]).await;
    let first = gw.publish_json("same", &serde_json::json!({"n": 0})).await;
    let mut stream = TcpStream::connect(gw.public).await.unwrap();
    let mut buf = Vec::new();
    stream.write_all(&poll("same", first, 20)).await.unwrap();
    held(&gw, 1.0).await;
    parked(&gw, 1.0).await;
    let id = gw
        .publish_json("same", &serde_json::json!({"n": 1, "text": "é\"x"}))
        .await;
    let (from_publisher, body) = read_answer(&mut stream, &mut buf).await;
    assert_eq!(body["messages"][0]["id"], id, "{body}");
    assert_eq!(body["last_id"], id, "{body}");
    parked(&gw, 0.0).await;
    // The same message from history, answered by the connection's task.
    stream.write_all(&poll("same", first, 0)).await.unwrap();
    let (from_history, _) = read_answer(&mut stream, &mut buf).await;
    assert_eq!(
        String::from_utf8_lossy(&from_publisher),
        String::from_utf8_lossy(&from_history)
    );
    held(&gw, 0.0).await;
}

#[tokio::test]
async fn a_client_leaving_a_parked_poll_frees_its_subscription() {
    let gw = Gateway::start(&[]).await;
    let id = gw.publish_json("leave", &serde_json::json!(1)).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.public).await.unwrap();
        s.write_all(&poll("leave", id, 60)).await.unwrap();
        clients.push(s);
    }
    held(&gw, 5.0).await;
    parked(&gw, 5.0).await;
    assert_eq!(gw.channel_subscribers("leave", "longpoll").await, 5);
    drop(clients);
    held(&gw, 0.0).await;
    parked(&gw, 0.0).await;
    eventually(Duration::from_secs(10), "subscriptions freed", || async {
        (gw.channel_subscribers("leave", "longpoll").await == 0).then_some(())
    })
    .await;
    // And a publish after they left goes nowhere and breaks nothing.
    gw.publish_json("leave", &serde_json::json!(2)).await;
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn a_parked_poll_times_out_with_an_empty_answer() {
    let gw = Gateway::start(&[]).await;
    let id = gw.publish_json("quiet", &serde_json::json!(1)).await;
    let mut stream = TcpStream::connect(gw.public).await.unwrap();
    let mut buf = Vec::new();
    let started = Instant::now();
    stream.write_all(&poll("quiet", id, 1)).await.unwrap();
    let (_, body) = read_answer(&mut stream, &mut buf).await;
    let took = started.elapsed();
    assert_eq!(body["messages"].as_array().unwrap().len(), 0, "{body}");
    assert_eq!(body["last_id"], id, "{body}");
    // The timeout, rounded up by at most the documented granularity (and
    // a slow shared machine's scheduling).
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    held(&gw, 0.0).await;
    // The connection goes on: the next poll is held and answered.
    stream.write_all(&poll("quiet", id, 20)).await.unwrap();
    held(&gw, 1.0).await;
    let next = gw.publish_json("quiet", &serde_json::json!(2)).await;
    let (_, body) = read_answer(&mut stream, &mut buf).await;
    assert_eq!(body["last_id"], next, "{body}");
}

#[tokio::test]
async fn a_burst_gives_one_answer_and_the_next_poll_the_rest() {
    let gw = Gateway::start(&[]).await;
    let first = gw.publish_json("burst", &serde_json::json!(0)).await;
    let mut stream = TcpStream::connect(gw.public).await.unwrap();
    let mut buf = Vec::new();
    stream.write_all(&poll("burst", first, 20)).await.unwrap();
    held(&gw, 1.0).await;
    let items: Vec<(&str, Value)> = (1..=20)
        .map(|n| ("burst", serde_json::json!({ "n": n })))
        .collect();
    let ids = gw.publish_batch_ok(&items).await;
    // Answers on this one connection, each poll from the last answer's
    // `last_id`, until every message came: exactly one answer per poll
    // (a second answer to the held poll would be read as the next
    // poll's and show up as a duplicate or a gap).
    let mut got = Vec::new();
    let mut since = first;
    let mut answers = 0;
    while got.len() < ids.len() {
        if answers > 0 {
            stream.write_all(&poll("burst", since, 20)).await.unwrap();
        }
        let (_, body) = read_answer(&mut stream, &mut buf).await;
        answers += 1;
        let messages = body["messages"].as_array().unwrap();
        assert!(!messages.is_empty(), "{body}");
        got.extend(messages.iter().map(|m| m["id"].as_u64().unwrap()));
        since = body["last_id"].as_u64().unwrap();
        assert_eq!(since, *got.last().unwrap(), "{body}");
        assert!(answers <= ids.len(), "more answers than messages");
    }
    assert_eq!(got, ids, "every message once, in order");
    // Nothing more: the next poll is held.
    stream.write_all(&poll("burst", since, 20)).await.unwrap();
    held(&gw, 1.0).await;
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
}

#[tokio::test]
async fn a_poll_of_another_shape_is_held_by_its_connections_task() {
    // A client that accepts gzip may get a compressed answer: not the
    // shared plain one the publisher writes, so the poll is not parked.
    let gw = Gateway::start(&[]).await;
    let id = gw.publish_json("shape", &serde_json::json!(1)).await;
    let mut plain = TcpStream::connect(gw.public).await.unwrap();
    plain.write_all(&poll("shape", id, 20)).await.unwrap();
    parked(&gw, 1.0).await;
    let mut gzip = TcpStream::connect(gw.public).await.unwrap();
    let head = format!(
        "GET /rt/poll/shape?since={id}&timeout=20 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"
    );
    gzip.write_all(head.as_bytes()).await.unwrap();
    held(&gw, 2.0).await;
    assert_eq!(
        gw.metric("pollbridge_longpoll_parked_polls", &[]).await,
        Some(1.0),
        "only the plain poll is parked"
    );
    let next = gw.publish_json("shape", &serde_json::json!(2)).await;
    let mut buf = Vec::new();
    let (_, body) = read_answer(&mut plain, &mut buf).await;
    assert_eq!(body["last_id"], next, "{body}");
    parked(&gw, 0.0).await;
    held(&gw, 0.0).await;
}

#[tokio::test]
async fn many_parked_polls_of_one_channel_each_get_the_message_once() {
    // More polls than a publisher answers inline: the channel's list is
    // split over the fan-out shards.
    let gw = Gateway::start(&[]).await;
    let first = gw.publish_json("crowd", &serde_json::json!(0)).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(gw.public).await.unwrap();
        s.write_all(&poll("crowd", first, 20)).await.unwrap();
        clients.push((s, Vec::new()));
    }
    parked(&gw, 100.0).await;
    assert_eq!(gw.channel_subscribers("crowd", "longpoll").await, 100);
    let id = gw.publish_json("crowd", &serde_json::json!({"n": 1})).await;
    for (stream, buf) in &mut clients {
        let (_, body) = read_answer(stream, buf).await;
        assert_eq!(body["last_id"], id, "{body}");
        assert_eq!(body["messages"].as_array().unwrap().len(), 1, "{body}");
    }
    parked(&gw, 0.0).await;
    assert_eq!(gw.channel_subscribers("crowd", "longpoll").await, 0);
    // Each connection polls on and gets the next one, once.
    for (stream, _) in &mut clients {
        stream.write_all(&poll("crowd", id, 20)).await.unwrap();
    }
    parked(&gw, 100.0).await;
    let next = gw.publish_json("crowd", &serde_json::json!({"n": 2})).await;
    for (stream, buf) in &mut clients {
        let (_, body) = read_answer(stream, buf).await;
        assert_eq!(body["last_id"], next, "{body}");
        assert!(buf.is_empty(), "one answer per poll");
    }
}

#[tokio::test]
async fn a_parked_poll_of_a_large_message_is_answered_by_its_connection() {
    // Too large to pre-encode: the publisher hands it to the connection,
    // which streams it from the message's envelope as the task path does.
    let gw = Gateway::start(&[]).await;
    let first = gw.publish_json("large", &serde_json::json!(0)).await;
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    conn.write_all(&poll("large", first, 20)).await.unwrap();
    parked(&gw, 1.0).await;
    let text = "x".repeat(40_000);
    let id = gw
        .publish_json("large", &serde_json::json!({ "text": text }))
        .await;
    let answer = conn.read_response("GET").await.unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.json();
    assert_eq!(body["last_id"], id);
    assert_eq!(body["messages"][0]["data"]["text"], text);
    parked(&gw, 0.0).await;
}
