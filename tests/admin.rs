//! Admin listener: health, channel stats, Prometheus metrics.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Finds the stats object of `name` in `/channels`, whatever its layout: an
/// object whose `channel`/`name` is `name`, or the value under key `name`.
fn find_channel<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => {
            let own = m
                .get("channel")
                .or_else(|| m.get("name"))
                .and_then(|x| x.as_str());
            if own == Some(name) {
                return Some(v);
            }
            if let Some(inner) = m.get(name).filter(|x| x.is_object()) {
                return Some(inner);
            }
            m.values().find_map(|x| find_channel(x, name))
        }
        Value::Array(a) => a.iter().find_map(|x| find_channel(x, name)),
        _ => None,
    }
}

/// The first number under `key`, searching depth-first.
fn find_number(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(|x| x.as_u64())
            .or_else(|| m.values().find_map(|x| find_number(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_number(x, key)),
        _ => None,
    }
}

async fn channels(gw: &Gateway) -> Value {
    let r = get(&gw.admin_url("/channels")).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn health_and_readiness() {
    let gw = Gateway::start(&[]).await;
    assert_eq!(get(&gw.admin_url("/healthz")).await.status(), 200);
    assert_eq!(get(&gw.admin_url("/readyz")).await.status(), 200);
    // Admin endpoints are not on the public listener.
    assert_eq!(get(&gw.public_url("/healthz")).await.status(), 404);
    let r = http("POST", &gw.public_url("/publish/x"), &[], Some(b"1")).await;
    assert_eq!(
        r.status(),
        404,
        "publishing must not be public: {}",
        r.text()
    );
}

#[tokio::test]
async fn channels_shows_last_id_and_subscribers_by_transport() {
    let gw = Gateway::start(&[]).await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/stats")).await;
    ws.expect_control("subscribed", T5).await;
    for i in 1..=3 {
        gw.publish_json("stats", &json!(i)).await;
    }
    ws.collect_envelopes(3, T5).await;

    let all = channels(&gw).await;
    let ch = find_channel(&all, "stats")
        .unwrap_or_else(|| panic!("channel 'stats' not in /channels: {all}"));
    assert_eq!(find_number(ch, "last_id"), Some(3), "{ch}");
    assert_eq!(find_number(ch, "websocket"), Some(1), "{ch}");
    assert_eq!(find_number(ch, "sse").unwrap_or(0), 0, "{ch}");

    let sse = SseClient::open(gw.public, "/rt/sse/stats", &[]).await;
    let all = eventually(T5, "an SSE subscriber in /channels", || async {
        let all = channels(&gw).await;
        let ch = find_channel(&all, "stats")?.clone();
        (find_number(&ch, "sse") == Some(1)).then_some(ch)
    })
    .await;
    assert_eq!(find_number(&all, "websocket"), Some(1), "{all}");

    ws.close().await;
    drop(sse.conn);
    eventually(T5, "subscribers gone from /channels", || async {
        let all = channels(&gw).await;
        let ch = find_channel(&all, "stats")?.clone();
        let ws = find_number(&ch, "websocket").unwrap_or(0);
        let sse = find_number(&ch, "sse").unwrap_or(0);
        (ws == 0 && sse == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_move_as_expected() {
    let gw = Gateway::start(&[]).await;
    let r = get(&gw.admin_url("/metrics")).await;
    assert_eq!(r.status(), 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    let text = r.text();
    assert!(
        text.contains("# TYPE pollbridge_messages_published_total counter"),
        "{text}"
    );
    let published0 = metric_value(&text, "pollbridge_messages_published_total", &[]).unwrap_or(0.0);
    let delivered0 = metric_value(
        &text,
        "pollbridge_messages_delivered_total",
        &[("transport", "websocket")],
    )
    .unwrap_or(0.0);
    let empty0 =
        metric_value(&text, "pollbridge_polls_total", &[("result", "empty")]).unwrap_or(0.0);

    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/m")).await;
    ws.expect_control("subscribed", T5).await;
    eventually(T5, "connections{transport=websocket} == 1", || async {
        let v = gw
            .metric("pollbridge_connections", &[("transport", "websocket")])
            .await?;
        (v == 1.0).then_some(())
    })
    .await;

    for i in 1..=4 {
        gw.publish_json("m", &json!(i)).await;
    }
    ws.collect_envelopes(4, T5).await;
    let text = gw.metrics().await;
    assert_eq!(
        metric_value(&text, "pollbridge_messages_published_total", &[]),
        Some(published0 + 4.0),
        "{text}"
    );
    eventually(T5, "delivered_total{transport=websocket} += 4", || async {
        let v = gw
            .metric(
                "pollbridge_messages_delivered_total",
                &[("transport", "websocket")],
            )
            .await?;
        (v == delivered0 + 4.0).then_some(())
    })
    .await;

    // An empty plain poll and a poll with messages.
    let (status, _) = gw.poll("quiet", "timeout=0").await;
    assert_eq!(status, 200);
    let (status, _) = gw.poll("m", "since=0&timeout=0").await;
    assert_eq!(status, 200);
    let text = gw.metrics().await;
    assert_eq!(
        metric_value(&text, "pollbridge_polls_total", &[("result", "empty")]),
        Some(empty0 + 1.0),
        "{text}"
    );
    assert!(
        metric_value(&text, "pollbridge_polls_total", &[("result", "messages")]).unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );

    ws.close().await;
    eventually(T5, "connections{transport=websocket} back to 0", || async {
        let v = gw
            .metric("pollbridge_connections", &[("transport", "websocket")])
            .await?;
        (v == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn held_poll_counts_as_a_connection() {
    let gw = Gateway::start(&[]).await;
    let url = gw.public_url("/rt/poll/held?timeout=10");
    let poll = tokio::spawn(async move { get(&url).await });
    eventually(T5, "connections{transport=longpoll} == 1", || async {
        let v = gw
            .metric("pollbridge_connections", &[("transport", "longpoll")])
            .await?;
        (v == 1.0).then_some(())
    })
    .await;
    gw.publish_json("held", &json!("go")).await;
    let r = tokio::time::timeout(T5, poll).await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    eventually(T5, "connections{transport=longpoll} back to 0", || async {
        let v = gw
            .metric("pollbridge_connections", &[("transport", "longpoll")])
            .await?;
        (v == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn wire_bytes_count_exactly_what_crossed_the_socket() {
    let gw = Gateway::start(&[]).await;
    gw.publish_json("wire", &json!({"n": 1})).await;
    let metric = |dir: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(
                "pollbridge_wire_bytes_total",
                &[("transport", "longpoll"), ("direction", dir)],
            )
            .await
            .unwrap_or(0.0)
        }
    };
    let in0 = metric("in").await;
    let out0 = metric("out").await;

    // Three polls on one keep-alive connection.
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    for _ in 0..3 {
        let r = conn
            .request("GET", "/rt/poll/wire?since=0&timeout=0", &[], None)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (read, written) = (conn.bytes_read as f64, conn.bytes_written as f64);
    drop(conn);
    eventually(
        Duration::from_secs(3),
        "wire bytes match the socket",
        || async {
            let din = metric("in").await - in0;
            let dout = metric("out").await - out0;
            (din == written && dout == read).then_some(())
        },
    )
    .await;
}
