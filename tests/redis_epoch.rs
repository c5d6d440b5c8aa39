//! Redis losing data never means a silent gap (issue 22): against real
//! `redis-server` processes, the failures that used to skip messages
//! unseen — an empty restart whose new ids overtake the last delivered id,
//! `FLUSHALL` with the connections up, a failover to a replica that lagged —
//! and, on every transport, every acknowledged publish is either delivered
//! once and in order or preceded by one `truncated` notice. Cursors taken
//! before the loss are told `truncated` on the other node too.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::*;
use common::*;
use serde_json::{json, Value};

/// What a client saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Msg(u64),
    Truncated,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Node 2 notices the lost connection at once but reconnects only after
/// 1.5–3 s: long enough for node 1 to publish past its last id first.
const SLOW_RESUBSCRIBE: &[&str] = &[
    "--redis-health-interval",
    "200ms",
    "--redis-command-timeout",
    "1s",
    "--redis-connect-timeout",
    "1s",
    "--redis-reconnect-min-delay",
    "3s",
    "--redis-reconnect-max-delay",
    "4s",
];

/// Node 2, whose clients are checked: `recovery`, and WebSocket sessions
/// that park again soon after they had something to do (the default,
/// 30 s, would keep the session running past the loss), so the loss
/// reaches a parked session.
async fn start_node2(bus: &[String], recovery: &[&str]) -> Gateway {
    let mut args = recovery.to_vec();
    args.extend(["--ws-park-after", "200ms"]);
    start_gateway(bus, &args).await
}

/// `[Msg(before…), Truncated, Msg(after…)]`.
fn told(before: impl IntoIterator<Item = u64>, after: impl IntoIterator<Item = u64>) -> Vec<Seen> {
    let mut want: Vec<Seen> = before.into_iter().map(Seen::Msg).collect();
    want.push(Seen::Truncated);
    want.extend(after.into_iter().map(Seen::Msg));
    want
}

/// The three clients on one node, each logging what it saw.
struct Clients {
    ws: WsClient,
    ws_log: Vec<Seen>,
    ws_epoch: Option<String>,
    sse: SseClient,
    sse_log: Vec<Seen>,
    sse_epoch: Option<String>,
    poll_log: Log,
    poll_cursor: Arc<Mutex<String>>,
    poll_stop: Arc<std::sync::atomic::AtomicBool>,
    poll_task: tokio::task::JoinHandle<()>,
}

impl Clients {
    async fn open(gw: &Gateway, channel: &str) -> Clients {
        let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/{channel}"))).await;
        ws.expect_control("subscribed", T5).await;
        let sse = SseClient::open(gw.public, &format!("/rt/sse/{channel}"), &[]).await;
        let poll_log = Log::default();
        // From the start: the channel is new, and a poll without `since`
        // would only wait for what comes after the one it races with.
        let poll_cursor = Arc::new(Mutex::new("0".to_string()));
        let poll_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poll_task = tokio::spawn(long_poller(
            gw.public_url(&format!("/rt/poll/{channel}")),
            poll_log.clone(),
            poll_cursor.clone(),
            poll_stop.clone(),
        ));
        Clients {
            ws,
            ws_log: Vec::new(),
            ws_epoch: None,
            sse,
            sse_log: Vec::new(),
            sse_epoch: None,
            poll_log,
            poll_cursor,
            poll_stop,
            poll_task,
        }
    }

