//! The legacy polling bridge (`[[bridge]]`): the gateway alone polls the
//! backend's polling URL, publishes each change on a channel, and answers
//! the old polling browsers from its own copy (ETag, 304, hold), so the
//! backend sees one request per interval however many browsers poll.
//!
//! The backend is [`ScoresUpstream`], in this process; the legacy browsers
//! are keep-alive [`RawHttpConn`]s that remember their ETag.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::bridge_upstream::{html_body, scores_body, ScoresUpstream, SCORES_PATH};
use common::*;
use serde_json::{json, Value};

/// The bridge's polling interval in every test here.
const INTERVAL: Duration = Duration::from_millis(100);
/// Leeway for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(250);

/// A gateway config bridging `/api/scores` to channel `scores` every 100 ms,
/// plus `extra` lines for the `[[bridge]]` table.
fn bridge_config(upstream: &str, extra: &str) -> String {
    format!(
        "upstream = \"{upstream}\"\n\n[[bridge]]\npath = \"{SCORES_PATH}\"\n\
         channel = \"scores\"\ninterval = \"100ms\"\n{extra}\n"
    )
}

async fn bridged_gateway(upstream: &str, extra: &str) -> Gateway {
    Gateway::builder()
        .config(&bridge_config(upstream, extra))
        .start()
        .await
}

/// `"pb-<id>"` → id. A suffix after the id (`"pb-<id>-<more>"`) is
/// allowed: what the tests rely on is the message id in it.
fn etag_id(etag: &str) -> u64 {
    etag.strip_prefix("\"pb-")
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|rest| {
            let (id, more) = rest.split_once('-').unwrap_or((rest, "x"));
            let more_ok = !more.is_empty() && !more.contains(['"', ' ', ',']);
            id.parse().ok().filter(|_| more_ok)
        })
        .unwrap_or_else(|| panic!("ETag {etag:?} is not \"pb-<message id>\""))
}

/// `pollbridge_bridge_upstream_requests_total{bridge="scores",result}`.
async fn upstream_metric(gw: &Gateway, result: &str) -> f64 {
    gw.metric(
        "pollbridge_bridge_upstream_requests_total",
        &[("bridge", "scores"), ("result", result)],
    )
    .await
    .unwrap_or(0.0)
}

/// `pollbridge_bridge_client_polls_total{bridge="scores",result}`.
async fn client_metric(gw: &Gateway, result: &str) -> f64 {
    gw.metric(
        "pollbridge_bridge_client_polls_total",
        &[("bridge", "scores"), ("result", result)],
    )
    .await
    .unwrap_or(0.0)
}

/// An old polling page: one keep-alive connection, `GET /api/scores?_=N`
/// (a cache buster, as jQuery adds) with `If-None-Match` once it has an
/// ETag, like a browser revalidating.
struct LegacyClient {
    conn: RawHttpConn,
    /// `Authorization` sent with every poll (and expected in the body).
    auth: Option<String>,
    etag: Option<String>,
    sent: u64,
    first_sent: Option<Instant>,
    /// Every distinct version seen, in order, with the ETag it came with.
    versions: Vec<(u64, String)>,
    bodies: u64,
    not_modified: u64,
}

impl LegacyClient {
    async fn connect(addr: SocketAddr, auth: Option<&str>) -> LegacyClient {
        LegacyClient {
            conn: RawHttpConn::connect(addr)
                .await
                .expect("connect a legacy client"),
            auth: auth.map(str::to_string),
            etag: None,
            sent: 0,
            first_sent: None,
            versions: Vec::new(),
            bodies: 0,
            not_modified: 0,
        }
    }

    async fn send(&mut self) -> io::Result<()> {
        self.sent += 1;
        let path = format!("{SCORES_PATH}?_={}", self.sent);
        let mut headers = vec![("Accept", "application/json")];
        if let Some(etag) = &self.etag {
            headers.push(("If-None-Match", etag.as_str()));
        }
        if let Some(auth) = &self.auth {
            headers.push(("Authorization", auth.as_str()));
        }
        self.first_sent.get_or_insert_with(Instant::now);
        self.conn.send_request("GET", &path, &headers, None).await
    }

