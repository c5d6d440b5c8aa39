//! Delta updates on `state` channels, over real sockets on every transport:
//! a client that asks for deltas gets its first value whole and later ones
//! as JSON Patches (RFC 6902) against the value it holds, named by
//! `base`. Every test rebuilds each delivered value on the client side (with
//! its own patch code, not the gateway's) and checks it equals what
//! was published — on every delivery: subscribers joining mid-stream,
//! throttled (`conflate_interval`) subscribers, resumes, long-polls.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::ws::WsClient;
use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[channels]]
pattern = "score.*"
mode = "state"

[[channels]]
pattern = "tick.*"
mode = "state"
conflate_interval = "100ms"
"#;

async fn gateway() -> Gateway {
    Gateway::start_with_config(CONFIG, &[]).await
}

/// A scoreboard of about 1.5 KB whose `i`-th update changes a few fields,
/// and now and then sets a member to `null`, removes a member, grows or
/// shrinks an array or changes unicode text.
fn scoreboard(i: u64) -> Value {
    let players = |side: &str| -> Vec<Value> {
        (0..8)
            .map(|p| {
                json!({"name": format!("{side} player {p} — Ünïcødé 日本"),
                       "number": p + 1,
                       "fouls": if p == i % 8 { i / 8 } else { 0 }})
            })
            .collect()
    };
    let mut v = json!({
        "match": "Rovers v United",
        "clock": format!("{}:{:02}", i / 60, i % 60),
        "home": {"score": i / 5, "players": players("home")},
        "away": {"score": i / 7, "players": players("away")},
        "events": (0..(i % 4)).map(|e| json!({"minute": e, "kind": "corner"})).collect::<Vec<_>>(),
        "note": if i.is_multiple_of(6) { Value::Null } else { json!(format!("update {i}")) },
    });
    if !i.is_multiple_of(5) {
        v["weather"] = json!({"temp": 11.5 + (i % 3) as f64, "wind": "NW"});
    }
    v
}

/// RFC 6902 `add` / `remove` / `replace`, written independently of the
/// gateway's code.
fn json_patch(doc: &Value, ops: &Value) -> Value {
    let mut doc = doc.clone();
    for op in ops.as_array().expect("a patch is a list") {
        let path = op["path"].as_str().expect("path");
        if path.is_empty() {
            doc = op["value"].clone();
            continue;
        }
        let (parent, key) = path.rsplit_once('/').unwrap();
        let key = key.replace("~1", "/").replace("~0", "~");
        match (
            doc.pointer_mut(parent).expect("parent exists"),
            op["op"].as_str().unwrap(),
        ) {
            (Value::Object(m), "remove") => {
                m.remove(&key).expect("member to remove");
            }
            (Value::Object(m), _) => {
                m.insert(key, op["value"].clone());
            }
            (Value::Array(a), "remove") => {
                a.remove(key.parse().unwrap());
            }
            (Value::Array(a), "add") => a.insert(key.parse().unwrap(), op["value"].clone()),
            (Value::Array(a), _) => a[key.parse::<usize>().unwrap()] = op["value"].clone(),
            (other, _) => panic!("{op} on {other}"),
        }
    }
    doc
}

/// A client's view: the value it holds per channel, rebuilt from whole
/// values and deltas, checked against what was published.
#[derive(Default)]
struct Reader {
    held: HashMap<String, (u64, Value)>,
    deltas: usize,
    wholes: usize,
    /// Per delivery, in order: (id, came as a delta).
    forms: Vec<(u64, bool)>,
}

