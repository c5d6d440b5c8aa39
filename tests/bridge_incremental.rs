//! Incremental bridge routes (`[[bridge]] mode = "incremental"`): the
//! gateway polls `GET /api/messages?room=R&after=<its cursor>`, publishes
//! every new item as one message, and answers each legacy poll carrying the
//! client's own cursor with the items after it, in the backend's shape. A
//! first poll and a cursor older than the gateway's history go to the
//! backend unchanged.
//!
//! The backend is the README's toy backend (`examples/toy-backend`), a real
//! process; the gateway is the real binary.

mod common;

use std::time::{Duration, Instant};

use common::toy_backend::{feed_channel, ToyBackend};
use common::*;
use serde_json::Value;

const INTERVAL_MS: u64 = 100;

/// A gateway bridging the toy backend's `/api/messages` incrementally to
/// channel `chat`, with `extra` lines for the `[[bridge]]` table and
/// `history` lines for `[history]`.
async fn chat_gateway(backend: &ToyBackend, extra: &str, history: &str) -> Gateway {
    Gateway::builder()
        .config(&format!(
            "upstream = \"{}\"\n\n[history]\n{history}\n\n[[bridge]]\n\
             path = \"/api/messages\"\nchannel = \"chat\"\nmode = \"incremental\"\n\
             cursor_param = \"after\"\nitems = \"/messages\"\nitem_id = \"/id\"\n\
             interval = \"{INTERVAL_MS}ms\"\n{extra}\n",
            backend.url()
        ))
        .start()
        .await
}

/// The channel of the room's feed: `chat.` + 32 hex digits of
/// SHA-1(`?room=R\0`) (the cursor is no part of it).
fn room_channel(room: &str) -> String {
    feed_channel("chat", &format!("room={room}"))
}

/// The polls a node made of the backend (its lease held), by its metrics.
async fn gateway_polls(gw: &Gateway) -> f64 {
    let text = gw.metrics().await;
    ["changed", "not_modified", "error"]
        .iter()
        .map(|r| {
            metric_value(
                &text,
                "pollbridge_bridge_upstream_requests_total",
                &[("bridge", "chat"), ("result", r)],
            )
            .unwrap_or(0.0)
        })
        .sum()
}

async fn metric(gw: &Gateway, name: &str, result: &str) -> f64 {
    gw.metric(name, &[("bridge", "chat"), ("result", result)])
        .await
        .unwrap_or(0.0)
}

/// Polls the gateway until it answers `target` itself (the poll did not
/// reach the backend) with the backend's own answer for it; returns that
/// answer and its ETag.
async fn served(gw: &Gateway, backend: &ToyBackend, target: &str) -> (Value, String) {
    eventually(
        T10,
        &format!("{target} answered by the gateway"),
        || async {
            let want = backend.direct(target).await;
            let before = passed_through(backend).await.len();
            let r = get(&gw.public_url(target)).await;
            let by_gateway = passed_through(backend).await.len() == before;
            (by_gateway && r.status() == 200 && r.json() == want)
                .then(|| (want, r.header("etag").unwrap_or_default().to_string()))
        },
    )
    .await
}

fn ids(answer: &Value) -> Vec<u64> {
    answer["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {answer}"))
        .iter()
        .map(|m| m["id"].as_u64().expect("numeric ids"))
        .collect()
}

/// Polls that reached the backend other than the gateway's own and the
/// test's: passed-through clients.
async fn passed_through(backend: &ToyBackend) -> Vec<String> {
    backend
        .messages_asked()
        .await
        .into_iter()
        .filter(|a| !a.by_bridge() && !a.by_test())
        .map(|a| a.target)
        .collect()
}