    /// Reads the answer to the poll sent last and checks it: `200` with
    /// this client's body and a `"pb-<id>"` ETag, or `304` for its ETag.
    async fn receive(&mut self) -> Response {
        let r = self
            .conn
            .read_response("GET")
            .await
            .unwrap_or_else(|e| panic!("legacy poll {} ({:?}): {e}", self.sent, self.auth));
        let etag = r.header("etag").map(str::to_string);
        match r.status() {
            200 => {
                let etag = etag.unwrap_or_else(|| panic!("200 without an ETag: {:?}", r.head));
                etag_id(&etag);
                assert_eq!(
                    r.header("content-type"),
                    Some("application/json"),
                    "{:?}",
                    r.head
                );
                let body = r.json();
                let v = body["v"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no version in {body}"));
                assert_eq!(
                    body,
                    scores_body(self.auth.as_deref(), v),
                    "client {:?} got someone else's body",
                    self.auth
                );
                if self.versions.last().map(|(last, _)| *last) != Some(v) {
                    self.versions.push((v, etag.clone()));
                }
                self.etag = Some(etag);
                self.bodies += 1;
            }
            304 => {
                assert!(self.etag.is_some(), "304 to a poll without If-None-Match");
                assert_eq!(etag, self.etag, "304 with another ETag: {:?}", r.head);
                self.not_modified += 1;
            }
            other => panic!(
                "legacy poll {} ({:?}): {other} {:?} {}",
                self.sent,
                self.auth,
                r.head,
                r.text()
            ),
        }
        r
    }

    async fn poll(&mut self) -> Response {
        self.send().await.expect("send a legacy poll");
        self.receive().await
    }

    fn version_list(&self) -> Vec<u64> {
        self.versions.iter().map(|(v, _)| *v).collect()
    }
}

/// Joins a task; a panic inside it fails the test with its own message.
async fn join<T>(task: tokio::task::JoinHandle<T>, t: Duration, what: &str) -> T {
    match tokio::time::timeout(t, task).await {
        Err(_) => panic!("{what}: not done within {t:?}"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("{what}: {e}"),
        Ok(Ok(v)) => v,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_legacy_clients_cost_the_backend_one_request_per_interval() {
    const CLIENTS: usize = 300;
    const TASKS: usize = 6;
    const RUN: Duration = Duration::from_secs(5);
    const CHANGE_EVERY: Duration = Duration::from_millis(800);
    const LAST_VERSION: u64 = 6;

    let up = ScoresUpstream::start().await;
    let gw = bridged_gateway(&up.url(), "").await;
    let mut groups = Vec::new();
    for _ in 0..TASKS {
        let mut group = Vec::new();
        for _ in 0..CLIENTS / TASKS {
            group.push(LegacyClient::connect(gw.public, None).await);
        }
        groups.push(group);
    }

    let start = Instant::now();
    let end = start + RUN;
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while Instant::now() < end {
                    tick.tick().await;
                    // Every client of the group has one poll in flight at
                    // once, on its own connection.
                    for client in group.iter_mut() {
                        client.send().await.expect("send a legacy poll");
                    }
                    for client in group.iter_mut() {
                        client.receive().await;
                    }
                }
                group
            })
        })
        .collect();

    let mut changes = Vec::new();
    for v in 2..=LAST_VERSION {
        tokio::time::sleep_until((start + CHANGE_EVERY * (v as u32 - 1)).into()).await;
        up.set_version(v);
        changes.push((v, Instant::now()));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.extend(join(task, RUN + T5, "legacy clients").await);
    }
    let run_end = Instant::now();
    let polls: Vec<_> = up.polls().into_iter().filter(|p| p.at <= run_end).collect();
    let took = run_end - start;
    eprintln!(
        "{CLIENTS} clients ran {took:?}; backend polls: {}",
        polls.len()
    );

