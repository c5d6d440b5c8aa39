//! SSE streams written by the publisher (the lean HTTP/1.1 path lends a
//! plain stream's socket to its queue while the stream is idle): events
//! arrive in order, framed as the connection's task frames them, each in
//! a chunk of its own; a slow reader loses nothing; deliveries and wire
//! bytes are counted exactly; a client leaving frees its subscription.

mod common;

use std::time::Duration;

use common::sse::SseClient;
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// Waits until `n` SSE streams are open (the connections gauge).
async fn streams(gw: &Gateway, n: f64) {
    gw.wait_metric("pollbridge_connections", &[("transport", "sse")], n)
        .await;
}

/// Opens a stream from `since` and reads its first chunk (`retry:`): the
/// stream is live, and on the lean path lends its socket right after.
async fn open_live(gw: &Gateway, channel: &str, since: u64, headers: &[(&str, &str)]) -> SseClient {
    let path = format!("/rt/sse/{channel}?since={since}");
    let mut sse = SseClient::open(gw.public, &path, headers).await;
    assert!(sse.head.is_chunked(), "{:?}", sse.head);
    let first = sse.conn.read_chunk().await.unwrap().expect("retry chunk");
    assert!(first.starts_with(b"retry: "), "{first:?}");
    sse
}

/// The events (their raw text) and ids of the next `n` events.
async fn read_events(sse: &mut SseClient, n: usize) -> Vec<(u64, Value)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ev = sse.expect_event(T).await;
        assert_eq!(ev.event, None, "{ev:?}");
        out.push((ev.message_id().expect("an id"), ev.json()));
    }
    out
}

#[tokio::test]
async fn events_are_the_task_paths_bytes_and_a_burst_arrives_whole_and_in_order() {
    let gw = Gateway::start(&[]).await;
    let start = gw.publish_json("same", &json!({"n": 0})).await;
    // `direct` may be written by the publisher; `task` is never (the
    // connection closes after it, so its socket is not offered).
    let mut direct = open_live(&gw, "same", start, &[]).await;
    let mut task = open_live(&gw, "same", start, &[("Connection", "close")]).await;
    streams(&gw, 2.0).await;
    // One at a time: the task path writes each event in a chunk of its own.
    for n in 1..=5 {
        let text = "é\"x".repeat(n);
        gw.publish_json("same", &json!({ "n": n, "text": text }))
            .await;
        let a = direct.conn.read_chunk().await.unwrap().expect("a chunk");
        let b = task.conn.read_chunk().await.unwrap().expect("a chunk");
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    }
    // A burst in one publish: the task path drains it into one chunk of
    // many events; the publisher writes each event as its own chunk.
    let items: Vec<(&str, Value)> = (0..1000).map(|n| ("same", json!({ "burst": n }))).collect();
    let ids = gw.publish_batch_ok(&items).await;
    let first = direct.conn.read_chunk().await.unwrap().expect("a chunk");
    let text = String::from_utf8(first).unwrap();
    let head: String = text.chars().take(300).collect();
    assert_eq!(text.matches("\n\n").count(), 1, "one event: {head:?}…");
    assert!(text.starts_with(&format!("id: {}-", ids[0])), "{text:?}");
    let rest = read_events(&mut direct, ids.len() - 1).await;
    let from_task = read_events(&mut task, ids.len()).await;
    let got: Vec<u64> = rest.iter().map(|(id, _)| *id).collect();
    assert_eq!(got, ids[1..], "every event once, in order");
    assert_eq!(
        &from_task[1..],
        &rest[..],
        "the same events as the task path"
    );
    for (i, (_, data)) in rest.iter().enumerate() {
        assert_eq!(data["data"]["burst"], i + 1);
    }
}