#[tokio::test]
async fn each_cursor_gets_the_items_after_it_in_the_backends_shape() {
    let backend = ToyBackend::start();
    let mut first_ids = Vec::new();
    for text in ["one", "two", "three"] {
        first_ids.push(
            backend.post_message("lobby", text).await["id"]
                .as_u64()
                .unwrap(),
        );
    }
    let gw = chat_gateway(&backend, "", "").await;

    // A first poll (no cursor) is the backend's to answer; it starts the feed.
    let r = get(&gw.public_url("/api/messages?room=lobby&_=1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json(), backend.direct("/api/messages?room=lobby").await);
    assert_eq!(
        passed_through(&backend).await,
        ["/api/messages?room=lobby&_=1"]
    );
    eventually(T10, "the gateway's first poll", || async {
        (metric(&gw, "pollbridge_bridge_upstream_requests_total", "changed").await >= 1.0)
            .then_some(())
    })
    .await;

    // A WebSocket subscriber of the room's channel gets every new item.
    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/{}", room_channel("lobby")))).await;
    ws.expect_control("subscribed", T5).await;

    // Clients with different cursors each get exactly what follows theirs,
    // in the backend's own wrapper, answered by the gateway.
    let before = passed_through(&backend).await.len();
    let mut etags = Vec::new();
    for (i, cursor) in first_ids.iter().enumerate() {
        let target = format!("/api/messages?room=lobby&after={cursor}&_={i}");
        let r = get(&gw.public_url(&target)).await;
        assert_eq!(r.status(), 200, "{target}: {}", r.text());
        let want = backend
            .direct(&format!("/api/messages?room=lobby&after={cursor}"))
            .await;
        assert_eq!(r.json(), want, "{target}");
        assert_eq!(ids(&want), first_ids[i + 1..], "{target}");
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        etags.push(r.header("etag").expect("an ETag").to_string());
    }
    assert_eq!(
        passed_through(&backend).await.len(),
        before,
        "a cursor poll reached the backend"
    );
    let latest = *first_ids.last().unwrap();
    let current = format!("/api/messages?room=lobby&after={latest}");
    let r = http(
        "GET",
        &gw.public_url(&current),
        &[("If-None-Match", etags[2].as_str())],
        None,
    )
    .await;
    assert_eq!(r.status(), 304, "{}", r.text());

    // New items: on the channel one message each, with bus ids; to each
    // client the items after its own cursor.
    let four = backend.post_message("lobby", "four").await;
    let five = backend.post_message("lobby", "five").await;
    let first = ws.next_envelope(T5).await;
    let second = ws.next_envelope(T5).await;
    assert_eq!(first["channel"], room_channel("lobby"));
    assert_eq!(first["data"], four);
    assert_eq!(second["data"], five);
    assert_eq!(
        second["id"].as_u64().unwrap(),
        first["id"].as_u64().unwrap() + 1
    );
    let (answer, etag) = served(&gw, &backend, &current).await;
    assert_eq!(
        ids(&answer),
        [four["id"].as_u64().unwrap(), five["id"].as_u64().unwrap()]
    );
    assert_ne!(etag, etags[2]);
    let from_first = format!("/api/messages?room=lobby&after={}", first_ids[0]);
    let (answer, _) = served(&gw, &backend, &from_first).await;
    assert_eq!(ids(&answer).len(), 4);

    // An empty room: every cursor is answered by the gateway (nothing
    // after it) until the room has items; then its items are the room's.
    let (hall, _) = served(&gw, &backend, "/api/messages?room=hall&after=0").await;
    assert_eq!(hall["room"], "hall");
    assert!(ids(&hall).is_empty());
    let first = backend.post_message("hall", "elsewhere").await;
    let after_first = format!("/api/messages?room=hall&after={}", first["id"]);
    served(&gw, &backend, &after_first).await;
    let second = backend.post_message("hall", "elsewhere again").await;
    let (hall, _) = served(&gw, &backend, &after_first).await;
    assert_eq!(hall["messages"], serde_json::json!([second]));
    let (lobby, _) = served(&gw, &backend, &from_first).await;
    assert_eq!(ids(&lobby).len(), 4);
}

#[tokio::test]
async fn a_cursor_older_than_the_history_is_proxied_unchanged() {
    let backend = ToyBackend::start();
    // The backend's first answer (no cursor) is its last 20; keep 4.
    let mut all = Vec::new();
    for i in 0..8 {
        let item = backend.post_message("lobby", &format!("m{i}")).await;
        all.push(item["id"].as_u64().unwrap());
    }
    let gw = chat_gateway(&backend, "", "size = 4").await;
    let _ = get(&gw.public_url("/api/messages?room=lobby")).await;
    let newest = format!("/api/messages?room=lobby&after={}", all[6]);
    served(&gw, &backend, &newest).await;

    // The gateway keeps the newest 4 items: a cursor at the 4th newest is
    // answered by it; one at the 6th newest is sent to the backend as is,
    // and its answer has every item after it (no gap).
    let before = passed_through(&backend).await;
    let known = format!("/api/messages?room=lobby&after={}", all[4]);
    let r = get(&gw.public_url(&known)).await;
    assert_eq!(r.json(), backend.direct(&known).await);
    assert_eq!(passed_through(&backend).await, before);

    let old = format!("/api/messages?room=lobby&after={}&_=9", all[2]);
    let r = get(&gw.public_url(&old)).await;
    assert_eq!(r.status(), 200);
    let answer = r.json();
    assert_eq!(ids(&answer), all[3..]);
    let after = passed_through(&backend).await;
    assert_eq!(after[before.len()..], [old], "proxied unchanged");
    assert!(metric(&gw, "pollbridge_bridge_client_polls_total", "proxied").await >= 2.0);
}

#[tokio::test]
async fn many_clients_and_cursors_cost_one_backend_request_per_interval() {
    let backend = ToyBackend::start();
    let mut ids_posted = Vec::new();
    for i in 0..5 {
        ids_posted.push(
            backend.post_message("lobby", &format!("m{i}")).await["id"]
                .as_u64()
                .unwrap(),
        );
    }
    let gw = chat_gateway(&backend, "", "").await;
    let _ = get(&gw.public_url("/api/messages?room=lobby")).await;
    served(
        &gw,
        &backend,
        &format!("/api/messages?room=lobby&after={}", ids_posted[0]),
    )
    .await;
    let gateway_polls =
        |asked: &[common::toy_backend::Asked]| asked.iter().filter(|a| a.by_bridge()).count();
    let start_polls = gateway_polls(&backend.messages_asked().await);
    let start_passed = passed_through(&backend).await.len();

    // 20 keep-alive legacy clients, cursors spread over the items, polling
    // as fast as they are answered for about a second; new items meanwhile.
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..20 {
        let addr = gw.public;
        let cursor = ids_posted[c % ids_posted.len()];
        clients.push(tokio::spawn(async move {
            let mut conn = RawHttpConn::connect(addr).await.expect("connect");
            let mut answers = 0;
            let deadline = Instant::now() + Duration::from_millis(1000);
            while Instant::now() < deadline {
                let target = format!("/api/messages?room=lobby&after={cursor}");
                let r = conn.request("GET", &target, &[], None).await.expect("poll");
                assert_eq!(r.status(), 200, "{}", r.text());
                let got = ids(&r.json());
                assert!(got.iter().all(|id| *id > cursor), "{target}: {got:?}");
                answers += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        }));
    }
    for i in 0..3 {
        backend.post_message("lobby", &format!("late {i}")).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut answered = 0;
    for c in clients {
        answered += c.await.expect("client");
    }
    let elapsed = started.elapsed();
    let asked = backend.messages_asked().await;
    let polls = gateway_polls(&asked) - start_polls;
    let bound = (elapsed.as_millis() as u64 / INTERVAL_MS + 3) as usize;
    assert!(answered >= 100, "only {answered} answers");
    assert!(
        polls <= bound,
        "{polls} gateway polls in {elapsed:?} for {answered} client polls"
    );
    assert_eq!(
        passed_through(&backend).await.len(),
        start_passed,
        "a known cursor reached the backend"
    );
    // Everyone converges on the backend's own answers.
    for cursor in &ids_posted {
        served(
            &gw,
            &backend,
            &format!("/api/messages?room=lobby&after={cursor}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_held_poll_returns_with_the_next_item() {
    let backend = ToyBackend::start();
    let id = backend.post_message("lobby", "first").await["id"]
        .as_u64()
        .unwrap();
    let gw = chat_gateway(&backend, "hold = \"5s\"", "").await;
    let _ = get(&gw.public_url("/api/messages?room=lobby")).await;
    let current = format!("/api/messages?room=lobby&after={id}");
    let (empty, etag) = served(&gw, &backend, &current).await;
    assert!(ids(&empty).is_empty());

    // The client has the current (empty) answer: its poll waits for news.
    let bridge_bytes_in = || async {
        gw.metric(
            "pollbridge_wire_bytes_total",
            &[("transport", "bridge"), ("direction", "in")],
        )
        .await
        .unwrap_or(0.0)
    };
    let read_before = bridge_bytes_in().await;
    let url = gw.public_url(&current);
    let held = tokio::spawn(async move {
        let sent = Instant::now();
        let r = http("GET", &url, &[("If-None-Match", etag.as_str())], None).await;
        (r.status(), r.json(), sent.elapsed())
    });
    eventually(T5, "the gateway has read the held poll", || async {
        (bridge_bytes_in().await > read_before).then_some(())
    })
    .await;
    let next = backend.post_message("lobby", "second").await;
    let (status, body, _) = held.await.expect("held poll");
    assert_eq!(status, 200);
    assert_eq!(ids(&body), [next["id"].as_u64().unwrap()]);
    assert_eq!(body["room"], "lobby");
    assert_eq!(
        metric(&gw, "pollbridge_bridge_client_polls_total", "held").await,
        1.0
    );
}

#[tokio::test]
async fn two_nodes_poll_once_per_interval_and_both_answer_cursors() {
    use common::redis::{wait_ready, RedisServer};
    let redis = RedisServer::start().await;
    let backend = ToyBackend::start();
    let mut posted = Vec::new();
    for text in ["one", "two", "three"] {
        posted.push(
            backend.post_message("lobby", text).await["id"]
                .as_u64()
                .unwrap(),
        );
    }
    let bus = format!("bus = \"{}\"", redis.url());
    let config = |gw_extra: &str| {
        format!(
            "upstream = \"{}\"\n{gw_extra}\n\n[[bridge]]\npath = \"/api/messages\"\n\
             channel = \"chat\"\nmode = \"incremental\"\nitems = \"/messages\"\n\
             interval = \"{INTERVAL_MS}ms\"\n",
            backend.url()
        )
    };
    let a = Gateway::builder().config(&config(&bus)).start().await;
    let b = Gateway::builder().config(&config(&bus)).start().await;
    wait_ready(&a, true, T10).await;
    wait_ready(&b, true, T10).await;

    // A page load on each node starts the room's feed there.
    let _ = get(&a.public_url("/api/messages?room=lobby")).await;
    let _ = get(&b.public_url("/api/messages?room=lobby")).await;
    let from = format!("/api/messages?room=lobby&after={}", posted[0]);
    let started = Instant::now();
    let polls_before = backend
        .messages_asked()
        .await
        .iter()
        .filter(|x| x.by_bridge())
        .count();
    served(&a, &backend, &from).await;
    served(&b, &backend, &from).await;
    // The first items are on the channel by now: a subscriber from here on
    // gets what comes next.
    let mut ws_b = WsClient::connect(&b.ws_url(&format!("/rt/ws/{}", room_channel("lobby")))).await;
    ws_b.expect_control("subscribed", T5).await;

    // New items reach both nodes' clients and node b's subscriber.
    let four = backend.post_message("lobby", "four").await;
    assert_eq!(ws_b.next_envelope(T5).await["data"], four);
    for gw in [&a, &b] {
        let (answer, _) = served(gw, &backend, &from).await;
        assert_eq!(
            ids(&answer),
            [posted[1], posted[2], four["id"].as_u64().unwrap()]
        );
    }
    let elapsed = started.elapsed();
    // One poller for the cluster (plus, once, the other node asking for
    // the answer's wrapper).
    let polls = backend
        .messages_asked()
        .await
        .iter()
        .filter(|x| x.by_bridge())
        .count()
        - polls_before;
    let bound = (elapsed.as_millis() as u64 / INTERVAL_MS + 4) as usize;
    assert!(polls <= bound, "{polls} gateway polls in {elapsed:?}");
    let (by_a, by_b) = (gateway_polls(&a).await, gateway_polls(&b).await);
    assert!(
        by_a == 0.0 || by_b == 0.0,
        "both nodes polled: {by_a} and {by_b}"
    );
}