impl Reader {
    /// Applies one envelope and checks the result against `published`
    /// (indexed by id); returns the id.
    fn apply(&mut self, who: &str, env: &Value, published: &HashMap<u64, Value>) -> u64 {
        let channel = env["channel"].as_str().expect("channel").to_string();
        let id = env["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{who}: no id in {env}"));
        let value = if let Some(patch) = env.get("delta") {
            let base = env["base"].as_u64().expect("a delta names its base");
            let (held_id, held) = self
                .held
                .get(&channel)
                .unwrap_or_else(|| panic!("{who}: delta for #{id} before any whole value"));
            assert_eq!(
                *held_id, base,
                "{who}: delta #{id} on base {base}, client holds {held_id}"
            );
            assert!(
                env.get("data").is_none(),
                "{who}: both data and delta: {env}"
            );
            self.deltas += 1;
            json_patch(held, patch)
        } else {
            self.wholes += 1;
            env.get("data")
                .cloned()
                .unwrap_or_else(|| panic!("{who}: no data in {env}"))
        };
        let expected = published
            .get(&id)
            .unwrap_or_else(|| panic!("{who}: unknown id {id}"));
        if let Some((held_id, _)) = self.held.get(&channel) {
            assert!(id > *held_id, "{who}: #{id} after #{held_id}: order broken");
        }
        self.forms.push((id, env.get("delta").is_some()));
        assert_eq!(
            &value, expected,
            "{who}: value #{id} rebuilt wrong from {env}"
        );
        self.held.insert(channel, (id, value));
        id
    }

    /// One channel's deliveries: the first whole, then a delta exactly
    /// when the value follows the one held (these values always have a
    /// patch smaller than themselves), whole after any gap (conflation).
    fn assert_delta_exactly_when_consecutive(&self, who: &str) {
        assert!(!self.forms.is_empty(), "{who}: nothing delivered");
        assert!(!self.forms[0].1, "{who}: the first value must be whole");
        for w in self.forms.windows(2) {
            let consecutive = w[1].0 == w[0].0 + 1;
            assert_eq!(
                w[1].1, consecutive,
                "{who}: #{} after #{}: {:?}",
                w[1].0, w[0].0, self.forms
            );
        }
    }
}

/// Publishes updates `from..=to` of the scoreboard on `channel`, in HTTP
/// batches of `batch`, into `published`.
async fn publish_range(
    gw: &Gateway,
    channel: &str,
    from: u64,
    to: u64,
    batch: u64,
    published: &mut HashMap<u64, Value>,
) {
    let mut i = from;
    while i <= to {
        let end = (i + batch - 1).min(to);
        let items: Vec<(&str, Value)> = (i..=end).map(|n| (channel, scoreboard(n))).collect();
        let ids = gw.publish_batch_ok(&items).await;
        for (id, n) in ids.into_iter().zip(i..=end) {
            published.insert(id, scoreboard(n));
        }
        i = end + 1;
    }
}

async fn ws_subscribe(gw: &Gateway, channel: &str, extra: Value) -> WsClient {
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws")).await;
    let mut cmd = json!({"type": "subscribe", "channel": channel, "delta": true});
    for (k, v) in extra.as_object().into_iter().flatten() {
        cmd[k] = v.clone();
    }
    ws.send_json(&cmd).await;
    ws.expect_control("subscribed", T5).await;
    ws
}