#[tokio::test]
async fn a_slow_reader_gets_every_event_in_order() {
    // Room for everything published below (queue and output limits):
    // this reader is slow, not hopeless.
    let gw = Gateway::start(&["--queue-length", "4000"]).await;
    let start = gw.publish_json("slow", &json!(0)).await;
    let mut conn = common::http::RawHttpConn::connect_small_rcvbuf(gw.public, 4096)
        .await
        .unwrap();
    conn.send_request("GET", &format!("/rt/sse/slow?since={start}"), &[], None)
        .await
        .unwrap();
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    let retry = conn.read_chunk().await.unwrap().expect("retry chunk");
    assert!(retry.starts_with(b"retry: "));
    streams(&gw, 1.0).await;
    // ~3 MiB while the client reads nothing: the publisher fills the
    // socket, writes a chunk in part, and the stream's task finishes it.
    let pad = "x".repeat(1500);
    let mut ids = Vec::new();
    for batch in 0..20 {
        let items: Vec<(&str, Value)> = (0..100)
            .map(|n| ("slow", json!({ "n": batch * 100 + n, "pad": pad })))
            .collect();
        ids.extend(gw.publish_batch_ok(&items).await);
    }
    let mut sse = SseClient::from_parts(conn, head);
    let got = read_events(&mut sse, ids.len()).await;
    let got_ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(got_ids, ids, "every event once, in order");
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(data["data"]["n"], i, "{data}");
    }
    // The stream goes on.
    let next = gw.publish_json("slow", &json!("after")).await;
    let after = read_events(&mut sse, 1).await;
    assert_eq!(after[0].0, next);
}

#[tokio::test]
async fn deliveries_and_wire_bytes_are_counted_exactly() {
    let gw = Gateway::start(&[]).await;
    let start = gw.publish_json("exact", &json!(0)).await;
    let mut sse = open_live(&gw, "exact", start, &[]).await;
    streams(&gw, 1.0).await;
    let mut payload = 0u64;
    for n in 1..=50u64 {
        let data = json!({ "n": n, "text": "y".repeat(n as usize) });
        payload += serde_json::to_vec(&data).unwrap().len() as u64;
        gw.publish_json("exact", &data).await;
    }
    let got = read_events(&mut sse, 50).await;
    assert_eq!(got.last().unwrap().0, start + 50);
    let (written, read) = (sse.conn.bytes_written, sse.conn.bytes_read);
    drop(sse);
    streams(&gw, 0.0).await;
    let metric = |name: &'static str, dir: Option<&'static str>| {
        let gw = &gw;
        async move {
            let mut labels = vec![("transport", "sse")];
            if let Some(dir) = dir {
                labels.push(("direction", dir));
            }
            gw.metric(name, &labels).await.unwrap_or(0.0) as u64
        }
    };
    assert_eq!(
        metric("pollbridge_messages_delivered_total", None).await,
        50
    );
    assert_eq!(
        metric("pollbridge_payload_bytes_total", Some("out")).await,
        payload
    );
    eventually(T, "wire bytes counted", || async {
        let out = metric("pollbridge_wire_bytes_total", Some("out")).await;
        let inn = metric("pollbridge_wire_bytes_total", Some("in")).await;
        (out == read && inn == written).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_client_closing_a_live_stream_frees_its_subscription() {
    let gw = Gateway::start(&[]).await;
    let start = gw.publish_json("leave", &json!(0)).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(open_live(&gw, "leave", start, &[]).await);
    }
    streams(&gw, 5.0).await;
    let id = gw.publish_json("leave", &json!(1)).await;
    // One event through the publisher, so each stream is live.
    for sse in &mut clients {
        assert_eq!(read_events(sse, 1).await[0].0, id);
    }
    assert_eq!(gw.channel_subscribers("leave", "sse").await, 5);
    drop(clients);
    streams(&gw, 0.0).await;
    eventually(T, "subscriptions freed", || async {
        (gw.channel_subscribers("leave", "sse").await == 0).then_some(())
    })
    .await;
    // Publishing after they left writes to no closed socket.
    for n in 0..20 {
        gw.publish_json("leave", &json!(n)).await;
    }
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn keepalives_and_publisher_written_events_never_interleave() {
    // A keepalive interval close to the gap between events: the stream's
    // task takes the socket back for each keepalive it considers, while
    // the publisher writes events in between.
    let gw = Gateway::start(&["--sse-keepalive", "30ms"]).await;
    let start = gw.publish_json("mixed", &json!(0)).await;
    let mut sse = open_live(&gw, "mixed", start, &[]).await;
    streams(&gw, 1.0).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(gw.publish_json("mixed", &json!({ "n": n })).await);
        tokio::time::sleep(Duration::from_millis(n % 4 * 15)).await;
    }
    // Every chunk parses (a strict chunked decoder), every event once.
    let got: Vec<u64> = read_events(&mut sse, ids.len())
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(got, ids);
    // Idle again: keepalives go on, and so do events.
    sse.expect_no_event(Duration::from_millis(200)).await;
    assert!(sse.comments > 0, "keepalive comments");
    let next = gw.publish_json("mixed", &json!("last")).await;
    assert_eq!(read_events(&mut sse, 1).await[0].0, next);
}
