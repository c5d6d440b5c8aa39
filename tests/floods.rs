//! Floods from one client (issue 16, items 2 and 4), against the real
//! binary over real sockets: client publishes, WebSocket commands,
//! subscribe/unsubscribe churn and backend auth checks are bounded, and
//! history stays within its byte limits (per channel, per node, and in
//! Redis) while resumes past what was dropped say `truncated`.
//!
//! Every flood is bounded in count and time; the flooding client writes
//! and reads on separate tasks so neither side's buffers can deadlock.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::{bus_args, start_gateway, RedisServer};
use common::security::AuthBackend;
use common::ws::masked_frame;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What the flooding client got back.
#[derive(Debug)]
enum Got {
    Json(Value),
    Close(Option<u16>),
}

/// A raw WebSocket client whose reader runs on its own task (what the
/// server sends is drained into a channel while the client writes).
struct Flood {
    writer: OwnedWriteHalf,
    received: mpsc::UnboundedReceiver<Got>,
}

impl Flood {
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Flood {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut read, mut writer) = stream.into_split();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        writer.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(T5, read.read(&mut chunk))
                .await
                .expect("handshake answer in time")
                .unwrap();
            assert!(n > 0, "EOF during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buf.drain(..head_end);
        let (tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                while let Some((opcode, payload)) = take_server_frame(&mut buf) {
                    let got = match opcode {
                        1 => Got::Json(serde_json::from_slice(&payload).unwrap_or(Value::Null)),
                        8 => Got::Close(
                            (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                        ),
                        _ => continue,
                    };
                    let closed = matches!(got, Got::Close(_));
                    if tx.send(got).is_err() || closed {
                        return;
                    }
                }
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        Flood { writer, received }
    }

    /// Sends `texts` as masked text frames, in batches; stops quietly when
    /// the server has closed the connection. Returns how many were written.
    async fn send_all(&mut self, texts: impl IntoIterator<Item = String>) -> usize {
        let mut sent = 0;
        let mut batch = Vec::new();
        let mut in_batch = 0;
        for text in texts {
            batch.extend_from_slice(&masked_frame(true, 1, text.as_bytes()));
            in_batch += 1;
            if batch.len() >= 256 * 1024 {
                if !self.write(&batch).await {
                    return sent;
                }
                sent += in_batch;
                batch.clear();
                in_batch = 0;
            }
        }
        if !batch.is_empty() && self.write(&batch).await {
            sent += in_batch;
        }
        sent
    }

    async fn write(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(T10, self.writer.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Everything received until the close frame (or the connection's end),
    /// waiting at most `t`.
    async fn until_close(&mut self, t: Duration) -> (Vec<Value>, Option<Option<u16>>) {
        let deadline = tokio::time::Instant::now() + t;
        let mut messages = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(Got::Json(v))) => messages.push(v),
                Ok(Some(Got::Close(code))) => return (messages, Some(code)),
                Ok(None) | Err(_) => return (messages, None),
            }
        }
    }

    /// The next `n` JSON messages, waiting at most `t` in all.
    async fn messages(&mut self, n: usize, t: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + t;
        let mut messages = Vec::new();
        while messages.len() < n {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(Got::Json(v))) => messages.push(v),
                other => panic!(
                    "after {} of {n} messages: {other:?} (last: {:?})",
                    messages.len(),
                    messages.last()
                ),
            }
        }
        messages
    }
}

/// Takes one complete server frame (unmasked) off `buf`.
fn take_server_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < start + len {
        return None;
    }
    let payload = buf[start..start + len].to_vec();
    buf.drain(..start + len);
    Some((opcode, payload))
}