    // One backend request per interval (plus the first), however many poll.
    let first = polls.first().expect("the backend was never polled").at;
    let polling_for = run_end - first;
    let bound = (polling_for.as_millis() / INTERVAL.as_millis()) as usize + 1 + 3;
    assert!(
        polls.len() <= bound,
        "the backend saw {} requests in {polling_for:?} at a {INTERVAL:?} interval (bound {bound})",
        polls.len()
    );
    assert!(
        polls.iter().any(|p| p.status == 304),
        "the gateway's polls are conditional: the backend answered none with 304"
    );

    // Every client saw every change made after it started, in order, and
    // everybody got the same ETag for the same version.
    let mut etags: BTreeMap<u64, String> = BTreeMap::new();
    for (i, client) in clients.iter().enumerate() {
        let started = client.first_sent.expect("the client polled");
        let must_see: Vec<u64> = changes
            .iter()
            .filter(|(_, at)| *at > started)
            .map(|(v, _)| *v)
            .collect();
        let seen = client.version_list();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "client {i} saw versions out of order: {seen:?}"
        );
        for v in &must_see {
            assert!(
                seen.contains(v),
                "client {i} missed version {v}: saw {seen:?}"
            );
        }
        assert_eq!(seen.last(), Some(&LAST_VERSION), "client {i}: {seen:?}");
        for (v, etag) in &client.versions {
            let known = etags.entry(*v).or_insert_with(|| etag.clone());
            assert_eq!(known, etag, "version {v} served with two ETags");
        }
    }
    let ids: Vec<u64> = etags.values().map(|e| etag_id(e)).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ETags do not follow the versions: {etags:?}"
    );

    // Unchanged ETags were answered 304, and the gateway counted exactly
    // what the clients got.
    let bodies: u64 = clients.iter().map(|c| c.bodies).sum();
    let not_modified: u64 = clients.iter().map(|c| c.not_modified).sum();
    let sent: u64 = clients.iter().map(|c| c.sent).sum();
    eprintln!("client polls: {sent}, 200: {bodies}, 304: {not_modified}");
    assert!(
        not_modified > bodies,
        "{not_modified} 304s against {bodies} bodies"
    );
    assert_eq!(
        client_metric(&gw, "not_modified").await,
        not_modified as f64
    );
    assert_eq!(client_metric(&gw, "body").await, bodies as f64);
    assert_eq!(client_metric(&gw, "held").await, 0.0);
    assert_eq!(
        upstream_metric(&gw, "changed").await,
        LAST_VERSION as f64,
        "one publish per version"
    );
    assert!(upstream_metric(&gw, "not_modified").await >= 1.0);
    assert_eq!(upstream_metric(&gw, "error").await, 0.0);
}