    /// Reads until every client's log is `want` (panics on anything else
    /// or after `t`), then checks nothing more comes for a moment.
    async fn expect(&mut self, want: &[Seen], t: Duration) {
        read_ws(&mut self.ws, &mut self.ws_log, &mut self.ws_epoch, want, t).await;
        assert!(
            saw_as_told(&self.ws_log, want),
            "WebSocket: {:?}, want {want:?}",
            self.ws_log
        );
        read_sse(
            &mut self.sse,
            &mut self.sse_log,
            &mut self.sse_epoch,
            want,
            t,
        )
        .await;
        assert!(
            saw_as_told(&self.sse_log, want),
            "SSE: {:?}, want {want:?}",
            self.sse_log
        );
        let deadline = tokio::time::Instant::now() + t;
        while !saw_as_told(&self.poll_log.lock().unwrap(), want) {
            if self.poll_task.is_finished() {
                (&mut self.poll_task).await.expect("the long-poll client");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "long-poll: stuck at {:?}, cursor {:?}",
                self.poll_log.lock().unwrap(),
                self.poll_cursor()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the clients of `gw` wait on the gateway's fast paths,
    /// as idle clients do: the WebSocket session parked (no task,
    /// `transport::websocket::park`) and the long-poll parked on its
    /// connection (`transport::longpoll_park`). (The idle SSE stream is
    /// written by the publisher, `transport::sse_direct`; it has no gauge.)
    /// A loss must be told through these paths too.
    async fn on_fast_paths(&self, gw: &Gateway) {
        gw.wait_metric("pollbridge_ws_parked_connections", &[], 1.0)
            .await;
        gw.wait_metric("pollbridge_longpoll_parked_polls", &[], 1.0)
            .await;
    }

    /// The cursor the long-poll client holds.
    fn poll_cursor(&self) -> String {
        self.poll_cursor.lock().unwrap().clone()
    }

    async fn close(self) {
        self.poll_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.poll_task.abort();
        self.ws.close().await;
    }
}

/// Polls with the cursor of each answer, as a browser client does; 503s
/// (Redis down) are retried. Each poll asks to keep its connection open
/// (as browsers do), so a poll that waits is parked on it and answered by
/// the publisher (`transport::longpoll_park`), the path whose epoch check
/// these tests must reach.
async fn long_poller(
    url: String,
    log: Log,
    cursor: Arc<Mutex<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let since = cursor.lock().unwrap().clone();
        let r = http(
            "GET",
            &format!("{url}?since={since}&timeout=5"),
            &[("Connection", "keep-alive")],
            None,
        )
        .await;
        match r.status() {
            200 => {
                let body: Value = serde_json::from_slice(&r.body).expect("poll answer is JSON");
                check_poll_cursor(&since, &body);
                let mut log = log.lock().unwrap();
                if body["truncated"] == true {
                    log.push(Seen::Truncated);
                }
                for m in body["messages"].as_array().expect("messages") {
                    log.push(Seen::Msg(m["id"].as_u64().expect("id")));
                }
                let next = body["cursor"].as_str().expect("cursor").to_string();
                *cursor.lock().unwrap() = next;
            }
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            s => panic!("long-poll answered {s}: {}", r.text()),
        }
    }
}

/// The epoch part of an `N-E` cursor (`None` for a plain `N`).
fn epoch_of(cursor: &str) -> Option<&str> {
    cursor.split_once('-').map(|(_, epoch)| epoch)
}

/// A long-poll answer's cursor is `last_id` and the epoch of its messages
/// (publisher-written answers of parked polls included), and an answer in
/// another epoch than the client's cursor says `truncated`.
fn check_poll_cursor(since: &str, body: &Value) {
    let cursor = body["cursor"].as_str().expect("cursor");
    let last_id = body["last_id"].as_u64().expect("last_id");
    let epoch = epoch_of(cursor);
    if !body["messages"].as_array().expect("messages").is_empty() {
        assert!(epoch.is_some_and(|e| !e.is_empty()), "no epoch: {body}");
    }
    assert_eq!(
        cursor.split('-').next(),
        Some(last_id.to_string().as_str()),
        "{body}"
    );
    if let (Some(before), Some(now)) = (epoch_of(since), epoch) {
        assert!(
            before == now || body["truncated"] == true,
            "since={since}: another epoch untold: {body}"
        );
    }
}

/// Whether a client's `log` is what it should have seen, `want`: the same
/// first and last runs of messages, with a `truncated` notice before each
/// new sequence. Between them the log may hold more told sequences than
/// `want` (each `truncated`, then ids from 1 on): a node that delivered
/// part of a lagging replica's sequence before it noticed the ids went
/// backwards tells its clients twice, and nothing is missed untold.
fn saw_as_told(log: &[Seen], want: &[Seen]) -> bool {
    let runs = |seen: &[Seen]| -> Vec<Vec<u64>> {
        let mut runs = vec![Vec::new()];
        for s in seen {
            match s {
                Seen::Truncated => runs.push(Vec::new()),
                Seen::Msg(id) => runs.last_mut().expect("one run").push(*id),
            }
        }
        runs
    };
    let (got, want) = (runs(log), runs(want));
    if got.len() < want.len() || got.first() != want.first() || got.last() != want.last() {
        return false;
    }
    if got.len() == want.len() {
        return got == want;
    }
    // Extra told sequences sit between the first run and the last.
    let middle = &got[1..got.len() - 1];
    want[1..want.len() - 1].iter().all(|w| middle.contains(w))
        && middle
            .iter()
            .all(|run| run.iter().copied().eq(1..=run.len() as u64))
}

/// Reads WebSocket messages into `log`. `epoch`: the epoch of the
/// client's cursor, from the `subscribed` answer (whose `cursor` is
/// `last_id-epoch`) and the `truncated` notices, each of which names
/// another one.
async fn read_ws(
    ws: &mut WsClient,
    log: &mut Vec<Seen>,
    epoch: &mut Option<String>,
    want: &[Seen],
    t: Duration,
) {
    let deadline = tokio::time::Instant::now() + t;
    while !saw_as_told(log, want) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.recv(left).await {
            WsEvent::Json(v) if v.get("type").is_none() => {
                log.push(Seen::Msg(v["id"].as_u64().expect("id")))
            }
            WsEvent::Json(v) if v["type"] == "truncated" => {
                let told = v["epoch"].as_str().filter(|e| !e.is_empty());
                let told = told.unwrap_or_else(|| panic!("no epoch: {v}"));
                assert_ne!(epoch.as_deref(), Some(told), "same epoch: {v}");
                *epoch = Some(told.to_string());
                log.push(Seen::Truncated)
            }
            WsEvent::Json(v) if v["type"] == "subscribed" => {
                let last_id = v["last_id"].as_u64().expect("last_id");
                *epoch = v["epoch"].as_str().map(str::to_string);
                let cursor = match epoch {
                    Some(e) => format!("{last_id}-{e}"),
                    None => last_id.to_string(),
                };
                assert_eq!(v["cursor"], cursor, "{v}");
                if v["truncated"] == true {
                    log.push(Seen::Truncated);
                }
            }
            other => panic!("WebSocket: {other:?} after {log:?}"),
        }
    }
}

/// Reads SSE events into `log`. `epoch`: the epoch of the client's
/// cursor, from the event ids; it changes only where an `event: truncated`
/// says so (naming the new epoch).
async fn read_sse(
    sse: &mut SseClient,
    log: &mut Vec<Seen>,
    epoch: &mut Option<String>,
    want: &[Seen],
    t: Duration,
) {
    let deadline = tokio::time::Instant::now() + t;
    while !saw_as_told(log, want) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_event(left).await {
            Ok(Some(ev)) if ev.event.as_deref() == Some("truncated") => {
                // Live notices name the new epoch; one that opens a
                // resumed stream does not (docs/protocol.md).
                let told = ev.json()["epoch"].as_str().map(str::to_string);
                if told.is_some() {
                    assert_ne!(*epoch, told, "truncated in the same epoch");
                }
                *epoch = told;
                log.push(Seen::Truncated);
            }
            Ok(Some(ev)) => {
                let id = ev.json()["id"].as_u64().expect("id");
                // The event id is the cursor: the message id and its epoch
                // (publisher-written events of direct mode included).
                let cursor = ev.id.clone().expect("SSE id");
                let (n, e) = cursor.split_once('-').expect("an N-E id");
                assert_eq!(n, id.to_string(), "SSE id {cursor:?} for message {id}");
                assert!(
                    epoch.as_deref().is_none_or(|was| was == e),
                    "SSE id {cursor:?}: another epoch than {epoch:?}, untold, after {log:?}"
                );
                *epoch = Some(e.to_string());
                log.push(Seen::Msg(id));
            }
            other => panic!("SSE: {other:?} after {log:?}"),
        }
    }
}

