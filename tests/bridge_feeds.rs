//! Which feed a legacy poll gets, and how many the gateway will poll
//! (`[[bridge]] ignore_params`, `max_variants`): the query string is part of
//! a feed's identity (cache busters aside), so `?room=42` and `?room=7` are
//! polled and served separately; and past `max_variants` feeds a route's
//! polls are proxied to the backend unchanged, so no client can multiply
//! the backend's load by inventing values.
//!
//! The backend is the README's toy backend (`examples/toy-backend`), a real
//! process; the gateway is the real binary.

mod common;

use std::time::{Duration, Instant};

use common::toy_backend::{feed_channel, ToyBackend};
use common::*;
use serde_json::Value;

/// A gateway bridging `/api/messages` (snapshot mode) to channel
/// `messages` every 100 ms, with `extra` lines for the `[[bridge]]` table.
async fn messages_gateway(backend: &ToyBackend, extra: &str) -> Gateway {
    Gateway::builder()
        .config(&format!(
            "upstream = \"{}\"\n\n[[bridge]]\npath = \"/api/messages\"\n\
             channel = \"messages\"\ninterval = \"100ms\"\n{extra}\n",
            backend.url()
        ))
        .start()
        .await
}

/// `GET target` through the gateway: status, ETag, JSON body.
async fn poll(gw: &Gateway, target: &str) -> (u16, Option<String>, Value) {
    let r = get(&gw.public_url(target)).await;
    let etag = r.header("etag").map(str::to_string);
    let status = r.status();
    assert!(status == 200, "GET {target}: {status} {}", r.text());
    (status, etag, r.json())
}

async fn gauge(gw: &Gateway, name: &str, bridge: &str) -> f64 {
    gw.metric(name, &[("bridge", bridge)]).await.unwrap_or(-1.0)
}

#[tokio::test]
async fn two_rooms_are_two_feeds_polled_and_served_separately() {
    let backend = ToyBackend::start();
    backend.post_message("42", "hello forty-two").await;
    backend.post_message("7", "hello seven").await;
    let gw = messages_gateway(&backend, "").await;

    // jQuery-style cache busters and parameter order don't make new feeds.
    let (_, etag_42, room_42) = poll(&gw, "/api/messages?room=42&_=1700000000001").await;
    let (_, etag_7, room_7) = poll(&gw, "/api/messages?_=1700000000002&room=7").await;
    assert_eq!(room_42, backend.direct("/api/messages?room=42").await);
    assert_eq!(room_7, backend.direct("/api/messages?room=7").await);
    assert_ne!(room_42, room_7);
    assert_ne!(etag_42, etag_7);
    let (_, again_42, _) = poll(&gw, "/api/messages?_=5&room=42").await;
    assert_eq!(again_42, etag_42, "the cache buster picked a new feed");
    assert_eq!(
        gauge(&gw, "pollbridge_bridge_variants", "messages").await,
        2.0
    );

    // Each room's feed follows its own room, and its channel carries it.
    let mut ws = WsClient::connect(&gw.ws_url(&format!(
        "/rt/ws/{}?since=0",
        feed_channel("messages", "room=7")
    )))
    .await;
    ws.expect_control("subscribed", T5).await;
    let latest = ws.next_envelope(T5).await;
    assert_eq!(latest["data"], room_7, "the room's channel holds its copy");
    backend.post_message("7", "seven again").await;
    let changed = ws.next_envelope(T5).await;
    assert_eq!(
        changed["data"]["messages"].as_array().map(Vec::len),
        Some(2),
        "{changed}"
    );
    let room_7 = eventually(T5, "room 7 shows its new message", || async {
        let (_, _, body) = poll(&gw, "/api/messages?room=7").await;
        (body["messages"].as_array()?.len() == 2).then_some(body)
    })
    .await;
    assert_eq!(room_7, backend.direct("/api/messages?room=7").await);
    let (_, _, still_42) = poll(&gw, "/api/messages?room=42").await;
    assert_eq!(still_42, room_42, "room 42 got room 7's message");

    // The backend was asked for each room, without the cache buster.
    let asked = backend.messages_asked().await;
    let by_bridge: Vec<_> = asked.iter().filter(|a| a.by_bridge()).collect();
    assert!(by_bridge
        .iter()
        .any(|a| a.target == "/api/messages?room=42"));
    assert!(by_bridge.iter().any(|a| a.target == "/api/messages?room=7"));
    assert!(
        asked.iter().all(|a| a.by_test() || a.by_bridge()),
        "a poll reached the backend: {asked:?}"
    );
    assert!(
        by_bridge.iter().all(|a| !a.target.contains("_=")),
        "{by_bridge:?}"
    );
}