#[tokio::test]
async fn subscribers_and_legacy_clients_see_the_same_changes_and_ids() {
    let up = ScoresUpstream::start().await;
    // No ETag from the backend: only the body tells a change, and an
    // identical body must not be published again.
    up.set_validators(false);
    let gw = bridged_gateway(&up.url(), "").await;

    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/scores")).await;
    ws.expect_control("subscribed", T5).await;

    let poll_url = gw.public_url("/rt/poll/scores");
    let long_poller = tokio::spawn(async move {
        let mut since = 0;
        let mut got = Vec::new();
        while got.len() < 4 {
            let r = get(&format!("{poll_url}?since={since}&timeout=5")).await;
            assert_eq!(r.status(), 200, "{}", r.text());
            let body = r.json();
            assert_eq!(body["truncated"], false, "{body}");
            assert!(body.get("conflated").is_none(), "{body}");
            for m in body["messages"].as_array().unwrap() {
                assert_eq!(m["channel"], "scores", "{m}");
                got.push((m["id"].as_u64().unwrap(), m["data"].clone()));
            }
            since = body["last_id"].as_u64().unwrap();
        }
        got
    });

    let addr = gw.public;
    let legacy = tokio::spawn(async move {
        let mut client = LegacyClient::connect(addr, None).await;
        let deadline = Instant::now() + T10;
        while client.version_list().last() != Some(&4) && Instant::now() < deadline {
            client.poll().await;
            tokio::time::sleep(INTERVAL).await;
        }
        client
    });

    for v in 2..=4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        up.set_version(v);
    }

    let envelopes = ws.collect_envelopes(4, T5).await;
    // The backend kept answering the same body meanwhile: no repeats.
    ws.expect_no_envelope(Duration::from_millis(500)).await;
    let ws_seen: Vec<(u64, Value)> = envelopes
        .iter()
        .map(|e| {
            assert_eq!(e["channel"], "scores", "{e}");
            (e["id"].as_u64().unwrap(), e["data"].clone())
        })
        .collect();
    let expected: Vec<Value> = (1..=4).map(|v| scores_body(None, v)).collect();
    assert_eq!(
        ws_seen.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        expected,
        "WebSocket: {ws_seen:?}"
    );
    let ids: Vec<u64> = ws_seen.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids {ids:?}");

    let long_polled = join(long_poller, T10, "long-poll client").await;
    assert_eq!(long_polled, ws_seen, "long-poll and WebSocket differ");

    let client = join(legacy, T10 + T5, "legacy client").await;
    let legacy_seen: Vec<(u64, String)> = client.versions.clone();
    let legacy_ids: Vec<(u64, u64)> = legacy_seen
        .iter()
        .map(|(v, etag)| (*v, etag_id(etag)))
        .collect();
    let ws_ids: Vec<(u64, u64)> = ws_seen
        .iter()
        .map(|(id, data)| (data["v"].as_u64().unwrap(), *id))
        .collect();
    assert_eq!(
        legacy_ids, ws_ids,
        "(version, ETag id) of the legacy client vs (version, id) on WebSocket; ETags {legacy_seen:?}"
    );
    assert_eq!(client.bodies, 4, "one body per change, 304 otherwise");

    assert!(
        up.polls().iter().all(|p| p.if_none_match.is_none()),
        "the backend sent no ETag, yet the gateway sent If-None-Match"
    );
    let listed = get(&gw.admin_url("/channels")).await.json();
    let scores = listed["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "scores")
        .unwrap_or_else(|| panic!("no scores channel in {listed}"));
    assert_eq!(scores["mode"], "state", "a bridged channel: {scores}");
    assert_eq!(scores["last_id"], 4, "{scores}");

    assert_eq!(upstream_metric(&gw, "changed").await, 4.0);
    assert!(
        upstream_metric(&gw, "not_modified").await >= 3.0,
        "identical bodies count as not modified"
    );
}

#[tokio::test]
async fn hold_answers_at_the_next_change_or_304_after_the_hold_time() {
    let up = ScoresUpstream::start().await;
    let gw = bridged_gateway(&up.url(), "hold = \"2s\"").await;
    let mut client = LegacyClient::connect(gw.public, None).await;
    let r = client.poll().await;
    assert_eq!(r.status(), 200);
    assert_eq!(client.version_list(), vec![1]);

    // A current ETag: held until the backend changes.
    let held = tokio::spawn(async move {
        client.send().await.expect("send the held poll");
        let r = client.receive().await;
        (client, r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!held.is_finished(), "a current poll was answered at once");
    let changed_at = Instant::now();
    up.set_version(2);
    let (mut client, r, answered_at) = join(held, T5, "held poll").await;
    let after = answered_at - changed_at;
    assert_eq!(r.status(), 200, "{:?}", r.head);
    assert_eq!(r.json(), json!({"v": 2}));
    assert_eq!(client.version_list(), vec![1, 2]);
    assert!(
        after <= INTERVAL + SLACK,
        "held poll answered {after:?} after the change (interval {INTERVAL:?})"
    );

    // No change: 304 when the hold ends.
    let started = Instant::now();
    let r = client.poll().await;
    let took = started.elapsed();
    assert_eq!(r.status(), 304, "{:?}", r.head);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(2) + SLACK * 2,
        "held 304 after {took:?} (hold 2s)"
    );

    // Without If-None-Match, no hold.
    let started = Instant::now();
    let r = http("GET", &gw.public_url(SCORES_PATH), &[], None).await;
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(500));

    assert_eq!(client_metric(&gw, "held").await, 1.0);
    assert_eq!(client_metric(&gw, "not_modified").await, 1.0);
    assert_eq!(client_metric(&gw, "body").await, 2.0);
}