/// Publishes `{"n": i}` for each `i`, retrying a 503 (Redis not back yet);
/// returns the acknowledged ids.
async fn publish_all(gw: &Gateway, channel: &str, n: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in n {
        let deadline = tokio::time::Instant::now() + T10;
        loop {
            let (status, body) = gw
                .publish(
                    channel,
                    json!({ "n": i }).to_string().as_bytes(),
                    "application/json",
                )
                .await;
            if status == 200 {
                ids.push(body["id"].as_u64().expect("id"));
                break;
            }
            assert_eq!(status, 503, "publish: {body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis did not come back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ids
}

/// Whether the loss gave the channel's sequence a new epoch.
#[derive(Clone, Copy, PartialEq)]
enum Sequence {
    New,
    Same,
}

/// A client that held `cursor` before the loss resumes on `gw` (another
/// node): every transport says `truncated` and replays the new sequence,
/// in an epoch other than the cursor's, the same on every transport.
async fn old_cursor_is_told(gw: &Gateway, channel: &str, cursor: &str, new: &[u64]) {
    resume_is_told(gw, channel, cursor, new, Sequence::New).await
}

/// A client that held `cursor` resumes on `gw`: every transport says
/// `truncated` and replays `new`, in one epoch (`sequence`: another than
/// the cursor's, or its own).
async fn resume_is_told(
    gw: &Gateway,
    channel: &str,
    cursor: &str,
    new: &[u64],
    sequence: Sequence,
) {
    let want = told([], new.iter().copied());
    let (status, body) = gw.poll(channel, &format!("since={cursor}&timeout=0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], true, "long-poll with {cursor}: {body}");
    check_poll_cursor(cursor, &body);
    let ids: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, new, "long-poll with {cursor}");
    let new_epoch = epoch_of(body["cursor"].as_str().unwrap()).map(str::to_string);
    assert!(new_epoch.is_some(), "{body}");
    assert_eq!(
        new_epoch.as_deref() == epoch_of(cursor),
        sequence == Sequence::Same,
        "{body}"
    );

    let mut sse = SseClient::open(
        gw.public,
        &format!("/rt/sse/{channel}"),
        &[("Last-Event-ID", cursor)],
    )
    .await;
    let (mut log, mut epoch) = (Vec::new(), epoch_of(cursor).map(str::to_string));
    read_sse(&mut sse, &mut log, &mut epoch, &want, T5).await;
    assert_eq!(log, want, "SSE resuming with {cursor}");
    assert_eq!(epoch, new_epoch, "SSE resuming with {cursor}");

    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/{channel}?since={cursor}"))).await;
    let (mut log, mut epoch) = (Vec::new(), None);
    read_ws(&mut ws, &mut log, &mut epoch, &want, T5).await;
    assert_eq!(log, want, "WebSocket resuming with {cursor}");
    assert_eq!(epoch, new_epoch, "WebSocket resuming with {cursor}");
    ws.close().await;
}

/// The `N-E` cursor of the long-poll client once it has seen id `n`.
async fn cursor_at(clients: &Clients, n: u64) -> String {
    let cursor = clients.poll_cursor();
    assert!(
        cursor.starts_with(&format!("{n}-")),
        "long-poll cursor {cursor:?}"
    );
    cursor
}

/// Issue 22, case 1: Redis (no persistence) restarts empty, and more is
/// published than the channel had before node 2 resubscribes. Node 2's
/// clients must be told `truncated` and get the new 1–20, never the old
/// 1–5 followed silently by the new 6–20.
#[tokio::test]
async fn empty_restart_whose_new_ids_overtake_is_told_on_every_transport() {
    let mut redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, FAST_RECOVERY).await;
    let b = start_node2(&bus, SLOW_RESUBSCRIBE).await;
    let channel = "epoch.restart";
    let mut clients = Clients::open(&b, channel).await;
    assert_eq!(publish_all(&a, channel, 1..=5).await, [1, 2, 3, 4, 5]);
    clients
        .expect(&(1..=5).map(Seen::Msg).collect::<Vec<_>>(), T10)
        .await;
    let old_cursor = cursor_at(&clients, 5).await;
    clients.on_fast_paths(&b).await;

    redis.restart().await; // kill -9, then empty on the same port
    let new = publish_all(&a, channel, 1..=20).await;
    assert_eq!(new, (1..=20).collect::<Vec<u64>>(), "ids restarted");
    clients.expect(&told(1..=5, 1..=20), T10).await;
    // Live delivery goes on in the new sequence.
    assert_eq!(publish_all(&a, channel, 21..=23).await, [21, 22, 23]);
    clients.expect(&told(1..=5, 1..=23), T10).await;
    assert!(b.metric("pollbridge_bus_epoch_resets_total", &[]).await >= Some(1.0));
    old_cursor_is_told(&a, channel, &old_cursor, &(1..=23).collect::<Vec<_>>()).await;
    clients.close().await;
}

/// Issue 22, case 2: `FLUSHALL` with every connection up. The new ids
/// reach node 2 live; they are a new sequence, not duplicates.
#[tokio::test]
async fn flushall_with_connections_up_is_told_on_every_transport() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, FAST_RECOVERY).await;
    let b = start_node2(&bus, FAST_RECOVERY).await;
    let channel = "epoch.flush";
    let mut clients = Clients::open(&b, channel).await;
    assert_eq!(publish_all(&a, channel, 1..=5).await.len(), 5);
    clients
        .expect(&(1..=5).map(Seen::Msg).collect::<Vec<_>>(), T10)
        .await;
    let old_cursor = cursor_at(&clients, 5).await;
    clients.on_fast_paths(&b).await;

    redis.cli(&["FLUSHALL"]);
    let new = publish_all(&a, channel, 1..=20).await;
    assert_eq!(new, (1..=20).collect::<Vec<u64>>());
    clients.expect(&told(1..=5, 1..=20), T10).await;
    assert_eq!(
        b.metric("pollbridge_redis_reconnects_total", &[]).await,
        Some(0.0),
        "the connections stayed up"
    );
    old_cursor_is_told(&a, channel, &old_cursor, &new).await;
    clients.close().await;
}

/// Issue 22, "a failover to a replica that lagged": a real replica has the
/// first 5 messages (and so the channel's epoch), stops replicating, the
/// master takes 10 more, then dies, and the replica's data takes its place.
/// Its ids go on from 5 in the same epoch, past what node 2 delivered; the
/// nodes notice that the entry at their last id is another one, give the
/// sequence a new epoch, and every client is told.
#[tokio::test]
async fn failover_to_a_lagging_replica_is_told_on_every_transport() {
    let mut master = RedisServer::start().await;
    let port = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof".into(), "127.0.0.1".into(), port]).await;
    let bus = bus_args(&master.url(), false);
    let a = start_gateway(&bus, FAST_RECOVERY).await;
    let b = start_node2(&bus, SLOW_RESUBSCRIBE).await;
    let channel = "epoch.failover";
    let mut clients = Clients::open(&b, channel).await;
    assert_eq!(publish_all(&a, channel, 1..=5).await.len(), 5);
    let seq = format!("pollbridge:{{{channel}}}:seq");
    eventually(T10, "the replica to have the first 5", || {
        let got = replica.cli(&["GET", &seq]);
        async move { (got.trim() == "5").then_some(()) }
    })
    .await;
    // The replica falls behind: it keeps its data and stops following.
    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    assert_eq!(
        publish_all(&a, channel, 6..=15).await,
        (6..=15).collect::<Vec<u64>>()
    );
    clients
        .expect(&(1..=15).map(Seen::Msg).collect::<Vec<_>>(), T10)
        .await;
    let old_cursor = cursor_at(&clients, 15).await;
    clients.on_fast_paths(&b).await;

    // Fail over: the replica's data, as it is, serves the master's address.
    replica.cli(&["SAVE"]);
    master.kill();
    std::fs::copy(
        replica.dir.0.join("dump.rdb"),
        master.dir.0.join("dump.rdb"),
    )
    .expect("copy the replica's snapshot");
    master.restart().await;
    assert_eq!(
        master.cli(&["GET", &seq]).trim(),
        "5",
        "the new master lags"
    );
    // Node 2 resubscribes only after these: ids 6–25 pass its last id (15).
    let new = publish_all(&a, channel, 6..=25).await;
    assert_eq!(
        new,
        (6..=25).collect::<Vec<u64>>(),
        "the same epoch's ids went on from 5"
    );
    // The sequence is now told as restarted: everything Redis has, 1–25.
    clients.expect(&told(1..=15, 1..=25), T10).await;
    old_cursor_is_told(&a, channel, &old_cursor, &(1..=25).collect::<Vec<_>>()).await;
    clients.close().await;
}

/// docs/redis.md, "under eviction": with a `volatile-*` policy only the
/// history streams (which have a TTL) are evicted; ids and epochs stay.
/// Node 2 is away while the messages it missed are evicted (the stream
/// deleted, as eviction does): coming back, it can't fill the gap, so it
/// lets its clients go instead of serving the later ids as if continuous —
/// the WebSocket is closed, the SSE stream ends, the held long-poll is
/// answered — and each one resuming with its cursor is told `truncated`.
#[tokio::test]
async fn history_evicted_while_a_node_was_away_is_told_on_every_transport() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, FAST_RECOVERY).await;
    let b = start_node2(&bus, SLOW_RESUBSCRIBE).await;
    let channel = "epoch.evicted";
    let mut clients = Clients::open(&b, channel).await;
    assert_eq!(publish_all(&a, channel, 1..=5).await.len(), 5);
    clients
        .expect(&(1..=5).map(Seen::Msg).collect::<Vec<_>>(), T10)
        .await;
    let cursor = cursor_at(&clients, 5).await;
    clients.on_fast_paths(&b).await;

    // Node 2 loses its subscription connection and is away for 3–4 s.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(publish_all(&a, channel, 6..=10).await.len(), 5);
    let log = format!("pollbridge:{{{channel}}}:log");
    let bytes = format!("pollbridge:{{{channel}}}:bytes");
    redis.cli(&["DEL", &log, &bytes]);
    assert_eq!(publish_all(&a, channel, 11..=12).await, [11, 12]);

    // Back, node 2 lets its clients go, with nothing after 5.
    match clients.ws.recv(T10).await {
        WsEvent::Close(_) | WsEvent::Ended(_) => {}
        other => panic!("WebSocket: {other:?} after {:?}", clients.ws_log),
    }
    match clients.sse.next_event(T10).await {
        Ok(None) | Err(_) => {}
        other => panic!("SSE: {other:?} after {:?}", clients.sse_log),
    }
    let deadline = tokio::time::Instant::now() + T10;
    while !saw_as_told(&clients.poll_log.lock().unwrap(), &told(1..=5, 11..=12)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "long-poll: {:?}",
            clients.poll_log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    resume_is_told(&b, channel, &cursor, &[11, 12], Sequence::Same).await;
    clients.close().await;
}