#[tokio::test]
async fn past_max_variants_polls_are_passed_through_and_idle_feeds_make_room() {
    let backend = ToyBackend::start();
    let rooms = ["r1", "r2", "r3", "r4", "r5"];
    for room in rooms {
        backend.post_message(room, &format!("in {room}")).await;
    }
    let gw = messages_gateway(&backend, "max_variants = 2\nidle_timeout = \"500ms\"").await;
    let expected: Vec<Value> = room_answers(&backend, &rooms).await;

    // Rooms 1 and 2 take the two feeds; 3 to 5 are passed through. Every
    // client gets its own room's answer either way.
    const POLLS: usize = 4;
    let started = Instant::now();
    for round in 0..POLLS {
        for (room, want) in rooms.iter().zip(&expected) {
            let (_, _, body) = poll(&gw, &format!("/api/messages?room={room}&_={round}")).await;
            assert_eq!(&body, want, "room {room}, round {round}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    assert_eq!(
        gauge(&gw, "pollbridge_bridge_variants", "messages").await,
        2.0
    );
    let refused = gauge(&gw, "pollbridge_bridge_variants_refused_total", "messages").await;
    assert_eq!(refused, (3 * POLLS) as f64);

    // The backend saw each passed-through poll once, as the client sent
    // it, and the gateway's own polls for two rooms only, at most one per
    // interval each.
    let asked = backend.messages_asked().await;
    let passed: Vec<_> = asked
        .iter()
        .filter(|a| !a.by_bridge() && !a.by_test())
        .collect();
    assert_eq!(passed.len(), 3 * POLLS, "{passed:?}");
    assert!(passed.iter().all(|a| ["r3", "r4", "r5"]
        .iter()
        .any(|r| a.target.starts_with(&format!("/api/messages?room={r}&_=")))));
    let polled: Vec<_> = asked.iter().filter(|a| a.by_bridge()).collect();
    assert!(polled
        .iter()
        .all(|a| a.target == "/api/messages?room=r1" || a.target == "/api/messages?room=r2"));
    let bound = 2 * (elapsed.as_millis() as usize / 100 + 3);
    assert!(
        polled.len() <= bound,
        "{} gateway polls in {elapsed:?}",
        polled.len()
    );

    // Idle feeds stop (idle_timeout) and give their places back.
    eventually(T10, "idle feeds expire", || async {
        (gauge(&gw, "pollbridge_bridge_variants", "messages").await == 0.0).then_some(())
    })
    .await;
    let (_, _, body) = poll(&gw, "/api/messages?room=r3").await;
    assert_eq!(body, expected[2]);
    assert_eq!(
        gauge(&gw, "pollbridge_bridge_variants", "messages").await,
        1.0
    );
    assert_eq!(
        gauge(&gw, "pollbridge_bridge_variants_refused_total", "messages").await,
        refused,
        "room 3 got a feed this time"
    );
}

#[tokio::test]
async fn vary_by_values_past_the_cap_cost_the_backend_what_they_would_without_the_gateway() {
    let backend = ToyBackend::start();
    let gw = Gateway::builder()
        .config(&format!(
            "upstream = \"{}\"\n\n[[bridge]]\npath = \"/api/scores\"\n\
             channel = \"scores\"\ninterval = \"100ms\"\nvary_by = \"Cookie\"\n\
             max_variants = 3\n",
            backend.url()
        ))
        .start()
        .await;
    let want = backend.direct("/api/scores").await;
    const USERS: usize = 8;
    const POLLS: usize = 3;
    let started = Instant::now();
    for round in 0..POLLS {
        for user in 0..USERS {
            let cookie = format!("session=user-{user}");
            let r = http(
                "GET",
                &gw.public_url(&format!("/api/scores?_={round}")),
                &[("Cookie", cookie.as_str())],
                None,
            )
            .await;
            assert_eq!(r.status(), 200, "user {user}: {}", r.text());
            assert_eq!(r.json(), want, "user {user}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    assert_eq!(
        gauge(&gw, "pollbridge_bridge_variants", "scores").await,
        3.0
    );
    let passed = ((USERS - 3) * POLLS) as u64;
    assert_eq!(
        gauge(&gw, "pollbridge_bridge_variants_refused_total", "scores").await,
        passed as f64
    );
    // Three pollers at most one request per interval each, plus exactly
    // the passed-through polls (and the test's own request).
    let total = backend.scores_requests().await;
    let bound = 3 * (elapsed.as_millis() as u64 / 100 + 3) + passed + 1;
    assert!(
        total <= bound,
        "{total} backend requests in {elapsed:?} (bound {bound})"
    );
}

/// The backend's own answer for each room.
async fn room_answers(backend: &ToyBackend, rooms: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for room in rooms {
        out.push(backend.direct(&format!("/api/messages?room={room}")).await);
    }
    out
}
