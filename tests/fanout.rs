//! One channel, three transports: every client gets every message, in
//! order, with the same ids and the same data.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const N: u64 = 200;

/// What message `i` carries: JSON for most, plain text for every third.
fn payload(i: u64) -> Value {
    if i.is_multiple_of(3) {
        Value::String(format!("text message {i}"))
    } else {
        json!({ "n": i })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sse_and_longpoll_all_get_every_message_in_order() {
    let gw = Gateway::start(&[]).await;

    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/news")).await;
    let sub = ws.expect_control("subscribed", T5).await;
    assert_eq!(sub["channel"], "news", "{sub}");

    let mut sse = SseClient::open(gw.public, "/rt/sse/news", &[]).await;

    // Long-poll loop, following the cursor from 0.
    let public = gw.public;
    let poller = tokio::spawn(async move {
        let mut got: Vec<Value> = Vec::new();
        let mut since = 0u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while (got.len() as u64) < N {
            assert!(
                tokio::time::Instant::now() < deadline,
                "long-poll: only {} of {N} messages",
                got.len()
            );
            let r = get(&format!(
                "http://{public}/rt/poll/news?since={since}&timeout=5"
            ))
            .await;
            assert_eq!(r.status(), 200, "poll since={since}: {}", r.text());
            let ct = r.header("content-type").unwrap_or_default();
            assert!(ct.starts_with("application/json"), "content-type {ct:?}");
            let body = r.json();
            assert_eq!(body["truncated"], false, "{body}");
            let messages = body["messages"].as_array().expect("messages list").clone();
            let last_id = body["last_id"].as_u64().expect("last_id");
            if let Some(last) = messages.last() {
                since = last["id"].as_u64().expect("id");
                assert!(last_id >= since, "last_id {last_id} < message id {since}");
            }
            got.extend(messages);
        }
        got
    });

    // Publish: ids 1..=100 one by one (JSON and text), 101..=200 in batches.
    for i in 1..=100u64 {
        let id = match payload(i) {
            Value::String(s) => gw.publish_text("news", &s).await,
            v => gw.publish_json("news", &v).await,
        };
        assert_eq!(id, i, "publish answer id");
    }
    for start in (101..=N).step_by(20) {
        let items: Vec<(&str, Value)> = (start..start + 20).map(|i| ("news", payload(i))).collect();
        let ids = gw.publish_batch_ok(&items).await;
        assert_eq!(ids, (start..start + 20).collect::<Vec<_>>());
    }

    let ws_got = ws.collect_envelopes(N as usize, T10).await;
    let mut sse_got = Vec::new();
    for _ in 0..N {
        let ev = sse.expect_event(T10).await;
        let env = ev.json();
        assert_eq!(ev.event, None, "unexpected SSE event type: {ev:?}");
        assert_eq!(
            ev.message_id(),
            env["id"].as_u64(),
            "SSE id: field must carry the envelope id"
        );
        sse_got.push(env);
    }
    let poll_got = tokio::time::timeout(Duration::from_secs(40), poller)
        .await
        .expect("long-poll loop timed out")
        .expect("long-poll loop failed");
    assert_eq!(poll_got.len() as u64, N, "long-poll delivered too many");

    for (name, got) in [
        ("websocket", &ws_got),
        ("sse", &sse_got),
        ("longpoll", &poll_got),
    ] {
        for (i, env) in (1..=N).zip(got.iter()) {
            assert_eq!(
                env,
                &json!({"channel": "news", "id": i, "data": payload(i)}),
                "{name}: message {i}"
            );
        }
    }

    // Nothing beyond the 200.
    ws.expect_no_envelope(Duration::from_millis(300)).await;
    sse.expect_no_event(Duration::from_millis(300)).await;
}
