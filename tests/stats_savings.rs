//! `/stats`: the long-poll → WebSocket saving with the WebSocket handshake
//! shown apart. Before, one all-time "WebSocket bytes per message" mixed a
//! browser's ~1 KB upgrade request into the few messages of a short run and
//! the saving came out negative (`-27.4` after the README tour).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Headers a browser sends with a WebSocket upgrade (about 1 KB with the
/// site's cookies).
const BROWSER: &[(&str, &str)] = &[
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
    ("Origin", "http://127.0.0.1:8080"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Accept-Language", "en-US,en;q=0.9,de;q=0.8,fr;q=0.7"),
    ("Cache-Control", "no-cache"),
    ("Pragma", "no-cache"),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
    ("Cookie", "session=6f1c2a9e8b7d4c3f2a1b0c9d8e7f6a5b6f1c2a9e8b7d4c3f; theme=light; consent=analytics%3Dfalse%26ads%3Dfalse; _ga=GA1.1.1234567890.1700000000"),
    ("Sec-CH-UA", "\"Chromium\";v=\"120\", \"Not?A_Brand\";v=\"8\", \"Google Chrome\";v=\"120\""),
    ("X-Client-Data", "CJa2yQEIpLbJAQipncoBCMDdygEIkqHLAQiFoM0BCNy9zQEI3L3NAQjAzM0BCOnPzQEI99DNAQ=="),
    ("Sec-WebSocket-Protocol", "pollbridge.v1"),
];

#[tokio::test]
async fn a_short_run_shows_a_positive_saving_and_the_handshake_apart() {
    let gw = Gateway::start(&[]).await;
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let (mut ws, _) = RawWs::handshake_with(conn, "/rt/ws/short", BROWSER)
        .await
        .unwrap();
    let request_bytes = ws.conn.bytes_written;
    assert!(request_bytes > 850, "{request_bytes}");
    let subscribed = ws.next_json(Duration::from_secs(5)).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let (_, first) = gw.poll("short", "timeout=0").await;
    let mut since = first["last_id"].as_u64().unwrap();
    for i in 1..=3u64 {
        let id = gw.publish_json("short", &json!({ "i": i })).await;
        let frame = ws.next_json(Duration::from_secs(5)).await;
        assert_eq!(frame["id"], id, "{frame}");
        let (status, body) = gw.poll("short", &format!("since={since}&timeout=5")).await;
        assert_eq!(status, 200);
        since = body["last_id"].as_u64().unwrap();
    }

    let handshakes = gw.metric("pollbridge_ws_handshakes_total", &[]).await;
    assert_eq!(handshakes, Some(1.0));
    let handshake_bytes = gw
        .metric("pollbridge_ws_handshake_bytes_total", &[])
        .await
        .unwrap();
    // The request as written, plus a 101 answer (over 100 bytes), and no
    // more than the client has read.
    assert!(
        handshake_bytes >= (request_bytes + 100) as f64
            && handshake_bytes <= (request_bytes + ws.conn.bytes_read) as f64,
        "handshake {handshake_bytes} B, request {request_bytes} B, read {} B",
        ws.conn.bytes_read
    );

    let stats = get(&gw.admin_url("/stats")).await.json();
    let s = &stats["longpoll_to_websocket"];
    let per_message = s["websocket_bytes_per_message"].as_f64().unwrap();
    assert!(per_message < 100.0, "{s}: frames only");
    assert_eq!(
        s["websocket_handshake_bytes"].as_f64(),
        Some(handshake_bytes)
    );
    let saved = s["saved_bytes_per_message"].as_f64().unwrap();
    assert!(saved > 0.0, "{s}");
    let lp = s["longpoll_bytes_per_message"].as_f64().unwrap();
    assert!((lp - per_message - saved).abs() < 1e-6, "{s}");
    let repaid = s["handshake_repaid_after_messages"].as_f64().unwrap();
    assert!((repaid - handshake_bytes / saved).abs() < 1e-6, "{s}");
    // The old field is the steady saving, positive even in this short run
    // (all-in, WebSocket cost more than long-poll per message here).
    let old = stats["longpoll_to_websocket_savings_bytes_per_second"]
        .as_f64()
        .unwrap();
    assert!(old > 0.0, "{stats}");
    assert_eq!(s["saved_bytes_per_second"].as_f64(), Some(old));
    let ws_all_in = stats["transports"]["websocket"]["wire_bytes_per_delivery"]
        .as_f64()
        .unwrap();
    assert!(
        ws_all_in > lp,
        "this run is one where handshakes dominate: {stats}"
    );
}
