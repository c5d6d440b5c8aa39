//! The Redis bus against a real `redis-server` (started per test on a free
//! loopback port): several gateway processes share ids, history and live
//! delivery, and survive Redis going away.

mod common;

use std::time::Duration;

use common::redis::*;
use common::*;
use serde_json::json;

fn ids(body: &serde_json::Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn two_gateways_fan_out_500_messages_in_order() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, &[]).await;
    let b = start_gateway(&bus, &[]).await;
    fan_out_across_nodes(&a, &b, "feed").await;
    // Every node counted its own fan-out from one Redis subscription.
    for gw in [&a, &b] {
        assert_eq!(
            gw.metric("pollbridge_bus_subscriptions", &[]).await,
            Some(1.0)
        );
        assert_eq!(
            gw.metric("pollbridge_bus_publish_duration_seconds_count", &[])
                .await,
            Some(250.0)
        );
    }
}

#[tokio::test]
async fn concurrent_publishers_on_two_nodes_get_gapless_ids() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, &[]).await;
    let b = start_gateway(&bus, &[]).await;
    concurrent_publishers(&a, &b, &["count.a", "count.b"]).await;
}

#[tokio::test]
async fn websocket_resumes_on_the_other_node() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, &[]).await;
    let b = start_gateway(&bus, &[]).await;
    resume_on_other_node(&a, &b, "resume").await;
}

#[tokio::test]
async fn redis_restart_mid_stream_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start_persistent().await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, FAST_RECOVERY).await;
    let b = start_gateway(&bus, FAST_RECOVERY).await;
    survive_restart(&a, &b, "steady", || async {
        redis.kill();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        redis.restart().await;
    })
    .await;
}

/// The subscription connections drop while Redis stays up: messages
/// published meanwhile are recovered from the stream, counted, and reach
/// the clients once.
#[tokio::test]
async fn lost_subscription_connection_is_gap_filled() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    // A slow first reconnect leaves a window for the gap.
    let slow = [
        "--redis-reconnect-min-delay",
        "1500ms",
        "--redis-reconnect-max-delay",
        "2s",
    ];
    let a = start_gateway(&bus, &slow).await;
    let b = start_gateway(&bus, &slow).await;
    let mut ws = WsClient::connect(&a.ws_url("/rt/ws/gap")).await;
    ws.expect_control("subscribed", T5).await;
    let mut sse = SseClient::open(b.public, "/rt/sse/gap?since=0", &[]).await;
    for n in 1..=3u64 {
        a.publish_json("gap", &json!({ "n": n })).await;
    }
    assert_eq!(collect_sse(&mut sse, "gap", 3, T5).await, [1, 2, 3]);

    let killed = redis.cli(&["client", "kill", "type", "pubsub"]);
    assert_eq!(killed.trim(), "2", "one subscription connection per node");
    for n in 4..=20u64 {
        let gw = if n % 2 == 0 { &a } else { &b };
        assert_eq!(gw.publish_json("gap", &json!({ "n": n })).await, n);
    }
    let all: Vec<u64> = (1..=20).collect();
    let got: Vec<u64> = ws
        .collect_envelopes(20, T10)
        .await
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, all, "WebSocket on A");
    assert_eq!(
        collect_sse(&mut sse, "gap", 17, T10).await,
        all[3..].to_vec()
    );
    ws.expect_no_envelope(Duration::from_millis(300)).await;
    for gw in [&a, &b] {
        let filled = gw
            .metric("pollbridge_bus_gap_fill_messages_total", &[])
            .await;
        assert_eq!(filled, Some(17.0), "gap-filled messages");
        let reconnects = gw.metric("pollbridge_redis_reconnects_total", &[]).await;
        assert_eq!(reconnects, Some(1.0));
    }
}

