//! Bad input gets a clear error, never a panic, and the gateway keeps
//! serving afterwards.

mod common;

use std::time::{Duration, Instant};

use common::ws::{masked_frame, OP_TEXT};
use common::*;
use serde_json::json;

const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// Asserts a JSON error answer with this status and code.
fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(
        r.status(),
        status,
        "expected {status} {code}, got {}",
        r.text()
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
}

#[tokio::test]
async fn bad_channel_names_are_400_bad_channel() {
    let gw = Gateway::start(&[]).await;
    let long = "x".repeat(129);
    for path in [
        "/rt/poll/bad%20name?timeout=0".to_string(),
        format!("/rt/poll/{long}?timeout=0"),
        "/rt/sse/a$b".to_string(),
        "/rt/poll/caf%C3%A9?timeout=0".to_string(),
    ] {
        let r = get(&gw.public_url(&path)).await;
        assert_error(&r, 400, "bad_channel");
    }
    // WebSocket upgrade on a bad name: refused before the upgrade.
    for path in ["/rt/ws/a$b", "/rt/ws?channel=ok&channel=a%20b"] {
        let r = http("GET", &gw.public_url(path), &UPGRADE, None).await;
        assert_error(&r, 400, "bad_channel");
    }
    // Publish on a bad name.
    let (status, body) = gw.publish("a$b", b"{}", "application/json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_channel", "{body}");
    // 128 bytes is fine.
    let ok = "y".repeat(128);
    let (status, body) = gw.poll(&ok, "timeout=0").await;
    assert_eq!(status, 200, "{body}");
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn bad_cursor_timeout_method_and_path() {
    let gw = Gateway::start(&[]).await;
    let r = get(&gw.public_url("/rt/poll/c?since=abc&timeout=0")).await;
    assert_error(&r, 400, "bad_cursor");
    let r = get(&gw.public_url("/rt/poll/c?since=-1&timeout=0")).await;
    assert_error(&r, 400, "bad_cursor");
    let r = http(
        "GET",
        &gw.public_url("/rt/sse/c"),
        &[("Last-Event-ID", "nope")],
        None,
    )
    .await;
    assert_error(&r, 400, "bad_cursor");
    let r = get(&gw.public_url("/rt/poll/c?timeout=soon")).await;
    assert_error(&r, 400, "bad_timeout");
    let r = http(
        "GET",
        &gw.public_url("/rt/ws?channel=a&channel=b&since=3"),
        &UPGRADE,
        None,
    )
    .await;
    assert_error(&r, 400, "bad_request");
    let r = http("DELETE", &gw.public_url("/rt/poll/c"), &[], None).await;
    assert_error(&r, 405, "method_not_allowed");
    let r = get(&gw.public_url("/rt/nothing-here")).await;
    assert_error(&r, 404, "not_found");
    let r = get(&gw.admin_url("/nothing-here")).await;
    assert_error(&r, 404, "not_found");
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn oversized_and_invalid_publish_bodies() {
    let gw = Gateway::start(&["--max-message-bytes", "1024"]).await;
    let big = vec![b'a'; 2000];
    let (status, body) = gw.publish("big", &big, "text/plain").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "too_large", "{body}");

    let (status, body) = gw
        .publish("j", b"{\"unterminated\": ", "application/json")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_json", "{body}");

    // Nothing was published by either.
    for ch in ["big", "j"] {
        let (_, body) = gw.poll(ch, "since=0&timeout=0").await;
        assert_eq!(body["last_id"], 0, "{ch}: {body}");
    }
    // Exactly at the limit is accepted.
    let (status, body) = gw.publish("big", &vec![b'b'; 1024], "text/plain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], 1, "{body}");
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn malformed_and_unknown_websocket_commands_answer_errors() {
    let gw = Gateway::start(&[]).await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/cmd")).await;
    ws.expect_control("subscribed", T5).await;

    ws.send_text("{not json").await;
    let err = ws.expect_control("error", T5).await;
    assert_eq!(err["code"], "bad_json", "{err}");
    assert!(err["message"].is_string(), "{err}");

    ws.send_json(&json!({"type": "dance", "channel": "cmd"}))
        .await;
    let err = ws.expect_control("error", T5).await;
    assert_eq!(err["code"], "unknown_command", "{err}");

    // Still open: a later subscribe works.
    ws.send_json(&json!({"type": "subscribe", "channel": "later"}))
        .await;
    let ack = ws.expect_control("subscribed", T5).await;
    assert_eq!(ack["channel"], "later");
    gw.publish_json("later", &json!("ok")).await;
    assert_envelope(&ws.next_envelope(T5).await, "later", 1, &json!("ok"));
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_with_1007() {
    let gw = Gateway::start(&[]).await;
    let mut ws = RawWs::connect(gw.public, "/rt/ws/u").await.unwrap();
    let sub = ws.next_json(T5).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    ws.send_frame(true, OP_TEXT, &[b'{', 0xff, 0xfe, b'}'])
        .await
        .unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1007));
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_with_1002() {
    // RFC 6455 §5.1: a server must close on a frame the client did not mask.
    let gw = Gateway::start(&[]).await;
    let mut ws = RawWs::connect(gw.public, "/rt/ws/u").await.unwrap();
    ws.next_json(T5).await;
    ws.conn.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1002));
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn a_command_trickling_in_byte_by_byte_is_still_understood() {
    // Frames are decoded only once complete, however the bytes arrive.
    let gw = Gateway::start(&[]).await;
    let mut ws = RawWs::connect(gw.public, "/rt/ws/a").await.unwrap();
    ws.next_json(T5).await;
    let frame = masked_frame(true, OP_TEXT, br#"{"type":"subscribe","channel":"b"}"#);
    for byte in frame {
        ws.conn.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ack = ws.next_json(T5).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["channel"], "b", "{ack}");
}

#[tokio::test]
async fn oversized_websocket_message_closes_with_1009() {
    let gw = Gateway::start(&["--max-message-bytes", "1024"]).await;
    let mut ws = RawWs::connect(gw.public, "/rt/ws/big").await.unwrap();
    let sub = ws.next_json(T5).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let payload = format!(
        "{{\"type\":\"publish\",\"channel\":\"big\",\"data\":\"{}\"}}",
        "z".repeat(2000)
    );
    ws.send_frame(true, OP_TEXT, payload.as_bytes())
        .await
        .unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1009));

    // Also when the size is reached across fragments.
    let mut ws = RawWs::connect(gw.public, "/rt/ws/big").await.unwrap();
    ws.next_json(T5).await;
    ws.send_frame(false, OP_TEXT, &[b' '; 800]).await.unwrap();
    ws.send_frame(true, 0, &[b' '; 800]).await.unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1009));
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn plain_get_on_a_websocket_path_is_426() {
    let gw = Gateway::start(&[]).await;
    let r = get(&gw.public_url("/rt/ws/news")).await;
    assert_error(&r, 426, "upgrade_required");
    let upgrade = r.header("upgrade").unwrap_or_default().to_ascii_lowercase();
    assert_eq!(upgrade, "websocket", "426 without Upgrade: websocket");
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn garbage_bytes_get_400_or_close_and_the_gateway_keeps_serving() {
    let gw = Gateway::start(&[]).await;
    for garbage in [
        &b"\x00\x01garbage\r\n\r\n"[..],
        &b"GET /rt/poll/x HTTP/9.9\r\n\r\n"[..],
        &b"GET\r\n\r\n"[..],
        &b"GET /rt/poll/x HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n"[..],
    ] {
        let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
        conn.write_all(garbage).await.unwrap();
        let (bytes, _reset) = conn
            .read_to_end_within(T5)
            .await
            .unwrap_or_else(|e| panic!("{garbage:?}: the connection stayed open: {e}"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.0 400"),
            "{garbage:?} answered with {text:?}"
        );
    }
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn half_sent_request_is_closed_after_the_header_timeout() {
    let gw = Gateway::start(&["--header-read-timeout", "1s"]).await;
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    let start = Instant::now();
    conn.write_all(b"GET /rt/poll/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let (bytes, _reset) = conn
        .read_to_end_within(Duration::from_secs(5))
        .await
        .expect("the half-sent request's connection was still open after 5 s");
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "answered with {text:?}"
    );
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the 1s header timeout"
    );
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn admin_batch_publish_with_a_bad_item_publishes_nothing() {
    let gw = Gateway::start(&[]).await;
    let body = br#"[{"channel":"ok","data":1},{"channel":"bad name","data":2}]"#;
    let r = http(
        "POST",
        &gw.admin_url("/publish"),
        &[("Content-Type", "application/json")],
        Some(body),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_channel", "{}", r.text());
    let (_, body) = gw.poll("ok", "since=0&timeout=0").await;
    assert_eq!(
        body["last_id"], 0,
        "half of a bad batch was published: {body}"
    );

    let r = http(
        "POST",
        &gw.admin_url("/publish"),
        &[("Content-Type", "application/json")],
        Some(b"{\"channel\":\"ok\"}"),
    )
    .await;
    assert_eq!(r.status(), 400, "a batch must be a list: {}", r.text());
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn connections_past_the_limit_get_503() {
    let gw = Gateway::start(&["--max-connections", "2"]).await;
    let mut a = WsClient::connect(&gw.ws_url("/rt/ws/lim")).await;
    a.expect_control("subscribed", T5).await;
    let mut b = WsClient::connect(&gw.ws_url("/rt/ws/lim")).await;
    b.expect_control("subscribed", T5).await;
    let r = get(&gw.public_url("/rt/poll/lim?timeout=0")).await;
    assert_error(&r, 503, "too_many_connections");
    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
    // A slot frees up when a client leaves.
    a.close().await;
    eventually(T5, "a slot is free again", || async {
        let r = get(&gw.public_url("/rt/poll/lim?timeout=0")).await;
        (r.status() == 200).then_some(())
    })
    .await;
    drop(b);
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let gw = Gateway::start(&["--max-header-bytes", "8192"]).await;
    let big = "v".repeat(10_000);
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    conn.send_request("GET", "/rt/poll/x?timeout=0", &[("X-Big", &big)], None)
        .await
        .unwrap();
    let r = conn.read_response("GET").await.unwrap();
    assert_eq!(r.status(), 431, "{}", r.text());
    gw.assert_still_serving().await;
}