/// The in-memory bus has epochs too (per channel creation, so per process
/// start): a cursor from before a restart is told `truncated` even when
/// the restarted gateway's ids have passed it.
#[tokio::test]
async fn memory_bus_cursor_from_before_a_restart_is_told() {
    let channel = "epoch.memory";
    let first = Gateway::start(&[]).await;
    publish_all(&first, channel, 1..=3).await;
    let mut sse = SseClient::open(first.public, &format!("/rt/sse/{channel}?since=0"), &[]).await;
    let mut cursor = String::new();
    for _ in 0..3 {
        cursor = sse.next_event(T5).await.unwrap().unwrap().id.expect("id");
    }
    drop(sse);
    drop(first);
    let second = Gateway::start(&[]).await;
    publish_all(&second, channel, 1..=10).await;
    old_cursor_is_told(&second, channel, &cursor, &(1..=10).collect::<Vec<_>>()).await;
    // The cursor of this process reads on without a notice.
    let (_, body) = second.poll(channel, "since=0&timeout=0").await;
    let current = body["cursor"].as_str().unwrap().to_string();
    let (_, body) = second
        .poll(channel, &format!("since={current}&timeout=0"))
        .await;
    assert_eq!(body["truncated"], false, "{body}");
    assert_eq!(body["messages"], json!([]));
}

