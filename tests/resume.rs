//! Resuming from a cursor: exactly the missed messages, or a plain
//! `truncated` when history no longer reaches back that far.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn websocket_resume_with_since_gets_exactly_the_missed_messages() {
    let gw = Gateway::start(&[]).await;

    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/r1")).await;
    ws.expect_control("subscribed", T5).await;
    for i in 1..=5 {
        gw.publish_json("r1", &json!({ "n": i })).await;
    }
    let first = ws.collect_envelopes(5, T5).await;
    let last = first.last().unwrap()["id"].as_u64().unwrap();
    assert_eq!(last, 5);
    ws.close().await;

    for i in 6..=30 {
        gw.publish_json("r1", &json!({ "n": i })).await;
    }

    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/r1?since={last}"))).await;
    let sub = ws.expect_control("subscribed", T5).await;
    assert_eq!(sub["channel"], "r1", "{sub}");
    assert_eq!(sub["truncated"], false, "{sub}");
    let missed = ws.collect_envelopes(25, T5).await;
    for (env, i) in missed.iter().zip(6..=30u64) {
        assert_envelope(env, "r1", i, &json!({ "n": i }));
    }
    ws.expect_no_envelope(QUIET).await;

    // Live messages still follow the replay.
    gw.publish_json("r1", &json!({ "n": 31 })).await;
    let live = ws.next_envelope(T5).await;
    assert_envelope(&live, "r1", 31, &json!({ "n": 31 }));
}

#[tokio::test]
async fn longpoll_older_than_history_is_truncated_to_the_last_messages() {
    let gw = Gateway::start(&["--history-size", "10"]).await;
    for i in 1..=30 {
        gw.publish_json("h", &json!({ "n": i })).await;
    }
    let (status, body) = gw.poll("h", "since=1&timeout=5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    assert_eq!(body["last_id"], 30, "{body}");
    let messages = body["messages"].as_array().expect("messages");
    let ids: Vec<u64> = messages.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (21..=30).collect::<Vec<_>>(), "{body}");
    for m in messages {
        let i = m["id"].as_u64().unwrap();
        assert_envelope(m, "h", i, &json!({ "n": i }));
    }

    // A cursor inside the history is not truncated.
    let (status, body) = gw.poll("h", "since=25&timeout=5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    let ids: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![26, 27, 28, 29, 30], "{body}");

    // since = oldest kept - 1 reaches back exactly far enough.
    let (_, body) = gw.poll("h", "since=20&timeout=5").await;
    assert_eq!(body["truncated"], false, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 10, "{body}");
}

#[tokio::test]
async fn cursor_ahead_of_the_channel_is_treated_as_zero_and_truncated() {
    let gw = Gateway::start(&[]).await;
    for i in 1..=3 {
        gw.publish_json("reset", &json!({ "n": i })).await;
    }
    let (status, body) = gw.poll("reset", "since=500&timeout=0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    let ids: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "{body}");
}

#[tokio::test]
async fn websocket_and_sse_resume_older_than_history_say_truncated() {
    let gw = Gateway::start(&["--history-size", "10"]).await;
    for i in 1..=30 {
        gw.publish_json("h", &json!({ "n": i })).await;
    }

    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/h?since=1")).await;
    let sub = ws.expect_control("subscribed", T5).await;
    assert_eq!(sub["truncated"], true, "{sub}");
    let got = ws.collect_envelopes(10, T5).await;
    let ids: Vec<u64> = got.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (21..=30).collect::<Vec<_>>());
    ws.expect_no_envelope(QUIET).await;

    let mut sse = SseClient::open(gw.public, "/rt/sse/h?since=1", &[]).await;
    let first = sse.expect_event(T5).await;
    assert_eq!(first.event.as_deref(), Some("truncated"), "{first:?}");
    assert_eq!(
        first.json(),
        json!({"channel": "h", "since": 1}),
        "{first:?}"
    );
    for i in 21..=30u64 {
        let ev = sse.expect_event(T5).await;
        assert_eq!(ev.message_id(), Some(i), "{ev:?}");
        assert_envelope(&ev.json(), "h", i, &json!({ "n": i }));
    }
    sse.expect_no_event(QUIET).await;
}

#[tokio::test]
async fn sse_resume_with_last_event_id_gets_exactly_the_missed_messages() {
    let gw = Gateway::start(&[]).await;

    let mut sse = SseClient::open(gw.public, "/rt/sse/s1", &[]).await;
    for i in 1..=4 {
        gw.publish_text("s1", &format!("t{i}")).await;
    }
    let mut last = String::new();
    for i in 1..=4u64 {
        let ev = sse.expect_event(T5).await;
        assert_envelope(&ev.json(), "s1", i, &json!(format!("t{i}")));
        last = ev.id.clone().expect("SSE event without id");
    }
    assert!(
        last.starts_with("4-"),
        "the id is the cursor, epoch included: {last}"
    );
    drop(sse);

    for i in 5..=12 {
        gw.publish_text("s1", &format!("t{i}")).await;
    }

    let mut sse = SseClient::open(gw.public, "/rt/sse/s1", &[("Last-Event-ID", &last)]).await;
    for i in 5..=12u64 {
        let ev = sse.expect_event(T5).await;
        assert_eq!(ev.event, None, "no truncation expected: {ev:?}");
        assert_eq!(ev.message_id(), Some(i));
        assert_envelope(&ev.json(), "s1", i, &json!(format!("t{i}")));
    }
    sse.expect_no_event(QUIET).await;

    // `since` in the query works the same way.
    let mut sse = SseClient::open(gw.public, "/rt/sse/s1?since=10", &[]).await;
    for i in 11..=12u64 {
        let ev = sse.expect_event(T5).await;
        assert_envelope(&ev.json(), "s1", i, &json!(format!("t{i}")));
    }
    sse.expect_no_event(QUIET).await;
}

const STATE_CONFIG: &str = r#"
[[channels]]
pattern = "prices.*"
mode = "state"
"#;

#[tokio::test]
async fn state_channel_poll_behind_the_latest_gets_only_the_latest() {
    let gw = Gateway::start_with_config(STATE_CONFIG, &[]).await;
    for i in 1..=5 {
        gw.publish_json("prices.eur", &json!({ "price": i })).await;
    }
    let (status, body) = gw.poll("prices.eur", "since=1&timeout=0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conflated"], true, "{body}");
    assert_eq!(body["last_id"], 5, "{body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{body}");
    assert_envelope(&messages[0], "prices.eur", 5, &json!({"price": 5}));

    // A stream channel under the same gateway is not conflated.
    for i in 1..=3 {
        gw.publish_json("other", &json!(i)).await;
    }
    let (_, body) = gw.poll("other", "since=1&timeout=0").await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 2, "{body}");
    assert_ne!(body["conflated"], true, "{body}");
}

#[tokio::test]
async fn state_channel_websocket_resume_gets_only_the_latest() {
    let gw = Gateway::start_with_config(STATE_CONFIG, &[]).await;
    for i in 1..=5 {
        gw.publish_json("prices.usd", &json!({ "price": i })).await;
    }
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/prices.usd?since=1")).await;
    let sub = ws.expect_control("subscribed", T5).await;
    assert_eq!(sub["last_id"], 5, "{sub}");
    let env = ws.next_envelope(T5).await;
    assert_envelope(&env, "prices.usd", 5, &json!({"price": 5}));
    ws.expect_no_envelope(QUIET).await;
}
