//! WebSocket transport: several channels on one connection, runtime
//! subscribe / unsubscribe, client publish, control frames.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::ws::{OP_PING, OP_PONG, OP_TEXT};
use common::*;
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

fn key(env: &Value) -> (String, u64) {
    (
        env["channel"].as_str().unwrap().to_string(),
        env["id"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn several_channels_subscribe_unsubscribe_and_replay_on_one_connection() {
    let gw = Gateway::start(&[]).await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws?channel=a&channel=b")).await;
    let mut subscribed = BTreeSet::new();
    for _ in 0..2 {
        let c = ws.expect_control("subscribed", T5).await;
        subscribed.insert(c["channel"].as_str().unwrap().to_string());
        assert_eq!(c["truncated"], false, "{c}");
        assert!(c["last_id"].is_u64(), "subscribed without last_id: {c}");
    }
    assert_eq!(
        subscribed,
        BTreeSet::from(["a".to_string(), "b".to_string()])
    );

    gw.publish_json("a", &json!("a1")).await;
    gw.publish_json("b", &json!("b1")).await;
    let got: BTreeSet<_> = ws.collect_envelopes(2, T5).await.iter().map(key).collect();
    assert_eq!(
        got,
        BTreeSet::from([("a".to_string(), 1), ("b".to_string(), 1)])
    );

    // Runtime subscribe.
    ws.send_json(&json!({"type": "subscribe", "channel": "c"}))
        .await;
    let ack = ws.expect_control("subscribed", T5).await;
    assert_eq!(ack["channel"], "c", "{ack}");
    gw.publish_json("c", &json!({"on": "c"})).await;
    let env = ws.next_envelope(T5).await;
    assert_envelope(&env, "c", 1, &json!({"on": "c"}));

    // Unsubscribe a: a's messages stop, b's go on.
    ws.send_json(&json!({"type": "unsubscribe", "channel": "a"}))
        .await;
    let ack = ws.expect_control("unsubscribed", T5).await;
    assert_eq!(ack["channel"], "a", "{ack}");
    gw.publish_json("a", &json!("a2")).await;
    gw.publish_json("b", &json!("b2")).await;
    let env = ws.next_envelope(T5).await;
    assert_envelope(&env, "b", 2, &json!("b2"));
    ws.expect_no_envelope(QUIET).await;

    // Subscribe with `since` replays what is after the cursor, then live.
    for i in 1..=3 {
        gw.publish_json("d", &json!({ "d": i })).await;
    }
    ws.send_json(&json!({"type": "subscribe", "channel": "d", "since": 1}))
        .await;
    let ack = ws.expect_control("subscribed", T5).await;
    assert_eq!(ack["channel"], "d", "{ack}");
    assert_eq!(ack["last_id"], 3, "{ack}");
    assert_eq!(ack["truncated"], false, "{ack}");
    let replay = ws.collect_envelopes(2, T5).await;
    assert_envelope(&replay[0], "d", 2, &json!({"d": 2}));
    assert_envelope(&replay[1], "d", 3, &json!({"d": 3}));
    gw.publish_json("d", &json!({"d": 4})).await;
    assert_envelope(&ws.next_envelope(T5).await, "d", 4, &json!({"d": 4}));
    ws.expect_no_envelope(QUIET).await;
}

#[tokio::test]
async fn command_errors_keep_the_connection_open() {
    let gw = Gateway::start(&[]).await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/e")).await;
    ws.expect_control("subscribed", T5).await;

    ws.send_json(&json!({"type": "unsubscribe", "channel": "never"}))
        .await;
    let err = ws.expect_control("error", T5).await;
    assert_eq!(err["code"], "not_subscribed", "{err}");

    ws.send_json(&json!({"type": "subscribe", "channel": "bad name"}))
        .await;
    let err = ws.expect_control("error", T5).await;
    assert_eq!(err["code"], "bad_channel", "{err}");

    ws.send_message(tokio_tungstenite::tungstenite::Message::Binary(vec![
        1, 2, 3,
    ]))
    .await;
    let err = ws.expect_control("error", T5).await;
    assert_eq!(err["code"], "binary_not_supported", "{err}");

    // Still subscribed and still listening.
    gw.publish_json("e", &json!(1)).await;
    assert_envelope(&ws.next_envelope(T5).await, "e", 1, &json!(1));
}

#[tokio::test]
async fn subscription_limit_applies_to_url_and_commands() {
    let gw = Gateway::start(&["--max-subscriptions", "2"]).await;

    let r = http(
        "GET",
        &gw.public_url("/rt/ws?channel=a&channel=b&channel=c"),
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), 429, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_subscriptions");

    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws?channel=a&channel=b")).await;
    ws.expect_control("subscribed", T5).await;
    ws.expect_control("subscribed", T5).await;
    ws.send_json(&json!({"type": "subscribe", "channel": "c"}))
        .await;
    let err = ws.expect_control("error", T5).await;
    assert_eq!(err["code"], "too_many_subscriptions", "{err}");
    gw.publish_json("c", &json!(1)).await;
    gw.publish_json("a", &json!(2)).await;
    assert_envelope(&ws.next_envelope(T5).await, "a", 1, &json!(2));
}

const CHAT_CONFIG: &str = r#"
[[channels]]
pattern = "chat.*"
allow_client_publish = true
"#;

#[tokio::test]
async fn client_publish_where_allowed_and_forbidden_elsewhere() {
    let gw = Gateway::start_with_config(CHAT_CONFIG, &[]).await;

    let mut reader = WsClient::connect(&gw.ws_url("/rt/ws/chat.x")).await;
    reader.expect_control("subscribed", T5).await;
    let mut writer = WsClient::connect(&gw.ws_url("/rt/ws/lobby")).await;
    writer.expect_control("subscribed", T5).await;

    writer
        .send_json(&json!({"type": "publish", "channel": "chat.x", "data": {"hi": 1}}))
        .await;
    let ack = writer.expect_control("published", T5).await;
    assert_eq!(ack["channel"], "chat.x", "{ack}");
    assert_eq!(ack["id"], 1, "{ack}");
    assert_envelope(
        &reader.next_envelope(T5).await,
        "chat.x",
        1,
        &json!({"hi": 1}),
    );

    // Other transports see it too.
    let (status, body) = gw.poll("chat.x", "since=0&timeout=0").await;
    assert_eq!(status, 200);
    assert_envelope(&body["messages"][0], "chat.x", 1, &json!({"hi": 1}));

    // Not allowed on a channel no rule opens.
    writer
        .send_json(&json!({"type": "publish", "channel": "news", "data": "nope"}))
        .await;
    let err = writer.expect_control("error", T5).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    let (_, body) = gw.poll("news", "since=0&timeout=0").await;
    assert_eq!(
        body["messages"],
        json!([]),
        "forbidden publish went through: {body}"
    );
    assert_eq!(body["last_id"], 0, "{body}");

    // The connection stays open and usable.
    writer
        .send_json(&json!({"type": "subscribe", "channel": "chat.x"}))
        .await;
    let ack = writer.expect_control("subscribed", T5).await;
    assert_eq!(ack["channel"], "chat.x");
    writer
        .send_json(&json!({"type": "publish", "channel": "chat.x", "data": "again"}))
        .await;
    let ack = writer.expect_control("published", T5).await;
    assert_eq!(ack["id"], 2, "{ack}");
    assert_envelope(
        &writer.next_envelope(T5).await,
        "chat.x",
        2,
        &json!("again"),
    );
    assert_envelope(
        &reader.next_envelope(T5).await,
        "chat.x",
        2,
        &json!("again"),
    );

    // `null` is a payload like any other, as it is in an HTTP publish.
    writer
        .send_json(&json!({"type": "publish", "channel": "chat.x", "data": null}))
        .await;
    let ack = writer.expect_control("published", T5).await;
    assert_eq!(ack["id"], 3, "{ack}");
    assert_envelope(&reader.next_envelope(T5).await, "chat.x", 3, &json!(null));
}

#[tokio::test]
async fn ping_is_answered_with_pong_and_subprotocol_is_selected() {
    let gw = Gateway::start(&[]).await;
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let (mut ws, head) = RawWs::handshake_with(
        conn,
        "/rt/ws/p",
        &[("Sec-WebSocket-Protocol", "other, pollbridge.v1")],
    )
    .await
    .unwrap();
    assert_eq!(head.header("sec-websocket-protocol"), Some("pollbridge.v1"));
    let sub = ws.next_json(T5).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");

    ws.send_frame(true, OP_PING, b"are you there")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T5;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = ws
            .read_frame_within(left)
            .await
            .unwrap()
            .expect("EOF before pong");
        if frame.opcode == OP_PONG {
            assert_eq!(frame.payload, b"are you there");
            break;
        }
        assert!(
            frame.opcode == OP_TEXT || frame.opcode == OP_PING,
            "unexpected frame {frame:?}"
        );
    }
}