#[tokio::test]
async fn unreachable_redis_means_not_ready_and_503_then_recovers() {
    let port = free_port();
    let bus = bus_args(&format!("redis://127.0.0.1:{port}"), false);
    let mut args: Vec<&str> = bus.iter().map(String::as_str).collect();
    args.extend_from_slice(FAST_RECOVERY);
    let gw = Gateway::start(&args).await;

    let readyz = get(&gw.admin_url("/readyz")).await;
    assert_eq!(readyz.status(), 503, "{}", readyz.text());
    assert_eq!(gw.metric("pollbridge_bus_ready", &[]).await, Some(0.0));
    let started = std::time::Instant::now();
    let (status, body) = gw.publish("down", b"{}", "application/json").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "bus_unavailable", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "publish took {:?}",
        started.elapsed()
    );
    let (status, body) = gw.poll("down", "since=0&timeout=0").await;
    assert_eq!(status, 503, "{body}");
    let started = std::time::Instant::now();
    let err = WsClient::try_connect(&gw.ws_url("/rt/ws/down")).await.err();
    assert!(err.as_deref().is_some_and(|e| e.contains("503")), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "subscribe took {:?}",
        started.elapsed()
    );

    let _redis = RedisServer::start_on_port(port).await;
    wait_ready(&gw, true, T10).await;
    assert_eq!(gw.publish_json("down", &json!({"n": 1})).await, 1);
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn one_subscription_connection_per_node_and_idle_channels_are_dropped() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let extra = [
        "--redis-unsubscribe-delay",
        "300ms",
        "--redis-health-interval",
        "100ms",
    ];
    let a = start_gateway(&bus, &extra).await;
    let b = start_gateway(&bus, &extra).await;
    let mut clients = Vec::new();
    for gw in [&a, &b] {
        for c in 0..5 {
            for _ in 0..3 {
                let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/idle{c}"))).await;
                ws.expect_control("subscribed", T5).await;
                clients.push(ws);
            }
        }
    }
    let pubsub_clients = |redis: &RedisServer| -> Vec<String> {
        redis
            .cli(&["client", "list", "type", "pubsub"])
            .lines()
            .map(String::from)
            .collect()
    };
    let list = pubsub_clients(&redis);
    assert_eq!(
        list.len(),
        2,
        "one subscription connection per node: {list:?}"
    );
    for line in &list {
        assert!(
            line.contains("ssub=5"),
            "five sharded subscriptions each: {line}"
        );
    }
    for gw in [&a, &b] {
        assert_eq!(
            gw.metric("pollbridge_bus_subscriptions", &[]).await,
            Some(5.0)
        );
    }
    // Everyone gets a message once, whichever node it was published on.
    b.publish_json("idle3", &json!({"n": 1})).await;
    for (i, ws) in clients.iter_mut().enumerate() {
        if (i / 3) % 5 == 3 {
            assert_eq!(ws.next_envelope(T5).await["id"], 1);
        }
    }

    for ws in clients.drain(..) {
        ws.close().await;
    }
    eventually(T5, "idle channels unsubscribed", || async {
        let list = pubsub_clients(&redis);
        (list.is_empty() || list.iter().all(|l| l.contains("ssub=0"))).then_some(())
    })
    .await;
    for gw in [&a, &b] {
        assert_eq!(
            gw.metric("pollbridge_bus_subscriptions", &[]).await,
            Some(0.0)
        );
    }
    // And a channel comes back when a subscriber does.
    let mut ws = WsClient::connect(&a.ws_url("/rt/ws/idle0")).await;
    ws.expect_control("subscribed", T5).await;
    b.publish_json("idle0", &json!({"n": 1})).await;
    assert_eq!(ws.next_envelope(T5).await["id"], 1);
}