/// Ids going backwards within one epoch while every connection stays up
/// (Redis reloads an older snapshot: `DEBUG RELOAD NOSAVE`): node 2 sees a
/// live id it already had, gives the sequence a new epoch, and its clients
/// are told.
#[tokio::test]
async fn older_snapshot_reloaded_under_live_connections_is_told() {
    let redis = RedisServer::start_with(&["--enable-debug-command".into(), "yes".into()]).await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, FAST_RECOVERY).await;
    let b = start_node2(&bus, FAST_RECOVERY).await;
    let channel = "epoch.reload";
    let mut clients = Clients::open(&b, channel).await;
    assert_eq!(publish_all(&a, channel, 1..=2).await.len(), 2);
    redis.cli(&["SAVE"]);
    assert_eq!(publish_all(&a, channel, 3..=5).await.len(), 3);
    clients
        .expect(&(1..=5).map(Seen::Msg).collect::<Vec<_>>(), T10)
        .await;
    let old_cursor = cursor_at(&clients, 5).await;
    clients.on_fast_paths(&b).await;

    redis.cli(&["DEBUG", "RELOAD", "NOSAVE"]);
    let new = publish_all(&a, channel, 3..=7).await;
    assert_eq!(
        new,
        (3..=7).collect::<Vec<u64>>(),
        "the same epoch's ids went on from 2"
    );
    clients.expect(&told(1..=5, 1..=7), T10).await;
    assert_eq!(
        b.metric("pollbridge_redis_reconnects_total", &[]).await,
        Some(0.0),
        "the connections stayed up"
    );
    old_cursor_is_told(&a, channel, &old_cursor, &(1..=7).collect::<Vec<_>>()).await;
    clients.close().await;
}

#[test]
fn told_accepts_extra_told_sequences_and_nothing_untold() {
    use Seen::{Msg, Truncated as T};
    let want = [Msg(1), Msg(2), T, Msg(1), Msg(2), Msg(3)];
    assert!(saw_as_told(&want, &want));
    assert!(saw_as_told(
        &[Msg(1), Msg(2), T, Msg(1), T, Msg(1), Msg(2), Msg(3)],
        &want
    ));
    // A gap, a duplicate, an untold restart, an unfinished log: refused.
    assert!(!saw_as_told(&[Msg(1), Msg(2), T, Msg(1), Msg(3)], &want));
    assert!(!saw_as_told(
        &[Msg(1), Msg(2), T, Msg(1), Msg(2), Msg(2), Msg(3)],
        &want
    ));
    assert!(!saw_as_told(
        &[Msg(1), Msg(2), Msg(1), Msg(2), Msg(3)],
        &want
    ));
    assert!(!saw_as_told(&[Msg(1), Msg(2), T, Msg(1)], &want));
    assert!(!saw_as_told(
        &[Msg(1), Msg(2), T, Msg(2), T, Msg(1), Msg(2), Msg(3)],
        &want
    ));
}
