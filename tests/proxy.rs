//! Reverse proxy: every path outside the prefix goes to the upstream
//! unchanged, with hop-by-hop headers removed and forwarding headers set.

mod common;

use std::time::{Duration, Instant};

use common::upstream::{dead_addr, echo_upstream, hanging_upstream, Fnv};
use common::*;
use serde_json::Value;

/// Values of a header as the echo upstream saw them.
fn seen<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|vs| vs.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn request_reaches_upstream_intact_with_forwarding_headers() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;

    let r = http(
        "GET",
        &gw.public_url("/api/x?y=1&z=%20two"),
        &[
            ("Host", "front.example:8080"),
            ("Connection", "keep-alive, x-secret"),
            ("X-Secret", "1"),
            ("X-Custom", "kept"),
            ("Keep-Alive", "timeout=5"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(
        r.header("x-upstream"),
        Some("echo"),
        "response headers pass back"
    );
    let echo = r.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/api/x");
    assert_eq!(echo["query"], "y=1&z=%20two");
    assert_eq!(seen(&echo, "x-custom"), vec!["kept"], "{echo}");

    let xff = seen(&echo, "x-forwarded-for");
    assert_eq!(xff.len(), 1, "X-Forwarded-For: {echo}");
    assert!(xff[0].contains("127.0.0.1"), "X-Forwarded-For {xff:?}");
    assert_eq!(seen(&echo, "x-forwarded-proto"), vec!["http"], "{echo}");
    assert_eq!(
        seen(&echo, "x-forwarded-host"),
        vec!["front.example:8080"],
        "{echo}"
    );
    let via = seen(&echo, "via");
    assert!(
        !via.is_empty() && !via[0].trim().is_empty(),
        "no Via header: {echo}"
    );

    // Hop-by-hop: named in Connection, or standard ones.
    assert!(
        seen(&echo, "x-secret").is_empty(),
        "X-Secret leaked: {echo}"
    );
    assert!(
        seen(&echo, "keep-alive").is_empty(),
        "Keep-Alive leaked: {echo}"
    );

    // Other methods too.
    let r = http("DELETE", &gw.public_url("/api/items/7"), &[], None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json()["method"], "DELETE");
}

#[tokio::test]
async fn existing_x_forwarded_for_is_appended_to() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let r = http(
        "GET",
        &gw.public_url("/xff"),
        &[("X-Forwarded-For", "203.0.113.9")],
        None,
    )
    .await;
    let echo = r.json();
    let xff = seen(&echo, "x-forwarded-for").join(",");
    assert!(
        xff.contains("203.0.113.9") && xff.contains("127.0.0.1"),
        "X-Forwarded-For should list the earlier hop and the client: {xff:?}"
    );
}

#[tokio::test]
async fn streamed_10_mb_chunked_post_arrives_intact() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;

    const TOTAL: usize = 10 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    conn.timeout = Duration::from_secs(20);
    conn.send_request(
        "POST",
        "/upload",
        &[
            ("Transfer-Encoding", "chunked"),
            ("Content-Type", "application/octet-stream"),
        ],
        None,
    )
    .await
    .unwrap();
    let mut fnv = Fnv::default();
    let mut seed: u32 = 0x1234_5678;
    let mut sent = 0;
    while sent < TOTAL {
        let mut chunk = vec![0u8; CHUNK];
        for b in chunk.iter_mut() {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *b = (seed >> 24) as u8;
        }
        fnv.update(&chunk);
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        conn.write_all(&frame).await.unwrap();
        sent += CHUNK;
    }
    conn.write_all(b"0\r\n\r\n").await.unwrap();
    let r = conn.read_response("POST").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_error"], Value::Null, "{echo}");
    assert_eq!(echo["body_len"], TOTAL as u64, "{echo}");
    assert_eq!(echo["body_fnv"], fnv.hex(), "body corrupted: {echo}");
}

#[tokio::test]
async fn response_body_is_streamed_not_buffered() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    let start = Instant::now();
    conn.send_request("GET", "/drip", &[], None).await.unwrap();
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    // The upstream sends "first" at once and "second" 1.5 s later: the
    // first part must reach the client before the second exists.
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("first") {
        let part = if head.is_chunked() {
            conn.read_chunk().await.unwrap().expect("body ended early")
        } else {
            conn.read_some().await.unwrap()
        };
        assert!(!part.is_empty(), "body ended early");
        got.extend_from_slice(&part);
    }
    let first_after = start.elapsed();
    assert!(
        first_after < Duration::from_millis(1200),
        "first part arrived after {first_after:?}: the proxy buffered the body"
    );
    assert!(!String::from_utf8_lossy(&got).contains("second"));
}

#[tokio::test]
async fn websocket_upgrade_outside_the_prefix_is_tunnelled() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let mut ws = WsClient::connect(&gw.ws_url("/echo")).await;
    for word in ["hello", "through", "the proxy"] {
        ws.send_text(word).await;
        match ws.recv(T5).await {
            WsEvent::Text(t) => assert_eq!(t, format!("echo:{word}")),
            other => panic!("expected the upstream's echo, got {other:?}"),
        }
    }
    ws.close().await;
}

#[tokio::test]
async fn upstream_down_is_502_upstream_unreachable() {
    let dead = dead_addr();
    let gw = Gateway::start(&["--upstream", &format!("http://{dead}")]).await;
    let r = get(&gw.public_url("/api/x")).await;
    assert_eq!(r.status(), 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_unreachable", "{}", r.text());
    // The gateway's own paths are unaffected.
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn hanging_upstream_is_504_upstream_timeout() {
    let up = hanging_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--proxy-timeout", "1s"]).await;
    let start = Instant::now();
    let r = get(&gw.public_url("/slow")).await;
    let took = start.elapsed();
    assert_eq!(r.status(), 504, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_timeout", "{}", r.text());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "504 after {took:?} with a 1s proxy timeout"
    );
}

#[tokio::test]
async fn no_upstream_means_404_json_outside_the_prefix() {
    let gw = Gateway::start(&[]).await;
    let r = get(&gw.public_url("/api/x")).await;
    assert_eq!(r.status(), 404, "{}", r.text());
    assert_eq!(r.json()["error"], "not_found", "{}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
}

#[tokio::test]
async fn proxy_metrics_count_requests_by_class() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.public_url("/m")).await.status(), 200);
    }
    let text = gw.metrics().await;
    let total: f64 = ["2xx", "200"]
        .iter()
        .filter_map(|c| metric_value(&text, "pollbridge_proxy_requests_total", &[("code", c)]))
        .sum();
    assert!(
        total >= 3.0,
        "pollbridge_proxy_requests_total{{code=2xx}} should count 3 requests:\n{text}"
    );
}