#[tokio::test]
async fn vary_by_authorization_keeps_users_apart() {
    let up = ScoresUpstream::start().await;
    let gw = bridged_gateway(&up.url(), "vary_by = \"Authorization\"").await;
    let users = ["Bearer alice", "Bearer bob"];
    let mut alice = LegacyClient::connect(gw.public, Some(users[0])).await;
    let mut bob = LegacyClient::connect(gw.public, Some(users[1])).await;

    let start = Instant::now();
    let mut next_version = 2;
    while start.elapsed() < Duration::from_millis(1600) {
        if start.elapsed() >= Duration::from_millis(500) * (next_version as u32 - 1)
            && next_version <= 3
        {
            up.set_version(next_version);
            next_version += 1;
        }
        // Both in flight together; `receive` checks each body names its
        // own user.
        alice.send().await.unwrap();
        bob.send().await.unwrap();
        alice.receive().await;
        bob.receive().await;
        tokio::time::sleep(INTERVAL).await;
    }
    assert_eq!(alice.version_list(), vec![1, 2, 3]);
    assert_eq!(bob.version_list(), vec![1, 2, 3]);

    // The backend was always asked on behalf of one of them.
    let polls = up.polls();
    let asked_for: BTreeSet<Option<String>> =
        polls.iter().map(|p| p.authorization.clone()).collect();
    let both: BTreeSet<Option<String>> = users.iter().map(|u| Some(u.to_string())).collect();
    assert_eq!(asked_for, both, "Authorization values the backend saw");

    // One channel per user, `scores.<32 hex>`, each with only its user's data.
    let r = get(&gw.admin_url("/channels")).await;
    let listed = r.json();
    let variants: Vec<String> = listed["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["channel"].as_str())
        .filter(|c| c.starts_with("scores"))
        .map(str::to_string)
        .collect();
    assert_eq!(variants.len(), 2, "channels: {listed}");
    let mut owners = BTreeSet::new();
    for channel in &variants {
        let hash = channel
            .strip_prefix("scores.")
            .unwrap_or_else(|| panic!("variant channel {channel:?} is not scores.<hash>"));
        assert!(
            hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "variant channel {channel:?}"
        );
        let (status, body) = gw.poll(channel, "since=0&timeout=0").await;
        assert_eq!(status, 200, "{body}");
        let mut users_here = BTreeSet::new();
        for m in body["messages"].as_array().unwrap() {
            users_here.insert(m["data"]["user"].as_str().unwrap().to_string());
        }
        assert_eq!(users_here.len(), 1, "{channel}: {body}");
        owners.extend(users_here);
    }
    assert_eq!(owners.len(), 2, "each user has a channel: {owners:?}");
}

#[tokio::test]
async fn backend_failing_after_a_good_poll_serves_the_last_good_copy_with_age() {
    let up = ScoresUpstream::start().await;
    let gw = bridged_gateway(&up.url(), "").await;
    let url = gw.public_url(SCORES_PATH);
    let good = http("GET", &url, &[], None).await;
    assert_eq!(good.status(), 200, "{}", good.text());
    assert_eq!(good.json(), json!({"v": 1}));
    assert_eq!(good.header("age"), None, "a fresh copy has no Age");
    let etag = good.header("etag").unwrap().to_string();

    // The backend answers 500.
    let failing_since = Instant::now();
    up.set_failing(true);
    eventually(T5, "the gateway sees the backend fail", || async {
        (upstream_metric(&gw, "error").await >= 1.0).then_some(())
    })
    .await;
    let r = http("GET", &url, &[], None).await;
    assert_eq!(r.status(), 200, "{:?} {}", r.head, r.text());
    assert_eq!(r.body, good.body);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(
        r.header("age").is_some_and(|a| a.parse::<u64>().is_ok()),
        "stale copy without an Age: {:?}",
        r.head
    );

    // The backend is gone (connection refused).
    let errors = upstream_metric(&gw, "error").await;
    up.stopped().await;
    eventually(T10, "the gateway sees the backend gone", || async {
        (upstream_metric(&gw, "error").await > errors).then_some(())
    })
    .await;
    let wait = Duration::from_millis(1500).saturating_sub(failing_since.elapsed());
    tokio::time::sleep(wait).await;
    let r = http("GET", &url, &[], None).await;
    assert_eq!(r.status(), 200, "{:?} {}", r.head, r.text());
    assert_eq!(r.body, good.body);
    let age: u64 = r
        .header("age")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("stale copy without an Age: {:?}", r.head));
    assert!(age >= 1, "Age {age} for a copy last confirmed 1.5 s ago");
    let r = http("GET", &url, &[("If-None-Match", &etag)], None).await;
    assert_eq!(r.status(), 304, "{:?}", r.head);
}

