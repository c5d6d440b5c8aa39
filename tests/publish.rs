//! Publishing: admin payload rules and the keyed public endpoint.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn json_and_text_payloads() {
    let gw = Gateway::start(&[]).await;
    let (status, body) = gw
        .publish(
            "p",
            br#"{"x": [1, "two"]}"#,
            "application/json; charset=utf-8",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"channel": "p", "id": 1}));
    // A JSON-looking body that is not declared JSON stays a string.
    let (status, body) = gw.publish("p", b"{\"x\":1}", "text/plain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"channel": "p", "id": 2}));
    // A JSON scalar is JSON too.
    let (status, _) = gw.publish("p", b"42", "application/json").await;
    assert_eq!(status, 200);

    let (_, polled) = gw.poll("p", "since=0&timeout=0").await;
    assert_eq!(
        polled["messages"],
        json!([
            {"channel": "p", "id": 1, "data": {"x": [1, "two"]}},
            {"channel": "p", "id": 2, "data": "{\"x\":1}"},
            {"channel": "p", "id": 3, "data": 42},
        ])
    );
}

#[tokio::test]
async fn batch_answers_ids_per_channel_in_order() {
    let gw = Gateway::start(&[]).await;
    gw.publish_json("b1", &json!(0)).await;
    let (status, body) = gw
        .publish_batch(&[
            ("b1", json!("x")),
            ("b2", json!({"y": 1})),
            ("b1", json!([1])),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([
            {"channel": "b1", "id": 2},
            {"channel": "b2", "id": 1},
            {"channel": "b1", "id": 3},
        ])
    );
    let (_, polled) = gw.poll("b1", "since=1&timeout=0").await;
    assert_eq!(
        polled["messages"],
        json!([
            {"channel": "b1", "id": 2, "data": "x"},
            {"channel": "b1", "id": 3, "data": [1]},
        ])
    );
}

#[tokio::test]
async fn public_publishing_needs_a_configured_key() {
    // Off by default: no id is handed out on the public listener.
    let gw = Gateway::start(&[]).await;
    let r = http(
        "POST",
        &gw.public_url("/rt/publish/pub"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer k1"),
        ],
        Some(b"1"),
    )
    .await;
    assert_ne!(
        r.status(),
        200,
        "public publish without a key configured: {}",
        r.text()
    );
    let (_, polled) = gw.poll("pub", "since=0&timeout=0").await;
    assert_eq!(polled["last_id"], 0, "{polled}");
    drop(gw);

    let gw = Gateway::start(&["--publish-key", "k1"]).await;
    let url = gw.public_url("/rt/publish/pub");
    for auth in [None, Some("Bearer wrong")] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = http("POST", &url, &headers, Some(b"1")).await;
        assert!(
            r.status() == 401 || r.status() == 403,
            "auth {auth:?}: {} {}",
            r.status(),
            r.text()
        );
        assert!(r.json()["error"].is_string(), "{}", r.text());
    }
    let (_, polled) = gw.poll("pub", "since=0&timeout=0").await;
    assert_eq!(
        polled["last_id"], 0,
        "refused publishes went through: {polled}"
    );

    let r = http(
        "POST",
        &url,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer k1"),
        ],
        Some(br#"{"ok":true}"#),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.json(), json!({"channel": "pub", "id": 1}));
    let (_, polled) = gw.poll("pub", "since=0&timeout=0").await;
    assert_eq!(polled["messages"][0]["data"], json!({"ok": true}));
}
