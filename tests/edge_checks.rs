//! The edge checks of issue 16, items 5–13, over real sockets against the
//! real binary: slow proxied bodies, the admin listener's Origin / Host /
//! token checks, cookie credentials from foreign origins, the Host header,
//! token claims that overflow or are not valid yet, token lifetime, client
//! body errors counted as the client's, one JSON check for every publish
//! path, and JSON bodies on every error the gateway makes itself.
//!
//! Each test fails on 7fca619 (the commit the issue was filed against).

mod common;

use std::time::{Duration, Instant};

use common::security::*;
use common::upstream::echo_upstream;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "pollbridge-test-secret-0123456789";

/// `private.*` needs a token (HS256 with [`SECRET`]), `chat.*` takes client
/// publishes; `extra` is appended (more TOML).
fn config(extra: &str) -> String {
    format!(
        r#"
[auth]
jwt_secret = "{SECRET}"
{extra}

[[channels]]
pattern = "private.*"
auth = "token"

[[channels]]
pattern = "chat.*"
allow_client_publish = true
"#
    )
}

fn signed(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign HS256")
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

// ---------------------------------------------------------------- item 9

#[tokio::test]
async fn a_token_with_the_largest_exp_is_served_not_a_panic() {
    let gw = Gateway::start_with_config(&config(""), &[]).await;
    let token = signed(&json!({"exp": u64::MAX, "channels": ["private.*"]}));
    for _ in 0..2 {
        let mut ws = WsClient::try_connect(&gw.ws_url(&format!("/rt/ws/private.x?token={token}")))
            .await
            .expect("a valid token with a far exp is accepted");
        ws.expect_control("subscribed", T5).await;
        let (status, body) = gw
            .poll("private.x", &format!("timeout=0&token={token}"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    gw.assert_still_serving().await;
    assert!(
        !gw.stderr_text().contains("panicked"),
        "{}",
        gw.stderr_text()
    );
}

// ---------------------------------------------------------------- item 10

#[tokio::test]
async fn websocket_sessions_close_at_token_expiry_not_at_the_ping_tick() {
    // Default ping interval (30 s): the old code closed only at that tick.
    let gw = Gateway::start_with_config(&config(r#"leeway = "0s""#), &[]).await;
    let exp = now_secs() + 2;
    let token = signed(&json!({"exp": exp, "channels": ["private.*"]}));
    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/private.a?token={token}"))).await;
    ws.expect_control("subscribed", T5).await;
    let t0 = Instant::now();
    assert_eq!(ws.expect_close(Duration::from_secs(6)).await, Some(1008));
    let unix_now = now_secs();
    assert!(
        unix_now >= exp,
        "closed at {unix_now}, before the token's exp {exp}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // A token first needed by a subscribe command arms the same deadline.
    let exp = now_secs() + 2;
    let token = signed(&json!({"exp": exp, "channels": ["private.*"]}));
    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/news?token={token}"))).await;
    ws.expect_control("subscribed", T5).await;
    ws.send_json(&json!({"type": "subscribe", "channel": "private.b"}))
        .await;
    ws.expect_control("subscribed", T5).await;
    assert_eq!(ws.expect_close(Duration::from_secs(6)).await, Some(1008));
    assert!(now_secs() >= exp);
}

#[tokio::test]
async fn tokens_not_valid_yet_are_refused() {
    let gw = Gateway::start_with_config(&config(""), &[]).await;
    let early = signed(&json!({
        "exp": now_secs() + 600, "nbf": now_secs() + 300, "channels": ["private.*"]
    }));
    let r = http(
        "GET",
        &gw.public_url(&format!("/rt/poll/private.a?timeout=0&token={early}")),
        &[],
        None,
    )
    .await;
    assert_error(&r, 401, "unauthorized", "nbf in the future");
    let err = WsClient::try_connect(&gw.ws_url(&format!("/rt/ws/private.a?token={early}")))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("401"), "{err}");
    let ready = signed(&json!({
        "exp": now_secs() + 600, "nbf": now_secs() - 10, "channels": ["private.*"]
    }));
    let (status, body) = gw
        .poll("private.a", &format!("timeout=0&token={ready}"))
        .await;
    assert_eq!(status, 200, "{body}");
}

// ---------------------------------------------------------------- item 12

#[tokio::test]
async fn every_publish_path_refuses_what_parsers_cannot_read_back() {
    let gw = Gateway::start_with_config(&config(""), &[]).await;
    let deep = nested(30_000);
    let bad: [(&str, &str); 3] = [
        ("a number beyond f64", "1e400"),
        ("a lone surrogate", r#""\ud800""#),
        ("30,000 levels of nesting", deep.as_str()),
    ];
    let mut ws = WsClient::connect(&gw.ws_url("/rt/ws/chat.a")).await;
    ws.expect_control("subscribed", T5).await;
    for (what, data) in bad {
        // Single publish.
        let (status, body) = gw
            .publish("chat.a", data.as_bytes(), "application/json")
            .await;
        assert_eq!(status, 400, "single publish of {what}: {body}");
        assert_eq!(body["error"], "bad_json", "{what}: {body}");
        // Batch publish.
        let batch = format!(r#"[{{"channel":"chat.a","data":{data}}}]"#);
        let r = http(
            "POST",
            &gw.admin_url("/publish"),
            &[("Content-Type", "application/json")],
            Some(batch.as_bytes()),
        )
        .await;
        assert_error(&r, 400, "bad_json", &format!("batch publish of {what}"));
        // WebSocket publish.
        ws.send_text(&format!(
            r#"{{"type":"publish","channel":"chat.a","data":{data}}}"#
        ))
        .await;
        let answer = ws.expect_control("error", T5).await;
        assert_eq!(answer["code"], "bad_json", "ws publish of {what}: {answer}");
    }
    // Nothing of it reached a subscriber; ordinary JSON still does, with
    // the digits it was sent with, on every path.
    ws.expect_no_envelope(Duration::from_millis(300)).await;
    let (status, body) = gw
        .publish("chat.a", br#"{"n": 1.50}"#, "application/json")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ws.next_envelope(T5).await["data"]["n"], 1.5);
    let deep_ok = nested(64);
    let (status, body) = gw
        .publish("chat.a", deep_ok.as_bytes(), "application/json")
        .await;
    assert_eq!(status, 200, "64 levels are allowed: {body}");
    ws.next_envelope(T5).await;
}

// ---------------------------------------------------------------- item 8

/// The values of one header as the echo upstream saw them.
fn seen(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends raw request bytes on a fresh connection and reads the answer.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Response {
    let mut conn = RawHttpConn::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    conn.read_response("GET").await.unwrap()
}

#[tokio::test]
async fn missing_repeated_or_invalid_host_headers_are_400() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let cases: [(&str, &str); 6] = [
        ("missing", ""),
        ("repeated", "Host: a.test\r\nHost: b.test\r\n"),
        ("with a space", "Host: a b\r\n"),
        ("with a path", "Host: evil/path?x\r\n"),
        ("with user info", "Host: user@h\r\n"),
        ("with a bad port", "Host: a.test:99999\r\n"),
    ];
    for path in ["/api/x", "/rt/poll/a?timeout=0"] {
        for (what, host) in cases {
            let r = raw(
                gw.public,
                format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes(),
            )
            .await;
            assert_error(&r, 400, "bad_request", &format!("{what} Host on {path}"));
        }
    }
    // HTTP/1.0 may leave Host out; a valid Host is served.
    let r = raw(gw.public, b"GET /api/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let r = raw(
        gw.public,
        b"GET /api/x HTTP/1.1\r\nHost: app.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(seen(&r.json(), "host"), ["app.test:8080"]);
}

#[tokio::test]
async fn connection_cannot_strip_host_or_the_forwarding_headers() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let r = http(
        "GET",
        &gw.public_url("/api/x"),
        &[
            ("Host", "app.test"),
            (
                "Connection",
                "close, Host, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Via, Forwarded, X-Secret",
            ),
            ("X-Secret", "1"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "host"), ["app.test"], "{echo}");
    assert_eq!(seen(&echo, "x-forwarded-host"), ["app.test"], "{echo}");
    assert_eq!(seen(&echo, "x-forwarded-for"), ["127.0.0.1"], "{echo}");
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["http"], "{echo}");
    assert_eq!(seen(&echo, "via"), ["1.1 pollbridge"], "{echo}");
    assert!(seen(&echo, "x-secret").is_empty(), "{echo}");
}

// ---------------------------------------------------------------- item 13

#[tokio::test]
async fn the_gateways_own_431_400_and_414_are_json() {
    let gw = Gateway::start(&[]).await;
    let big = format!(
        "GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let r = raw(gw.public, big.as_bytes()).await;
    assert_error(&r, 431, "head_too_large", "a 40 KB head");
    let many: String = (0..200).map(|i| format!("X-{i}: 1\r\n")).collect();
    let r = raw(
        gw.public,
        format!("GET /rt/poll/a HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_error(&r, 431, "head_too_large", "200 headers");
    let r = raw(
        gw.public,
        b"GET /rt/poll/a HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    )
    .await;
    assert_error(&r, 400, "bad_request", "a malformed header line");
    // The admin listener's as well.
    let r = raw(gw.admin, b"G@T /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_error(&r, 400, "bad_request", "a malformed request line (admin)");
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn a_clients_forwarded_header_follows_the_trusted_proxy_rule() {
    let up = echo_upstream().await;
    let headers = [
        ("Host", "app.test"),
        ("Forwarded", "for=6.6.6.6;proto=https"),
    ];
    // From an untrusted client: replaced by this hop's element.
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let r = http("GET", &gw.public_url("/api/x"), &headers, None).await;
    let echo = r.json();
    assert_eq!(
        seen(&echo, "forwarded"),
        ["for=127.0.0.1;proto=http;host=\"app.test\""],
        "{echo}"
    );
    drop(gw);
    // From a trusted proxy: kept, this hop appended.
    let gw = Gateway::start(&["--upstream", &up.url(), "--trusted-proxy", "127.0.0.1"]).await;
    let r = http("GET", &gw.public_url("/api/x"), &headers, None).await;
    let echo = r.json();
    assert_eq!(
        seen(&echo, "forwarded"),
        ["for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=\"app.test\""],
        "{echo}"
    );
}

#[tokio::test]
async fn upstream_failures_do_not_tell_clients_the_upstreams_address() {
    let dead = common::upstream::dead_addr();
    let gw = Gateway::start(&["--upstream", &format!("http://{dead}")]).await;
    let r = get(&gw.public_url("/api/x")).await;
    assert_error(&r, 502, "upstream_unreachable", "dead upstream");
    assert!(!r.text().contains(&dead.to_string()), "{}", r.text());
    assert!(!r.text().contains(&dead.port().to_string()), "{}", r.text());
    // The operator still learns where it failed: in the log.
    eventually(T5, "the upstream address is logged", || async {
        gw.stderr_text().contains(&dead.to_string()).then_some(())
    })
    .await;

    let hanging = common::upstream::hanging_upstream().await;
    let gw = Gateway::start(&["--upstream", &hanging.url(), "--proxy-timeout", "1s"]).await;
    let r = get(&gw.public_url("/api/x")).await;
    assert_error(&r, 504, "upstream_timeout", "hanging upstream");
    assert!(
        !r.text().contains(&hanging.addr.port().to_string()),
        "{}",
        r.text()
    );
}

// ---------------------------------------------------------------- item 11

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_not_a_502() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let r = raw(
        gw.public,
        b"POST /api/upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nnot hex\r\n0\r\n\r\n",
    )
    .await;
    assert_error(&r, 400, "bad_request", "malformed chunk size");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "pollbridge_proxy_requests_total",
            &[("code", "4xx")]
        ),
        Some(1.0),
        "counted as a client error"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "pollbridge_proxy_requests_total",
            &[("code", "5xx")]
        ),
        Some(0.0),
        "not counted as an upstream failure"
    );
    assert!(
        !gw.stderr_text().contains("WARN"),
        "a client's mistake is not a warning: {}",
        gw.stderr_text()
    );
    // A well-formed chunked body still goes through.
    let r = raw(
        gw.public,
        b"POST /api/upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 5);
}

// ---------------------------------------------------------------- item 5

/// An upstream that reads one request forever and reports when the
/// gateway gives up on it (EOF or reset on its socket).
async fn watching_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<Instant>,
) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(Instant::now());
    });
    (addr, rx)
}

#[tokio::test]
async fn a_dripped_proxied_body_is_cut_off_with_408_and_the_upstream_released() {
    let (upstream, released) = watching_upstream().await;
    let gw = Gateway::start(&[
        "--upstream",
        &format!("http://{upstream}"),
        "--proxy-body-timeout",
        "2s",
        "--proxy-body-min-rate",
        "1024",
    ])
    .await;
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    conn.write_all(b"POST /api/upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    // One byte every 400 ms, as long as the gateway takes them (bounded).
    let drip = async {
        for _ in 0..25 {
            if conn.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        conn
    };
    let (mut conn, released) = tokio::join!(drip, async {
        tokio::time::timeout(Duration::from_secs(8), released).await
    });
    let released = released
        .expect("the upstream request is aborted within the body deadline")
        .expect("watching upstream");
    let held = released - t0;
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(5),
        "upstream held {held:?}"
    );
    let r = conn.read_response("POST").await.unwrap();
    assert_error(&r, 408, "body_timeout", "dripped body");
}

#[tokio::test]
async fn a_steady_proxied_body_past_the_grace_time_goes_through() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&[
        "--upstream",
        &up.url(),
        "--proxy-body-timeout",
        "1s",
        "--proxy-body-min-rate",
        "1024",
    ])
    .await;
    let mut conn = RawHttpConn::connect(gw.public).await.unwrap();
    conn.write_all(
        b"POST /api/upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 12000\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // 2,000 bytes every 400 ms (5 KB/s) for 2.4 s: past the 1 s grace,
    // well above the minimum rate.
    for _ in 0..6 {
        conn.write_all(&[b'y'; 2000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let r = conn.read_response("POST").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 12000);
}

// ---------------------------------------------------------------- item 6

#[tokio::test]
async fn the_admin_listener_refuses_cross_site_origins_and_rebound_hosts() {
    let gw = Gateway::start(&[]).await;
    let publish = |headers: Vec<(&'static str, String)>| {
        let url = gw.admin_url("/publish/news");
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http("POST", &url, &headers, Some(b"1")).await
        }
    };
    let r = publish(vec![("Origin", "https://evil.test".into())]).await;
    assert_error(&r, 403, "forbidden", "cross-site POST /publish");
    let r = http(
        "POST",
        &gw.admin_url("/disconnect"),
        &[("Origin", "https://evil.test")],
        None,
    )
    .await;
    assert_error(&r, 403, "forbidden", "cross-site POST /disconnect");
    let r = http(
        "GET",
        &gw.admin_url("/stats"),
        &[("Host", "rebind.evil")],
        None,
    )
    .await;
    assert_error(&r, 403, "forbidden", "DNS-rebound Host");
    let r = http(
        "GET",
        &gw.admin_url("/metrics"),
        &[("Host", &format!("rebind.evil:{}", gw.admin.port()))],
        None,
    )
    .await;
    assert_error(&r, 403, "forbidden", "DNS-rebound Host with the port");
    // Nothing was published.
    let (_, body) = gw.poll("news", "since=0&timeout=0").await;
    assert_eq!(body["messages"], json!([]), "{body}");

    // curl (no Origin), the admin page (its own origin) and localhost work.
    let own = format!("http://{}", gw.admin);
    for headers in [
        vec![],
        vec![("Origin", own.clone())],
        vec![("Host", format!("localhost:{}", gw.admin.port()))],
    ] {
        let r = publish(headers.clone()).await;
        assert_eq!(r.status(), 200, "{headers:?}: {}", r.text());
    }
}

#[tokio::test]
async fn admin_origins_and_hosts_can_be_allowed() {
    let gw = Gateway::builder()
        .config(
            r#"
[admin]
allowed_origins = ["https://ops.test"]
allowed_hosts = ["pollbridge-admin.ops.svc"]
"#,
        )
        .start()
        .await;
    let r = http(
        "POST",
        &gw.admin_url("/publish/news"),
        &[
            ("Origin", "https://ops.test"),
            ("Host", "pollbridge-admin.ops.svc:9090"),
        ],
        Some(b"1"),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_the_probes() {
    const TOKEN: &str = "s3cret-admin-token-0123456789";
    let dir = TempDir::new();
    let file = dir.write("admin-token", &format!("{TOKEN}\n"));
    let gw = Gateway::start(&["--admin-token-file", file.to_str().unwrap()]).await;
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/metrics", "/stats", "/channels"] {
        let r = get(&gw.admin_url(path)).await;
        assert_error(&r, 401, "unauthorized", path);
        let r = http(
            "GET",
            &gw.admin_url(path),
            &[("Authorization", "Bearer nope")],
            None,
        )
        .await;
        assert_error(&r, 403, "forbidden", path);
        let r = http(
            "GET",
            &gw.admin_url(path),
            &[("Authorization", &bearer)],
            None,
        )
        .await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text());
    }
    let r = http("POST", &gw.admin_url("/publish/news"), &[], Some(b"1")).await;
    assert_error(&r, 401, "unauthorized", "publish without the token");
    let r = http(
        "POST",
        &gw.admin_url("/publish/news"),
        &[("Authorization", &bearer)],
        Some(b"1"),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    // Probes (kubelet, load balancer) and the static page need no token.
    for path in ["/healthz", "/readyz", "/"] {
        assert_eq!(get(&gw.admin_url(path)).await.status(), 200, "{path}");
    }

    // The same from the environment; a short token is refused at startup.
    let gw = Gateway::builder()
        .env("POLLBRIDGE_ADMIN_TOKEN", TOKEN)
        .start()
        .await;
    assert_eq!(get(&gw.admin_url("/metrics")).await.status(), 401);
    let (code, _, stderr) =
        run_to_exit(&["--admin-token", "short", "--check-config"], &[], T10).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("admin.token"), "{stderr}");
}

// ---------------------------------------------------------------- item 7

#[tokio::test]
async fn cookie_tokens_count_only_from_the_gateways_own_site() {
    let gw = Gateway::start_with_config(&config(""), &[]).await;
    let token = signed(&json!({"exp": now_secs() + 300, "channels": ["private.*"]}));
    let cookie = format!("pollbridge_token={token}");
    let own = format!("http://{}", gw.public);
    let upgrade = |origin: &str| {
        let mut headers: Vec<(String, String)> = UPGRADE
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        headers.push(("Cookie".into(), cookie.clone()));
        headers.push(("Origin".into(), origin.to_string()));
        headers
    };
    let ws = |headers: Vec<(String, String)>| {
        let url = gw.public_url("/rt/ws/private.a");
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            http("GET", &url, &headers, None).await
        }
    };
    // Cross-site WebSocket hijacking: refused as if no cookie was sent.
    let r = ws(upgrade("https://evil.test")).await;
    assert_error(&r, 401, "unauthorized", "cookie token from a foreign page");
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/private.a?timeout=0"),
        &[("Cookie", &cookie), ("Origin", "https://evil.test")],
        None,
    )
    .await;
    assert_error(&r, 401, "unauthorized", "cookie token on a cross-site poll");
    // The gateway's own pages, and clients that send no Origin, still work.
    let r = ws(upgrade(&own)).await;
    assert_eq!(r.status(), 101, "{}", r.text());
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/private.a?timeout=0"),
        &[("Cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    // A token the page hands over explicitly works from anywhere.
    let mut explicit = upgrade("https://evil.test");
    explicit.retain(|(n, _)| n != "Cookie");
    explicit.push(("Authorization".into(), format!("Bearer {token}")));
    assert_eq!(ws(explicit).await.status(), 101);

    // An origin on auth.allowed_origins may use the cookie.
    let gw =
        Gateway::start_with_config(&config(r#"allowed_origins = ["https://app.test"]"#), &[]).await;
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/private.a?timeout=0"),
        &[("Cookie", &cookie), ("Origin", "https://app.test")],
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
}