#[tokio::test]
async fn backend_unreachable_from_the_start_is_a_502_json() {
    let dead = common::upstream::dead_addr();
    let gw = bridged_gateway(&format!("http://{dead}"), "").await;
    let started = Instant::now();
    let r = http("GET", &gw.public_url(SCORES_PATH), &[], None).await;
    assert_eq!(r.status(), 502, "{:?} {}", r.head, r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.head
    );
    let body = r.json();
    assert!(body.is_object(), "{body}");
    assert!(started.elapsed() < T5, "502 after {:?}", started.elapsed());
    assert!(upstream_metric(&gw, "error").await >= 1.0);
}

#[tokio::test]
async fn backend_error_from_the_start_is_passed_through() {
    let up = ScoresUpstream::start().await;
    up.set_failing(true);
    let gw = bridged_gateway(&up.url(), "").await;
    let r = http("GET", &gw.public_url(SCORES_PATH), &[], None).await;
    assert_eq!(r.status(), 500, "{:?} {}", r.head, r.text());
    assert_eq!(r.json(), json!({"error": "scores backend failed"}));
    assert_eq!(r.header("etag"), None);

    // It recovers by itself once the backend does.
    up.set_failing(false);
    let body = eventually(T10, "the bridge recovers", || async {
        let r = http("GET", &gw.public_url(SCORES_PATH), &[], None).await;
        (r.status() == 200).then(|| r.json())
    })
    .await;
    assert_eq!(body, json!({"v": 1}));
}

#[tokio::test]
async fn slow_backend_gets_one_request_at_a_time() {
    const DELAY: Duration = Duration::from_millis(500);
    let up = ScoresUpstream::start().await;
    up.set_delay(DELAY);
    let gw = bridged_gateway(&up.url(), "").await;

    // Twenty first-time clients at once wait for, and share, one request.
    let started = Instant::now();
    let mut first = Vec::new();
    for _ in 0..20 {
        let url = gw.public_url(SCORES_PATH);
        first.push(tokio::spawn(async move {
            let r = http("GET", &url, &[], None).await;
            (r, Instant::now())
        }));
    }
    let mut earliest = None;
    for task in first {
        let (r, at) = join(task, T10, "first poll").await;
        assert_eq!(r.status(), 200, "{:?} {}", r.head, r.text());
        assert_eq!(r.json(), json!({"v": 1}));
        earliest = Some(earliest.map_or(at, |e: Instant| e.min(at)));
    }
    let earliest = earliest.unwrap();
    assert!(
        earliest - started >= DELAY - Duration::from_millis(50),
        "answered after {:?}, before the backend did",
        earliest - started
    );
    let before_answer = up.polls().iter().filter(|p| p.at < earliest).count();
    assert_eq!(before_answer, 1, "backend requests before the first answer");

    // Keep polling for a while, with a change in the middle.
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(LegacyClient::connect(gw.public, None).await);
    }
    let until = Instant::now() + Duration::from_millis(2500);
    let mut changed = false;
    while Instant::now() < until {
        if !changed && until - Instant::now() < Duration::from_millis(1600) {
            up.set_version(2);
            changed = true;
        }
        for c in clients.iter_mut() {
            c.send().await.unwrap();
        }
        for c in clients.iter_mut() {
            c.receive().await;
        }
        tokio::time::sleep(INTERVAL).await;
    }
    let took = started.elapsed();
    for c in &clients {
        assert_eq!(c.version_list(), vec![1, 2]);
    }
    assert_eq!(
        up.max_in_flight(),
        1,
        "requests in flight at once at the backend"
    );
    let polls = up.poll_count();
    let bound = (took.as_millis() / DELAY.as_millis()) as usize + 2;
    assert!(
        polls <= bound,
        "{polls} backend requests in {took:?} with {DELAY:?} each (bound {bound})"
    );
}

