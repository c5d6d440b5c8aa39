//! The edge checks of issue 16, items 5–13, over real sockets against the
//! real binary: slow proxied bodies, the admin listener's Origin / Host /
//! token checks, cookie credentials from foreign origins, the Host header,
//! token claims that overflow or are not valid yet, token lifetime, client
//! body errors counted as the client's, one JSON check for every publish
//! path, and JSON bodies on every error the gateway makes itself.
//!
//! Each test fails on 7fca619 (the commit the issue was filed against).

mod common;

use std::time::{Duration, Instant};

use common::security::*;
use common::upstream::echo_upstream;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "pollbridge-test-secret-0123456789";

/// `private.*` needs a token (HS256 with [`SECRET`]), `chat.*` takes client
/// publishes; `extra` is appended (more TOML).
fn config(extra: &str) -> String {
    format!(
        r#"
[auth]
jwt_secret = "{SECRET}"
{extra}

[[channels]]
pattern = "private.*"
auth = "token"

[[channels]]
pattern = "chat.*"
allow_client_publish = true
"#
    )
}

fn signed(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign HS256")
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

// ---------------------------------------------------------------- item 9

#[tokio::test]
async fn a_token_with_the_largest_exp_is_served_not_a_panic() {
    let gw = Gateway::start_with_config(&config(""), &[]).await;
    let token = signed(&json!({"exp": u64::MAX, "channels": ["private.*"]}));
    for _ in 0..2 {
        let mut ws = WsClient::try_connect(&gw.ws_url(&format!("/rt/ws/private.x?token={token}")))
            .await
            .expect("a valid token with a far exp is accepted");
        ws.expect_control("subscribed", T5).await;
        let (status, body) = gw
            .poll("private.x", &format!("timeout=0&token={token}"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    gw.assert_still_serving().await;
    assert!(
        !gw.stderr_text().contains("panicked"),
        "{}",
        gw.stderr_text()
    );
}

// ---------------------------------------------------------------- item 10

#[tokio::test]
async fn websocket_sessions_close_at_token_expiry_not_at_the_ping_tick() {
    // Default ping interval (30 s): the old code closed only at that tick.
    let gw = Gateway::start_with_config(&config(r#"leeway = "0s""#), &[]).await;
    let exp = now_secs() + 2;
    let token = signed(&json!({"exp": exp, "channels": ["private.*"]}));
    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/private.a?token={token}"))).await;
    ws.expect_control("subscribed", T5).await;
    let t0 = Instant::now();
    assert_eq!(ws.expect_close(Duration::from_secs(6)).await, Some(1008));
    let unix_now = now_secs();
    assert!(
        unix_now >= exp,
        "closed at {unix_now}, before the token's exp {exp}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // A token first needed by a subscribe command arms the same deadline.
    let exp = now_secs() + 2;
    let token = signed(&json!({"exp": exp, "channels": ["private.*"]}));
    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/news?token={token}"))).await;
    ws.expect_control("subscribed", T5).await;
    ws.send_json(&json!({"type": "subscribe", "channel": "private.b"}))
        .await;
    ws.expect_control("subscribed", T5).await;
    assert_eq!(ws.expect_close(Duration::from_secs(6)).await, Some(1008));
    assert!(now_secs() >= exp);
}

#[tokio::test]
async fn tokens_not_valid_yet_are_refused() {
    let gw = Gateway::start_with_config(&config(""), &[]).await;
    let early = signed(&json!({
        "exp": now_secs() + 600, "nbf": now_secs() + 300, "channels": ["private.*"]
    }));
    let r = http(
        "GET",
        &gw.public_url(&format!("/rt/poll/private.a?timeout=0&token={early}")),
        &[],
        None,
    )
    .await;
    assert_error(&r, 401, "unauthorized", "nbf in the future");
    let err = WsClient::try_connect(&gw.ws_url(&format!("/rt/ws/private.a?token={early}")))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("401"), "{err}");
    let ready = signed(&json!({
        "exp": now_secs() + 600, "nbf": now_secs() - 10, "channels": ["private.*"]
    }));
    let (status, body) = gw
        .poll("private.a", &format!("timeout=0&token={ready}"))
        .await;
    assert_eq!(status, 200, "{body}");
}

// ---------------------------------------------------------------- item 12

#[tokio::test]
async fn every_publish_path_refuses_what_parsers_cannot_read_back() {
    let gw = Gateway::start_with_config(&config(""), &[]).await;
    let deep = nested(30_000);
    let bad: [(&str, &str); 3] = [
        ("a number beyond f64", "1e400"),
        ("a lone surrogate", r#""\ud800""#),
        ("30,000 levels of nesting", deep.as_str()),
    ];
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/chat.a")).await;
    ws.expect_control("subscribed", T5).await;
    for (what, data) in bad {
        // Single publish.
        let (status, body) = gw
            .publish("chat.a", data.as_bytes(), "application/json")
            .await;
        assert_eq!(status, 400, "single publish of {what}: {body}");
        assert_eq!(body["error"], "bad_json", "{what}: {body}");
        // Batch publish.
        let batch = format!(r#"[{{"channel":"chat.a","data":{data}}}]"#);
        let r = http(
            "POST",
            &gw.admin_url("/publish"),
            &[("Content-Type", "application/json")],
            Some(batch.as_bytes()),
        )
        .await;
        assert_error(&r, 400, "bad_json", &format!("batch publish of {what}"));
        // WebSocket publish.
        ws.send_text(&format!(
            r#"{{"type":"publish","channel":"chat.a","data":{data}}}"#
        ))
        .await;
        let answer = ws.expect_control("error", T5).await;
        assert_eq!(answer["code"], "bad_json", "ws publish of {what}: {answer}");
    }
    // Nothing of it reached a subscriber; ordinary JSON still does, with
    // the digits it was sent with, on every path.
    ws.expect_no_envelope(Duration::from_millis(300)).await;
    let (status, body) = gw
        .publish("chat.a", br#"{"n": 1.50}"#, "application/json")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ws.next_envelope(T5).await["data"]["n"], 1.5);
    let deep_ok = nested(64);
    let (status, body) = gw
        .publish("chat.a", deep_ok.as_bytes(), "application/json")
        .await;
    assert_eq!(status, 200, "64 levels are allowed: {body}");
    ws.next_envelope(T5).await;
}
