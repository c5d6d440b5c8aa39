//! A subscriber that stops reading is disconnected once its queue is full;
//! everyone else gets everything, and the gateway's memory stays bounded.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ws::{is_envelope, parse_frames, OP_CLOSE, OP_TEXT};
use common::*;
use serde_json::Value;

const TOTAL: u64 = 50_000;
const BATCH: u64 = 500;
/// How far the publisher may run ahead of the reading client. Generous:
/// the point is bounded memory, not speed.
const WINDOW: u64 = 5_000;

/// About 100 bytes of text for message `i`.
fn payload(i: u64) -> String {
    let mut s = format!("m{i:06}-");
    while s.len() < 100 {
        s.push_str("abcdefghij");
    }
    s.truncate(100);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websocket_consumer_is_dropped_and_memory_stays_bounded() {
    let gw = Gateway::start(&[
        "--queue-length",
        "64",
        // A batch of 500 ~100-byte messages is ~65 KB of JSON.
        "--max-message-bytes",
        "1048576",
    ])
    .await;

    // The slow client: handshake, read its `subscribed`, then never read.
    let conn = RawHttpConn::connect_small_rcvbuf(gw.public, 4096)
        .await
        .unwrap();
    let (mut slow, _) = RawWs::handshake(conn, "/rt/ws/flood").await.unwrap();
    let sub = slow.next_json(T5).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");

    // The normal client reads everything, checking order as it goes.
    let mut fast = WsClient::connect(&gw.ws_url("/rt/ws/flood")).await;
    fast.expect_control("subscribed", T5).await;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        for i in 1..=TOTAL {
            let env = loop {
                match fast.recv(Duration::from_secs(20)).await {
                    WsEvent::Json(v) if is_envelope(&v) => break v,
                    WsEvent::Json(_) => continue,
                    other => panic!(
                        "normal client: after {} of {TOTAL} messages got {other:?}",
                        i - 1
                    ),
                }
            };
            assert_eq!(env["channel"], "flood", "{env}");
            assert_eq!(env["id"], i, "out of order: {env}");
            assert_eq!(env["data"], Value::String(payload(i)), "{env}");
            counter.store(i, Ordering::Relaxed);
        }
        fast
    });

    let rss_before = gw.rss_kib();
    let mut rss_peak = rss_before;
    let mut published = 0u64;
    while published < TOTAL {
        // Flow control against the normal client only.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while published - received.load(Ordering::Relaxed) > WINDOW && !reader.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "normal client stuck at {} of {published}",
                received.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if reader.is_finished() {
            break;
        }
        let items: Vec<(&str, Value)> = (published + 1..=published + BATCH)
            .map(|i| ("flood", Value::String(payload(i))))
            .collect();
        let ids = gw.publish_batch_ok(&items).await;
        assert_eq!(ids.first(), Some(&(published + 1)));
        assert_eq!(ids.last(), Some(&(published + BATCH)));
        published += BATCH;
        rss_peak = rss_peak.max(gw.rss_kib());
    }

    let mut fast = tokio::time::timeout(Duration::from_secs(40), reader)
        .await
        .expect("normal client did not get all messages in time")
        .expect("normal client failed");
    assert_eq!(published, TOTAL);
    fast.expect_no_envelope(Duration::from_millis(200)).await;

    // The slow client was cut off: its socket ends (EOF or reset) once
    // drained, well short of everything.
    let (bytes, _reset) = slow
        .conn
        .read_to_end_within(Duration::from_secs(20))
        .await
        .expect("the slow client's connection was never closed");
    let frames = parse_frames(&bytes);
    let delivered = frames.iter().filter(|f| f.opcode == OP_TEXT).count() as u64;
    assert!(
        delivered < TOTAL,
        "the slow client received all {delivered} messages: it was never dropped"
    );
    if let Some(close) = frames.iter().find(|f| f.opcode == OP_CLOSE) {
        assert_eq!(
            close.close_code(),
            Some(1013),
            "slow consumer close code (got {:?})",
            close.close_code()
        );
    }

    let dropped = eventually(T5, "dropped_total{reason=slow_consumer} > 0", || async {
        gw.metric("pollbridge_dropped_total", &[("reason", "slow_consumer")])
            .await
            .filter(|v| *v > 0.0)
    })
    .await;
    assert!(dropped > 0.0);

    let rss_after = gw.rss_kib();
    rss_peak = rss_peak.max(rss_after);
    eprintln!("RSS KiB: before {rss_before}, peak {rss_peak}, after {rss_after}");
    assert!(
        rss_peak < 200 * 1024,
        "gateway RSS peaked at {rss_peak} KiB (> 200 MB)"
    );
    assert!(
        rss_peak < rss_before + 100 * 1024,
        "gateway RSS grew from {rss_before} to {rss_peak} KiB (> +100 MB)"
    );
    gw.assert_still_serving().await;
}