/// Reads envelopes until the one with id `last`, checking each.
async fn ws_read_until(
    ws: &mut WsClient,
    who: &str,
    r: &mut Reader,
    last: u64,
    p: &HashMap<u64, Value>,
) {
    loop {
        let env = ws.next_envelope(T10).await;
        if r.apply(who, &env, p) >= last {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_deltas_rebuild_every_value_and_late_joiners_start_whole() {
    let gw = gateway().await;
    let mut published = HashMap::new();
    let mut early = ws_subscribe(&gw, "score.a", json!({})).await;
    let mut plain = WsClient::connect(&gw.ws_url("/rt/ws/score.a")).await;
    plain.expect_control("subscribed", T5).await;

    // One at a time, then in batches (linked within the batch too).
    publish_range(&gw, "score.a", 1, 20, 1, &mut published).await;
    let mut late = ws_subscribe(&gw, "score.a", json!({})).await;
    publish_range(&gw, "score.a", 21, 60, 7, &mut published).await;

    let (mut e, mut l) = (Reader::default(), Reader::default());
    ws_read_until(&mut early, "early", &mut e, 60, &published).await;
    ws_read_until(&mut late, "late", &mut l, 60, &published).await;
    // A state channel's queue may conflate a busy reader's values: then
    // the next one is whole. Otherwise every update is a delta.
    e.assert_delta_exactly_when_consecutive("early");
    l.assert_delta_exactly_when_consecutive("late");
    assert!(l.forms[0].0 > 20, "late joined after #20");
    assert!(e.deltas >= 10, "deltas {:?}", e.forms);

    // A subscriber that didn't ask gets whole values only.
    let mut p = Reader::default();
    ws_read_until(&mut plain, "plain", &mut p, 60, &published).await;
    assert_eq!(p.deltas, 0);

    let saved = gw
        .metric(
            "pollbridge_delta_bytes_saved_total",
            &[("transport", "websocket")],
        )
        .await
        .unwrap_or(0.0);
    assert!(saved > 500.0 * e.deltas as f64, "bytes saved {saved}");
    let deltas = gw
        .metric(
            "pollbridge_delta_deliveries_total",
            &[("transport", "websocket"), ("form", "delta")],
        )
        .await
        .unwrap_or(0.0);
    assert_eq!(deltas as usize, e.deltas + l.deltas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_resume_gets_a_whole_value_first() {
    let gw = gateway().await;
    let mut published = HashMap::new();
    let mut ws = ws_subscribe(&gw, "score.r", json!({})).await;
    publish_range(&gw, "score.r", 1, 10, 1, &mut published).await;
    let mut r = Reader::default();
    ws_read_until(&mut ws, "first", &mut r, 10, &published).await;
    ws.close().await;

    publish_range(&gw, "score.r", 11, 12, 1, &mut published).await;
    // Resume from 10 (the client holds #10); the state channel replays #12.
    let mut again = ws_subscribe(&gw, "score.r", json!({"since": 10})).await;
    let env = again.next_envelope(T5).await;
    assert!(
        env.get("data").is_some(),
        "first after a resume is whole: {env}"
    );
    publish_range(&gw, "score.r", 13, 20, 1, &mut published).await;
    let mut again_r = Reader::default();
    again_r.apply("resumed", &env, &published);
    ws_read_until(&mut again, "resumed", &mut again_r, 20, &published).await;
    again_r.assert_delta_exactly_when_consecutive("resumed");

    // The same over the handshake URL flag.
    let mut url = WsClient::connect(&gw.ws_url("/rt/ws/score.r?delta=1")).await;
    url.expect_control("subscribed", T5).await;
    publish_range(&gw, "score.r", 21, 24, 1, &mut published).await;
    let mut u = Reader::default();
    ws_read_until(&mut url, "url", &mut u, 24, &published).await;
    u.assert_delta_exactly_when_consecutive("url");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_subscribers_get_deltas_only_against_what_they_hold() {
    let gw = gateway().await;
    let mut published = HashMap::new();
    let mut ws = ws_subscribe(&gw, "tick.x", json!({})).await;
    let mut sse = SseClient::open(gw.public, "/rt/sse/tick.x?delta=1", &[]).await;
    // 60 updates over ~600 ms: the 100 ms throttle skips most of them, so
    // the next value sent is rarely the successor of the one held.
    for i in 1..=60u64 {
        publish_range(&gw, "tick.x", i, i, 1, &mut published).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut w = Reader::default();
    ws_read_until(&mut ws, "ws", &mut w, 60, &published).await;
    let mut s = Reader::default();
    loop {
        let ev = sse.expect_event(T10).await;
        if ev.event.is_some() {
            continue;
        }
        if s.apply("sse", &ev.json(), &published) >= 60 {
            break;
        }
    }
    for (who, r) in [("ws", &w), ("sse", &s)] {
        assert!(
            r.forms.len() < 60,
            "{who}: the throttle conflated: {:?}",
            r.forms
        );
        r.assert_delta_exactly_when_consecutive(who);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_deltas_rebuild_every_value_and_a_reconnect_starts_whole() {
    let gw = gateway().await;
    let mut published = HashMap::new();
    let mut early = SseClient::open(gw.public, "/rt/sse/score.s?delta=1", &[]).await;
    publish_range(&gw, "score.s", 1, 15, 1, &mut published).await;
    let mut late = SseClient::open(gw.public, "/rt/sse/score.s?delta=1", &[]).await;
    publish_range(&gw, "score.s", 16, 40, 5, &mut published).await;

    async fn read(
        sse: &mut SseClient,
        who: &str,
        r: &mut Reader,
        last: u64,
        p: &HashMap<u64, Value>,
    ) -> String {
        loop {
            let ev = sse.expect_event(T10).await;
            if ev.event.is_some() {
                continue; // `conflated` on the resume: whole value next
            }
            let env = ev.json();
            // The event id is the message's cursor, delta or not.
            let id = ev
                .message_id()
                .unwrap_or_else(|| panic!("no event id: {ev:?}"));
            assert_eq!(Some(id), env["id"].as_u64());
            if r.apply(who, &env, p) >= last {
                return ev.id.expect("id");
            }
        }
    }
    let (mut e, mut l) = (Reader::default(), Reader::default());
    let last_event_id = read(&mut early, "early", &mut e, 40, &published).await;
    read(&mut late, "late", &mut l, 40, &published).await;
    e.assert_delta_exactly_when_consecutive("early");
    l.assert_delta_exactly_when_consecutive("late");
    assert!(l.forms[0].0 > 15, "late joined after #15");

    // A browser's reconnect: Last-Event-ID, first value whole.
    drop(early);
    publish_range(&gw, "score.s", 41, 43, 1, &mut published).await;
    let mut back = SseClient::open(
        gw.public,
        "/rt/sse/score.s?delta=1",
        &[("Last-Event-ID", &last_event_id)],
    )
    .await;
    let mut b = Reader::default();
    read(&mut back, "back", &mut b, 43, &published).await;
    publish_range(&gw, "score.s", 44, 46, 1, &mut published).await;
    read(&mut back, "back", &mut b, 46, &published).await;
    b.assert_delta_exactly_when_consecutive("back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_deltas_that_chain_from_the_cursor_else_whole() {
    let gw = gateway().await;
    let mut published = HashMap::new();
    publish_range(&gw, "score.p", 1, 1, 1, &mut published).await;
    let mut r = Reader::default();
    // No cursor yet: whole.
    let (status, body) = gw.poll("score.p", "since=0&delta=1&timeout=0").await;
    assert_eq!(status, 200, "{body}");
    let mut cursor = body["cursor"].as_str().expect("cursor").to_string();
    for env in body["messages"].as_array().unwrap() {
        r.apply("poll", env, &published);
    }
    assert_eq!(r.wholes, 1);

    // One update per poll: each answer is a delta from the cursor (or
    // whole where the patch can't say it).
    for i in 2..=30u64 {
        publish_range(&gw, "score.p", i, i, 1, &mut published).await;
        let (status, body) = gw
            .poll("score.p", &format!("since={cursor}&delta=1&timeout=0"))
            .await;
        assert_eq!(status, 200, "{body}");
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 1, "{body}");
        r.apply("poll", &msgs[0], &published);
        cursor = body["cursor"].as_str().unwrap().to_string();
    }
    assert_eq!((r.wholes, r.deltas), (1, 29), "{:?}", r.forms);

    // Two behind: the state channel answers the latest, conflated, whole.
    publish_range(&gw, "score.p", 31, 32, 1, &mut published).await;
    let (_, body) = gw
        .poll("score.p", &format!("since={cursor}&delta=1&timeout=0"))
        .await;
    let env = &body["messages"][0];
    assert!(
        env.get("data").is_some(),
        "not chained from the cursor: whole: {body}"
    );
    r.apply("poll", env, &published);
    cursor = body["cursor"].as_str().unwrap().to_string();

    // A held poll answered by a live delta.
    let poll = {
        let url = gw.public_url(&format!(
            "/rt/poll/score.p?since={cursor}&delta=1&timeout=10"
        ));
        tokio::spawn(async move { get(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_range(&gw, "score.p", 33, 33, 1, &mut published).await;
    let answer = poll.await.unwrap().json();
    let env = &answer["messages"][0];
    assert_eq!(env["base"], 32, "{answer}");
    r.apply("held", env, &published);

    // A plain id (no epoch) is not enough to trust the base: whole.
    publish_range(&gw, "score.p", 34, 34, 1, &mut published).await;
    let (_, body) = gw.poll("score.p", "since=33&delta=1&timeout=0").await;
    assert!(body["messages"][0].get("data").is_some(), "{body}");
    let saved = gw
        .metric(
            "pollbridge_delta_bytes_saved_total",
            &[("transport", "longpoll")],
        )
        .await
        .unwrap_or(0.0);
    assert!(saved > 500.0 * 29.0, "bytes saved {saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_channels_send_whole_values_to_delta_subscribers() {
    let gw = gateway().await;
    let mut published = HashMap::new();
    let mut ws = ws_subscribe(&gw, "news", json!({})).await;
    let mut sse = SseClient::open(gw.public, "/rt/sse/news?delta=1", &[]).await;
    publish_range(&gw, "news", 1, 10, 1, &mut published).await;
    let mut w = Reader::default();
    ws_read_until(&mut ws, "ws", &mut w, 10, &published).await;
    assert_eq!(
        (w.wholes, w.deltas),
        (10, 0),
        "a stream channel has every value, whole"
    );
    let mut s = Reader::default();
    for _ in 0..10 {
        s.apply("sse", &sse.expect_event(T10).await.json(), &published);
    }
    assert_eq!((s.wholes, s.deltas), (10, 0));
}

/// A WebSocket delta subscriber keeps direct mode: once it holds a value,
/// publishers write each message's shared delta frame to its socket
/// themselves (`pollbridge_delta_direct_deliveries_total`), one at a time
/// and in batches; a value with no delta (not smaller than itself) ends
/// direct mode, goes out whole from the connection's task, and direct
/// deltas resume after it. Every value is rebuilt and checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_deltas_keep_direct_mode_and_stay_exact() {
    // No throttled channel: a throttling rule anywhere keeps every
    // session out of direct mode.
    let gw = Gateway::start_with_config(
        "[[channels]]\npattern = \"score.*\"\nmode = \"state\"\n",
        &[],
    )
    .await;
    let channel = "score.direct";
    let mut published = HashMap::new();
    let mut ws = ws_subscribe(&gw, channel, json!({})).await;
    let mut r = Reader::default();
    let direct = || async {
        gw.metric("pollbridge_delta_direct_deliveries_total", &[])
            .await
            .expect("the series exists from startup")
    };
    assert_eq!(direct().await, 0.0);

    // One at a time, each read before the next is published: the
    // connection is idle (its socket lent) whenever a value arrives.
    for n in 1..=30 {
        publish_range(&gw, channel, n, n, 1, &mut published).await;
        ws_read_until(&mut ws, "one by one", &mut r, n, &published).await;
    }
    r.assert_delta_exactly_when_consecutive("one by one");
    assert_eq!(r.deltas, 29);
    // The first value went whole from the connection's task; the deltas
    // after it from the publishers. (One may race the task's return to
    // direct mode after a write of its own: it is then queued and sent
    // by the task, still as a delta.)
    let after_singles = direct().await;
    assert!(after_singles >= 27.0, "direct deltas: {after_singles}");

    // Batches: several deltas chained in one write.
    publish_range(&gw, channel, 31, 60, 6, &mut published).await;
    ws_read_until(&mut ws, "batches", &mut r, 60, &published).await;
    r.assert_delta_exactly_when_consecutive("batches");

    // A value with no smaller delta: whole, and deltas resume after it.
    let reset = json!({"reset": true});
    let ids = gw.publish_batch_ok(&[(channel, reset.clone())]).await;
    published.insert(ids[0], reset);
    ws_read_until(&mut ws, "reset", &mut r, ids[0], &published).await;
    assert_eq!(r.forms.last(), Some(&(ids[0], false)), "whole");
    let (wholes_before, before) = (r.wholes, direct().await);
    let next = ids[0] + 1;
    // The first value after the reset is whole too (its patch would be
    // bigger than the scoreboard), the ones after it deltas again.
    for n in 0..10 {
        let ids = gw.publish_batch_ok(&[(channel, scoreboard(100 + n))]).await;
        published.insert(ids[0], scoreboard(100 + n));
        ws_read_until(&mut ws, "after reset", &mut r, ids[0], &published).await;
    }
    assert_eq!(
        r.wholes,
        wholes_before + 1,
        "{:?}",
        &r.forms[r.forms.len() - 11..]
    );
    assert!(r.forms.iter().any(|&(id, d)| id == next + 1 && d));
    let resumed = direct().await - before;
    assert!(resumed >= 7.0, "direct deltas after the reset: {resumed}");

    let deltas = gw
        .metric(
            "pollbridge_delta_deliveries_total",
            &[("transport", "websocket"), ("form", "delta")],
        )
        .await
        .unwrap_or(0.0);
    assert_eq!(deltas as usize, r.deltas);
}
