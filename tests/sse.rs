//! Server-sent events: wire format and keep-alive comments.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn events_have_the_documented_wire_format() {
    let gw = Gateway::start(&[]).await;
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    conn.send_request(
        "GET",
        "/rt/sse/fmt",
        &[("Accept", "text/event-stream")],
        None,
    )
    .await
    .unwrap();
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    assert!(head
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    gw.publish_text("fmt", "hello").await;
    gw.publish_json("fmt", &serde_json::json!({"a": [1, 2]}))
        .await;

    // The id is the cursor: the message id and the channel's epoch.
    let (_, poll) = gw.poll("fmt", "since=2&timeout=0").await;
    let epoch = poll["cursor"]
        .as_str()
        .unwrap()
        .strip_prefix("2-")
        .unwrap()
        .to_string();
    let want = format!(
        "id: 1-{epoch}\ndata: {{\"channel\":\"fmt\",\"id\":1,\"data\":\"hello\"}}\n\n\
         id: 2-{epoch}\ndata: {{\"channel\":\"fmt\",\"id\":2,\"data\":{{\"a\":[1,2]}}}}\n\n"
    );
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + T5;
    while !text.contains("id: 2-") || !text.ends_with("\n\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SSE body so far: {text:?}"
        );
        let part = if head.is_chunked() {
            conn.read_chunk().await.unwrap().expect("SSE body ended")
        } else {
            conn.read_some().await.unwrap()
        };
        text.push_str(&String::from_utf8_lossy(&part));
    }
    // Anything before the first event may only be comments or `retry:`.
    let start = text.find("id: 1-").expect("no id: 1 event");
    for line in text[..start].lines() {
        assert!(
            line.is_empty() || line.starts_with(':') || line.starts_with("retry:"),
            "unexpected preamble line {line:?} in {text:?}"
        );
    }
    assert_eq!(&text[start..], want);
}

#[tokio::test]
async fn idle_stream_gets_keepalive_comments() {
    let gw = Gateway::start(&["--sse-keepalive", "200ms"]).await;
    let mut sse = SseClient::open(gw.public, "/rt/sse/quiet", &[]).await;
    sse.expect_no_event(Duration::from_millis(900)).await;
    assert!(
        sse.comments >= 2,
        "{} keep-alive comments in 900 ms with a 200 ms interval",
        sse.comments
    );
    // Still live after the comments.
    gw.publish_text("quiet", "late").await;
    let ev = sse.expect_event(T5).await;
    assert_envelope(&ev.json(), "quiet", 1, &serde_json::json!("late"));
}
