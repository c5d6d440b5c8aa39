//! Drains, restarts and reconnect storms: clients told to go away get a
//! reconnect hint spread over `shutdown.reconnect_window` (WebSocket close
//! reason `retry=<ms>`, SSE `retry:`), admission control answers a burst of
//! new sessions with `503 overloaded` and a jittered `Retry-After`, and 2,000
//! WebSocket clients following the hints through a drain and restart on the
//! Redis bus all resume with no gap and no duplicate.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::migration::{
    last_sse_retry, retry_hint, sse_raw_until_end, ws_connect, ws_finish, ws_read, ConnectError,
    WsRead,
};
use common::redis::{free_port, wait_ready, RedisServer};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// Admission control on its own.

/// Checks a refused upgrade or stream: 503, `overloaded`, Retry-After 1..=4.
fn check_overloaded(status: u16, retry_after: Option<&str>, body: &str) -> u64 {
    assert_eq!(status, 503, "refusal status (body {body})");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body:?}: {e}"));
    assert_eq!(v["error"], "overloaded", "{v}");
    let secs: u64 = retry_after
        .unwrap_or_else(|| panic!("503 overloaded without Retry-After ({body})"))
        .trim()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(
        (1..=4).contains(&secs),
        "Retry-After {secs} outside 1..=4 s"
    );
    secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_refuses_a_burst_with_a_jittered_retry_after() {
    let gw = Gateway::start(&["--new-sessions-per-second", "5"]).await;

    // 20 WebSocket upgrades at once.
    let burst = Instant::now();
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let url = gw.ws_url("/rt/ws/crowd");
            tokio::spawn(async move { ws_connect(&url, T10).await })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut retry_afters = Vec::new();
    for a in attempts {
        match a.await.unwrap() {
            Ok(ws) => admitted.push(ws),
            Err(ConnectError::Refused {
                status,
                retry_after,
                body,
            }) => retry_afters.push(check_overloaded(status, retry_after.as_deref(), &body)),
            Err(ConnectError::Io(e)) => panic!("upgrade failed: {e}"),
        }
    }
    let took = burst.elapsed();
    let refused = retry_afters.len();
    eprintln!(
        "20 upgrades at 5/s in {took:?}: {} admitted, {refused} refused, Retry-After {retry_afters:?}",
        admitted.len()
    );
    // A burst of one second's worth, then 5 per second.
    let most = 5 + (5.0 * took.as_secs_f64()).ceil() as usize;
    assert!(admitted.len() >= 5, "the burst of 5 was not admitted");
    assert!(refused > 0, "nothing refused: no admission control");
    assert!(
        admitted.len() <= most,
        "{} of 20 admitted in {took:?} at 5/s (at most {most})",
        admitted.len()
    );

    let counted = gw
        .metric(
            "pollbridge_admission_refused_total",
            &[("transport", "websocket")],
        )
        .await
        .unwrap_or(0.0);
    assert_eq!(
        counted as usize, refused,
        "admission_refused_total{{websocket}}"
    );
    let limit = gw
        .metric(
            "pollbridge_ws_upgrade_failures_total",
            &[("reason", "limit")],
        )
        .await
        .unwrap_or(0.0);
    assert_eq!(
        limit as usize, refused,
        "ws_upgrade_failures_total{{limit}}"
    );

    // SSE shares the bucket, which the burst emptied.
    let after_burst = Instant::now();
    let mut sse_refused = Vec::new();
    let mut sse_open = Vec::new();
    for _ in 0..10 {
        let c = SseClient::connect(gw.public, "/rt/sse/crowd", &[])
            .await
            .expect("SSE connect");
        if c.head.status == 200 {
            sse_open.push(c);
            continue;
        }
        let mut c = c;
        let body = c.conn.read_body(&c.head.clone(), "GET").await.unwrap();
        sse_refused.push(check_overloaded(
            c.head.status,
            c.head.header("retry-after"),
            &String::from_utf8_lossy(&body),
        ));
    }
    eprintln!(
        "10 SSE streams right after: {} open, Retry-After {sse_refused:?}",
        sse_open.len()
    );
    let most = (5.0 * after_burst.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(
        sse_open.len() <= most,
        "{} of 10 SSE streams admitted right after the burst (at most {most})",
        sse_open.len()
    );
    let counted = gw
        .metric(
            "pollbridge_admission_refused_total",
            &[("transport", "sse")],
        )
        .await
        .unwrap_or(0.0);
    assert_eq!(
        counted as usize,
        sse_refused.len(),
        "admission_refused_total{{sse}}"
    );

    // A refused client that waits its Retry-After gets in.
    let wait = *retry_afters.iter().max().unwrap();
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    let mut late = ws_connect(&gw.ws_url("/rt/ws/crowd"), T10)
        .await
        .unwrap_or_else(|e| panic!("retry after {wait} s still refused: {e:?}"));
    match ws_read(&mut late, T5).await {
        WsRead::Json(v) => assert_eq!(v["type"], "subscribed", "{v}"),
        other => panic!("after the retry: {other:?}"),
    }
    gw.assert_still_serving().await;
}

// ---------------------------------------------------------------------------
// Reconnect hints on drain and on operator disconnect.

/// Opens `n` WebSockets on `channel`, each past its `subscribed`.
async fn open_websockets(gw: &Gateway, channel: &str, n: usize) -> Vec<common::migration::Ws> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ws = ws_connect(&gw.ws_url(&format!("/rt/ws/{channel}")), T10)
            .await
            .unwrap_or_else(|e| panic!("connect: {e:?}"));
        match ws_read(&mut ws, T5).await {
            WsRead::Json(v) => assert_eq!(v["type"], "subscribed", "{v}"),
            other => panic!("expected subscribed, got {other:?}"),
        }
        out.push(ws);
    }
    out
}

