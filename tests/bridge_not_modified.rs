//! A legacy client whose copy is current gets `304` from an incremental
//! bridge route, counted as `client="not_modified"` whether or not its
//! poll was held first (the same accounting as snapshot routes, checked in
//! tests/bridge.rs), and with the ETag its `200` would carry.

mod common;

use common::toy_backend::ToyBackend;
use common::*;

async fn client_polls(gw: &Gateway, result: &str) -> f64 {
    gw.metric(
        "pollbridge_bridge_client_polls_total",
        &[("bridge", "chat"), ("result", result)],
    )
    .await
    .unwrap_or(0.0)
}

async fn chat_gateway(backend: &ToyBackend, extra: &str) -> Gateway {
    Gateway::builder()
        .config(&format!(
            "upstream = \"{}\"\n\n[[bridge]]\npath = \"/api/messages\"\nchannel = \"chat\"\n\
             mode = \"incremental\"\ncursor_param = \"after\"\nitems = \"/messages\"\n\
             item_id = \"/id\"\ninterval = \"100ms\"\n{extra}\n",
            backend.url()
        ))
        .start()
        .await
}

/// The gateway's own answer to `target` (once its feed knows the room) and
/// its ETag.
async fn etag_of(gw: &Gateway, target: &str) -> String {
    eventually(T10, "an answer from the gateway's record", || async {
        let r = get(&gw.public_url(target)).await;
        (client_polls(gw, "body").await >= 1.0 && r.status() == 200)
            .then(|| r.header("etag").map(str::to_string))
            .flatten()
    })
    .await
}

#[tokio::test]
async fn current_copies_get_304_counted_as_not_modified_held_or_not() {
    let backend = ToyBackend::start();
    let id = backend.post_message("lobby", "first").await["id"]
        .as_u64()
        .unwrap();
    for (extra, held) in [("", false), ("hold = \"300ms\"", true)] {
        let gw = chat_gateway(&backend, extra).await;
        let _ = get(&gw.public_url("/api/messages?room=lobby")).await;
        let target = format!("/api/messages?room=lobby&after={id}");
        let etag = etag_of(&gw, &target).await;
        for round in 1..=2 {
            let r = http(
                "GET",
                &gw.public_url(&target),
                &[("If-None-Match", etag.as_str())],
                None,
            )
            .await;
            assert_eq!(r.status(), 304, "held {held}, round {round}");
            assert_eq!(r.header("etag"), Some(etag.as_str()));
            assert_eq!(
                client_polls(&gw, "not_modified").await,
                round as f64,
                "held {held}: every 304 counted once"
            );
        }
        assert_eq!(client_polls(&gw, "held").await, 0.0);
    }
}
