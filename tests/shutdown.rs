//! SIGTERM drains: held polls are answered, WebSockets get 1001, SSE
//! streams end, and the process exits 0 within the drain timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_polls_closes_websockets_and_exits_zero() {
    let mut gw = Gateway::start(&["--drain-timeout", "5s"]).await;
    gw.publish_json("down", &serde_json::json!("before")).await;

    // A held long-poll.
    let poll_url = gw.public_url("/rt/poll/down?since=1&timeout=30");
    let poll = tokio::spawn(async move {
        let r = get(&poll_url).await;
        (r, Instant::now())
    });
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/down")).await;
    ws.expect_control("subscribed", T5).await;
    let mut sse = SseClient::open(gw.public, "/rt/sse/down", &[]).await;

    // Make sure the poll is being held before the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll was answered before SIGTERM"
    );

    let signalled = Instant::now();
    gw.sigterm();

    let (r, answered_at) = tokio::time::timeout(T5, poll)
        .await
        .expect("held long-poll not answered within 5 s of SIGTERM")
        .unwrap();
    let waited = answered_at - signalled;
    assert_eq!(r.status(), 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["messages"], serde_json::json!([]), "{body}");
    assert_eq!(body["last_id"], 1, "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    assert!(
        waited < Duration::from_secs(2),
        "long-poll answered {waited:?} after SIGTERM"
    );

    assert_eq!(ws.expect_close(T5).await, Some(1001));
    sse.wait_end(T5)
        .await
        .expect("SSE stream still open 5 s after SIGTERM");

    // Within the drain time (plus a little for reaping and polling).
    let left = (signalled + Duration::from_millis(5500)).saturating_duration_since(Instant::now());
    let status = gw
        .wait_exit(left)
        .await
        .expect("gateway still running 5 s after SIGTERM (drain timeout 5 s)");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test]
async fn idle_gateway_exits_zero_promptly_on_sigterm() {
    let mut gw = Gateway::start(&[]).await;
    // Some traffic first, so any stray stdout output would show.
    gw.assert_still_serving().await;
    let start = Instant::now();
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("an idle gateway should exit at once on SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Stdout carries exactly one line, the ready line; logs go to stderr.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines = gw.stdout_lines();
    assert_eq!(lines.len(), 1, "stdout: {lines:?}");
    assert!(
        lines[0].starts_with("pollbridge ready public="),
        "{lines:?}"
    );
}

#[tokio::test]
async fn drain_timeout_bounds_the_exit_with_a_stuck_client() {
    // A WebSocket client that never answers the close handshake must not
    // keep the process alive past the drain timeout.
    let mut gw = Gateway::start(&["--drain-timeout", "1s"]).await;
    let mut raw = RawWs::connect(gw.public, "/rt/ws/stuck").await.unwrap();
    raw.next_json(T5).await;
    // A half-sent request too.
    let mut half = RawHttpConn::connect(gw.public).await.unwrap();
    half.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let start = Instant::now();
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("gateway still running 5 s after SIGTERM with a 1 s drain timeout");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}