/// Reads each WebSocket to its close frame; returns the `retry=` hints.
async fn expect_closes(sockets: Vec<common::migration::Ws>, code: u16) -> Vec<u64> {
    let mut hints = Vec::new();
    for mut ws in sockets {
        match ws_read(&mut ws, T5).await {
            WsRead::Close(Some(c), reason) => {
                assert_eq!(c, code, "close code (reason {reason:?})");
                let hint = retry_hint(&reason)
                    .unwrap_or_else(|| panic!("close reason without retry=<ms>: {reason:?}"));
                hints.push(hint);
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
        ws_finish(ws, T1).await;
    }
    hints
}

fn check_spread(what: &str, hints: &[u64], window_ms: u64) {
    eprintln!("{what}: {hints:?}");
    assert!(
        hints.iter().all(|h| *h <= window_ms),
        "{what}: hint beyond the {window_ms} ms window: {hints:?}"
    );
    let distinct: HashSet<u64> = hints.iter().copied().collect();
    assert!(
        distinct.len() * 2 >= hints.len(),
        "{what}: hints not spread: {hints:?}"
    );
    let (min, max) = (hints.iter().min().unwrap(), hints.iter().max().unwrap());
    assert!(
        max - min >= window_ms / 4,
        "{what}: hints bunched within {} ms: {hints:?}",
        max - min
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_drain_send_reconnect_hints_spread_over_the_window() {
    let mut gw = Gateway::start(&["--reconnect-window", "4s", "--drain-timeout", "5s"]).await;
    const WS: usize = 20;
    const SSE: usize = 8;

    // Operator disconnect: 1012 with a hint; SSE streams end with `retry:`.
    let sockets = open_websockets(&gw, "hints", WS).await;
    let mut streams = Vec::new();
    for _ in 0..SSE {
        streams.push(SseClient::open(gw.public, "/rt/sse/hints", &[]).await);
    }
    let r = http("POST", &gw.admin_url("/disconnect"), &[], Some(b"")).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.json()["disconnected"], (WS + SSE) as u64, "{}", r.text());
    let hints = expect_closes(sockets, 1012).await;
    check_spread("1012 retry= hints (ms)", &hints, 4000);
    let mut sse_hints = Vec::new();
    for mut s in streams {
        let text = sse_raw_until_end(&mut s, T5).await;
        let retry = last_sse_retry(&text)
            .unwrap_or_else(|| panic!("SSE stream ended without retry: {text:?}"));
        assert!(
            text.trim_end().ends_with(&format!("retry: {retry}")),
            "the farewell `retry:` is not the last thing in the stream: {text:?}"
        );
        sse_hints.push(retry);
    }
    assert!(
        sse_hints.iter().all(|h| (1..=4000).contains(h)),
        "{sse_hints:?}"
    );
    eprintln!("SSE retry after /disconnect: {sse_hints:?}");

    // Drain (SIGTERM): 1001 with a hint, SSE `retry:`, held polls answered.
    let sockets = open_websockets(&gw, "hints", WS).await;
    let mut streams = Vec::new();
    for _ in 0..SSE {
        streams.push(SseClient::open(gw.public, "/rt/sse/hints", &[]).await);
    }
    let poll_url = gw.public_url("/rt/poll/hints?timeout=30");
    let held = tokio::spawn(async move { get(&poll_url).await });
    // A poll and an upgrade whose heads are half sent when the drain starts.
    let mut late = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    late.write_all(b"GET /rt/poll/hints?since=0&timeout=0 HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let mut late_ws = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    late_ws
        .write_all(
            b"GET /rt/ws/hints HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the long-poll was not held");

    let signalled = Instant::now();
    gw.sigterm();
    let r = tokio::time::timeout(T5, held)
        .await
        .expect("held poll not answered on drain")
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(signalled.elapsed() < Duration::from_secs(2));
    let hints = expect_closes(sockets, 1001).await;
    check_spread("1001 retry= hints (ms)", &hints, 4000);
    for mut s in streams {
        let text = sse_raw_until_end(&mut s, T5).await;
        let retry = last_sse_retry(&text).expect("SSE retry: on drain");
        assert!((1..=4000).contains(&retry), "{retry}");
    }

    // The half-sent requests, finished during the drain: 503 shutting_down
    // with a Retry-After inside the window, then the connection closes.
    for (what, conn) in [("poll", &mut late), ("upgrade", &mut late_ws)] {
        conn.write_all(b"\r\n").await.expect("finish the request");
        let mut answer = Vec::new();
        tokio::time::timeout(T5, conn.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("no answer to a {what} made during the drain"))
            .expect("read the answer");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        eprintln!("{what} finished during the drain got: {answer:?}");
        assert!(answer.starts_with("HTTP/1.1 503"), "{what}: {answer:?}");
        assert!(answer.contains("\"shutting_down\""), "{what}: {answer:?}");
        let retry_after: u64 = answer
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("retry-after:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{what}: 503 without Retry-After: {answer:?}"))
            .parse()
            .expect("Retry-After seconds");
        assert!(
            (1..=4).contains(&retry_after),
            "{what}: Retry-After {retry_after}"
        );
    }
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("gateway still running after the drain");
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------
// The storm: 2,000 WebSocket clients through a drain and restart on Redis.

const CLIENTS: usize = 2_000;
const CHANNEL: &str = "storm";
/// Messages per second published during the whole run.
const RATE: u64 = 4;
const WINDOW_MS: u64 = 10_000;

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    ids: Vec<u64>,
    /// Admission refusals (`503 overloaded`): when, Retry-After seconds.
    refusals: Vec<(Instant, u64)>,
    /// `503 shutting_down` from the draining node (a reconnect so quick it
    /// reached the old process before its listener was gone).
    drain_refusals: Vec<(Instant, u64)>,
    attempts: Vec<Instant>,
    /// The close frames it got: code, hint, when.
    closes: Vec<(Option<u16>, Option<u64>, Instant)>,
    /// When each session after the first was established.
    reconnected: Vec<Instant>,
    connection_failures: usize,
    problems: Vec<String>,
}

struct Shared {
    url_base: String,
    connected: AtomicUsize,
    reconnected: AtomicUsize,
    done: AtomicUsize,
    /// For the diagnosis when something hangs.
    closes: AtomicUsize,
    ended_without_close: AtomicUsize,
    refused: AtomicUsize,
    connect_failures: AtomicUsize,
    /// Per client, what it did since its close frame (for the diagnosis).
    trace: Vec<std::sync::Mutex<Vec<String>>>,
    origin: Instant,
}

impl Shared {
    fn note(&self, client: usize, what: String) {
        let at = self.origin.elapsed().as_millis();
        self.trace[client]
            .lock()
            .unwrap()
            .push(format!("{at} ms: {what}"));
    }

    /// The traces of the clients that are not back yet.
    fn stragglers(&self) -> Vec<String> {
        self.trace
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let t = t.lock().unwrap();
                let back = t.last().is_some_and(|e| e.ends_with("back"));
                (!t.is_empty() && !back).then(|| format!("client {i}: {t:?}"))
            })
            .take(5)
            .collect()
    }

    fn summary(&self) -> String {
        let n = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        format!(
            "connected {}, close frames {}, ended without close {}, reconnected {}, \
             503s {}, failed connects {}, done {}",
            n(&self.connected),
            n(&self.closes),
            n(&self.ended_without_close),
            n(&self.reconnected),
            n(&self.refused),
            n(&self.connect_failures),
            n(&self.done)
        )
    }
}

/// Connects (following `Retry-After` on 503, retrying a refused TCP
/// connect every 100 ms) until `deadline`.
async fn connect_following_hints(
    shared: &Shared,
    me: usize,
    since: u64,
    log: &mut ClientLog,
    deadline: Instant,
) -> Option<common::migration::Ws> {
    let url = format!("{}?since={since}", shared.url_base);
    loop {
        if Instant::now() >= deadline {
            log.problems
                .push(format!("could not connect by the deadline (since={since})"));
            return None;
        }
        log.attempts.push(Instant::now());
        let reconnecting = !log.closes.is_empty();
        let result = ws_connect(&url, T10).await;
        if reconnecting {
            let what = match &result {
                Ok(_) => "connected".to_string(),
                Err(e) => format!("{e:?}"),
            };
            shared.note(me, what);
        }
        match result {
            Ok(ws) => return Some(ws),
            Err(ConnectError::Refused {
                status,
                retry_after,
                body,
            }) => {
                let overloaded = status == 503 && body.contains("\"overloaded\"");
                let draining = status == 503 && body.contains("\"shutting_down\"");
                let secs = retry_after
                    .as_deref()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                match (overloaded, draining, secs) {
                    (true, _, Some(secs)) if (1..=4).contains(&secs) => {
                        shared.refused.fetch_add(1, Ordering::Relaxed);
                        log.refusals.push((Instant::now(), secs));
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                    }
                    (_, true, Some(secs)) if (1..=WINDOW_MS / 1000).contains(&secs) => {
                        log.drain_refusals.push((Instant::now(), secs));
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                    }
                    _ => {
                        log.problems.push(format!(
                            "refused {status} Retry-After {retry_after:?}: {body}"
                        ));
                        return None;
                    }
                }
            }
            Err(ConnectError::Io(_)) => {
                // The node is restarting: nothing listens for a moment.
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                log.connection_failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One client: connect, read, follow every close's `retry=` hint, resume
/// with `since=<last id>`, until the `{"end": true}` message.
async fn storm_client(shared: Arc<Shared>, me: usize, deadline: Instant) -> ClientLog {
    let mut log = ClientLog::default();
    let mut first = true;
    loop {
        let last = log.ids.last().copied().unwrap_or(0);
        let Some(mut ws) = connect_following_hints(&shared, me, last, &mut log, deadline).await
        else {
            return log;
        };
        if first {
            shared.connected.fetch_add(1, Ordering::Relaxed);
            first = false;
        } else {
            log.reconnected.push(Instant::now());
            shared.reconnected.fetch_add(1, Ordering::Relaxed);
            shared.note(me, "back".into());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ws_read(&mut ws, left).await {
                WsRead::Json(v) if v.get("type").is_some() => {
                    if v["type"] == "subscribed" && v["truncated"] == true {
                        log.problems.push(format!("resume truncated: {v}"));
                    }
                }
                WsRead::Json(v) => {
                    let id = v["id"].as_u64().unwrap_or(0);
                    log.ids.push(id);
                    if v["data"]["end"] == true {
                        shared.done.fetch_add(1, Ordering::Relaxed);
                        drop(ws);
                        return log;
                    }
                }
                WsRead::Close(code, reason) => {
                    shared.closes.fetch_add(1, Ordering::Relaxed);
                    let hint = retry_hint(&reason);
                    shared.note(me, format!("close {code:?} {reason:?}"));
                    log.closes.push((code, hint, Instant::now()));
                    // Let the close handshake finish in the background.
                    tokio::spawn(ws_finish(ws, Duration::from_secs(2)));
                    match hint {
                        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        None => log.problems.push(format!("close without hint: {reason:?}")),
                    }
                    break;
                }
                WsRead::Ended(why) => {
                    shared.ended_without_close.fetch_add(1, Ordering::Relaxed);
                    log.problems.push(format!("ended without close: {why}"));
                    break;
                }
                WsRead::Timeout => {
                    log.problems.push("timed out reading".into());
                    return log;
                }
            }
        }
    }
}

/// Publishes `{"n": k}` through `node` at `RATE` per second until `stop`;
/// returns the last id.
async fn publisher(admin: std::net::SocketAddr, stop: Arc<AtomicU64>) -> u64 {
    let mut last = 0;
    let start = Instant::now();
    for k in 1.. {
        if stop.load(Ordering::Relaxed) != 0 {
            break;
        }
        let r = http(
            "POST",
            &format!("http://{admin}/publish/{CHANNEL}"),
            &[("Content-Type", "application/json")],
            Some(json!({"n": k}).to_string().as_bytes()),
        )
        .await;
        assert_eq!(r.status(), 200, "publish {k}: {}", r.text());
        let id = r.json()["id"].as_u64().unwrap();
        assert_eq!(id, k, "publish ids");
        last = id;
        let due = start + Duration::from_millis(1000 * k / RATE);
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
    }
    last
}

/// Waits (bounded) until `check` holds; panics with the clients' counts.
async fn wait_until(shared: &Shared, t: Duration, what: &str, check: impl Fn(&Shared) -> bool) {
    let deadline = Instant::now() + t;
    while !check(shared) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {t:?} ({}); stragglers: {:?}",
            shared.summary(),
            shared.stragglers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric_or_zero(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> u64 {
    gw.metric(name, labels).await.unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_websockets_follow_the_hints_through_a_drain_and_restart_on_redis() {
    let test_start = Instant::now();
    let redis = RedisServer::start().await;
    let bus = ["--bus".to_string(), redis.url()];
    // Node B only publishes (it stays up); node A is drained and restarted
    // on the same port.
    let mut b_args: Vec<&str> = bus.iter().map(String::as_str).collect();
    b_args.extend(["--max-connections-per-ip", "0"]);
    let node_b = Gateway::start(&b_args).await;
    wait_ready(&node_b, true, T10).await;

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut a_args: Vec<String> = bus.to_vec();
    a_args.extend(
        [
            "--listen",
            &listen,
            "--max-connections-per-ip",
            "0",
            "--new-sessions-per-second",
            "500",
            "--drain-timeout",
            "10s",
        ]
        .map(String::from),
    );
    let start_a = || async {
        let args: Vec<&str> = a_args.iter().map(String::as_str).collect();
        let gw = Gateway::builder()
            .no_listen_flag()
            .args(&args)
            .start()
            .await;
        wait_ready(&gw, true, T10).await;
        gw
    };
    let node_a = start_a().await;

    let shared = Arc::new(Shared {
        url_base: format!("ws://127.0.0.1:{port}/rt/ws/{CHANNEL}"),
        connected: AtomicUsize::new(0),
        reconnected: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        closes: AtomicUsize::new(0),
        ended_without_close: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        connect_failures: AtomicUsize::new(0),
        trace: (0..CLIENTS).map(|_| Default::default()).collect(),
        origin: Instant::now(),
    });
    let deadline = Instant::now() + Duration::from_secs(75);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(storm_client(shared.clone(), i, deadline)))
        .collect();
    wait_until(
        &shared,
        Duration::from_secs(40),
        "all clients connected",
        |s| s.connected.load(Ordering::Relaxed) == CLIENTS,
    )
    .await;
    let connected_in = test_start.elapsed();
    let refused_a = metric_or_zero(
        &node_a,
        "pollbridge_admission_refused_total",
        &[("transport", "websocket")],
    )
    .await;
    let limit_a = metric_or_zero(
        &node_a,
        "pollbridge_ws_upgrade_failures_total",
        &[("reason", "limit")],
    )
    .await;
    eprintln!("{CLIENTS} clients connected at {connected_in:?}; node A refused {refused_a}");

    // Publish through node B for the whole drain and restart.
    let stop = Arc::new(AtomicU64::new(0));
    let publishing = tokio::spawn(publisher(node_b.admin, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let terminated = Instant::now();
    node_a.sigterm();
    // The old process drops its listener at once; the new one binds the
    // same port as soon as it is free.
    eventually(T10, "the old node's listener is closed", || async {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .ok()
            .map(drop)
    })
    .await;
    let mut old_a = node_a;
    let node_a2 = start_a().await;
    let restarted_in = terminated.elapsed();
    let old_exit = old_a
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the drained node did not exit");
    assert_eq!(old_exit.code(), Some(0), "drained node's exit status");
    eprintln!(
        "node A restarted {restarted_in:?} after SIGTERM; old process exited {:?} after it",
        terminated.elapsed()
    );

    wait_until(
        &shared,
        Duration::from_secs(25),
        "all clients reconnected",
        |s| s.reconnected.load(Ordering::Relaxed) == CLIENTS,
    )
    .await;
    let all_back = terminated.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(1, Ordering::Relaxed);
    let last = tokio::time::timeout(T10, publishing)
        .await
        .expect("publisher stuck")
        .unwrap();
    let end_id = node_b.publish_json(CHANNEL, &json!({"end": true})).await;
    assert_eq!(end_id, last + 1);

    let mut logs = Vec::with_capacity(CLIENTS);
    for c in clients {
        let left = deadline.saturating_duration_since(Instant::now()) + T5;
        logs.push(
            tokio::time::timeout(left, c)
                .await
                .expect("a client task outlived its deadline")
                .expect("client task panicked"),
        );
    }

    // Every client: no problem, one close (1001 with a hint inside the
    // window), one reconnect, ids 1..=end exactly once.
    let want: Vec<u64> = (1..=end_id).collect();
    let mut bad = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        if !log.problems.is_empty() {
            bad.push(format!("client {i}: {:?}", log.problems));
            continue;
        }
        if log.ids != want {
            let dups = log.ids.len() - log.ids.iter().collect::<HashSet<_>>().len();
            bad.push(format!(
                "client {i}: {} ids, {dups} duplicates, first missing {:?}",
                log.ids.len(),
                want.iter().find(|id| !log.ids.contains(id))
            ));
            continue;
        }
        match log.closes.as_slice() {
            [(Some(1001), Some(hint), _)] if *hint < WINDOW_MS => {}
            other => bad.push(format!("client {i}: closes {other:?}")),
        }
        if log.reconnected.len() != 1 {
            bad.push(format!("client {i}: {} reconnects", log.reconnected.len()));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {CLIENTS} clients went wrong, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );

    // Reconnects spread over the window: no one-second slice has more
    // than 20 % of them.
    let mut per_second = vec![0usize; 20];
    let mut hints_per_second = vec![0usize; 10];
    for log in &logs {
        let at = log.reconnected[0].duration_since(terminated).as_secs() as usize;
        per_second[at.min(19)] += 1;
        let hint = log.closes[0].1.unwrap();
        hints_per_second[(hint / 1000) as usize] += 1;
    }
    eprintln!("reconnects per second after SIGTERM: {per_second:?}");
    eprintln!("retry= hints per second of the window: {hints_per_second:?}");
    let worst = *per_second.iter().max().unwrap();
    assert!(
        worst * 5 <= CLIENTS,
        "{worst} of {CLIENTS} reconnects in one second: {per_second:?}"
    );
    assert!(
        hints_per_second.iter().all(|n| n * 5 <= CLIENTS && *n > 0),
        "hints not spread over the window: {hints_per_second:?}"
    );

    // Admission refusals: each carried a Retry-After in 1..=4 (checked by
    // the client, which then waited it out), and the nodes counted them.
    let refusals_before: usize = logs
        .iter()
        .map(|l| l.refusals.iter().filter(|(t, _)| *t < terminated).count())
        .sum();
    let refusals_after: usize = logs
        .iter()
        .map(|l| l.refusals.iter().filter(|(t, _)| *t >= terminated).count())
        .sum();
    let refused_a2 = metric_or_zero(
        &node_a2,
        "pollbridge_admission_refused_total",
        &[("transport", "websocket")],
    )
    .await;
    let connection_failures: usize = logs.iter().map(|l| l.connection_failures).sum();
    let drain_refusals: usize = logs.iter().map(|l| l.drain_refusals.len()).sum();
    eprintln!(
        "admission refusals: {refusals_before} at first connect (node A counted {refused_a}), \
         {refusals_after} on reconnect (restarted node counted {refused_a2}); \
         {drain_refusals} quick reconnects got 503 shutting_down from the draining node; \
         {connection_failures} connects refused while the node restarted; \
         all back {all_back:?} after SIGTERM; {end_id} messages; test took {:?}",
        test_start.elapsed()
    );
    assert_eq!(
        refusals_before as u64, refused_a,
        "node A's admission_refused_total"
    );
    assert_eq!(
        limit_a, refused_a,
        "node A's ws_upgrade_failures_total{{limit}}"
    );
    assert_eq!(
        refusals_after as u64, refused_a2,
        "restarted node's admission_refused_total"
    );
    assert!(
        refusals_before + refusals_after > 0,
        "no admission refusal at all: the storm never hit --new-sessions-per-second 500"
    );
    // A refused client waited Retry-After before its next attempt.
    for log in &logs {
        for (at, secs) in log.refusals.iter().chain(&log.drain_refusals) {
            let next = log
                .attempts
                .iter()
                .find(|a| *a > at)
                .expect("an attempt after each refusal");
            assert!(
                next.duration_since(*at) >= Duration::from_secs(*secs),
                "retried before Retry-After"
            );
        }
    }
    node_a2.assert_still_serving().await;
}
