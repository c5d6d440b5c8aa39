//! Long-poll details: plain polling, waiting for the next message, early
//! answers, limits and CORS.

mod common;

use std::time::{Duration, Instant};

use common::security::assert_error;
use common::*;
use serde_json::json;

fn ids(body: &serde_json::Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages list: {body}"))
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn timeout_zero_answers_at_once_with_last_id() {
    let gw = Gateway::start(&[]).await;
    let start = Instant::now();
    let (status, body) = gw.poll("lp", "since=0&timeout=0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"messages": [], "last_id": 0, "truncated": false, "cursor": "0"})
    );

    gw.publish_json("lp", &json!("one")).await;
    gw.publish_json("lp", &json!("two")).await;
    let (status, body) = gw.poll("lp", "since=2&timeout=0").await;
    assert_eq!(status, 200, "{body}");
    // `cursor` is `last_id` with the channel's epoch.
    let cursor = body["cursor"].as_str().unwrap_or_default().to_string();
    assert!(cursor.starts_with("2-"), "{body}");
    assert_eq!(
        body,
        json!({"messages": [], "last_id": 2, "truncated": false, "cursor": cursor})
    );
    let (_, body) = gw.poll("lp", "since=0&timeout=0").await;
    assert_eq!(ids(&body), vec![1, 2], "{body}");
    assert_eq!(body["last_id"], 2);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "timeout=0 polls took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn poll_without_since_waits_for_the_next_new_message() {
    let gw = Gateway::start(&[]).await;
    gw.publish_json("next", &json!("old 1")).await;
    gw.publish_json("next", &json!("old 2")).await;

    let url = gw.public_url("/rt/poll/next?timeout=5");
    let start = Instant::now();
    let poll = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.publish_json("next", &json!({"new": true})).await;
    let r = tokio::time::timeout(T10, poll).await.unwrap().unwrap();
    let took = start.elapsed();
    assert_eq!(r.status(), 200, "{}", r.text());
    let body = r.json();
    assert_eq!(ids(&body), vec![3], "{body}");
    assert_envelope(&body["messages"][0], "next", 3, &json!({"new": true}));
    assert_eq!(body["last_id"], 3, "{body}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn held_poll_returns_as_soon_as_a_message_is_published() {
    let gw = Gateway::start(&[]).await;
    gw.publish_json("held", &json!(1)).await;
    let url = gw.public_url("/rt/poll/held?since=1&timeout=20");
    let start = Instant::now();
    let poll = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "answered before any new message");
    gw.publish_text("held", "now").await;
    let r = tokio::time::timeout(T10, poll).await.unwrap().unwrap();
    let took = start.elapsed();
    let body = r.json();
    assert_eq!(ids(&body), vec![2], "{body}");
    assert_envelope(&body["messages"][0], "held", 2, &json!("now"));
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
}

#[tokio::test]
async fn poll_without_timeout_uses_the_configured_default() {
    let gw = Gateway::start(&["--longpoll-timeout", "1s"]).await;
    let start = Instant::now();
    let (status, body) = gw.poll("dflt", "since=0").await;
    let took = start.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"], json!([]), "{body}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "a 1s default timeout answered after {took:?}"
    );
}

#[tokio::test]
async fn answers_are_capped_at_max_messages() {
    let gw = Gateway::start(&["--longpoll-max-messages", "5"]).await;
    for i in 1..=12 {
        gw.publish_json("cap", &json!(i)).await;
    }
    let (_, body) = gw.poll("cap", "since=0&timeout=0").await;
    assert_eq!(ids(&body), vec![1, 2, 3, 4, 5], "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    let (_, body) = gw.poll("cap", "since=5&timeout=0").await;
    assert_eq!(ids(&body), vec![6, 7, 8, 9, 10], "{body}");
    let (_, body) = gw.poll("cap", "since=10&timeout=0").await;
    assert_eq!(ids(&body), vec![11, 12], "{body}");
}

#[tokio::test]
async fn cors_for_the_configured_origin_only() {
    let gw = Gateway::start(&["--cors-origin", "http://app.test"]).await;
    gw.publish_json("cors", &json!(1)).await;
    let url = gw.public_url("/rt/poll/cors?since=0&timeout=0");

    let r = http("GET", &url, &[("Origin", "http://app.test")], None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.test"),
        "{:?}",
        r.head.headers
    );

    let r = http(
        "OPTIONS",
        &url,
        &[
            ("Origin", "http://app.test"),
            ("Access-Control-Request-Method", "GET"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), 204, "preflight: {:?} {}", r.head, r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.test")
    );
    let methods = r
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(methods.contains("GET"), "allow-methods {methods:?}");

    let r = http("GET", &url, &[("Origin", "http://evil.test")], None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = http(
        "OPTIONS",
        &url,
        &[
            ("Origin", "http://evil.test"),
            ("Access-Control-Request-Method", "GET"),
        ],
        None,
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "{:?}",
        r.head
    );
}

#[tokio::test]
async fn refusals_carry_cors_headers_so_a_page_can_read_retry_after() {
    // Rate 1/s, burst 2: the third poll is refused.
    let gw = Gateway::start(&[
        "--cors-origin",
        "http://app.test",
        "--longpoll-rate-per-ip",
        "1",
    ])
    .await;
    let url = gw.public_url("/rt/poll/c?timeout=0");
    let origin = [("Origin", "http://app.test")];
    let mut refused = None;
    for _ in 0..3 {
        let r = http("GET", &url, &origin, None).await;
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a poll past the rate is refused");
    assert_error(&r, 429, "rate_limited", "past the rate");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.test"),
        "{:?}",
        r.head.headers
    );
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(exposed.contains("retry-after"), "exposed {exposed:?}");
    // An origin that may not read answers gets none.
    let r = http("GET", &url, &[("Origin", "http://evil.test")], None).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A bad channel name is refused the same way.
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/bad%20name?timeout=0"),
        &origin,
        None,
    )
    .await;
    assert!(r.status() == 400 || r.status() == 429, "{}", r.status());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.test")
    );
}

#[tokio::test]
async fn no_cors_headers_without_configuration() {
    let gw = Gateway::start(&[]).await;
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/c?timeout=0"),
        &[("Origin", "http://app.test")],
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn keep_alive_connection_serves_several_polls() {
    let gw = Gateway::start(&[]).await;
    gw.publish_json("ka", &json!("x")).await;
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    for _ in 0..5 {
        let r = conn
            .request("GET", "/rt/poll/ka?since=0&timeout=0", &[], None)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(ids(&r.json()), vec![1]);
    }
}