#[tokio::test]
async fn other_methods_and_paths_are_proxied() {
    let up = ScoresUpstream::start().await;
    let gw = bridged_gateway(&up.url(), "").await;

    for method in ["POST", "PUT", "DELETE"] {
        let r = http(
            method,
            &gw.public_url("/api/scores?from=test"),
            &[("Content-Type", "application/json")],
            Some(br#"{"home":1}"#),
        )
        .await;
        assert_eq!(r.status(), 200, "{method}: {:?} {}", r.head, r.text());
        assert_eq!(
            r.header("x-upstream"),
            Some("scores"),
            "{method}: {:?}",
            r.head
        );
        assert_eq!(
            r.json(),
            json!({"method": method, "target": "/api/scores?from=test", "body": "{\"home\":1}"}),
        );
    }
    let r = get(&gw.public_url("/api/other?x=1")).await;
    assert_eq!(r.status(), 200, "{:?} {}", r.head, r.text());
    assert_eq!(r.header("x-upstream"), Some("scores"));
    assert_eq!(r.json()["target"], "/api/other?x=1");

    // The backend saw exactly those, and no GET of the bridged path yet.
    let seen: Vec<(String, String)> = up
        .seen()
        .into_iter()
        .map(|s| (s.method, s.target))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("POST".into(), "/api/scores?from=test".into()),
            ("PUT".into(), "/api/scores?from=test".into()),
            ("DELETE".into(), "/api/scores?from=test".into()),
            ("GET".into(), "/api/other?x=1".into()),
        ]
    );

    // GET (and HEAD) of the bridged path is the bridge's answer.
    let r = get(&gw.public_url(SCORES_PATH)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("x-upstream"), None, "{:?}", r.head);
    assert_eq!(etag_id(r.header("etag").unwrap()), 1);
    let r = http("HEAD", &gw.public_url(SCORES_PATH), &[], None).await;
    assert_eq!(r.status(), 200, "{:?}", r.head);
    assert_eq!(r.header("x-upstream"), None, "{:?}", r.head);
    assert_eq!(r.header("etag").map(etag_id), Some(1), "{:?}", r.head);
    assert!(
        up.seen().iter().all(|s| s.method != "HEAD"),
        "HEAD reached the backend"
    );
    let polls = up.polls();
    assert!(
        !polls.is_empty() && polls.iter().all(|p| p.target == SCORES_PATH),
        "the bridge polls the path without the client's query: {polls:?}"
    );
}

#[tokio::test]
async fn backend_hanging_from_the_start_is_a_504_json() {
    let hanging = common::upstream::hanging_upstream().await;
    let gw = bridged_gateway(&hanging.url(), "\n[proxy]\ntimeout = \"300ms\"").await;
    let started = Instant::now();
    let r = http("GET", &gw.public_url(SCORES_PATH), &[], None).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 504, "{:?} {}", r.head, r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.head
    );
    assert!(r.json().is_object());
    assert!(took < Duration::from_secs(3), "504 after {took:?}");
}

#[tokio::test]
async fn a_subscriber_keeps_the_feed_polled_without_legacy_polls() {
    let up = ScoresUpstream::start().await;
    let gw = bridged_gateway(&up.url(), "idle_timeout = \"300ms\"").await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/scores")).await;
    ws.expect_control("subscribed", T5).await;
    let r = get(&gw.public_url(SCORES_PATH)).await;
    assert_eq!(r.status(), 200);
    let first = ws.next_envelope(T5).await;
    assert_envelope(&first, "scores", 1, &json!({"v": 1}));

    // Long past idle_timeout with no legacy poll: the subscriber still
    // gets the next change.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    up.set_version(2);
    let next = ws.next_envelope(T5).await;
    assert_envelope(&next, "scores", 2, &json!({"v": 2}));
}