fn codes(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == "error")
        .map(|m| m["code"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn count_type(messages: &[Value], kind: &str) -> usize {
    messages.iter().filter(|m| m["type"] == kind).count()
}

/// Client publishes allowed on `chat.*`; nothing else set.
const CHAT: &str = "[[channels]]\npattern = \"chat.*\"\nallow_client_publish = true\n";

/// 60 KB of JSON string.
fn big_payload() -> String {
    format!("\"{}\"", "x".repeat(60 * 1024 - 100))
}

/// The issue's attack, scaled down: one anonymous WebSocket sends 600
/// publishes of 60 KB over 30 channels as fast as it can. Returns the
/// answers and the close code.
async fn publish_flood(gw: &Gateway) -> (Vec<Value>, Option<Option<u16>>, usize) {
    let mut flood = Flood::open(gw.public, "/rt/ws/chat.0", &[]).await;
    flood.messages(1, T5).await; // subscribed
    let data = big_payload();
    let commands = (0..600).map(|i| {
        format!(
            r#"{{"type":"publish","channel":"chat.{}","data":{data}}}"#,
            i % 30
        )
    });
    let sent = flood.send_all(commands).await;
    let (messages, close) = flood.until_close(T10 * 2).await;
    (messages, close, sent)
}

/// What a publish flood must come to: a few publishes, then
/// `publish_rate_limited` answers, then a 1008 close; the history it left
/// is within the byte limits.
async fn assert_publish_flood_bounded(gw: &Gateway) {
    let rss_before = gw.rss_kib();
    let (messages, close, sent) = publish_flood(gw).await;
    let published = count_type(&messages, "published");
    let refused = codes(&messages);
    assert!(
        refused.iter().any(|c| c == "publish_rate_limited"),
        "expected publish_rate_limited answers; got {published} published, errors {refused:?} (sent {sent})"
    );
    assert_eq!(close, Some(Some(1008)), "closed for sustained abuse");
    // The default byte burst (256 KiB) holds four 60 KB publishes; the
    // refill while the flood ran adds a few.
    assert!(published <= 12, "{published} publishes of 60 KB accepted");
    let history = gw
        .metric("pollbridge_history_bytes", &[])
        .await
        .expect("history gauge");
    assert!(
        history <= (published as f64 + 1.0) * 62_000.0,
        "history holds {history} bytes after {published} publishes"
    );
    assert_eq!(
        gw.metric("pollbridge_ws_abuse_closes_total", &[]).await,
        Some(1.0)
    );
    // The flood itself (36 MB sent) left no lasting memory behind.
    let grown_mib = gw.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 24, "RSS grew by {grown_mib} MiB");
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn a_publish_flood_is_refused_then_closed_and_leaves_little_history() {
    let gw = Gateway::start_with_config(CHAT, &[]).await;
    assert_publish_flood_bounded(&gw).await;
}

#[tokio::test]
async fn a_publish_flood_on_the_redis_bus_is_bounded_too() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new();
    let config = dir.write("chat.toml", CHAT);
    let mut args = bus_args(&redis.url(), false);
    args.extend(["--config".to_string(), config.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = start_gateway(&[], &args).await;
    assert_publish_flood_bounded(&gw).await;
    // What reached Redis is what was accepted.
    let mut stored = 0;
    for i in 0..30 {
        let key = format!("pollbridge:{{chat.{i}}}:log");
        stored += redis
            .cli(&["XLEN", &key])
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }
    assert!(stored <= 12, "{stored} entries in Redis");
}

#[tokio::test]
async fn client_publishes_may_create_only_so_many_channels() {
    let gw = Gateway::start_with_config(CHAT, &["--max-client-channels", "3"]).await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/chat.a")).await;
    ws.expect_control("subscribed", T5).await;
    for channel in ["chat.a", "chat.b", "chat.c", "chat.a"] {
        ws.send_json(&json!({"type":"publish","channel":channel,"data":1}))
            .await;
        ws.expect_control("published", T5).await;
    }
    ws.send_json(&json!({"type":"publish","channel":"chat.d","data":1}))
        .await;
    let refused = ws.expect_control("error", T5).await;
    assert_eq!(refused["code"], "too_many_channels", "{refused}");
    assert_eq!(refused["channel"], "chat.d");
    assert_eq!(
        gw.metric(
            "pollbridge_ws_commands_refused_total",
            &[("reason", "client_channels")]
        )
        .await,
        Some(1.0)
    );
    // Publishing (admin) is not a client's: not capped.
    gw.publish_json("chat.e", &json!(1)).await;
}

#[tokio::test]
async fn history_max_bytes_evicts_and_a_resume_says_truncated() {
    let gw = Gateway::start(&["--history-max-bytes", "20000"]).await;
    let data = json!("y".repeat(1000));
    for _ in 0..50 {
        gw.publish_json("hist", &data).await;
    }
    let listing = get(&gw.admin_url("/channels")).await.json();
    let stats = &listing["channels"][0];
    assert_eq!(stats["channel"], "hist");
    let kept = stats["history"].as_u64().unwrap();
    assert!(
        stats["history_bytes"].as_u64().unwrap() <= 20_000,
        "{stats}"
    );
    assert!((15..=19).contains(&kept), "{stats}");

    // Long-poll and WebSocket resumes from 0 are told what was lost.
    let (status, answer) = gw.poll("hist", "since=0&timeout=0").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["truncated"], true, "{answer}");
    assert_eq!(
        answer["messages"][0]["id"].as_u64(),
        Some(50 - kept + 1),
        "starts at the oldest kept"
    );
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/hist?since=0")).await;
    let ack = ws.expect_control("subscribed", T5).await;
    assert_eq!(ack["truncated"], true, "{ack}");
    let replay = ws.collect_envelopes(kept as usize, T5).await;
    assert_eq!(replay.last().unwrap()["id"], 50);
}

#[tokio::test]
async fn the_node_budget_evicts_the_oldest_history_of_any_channel_first() {
    let gw = Gateway::start(&["--history-max-total-bytes", "40000"]).await;
    let data = json!("z".repeat(1000));
    for channel in ["old", "mid", "new"] {
        for _ in 0..20 {
            gw.publish_json(channel, &data).await;
        }
    }
    let total = gw.metric("pollbridge_history_bytes", &[]).await.unwrap();
    assert!(total <= 40_000.0, "{total}");
    assert!(
        gw.metric(
            "pollbridge_history_evictions_total",
            &[("limit", "total_bytes")]
        )
        .await
        .unwrap()
            >= 20.0
    );
    let (_, old) = gw.poll("old", "since=0&timeout=0").await;
    assert_eq!(old["truncated"], true, "{old}");
    assert_eq!(
        old["messages"].as_array().unwrap().len(),
        0,
        "oldest went first"
    );
    let (_, new) = gw.poll("new", "since=0&timeout=0").await;
    assert_eq!(
        new["truncated"], false,
        "the newest channel is whole: {new}"
    );
    assert_eq!(new["messages"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn redis_streams_are_trimmed_by_bytes_and_a_resume_says_truncated() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let gw = start_gateway(&bus, &["--history-max-bytes", "20000"]).await;
    let data = json!("r".repeat(1000));
    for _ in 0..50 {
        gw.publish_json("rhist", &data).await;
    }
    let entries: u64 = redis
        .cli(&["XLEN", "pollbridge:{rhist}:log"])
        .trim()
        .parse()
        .unwrap();
    let counted: u64 = redis
        .cli(&["GET", "pollbridge:{rhist}:bytes"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(counted, entries * 1002, "the counter matches the stream");
    assert!(
        counted <= 20_000 && entries >= 15,
        "{entries} entries, {counted} bytes"
    );
    // The counter expires with the stream.
    let ttl: i64 = redis
        .cli(&["PTTL", "pollbridge:{rhist}:bytes"])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0, "{ttl}");

    let (status, answer) = gw.poll("rhist", "since=0&timeout=0").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["truncated"], true, "{answer}");
    assert_eq!(answer["messages"][0]["id"].as_u64(), Some(50 - entries + 1));
    let (_, recent) = gw.poll("rhist", "since=45&timeout=0").await;
    assert_eq!(recent["truncated"], false, "{recent}");
    assert_eq!(recent["messages"].as_array().unwrap().len(), 5);

    // A counter lost while the stream survives is recounted.
    redis.cli(&["DEL", "pollbridge:{rhist}:bytes"]);
    gw.publish_json("rhist", &data).await;
    let entries: u64 = redis
        .cli(&["XLEN", "pollbridge:{rhist}:log"])
        .trim()
        .parse()
        .unwrap();
    let counted: u64 = redis
        .cli(&["GET", "pollbridge:{rhist}:bytes"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(counted, entries * 1002);
}

#[tokio::test]
async fn a_command_flood_is_refused_then_closed() {
    let gw = Gateway::start(&[]).await;
    let mut flood = Flood::open(gw.public, "/rt/ws", &[]).await;
    let started = Instant::now();
    let commands = (0..50_000).flat_map(|i| {
        [
            format!(r#"{{"type":"subscribe","channel":"churn.{i}"}}"#),
            format!(r#"{{"type":"unsubscribe","channel":"churn.{i}"}}"#),
        ]
    });
    let sent = flood.send_all(commands).await;
    let (messages, close) = flood.until_close(T10).await;
    let refused = codes(&messages);
    assert!(
        refused.iter().any(|c| c == "rate_limited"),
        "expected rate_limited answers after {sent} commands; errors {refused:?}"
    );
    let limited = messages
        .iter()
        .find(|m| m["code"] == "rate_limited")
        .unwrap();
    assert!(limited["retry_after_ms"].as_u64().is_some(), "{limited}");
    assert_eq!(close, Some(Some(1008)), "closed for sustained abuse");
    // Burst (100) plus the refill while it ran, no more.
    let answered = count_type(&messages, "subscribed") + count_type(&messages, "unsubscribed");
    let allowed = 100.0 + 50.0 * started.elapsed().as_secs_f64() + 10.0;
    assert!((answered as f64) <= allowed, "{answered} commands run");
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn channels_left_by_their_last_subscriber_are_forgotten_at_once() {
    let gw = Gateway::start(&[]).await;
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws")).await;
    // Within the default command burst (100).
    for i in 0..40 {
        ws.send_json(&json!({"type":"subscribe","channel":format!("gone.{i}")}))
            .await;
        ws.expect_control("subscribed", T5).await;
        ws.send_json(&json!({"type":"unsubscribe","channel":format!("gone.{i}")}))
            .await;
        ws.expect_control("unsubscribed", T5).await;
    }
    let listing = get(&gw.admin_url("/channels")).await.json();
    let left: Vec<&Value> = listing["channels"].as_array().unwrap().iter().collect();
    assert!(
        left.is_empty(),
        "entries left by subscribe/unsubscribe: {left:?}"
    );
    // A channel with history stays (its ids must not restart).
    gw.publish_json("kept", &json!(1)).await;
    ws.send_json(&json!({"type":"subscribe","channel":"kept"}))
        .await;
    ws.expect_control("subscribed", T5).await;
    ws.send_json(&json!({"type":"unsubscribe","channel":"kept"}))
        .await;
    ws.expect_control("unsubscribed", T5).await;
    let listing = get(&gw.admin_url("/channels")).await.json();
    assert_eq!(listing["channels"][0]["channel"], "kept", "{listing}");
}

#[tokio::test]
async fn subscribe_churn_leaves_no_channels_and_the_listing_pages() {
    let gw = Gateway::start(&["--ws-command-rate", "0"]).await;
    let mut flood = Flood::open(gw.public, "/rt/ws", &[]).await;
    let pairs = 50_000;
    let commands = (0..pairs).flat_map(|i| {
        [
            format!(r#"{{"type":"subscribe","channel":"churn.{i}"}}"#),
            format!(r#"{{"type":"unsubscribe","channel":"churn.{i}"}}"#),
        ]
    });
    // The reader runs on its own task, so the answers are drained while
    // the commands are written.
    assert_eq!(flood.send_all(commands).await, 2 * pairs);
    let answers = flood.messages(2 * pairs, Duration::from_secs(60)).await;
    assert_eq!(count_type(&answers, "unsubscribed"), pairs);

    // Nothing is left of the churn: no channel entries, small listing.
    let r = get(&gw.admin_url("/channels")).await;
    assert!(r.body.len() < 4096, "{} bytes: {}", r.body.len(), r.text());
    let listing = r.json();
    assert_eq!(listing["total"], 0, "{listing}");

    // Many real channels: pages of at most 100 by default, in name order,
    // with a cursor to the next page.
    let items: Vec<(String, Value)> = (0..250)
        .map(|i| (format!("page.{i:03}"), json!(i)))
        .collect();
    let batch: Vec<(&str, Value)> = items.iter().map(|(c, v)| (c.as_str(), v.clone())).collect();
    gw.publish_batch_ok(&batch).await;
    let mut seen = Vec::new();
    let mut url = gw.admin_url("/channels");
    let mut pages = 0;
    loop {
        let page = get(&url).await.json();
        pages += 1;
        let channels = page["channels"].as_array().unwrap();
        assert!(
            channels.len() <= 100,
            "default page size: {}",
            channels.len()
        );
        seen.extend(
            channels
                .iter()
                .map(|c| c["channel"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => url = gw.admin_url(&format!("/channels?after={next}")),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..250).map(|i| format!("page.{i:03}")).collect();
    assert_eq!(seen, expected);
    let small = get(&gw.admin_url("/channels?limit=7&after=page.100"))
        .await
        .json();
    assert_eq!(small["channels"].as_array().unwrap().len(), 7);
    assert_eq!(small["channels"][0]["channel"], "page.101");
    assert_eq!(small["next"], "page.107");
    let bad = get(&gw.admin_url("/channels?limit=100000")).await;
    assert_eq!(bad.status(), 400, "{}", bad.text());
}

/// Backend auth on `acct.*`.
fn backend_config(backend: &AuthBackend) -> String {
    format!(
        "[auth]\nauth_url = \"{}\"\n\n[[channels]]\npattern = \"acct.*\"\nauth = \"backend\"\n",
        backend.url()
    )
}

#[tokio::test]
async fn backend_auth_requests_stay_bounded_during_a_flood_and_denials_are_cached() {
    let backend = AuthBackend::start().await;
    let gw = Gateway::start_with_config(&backend_config(&backend), &[]).await;

    // Five connections from one address each try 100 fresh channels.
    let started = Instant::now();
    let mut floods = Vec::new();
    for c in 0..5 {
        let mut flood = Flood::open(gw.public, "/rt/ws", &[("Cookie", "session=good")]).await;
        let commands = (0..100).flat_map(move |i| {
            [
                format!(r#"{{"type":"subscribe","channel":"acct.{c}.{i}"}}"#),
                format!(r#"{{"type":"unsubscribe","channel":"acct.{c}.{i}"}}"#),
            ]
        });
        flood.send_all(commands).await;
        floods.push(flood);
    }
    let mut refused = Vec::new();
    for flood in &mut floods {
        let (messages, _) = flood.until_close(Duration::from_secs(3)).await;
        refused.extend(codes(&messages));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let asked = backend.count();
    // Per address: a burst of 10, then 5 per second.
    let allowed = 10.0 + 5.0 * elapsed + 2.0;
    assert!(
        (asked as f64) <= allowed,
        "{asked} backend requests in {elapsed:.1} s (allowed {allowed:.0})"
    );
    assert!(
        refused.iter().any(|c| c == "auth_rate_limited"),
        "errors: {:?}",
        refused.iter().collect::<BTreeSet<_>>()
    );
    assert!(
        gw.metric(
            "pollbridge_auth_backend_refused_total",
            &[("reason", "ip_rate")]
        )
        .await
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        gw.metric("pollbridge_auth_backend_requests_total", &[])
            .await,
        Some(asked as f64)
    );

    // Polls and handshakes share the address's budget: past it, 429
    // auth_rate_limited with Retry-After (the bucket holds 10 at most).
    let mut limited = None;
    for i in 0..15 {
        let r = http(
            "GET",
            &gw.public_url(&format!("/rt/poll/acct.poll.{i}?timeout=0")),
            &[("Cookie", "session=good")],
            None,
        )
        .await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("a poll past the per-address auth rate is refused");
    assert_eq!(
        limited.json()["error"],
        "auth_rate_limited",
        "{}",
        limited.text()
    );
    assert!(limited.header("retry-after").is_some());

    // Denials are cached like grants: asking again costs the backend nothing.
    tokio::time::sleep(Duration::from_secs(3)).await; // the per-address bucket refills
    let before = backend.count();
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws")).await;
    for _ in 0..5 {
        ws.send_json(&json!({"type":"subscribe","channel":"acct.denied"}))
            .await;
        let refused = ws.expect_control("error", T5).await;
        assert_eq!(refused["code"], "forbidden", "{refused}");
    }
    assert_eq!(
        backend.count(),
        before + 1,
        "one backend request for five denials"
    );
}