#[tokio::test]
async fn history_limits_and_cursor_rules_match_the_memory_bus() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let mut args: Vec<&str> = bus.iter().map(String::as_str).collect();
    args.extend(["--history-size", "10", "--history-max-age", "2s"]);
    let config = "[[channels]]\npattern = \"price.*\"\nmode = \"state\"\n";
    let gw = Gateway::builder().config(config).args(&args).start().await;
    wait_ready(&gw, true, T10).await;

    for n in 1..=30u64 {
        gw.publish_json("h", &json!({ "n": n })).await;
    }
    assert_eq!(redis.cli(&["xlen", "pollbridge:{h}:log"]).trim(), "10");
    let (_, body) = gw.poll("h", "since=1&timeout=0").await;
    assert_eq!(ids(&body), (21..=30).collect::<Vec<_>>(), "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    let (_, body) = gw.poll("h", "since=20&timeout=0").await;
    assert_eq!(ids(&body).len(), 10, "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    let (_, body) = gw.poll("h", "since=25&timeout=0").await;
    assert_eq!(ids(&body), [26, 27, 28, 29, 30], "{body}");
    // A cursor from the future is a reset: everything kept, truncated.
    let (_, body) = gw.poll("h", "since=500&timeout=0").await;
    assert_eq!(ids(&body), (21..=30).collect::<Vec<_>>(), "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    let (_, body) = gw.poll("h", "since=18446744073709551615&timeout=0").await;
    assert_eq!(body["truncated"], true, "{body}");
    assert_eq!(ids(&body).len(), 10, "{body}");
    // No `since`: the next message after the current one.
    let waiter = {
        let url = gw.public_url("/rt/poll/h?timeout=5");
        tokio::spawn(async move { get(&url).await.json() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.publish_json("h", &json!({ "n": 31 })).await;
    assert_eq!(ids(&waiter.await.unwrap()), [31]);

    // State channels keep only the latest value and say so.
    for n in 1..=5u64 {
        gw.publish_json("price.x", &json!({ "n": n })).await;
    }
    let (_, body) = gw.poll("price.x", "since=1&timeout=0").await;
    assert_eq!(ids(&body), [5], "{body}");
    assert_eq!(body["conflated"], true, "{body}");
    let (_, body) = gw.poll("price.x", "since=4&timeout=0").await;
    assert_eq!(ids(&body), [5], "{body}");
    assert!(body.get("conflated").is_none(), "{body}");

    // Age: the stream expires after max_age, reads skip expired entries and
    // the next publish trims them.
    for n in 1..=3u64 {
        gw.publish_json("old", &json!({ "n": n })).await;
    }
    let ttl: i64 = redis
        .cli(&["pttl", "pollbridge:{old}:log"])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 2000, "log ttl {ttl}");
    assert_eq!(
        redis.cli(&["ttl", "pollbridge:{old}:seq"]).trim(),
        "-1",
        "ids never expire"
    );
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (_, body) = gw.poll("old", "since=0&timeout=0").await;
    assert_eq!(ids(&body), Vec::<u64>::new(), "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    gw.publish_json("old", &json!({ "n": 4 })).await;
    let (_, body) = gw.poll("old", "since=3&timeout=0").await;
    assert_eq!(ids(&body), [4], "{body}");
    assert_eq!(body["truncated"], false, "{body}");
}

/// Age trimming inside the publish script, with history older than
/// `max_age` in the middle of the stream (not all of it).
#[tokio::test]
async fn publish_trims_only_expired_entries() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let mut args: Vec<&str> = bus.iter().map(String::as_str).collect();
    args.extend(["--history-max-age", "1500ms"]);
    let gw = Gateway::builder().args(&args).start().await;
    wait_ready(&gw, true, T10).await;
    for n in 1..=7u64 {
        gw.publish_json("trim", &json!({ "n": n })).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for n in 8..=10u64 {
        gw.publish_json("trim", &json!({ "n": n })).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // 1..=7 are now older than 1.5s, 8..=10 are not.
    let (_, body) = gw.poll("trim", "since=0&timeout=0").await;
    assert_eq!(ids(&body), [8, 9, 10], "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    let (_, body) = gw.poll("trim", "since=7&timeout=0").await;
    assert_eq!(ids(&body), [8, 9, 10], "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    gw.publish_json("trim", &json!({ "n": 11 })).await;
    assert_eq!(redis.cli(&["xlen", "pollbridge:{trim}:log"]).trim(), "4");
}

#[tokio::test]
async fn redis_settings_are_validated_without_leaking_passwords() {
    let (code, _, stderr) = run_to_exit(
        &[
            "--bus",
            "redis://:hunter2@127.0.0.1:notaport",
            "--check-config",
        ],
        &[],
        T10,
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("'bus'"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let (code, _, stderr) = run_to_exit(
        &[
            "--bus",
            "redis://h/1",
            "--redis-cluster",
            "true",
            "--redis-key-prefix",
            "a{b",
        ],
        &[],
        T10,
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("only database 0"), "{stderr}");
    assert!(stderr.contains("redis.key_prefix"), "{stderr}");

    let (code, stdout, stderr) = run_to_exit(
        &["--check-config"],
        &[(
            "POLLBRIDGE_BUS",
            "rediss://user:hunter2@cache.example.com:6380/2",
        )],
        T10,
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("rediss://user:***@cache.example.com:6380/2"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

/// Classic `PUBLISH`/`SUBSCRIBE` (for servers before Redis 7, or by
/// choice) delivers and recovers the same way.
#[tokio::test]
async fn classic_pubsub_delivers_and_recovers_the_same() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let classic = [
        "--redis-pubsub",
        "classic",
        "--redis-reconnect-min-delay",
        "1s",
    ];
    let a = start_gateway(&bus, &classic).await;
    let b = start_gateway(&bus, &classic).await;
    resume_on_other_node(&a, &b, "classic").await;
    let list = redis.cli(&["client", "list", "type", "pubsub"]);
    assert!(list.contains("sub=1") && !list.contains("ssub=1"), "{list}");

    let mut sse = SseClient::open(b.public, "/rt/sse/classic?since=31", &[]).await;
    assert_eq!(redis.cli(&["client", "kill", "type", "pubsub"]).trim(), "2");
    for n in 32..=40u64 {
        assert_eq!(a.publish_json("classic", &json!({ "n": n })).await, n);
    }
    let want: Vec<u64> = (32..=40).collect();
    assert_eq!(collect_sse(&mut sse, "classic", 9, T10).await, want);
    assert_eq!(
        b.metric("pollbridge_bus_gap_fill_messages_total", &[])
            .await,
        Some(9.0)
    );
}

/// `rediss://` with a private CA, a password and a database number.
#[tokio::test]
async fn tls_password_and_database_from_the_url() {
    let certs = TestCerts::new();
    let tls_port = free_port();
    let extra: Vec<String> = [
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &certs.path("server.pem"),
        "--tls-key-file",
        &certs.path("server.key"),
        "--tls-ca-cert-file",
        &certs.path("ca.pem"),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let redis = RedisServer::start_with(&extra).await;
    let url = format!("rediss://:s3cret@127.0.0.1:{tls_port}/3");
    let bus = bus_args(&url, false);
    let ca = certs.path("ca.pem");
    let a = start_gateway(&bus, &["--redis-tls-ca-file", &ca]).await;
    let mut ws = WsClient::connect(&a.ws_url("/rt/ws/secure")).await;
    ws.expect_control("subscribed", T5).await;
    assert_eq!(a.publish_json("secure", &json!({ "n": 1 })).await, 1);
    assert_eq!(ws.next_envelope(T5).await["id"], 1);
    let keys = redis.cli(&["-a", "s3cret", "--no-auth-warning", "-n", "3", "keys", "*"]);
    assert!(
        keys.contains("pollbridge:{secure}:log"),
        "database 3: {keys}"
    );
    assert!(!a.stderr_text().contains("s3cret"), "password in the log");

    // Without the CA the server's certificate is not trusted: not ready,
    // and publishing answers 503 instead of hanging.
    let mut args: Vec<&str> = bus.iter().map(String::as_str).collect();
    args.extend_from_slice(FAST_RECOVERY);
    let untrusted = Gateway::start(&args).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_ready(&untrusted, false, T5).await;
    let (status, body) = untrusted.publish("secure", b"{}", "application/json").await;
    assert_eq!(status, 503, "{body}");
}

/// A long-poll parked on one node on a channel nobody has published on
/// yet (with `since=0` and without `since`) gets the first message
/// published on the other node: the new sequence's first message is its
/// next, not a reset it must be woken for (the two-node deploy check
/// found it answered empty).
#[tokio::test]
async fn a_poll_parked_on_a_new_channel_gets_the_first_message_from_the_other_node() {
    let redis = RedisServer::start().await;
    let bus = bus_args(&redis.url(), false);
    let a = start_gateway(&bus, &[]).await;
    let b = start_gateway(&bus, &[]).await;
    for (channel, query) in [
        ("fresh.zero", "since=0&timeout=20"),
        ("fresh.none", "timeout=20"),
    ] {
        let url = a.public_url(&format!("/rt/poll/{channel}?{query}"));
        let poll =
            tokio::spawn(
                async move { http("GET", &url, &[("Connection", "keep-alive")], None).await },
            );
        a.wait_metric("pollbridge_longpoll_parked_polls", &[], 1.0)
            .await;
        let id = b.publish_json(channel, &json!({"first": true})).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(answer.status(), 200);
        let body = answer.json();
        assert_eq!(ids(&body), vec![id], "{body}");
        assert_eq!(body["truncated"], false, "{body}");
    }
}