#[tokio::test]
async fn an_idle_feed_stops_polling_and_resumes_where_it_was() {
    let up = ScoresUpstream::start().await;
    up.set_html(true);
    let gw = bridged_gateway(&up.url(), "idle_timeout = \"300ms\"").await;
    let url = gw.public_url(SCORES_PATH);
    let r = http("GET", &url, &[], None).await;
    assert_eq!(r.status(), 200, "{:?} {}", r.head, r.text());
    assert_eq!(r.text(), html_body(1));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let etag = r.header("etag").unwrap().to_string();
    assert_eq!(etag_id(&etag), 1);
    // Non-JSON bodies are published as strings.
    let (_, body) = gw.poll("scores", "since=0&timeout=0").await;
    assert_eq!(body["messages"][0]["data"], json!(html_body(1)), "{body}");

    // Nobody asks: the poller stops.
    let stopped = eventually(T5, "the idle poller stops", || async {
        let before = up.poll_count();
        tokio::time::sleep(Duration::from_millis(400)).await;
        (up.poll_count() == before).then_some(before)
    })
    .await;
    assert!(stopped >= 2, "{stopped} backend polls before going idle");

    // The next poll starts it again, from the channel's latest copy: same
    // body, same ETag, same content type.
    let r = http("GET", &url, &[], None).await;
    assert_eq!(r.status(), 200, "{:?} {}", r.head, r.text());
    assert_eq!(r.text(), html_body(1));
    assert_eq!(r.header("etag"), Some(etag.as_str()), "{:?}", r.head);
    assert_eq!(
        r.header("content-type"),
        Some("text/html; charset=utf-8"),
        "content type after the feed restarted"
    );
    let r = http("GET", &url, &[("If-None-Match", &etag)], None).await;
    assert_eq!(r.status(), 304, "{:?}", r.head);
    up.set_version(2);
    let r = eventually(T5, "the restarted feed sees the change", || async {
        let r = http("GET", &url, &[("If-None-Match", &etag)], None).await;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(r.text(), html_body(2));
    assert_eq!(r.header("etag").map(etag_id), Some(2), "{:?}", r.head);
    assert!(up.poll_count() > stopped, "polling resumed");
}

#[tokio::test]
async fn a_websocket_subscriber_alone_gets_the_backend_feed() {
    // Every page has moved to WebSocket and the gateway was restarted: no
    // legacy poll will ever come. The subscriber still wants the feed.
    let up = ScoresUpstream::start().await;
    let gw = bridged_gateway(&up.url(), "").await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/scores")).await;
    ws.expect_control("subscribed", T5).await;
    // The subscription starts the poller: the current answer, then changes.
    expect_version(&mut ws, &up, 1).await;
    up.set_version(2);
    expect_version(&mut ws, &up, 2).await;
}

/// The next WebSocket frame is the envelope of version `v` (id `v`).
async fn expect_version(ws: &mut WsClient, up: &ScoresUpstream, v: u64) {
    match ws.recv(Duration::from_secs(2)).await {
        WsEvent::Json(e) => assert_envelope(&e, "scores", v, &json!({"v": v})),
        other => panic!(
            "a subscriber of a bridged channel waiting for v{v} got {other:?} within 2 s; \
             backend polls so far: {}",
            up.poll_count()
        ),
    }
}

#[tokio::test]
async fn an_etag_from_before_a_gateway_restart_is_not_taken_as_current() {
    let up = ScoresUpstream::start().await;
    let config = bridge_config(&up.url(), "");
    let first = Gateway::builder().config(&config).start().await;
    let r = get(&first.public_url(SCORES_PATH)).await;
    assert_eq!(r.json(), json!({"v": 1}));
    let etag = r.header("etag").unwrap().to_string();
    drop(first);

    // The backend changes while the gateway is being restarted; the
    // browser revalidates the copy it has.
    up.set_version(2);
    let second = Gateway::builder().config(&config).start().await;
    let r = http(
        "GET",
        &second.public_url(SCORES_PATH),
        &[("If-None-Match", &etag)],
        None,
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "If-None-Match {etag} (the v1 copy) after a restart, backend at v2: got {} ETag {:?}",
        r.status(),
        r.header("etag")
    );
    assert_eq!(r.json(), json!({"v": 2}));
}
