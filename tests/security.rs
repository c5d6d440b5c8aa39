//! Security: subscriber tokens, backend delegation, origins, publishing
//! rights, per-address and total limits, slow heads, oversized frames,
//! token expiry and TLS (with certificate reload on SIGHUP).
//!
//! Every rule is checked both ways: the forbidden thing fails with the
//! documented error, and the allowed thing still works.

mod common;

use std::time::{Duration, Instant};

use common::http::find;
use common::security::*;
use common::upstream::{dead_addr, hanging_upstream};
use common::ws::OP_TEXT;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "pollbridge-test-secret-0123456789";

/// `private.*` needs a token (HS256 with [`SECRET`]); the rest is public.
fn token_config() -> String {
    format!(
        r#"
[auth]
jwt_secret = "{SECRET}"

[[channels]]
pattern = "private.*"
auth = "token"
"#
    )
}

fn token(exp_in: i64, channels: &[&str]) -> String {
    hs256_token(SECRET, (now_secs() as i64 + exp_in) as u64, channels)
}

/// The three ways to subscribe, as plain requests: a long-poll, an SSE
/// stream and a WebSocket upgrade, each with `query` and `headers`.
async fn subscribe_requests(
    gw: &Gateway,
    channel: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Vec<(&'static str, Response)> {
    let poll = http(
        "GET",
        &gw.public_url(&format!("/rt/poll/{channel}?since=0&timeout=0&{query}")),
        headers,
        None,
    )
    .await;
    // An accepted SSE stream never ends: read its body only when refused.
    let mut stream = SseClient::connect(gw.public, &format!("/rt/sse/{channel}?{query}"), headers)
        .await
        .unwrap_or_else(|e| panic!("SSE {channel}: {e}"));
    let body = if stream.head.status == 200 {
        Vec::new()
    } else {
        let head = stream.head.clone();
        stream.conn.read_body(&head, "GET").await.unwrap()
    };
    let sse = Response {
        head: stream.head,
        body,
    };
    let mut ws_headers = UPGRADE.to_vec();
    ws_headers.extend_from_slice(headers);
    let ws = http(
        "GET",
        &gw.public_url(&format!("/rt/ws/{channel}?{query}")),
        &ws_headers,
        None,
    )
    .await;
    vec![("long-poll", poll), ("SSE", sse), ("WebSocket", ws)]
}

/// Request headers, as `(name, value)` pairs.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// Every transport refuses both channels with this (status, code), and the
/// answer is the same for the channel that exists as for the one that
/// doesn't.
async fn assert_refused_everywhere(
    gw: &Gateway,
    (existing, missing): (&str, &str),
    query: &str,
    headers: &[(&str, &str)],
    (status, code): (u16, &str),
    what: &str,
) {
    let a = subscribe_requests(gw, existing, query, headers).await;
    let b = subscribe_requests(gw, missing, query, headers).await;
    for ((transport, ra), (_, rb)) in a.iter().zip(&b) {
        let label = format!("{what} ({transport})");
        assert_error(ra, status, code, &label);
        assert_error(rb, status, code, &label);
        assert_eq!(
            ra.json(),
            rb.json(),
            "{label}: refusal differs between an existing and a missing channel"
        );
        assert!(
            ra.header("upgrade").is_none() && rb.header("upgrade").is_none(),
            "{label}: a refusal must not upgrade"
        );
    }
}

#[tokio::test]
async fn tokens_missing_expired_forged_or_for_another_channel_are_refused() {
    let gw = Gateway::start_with_config(&token_config(), &[]).await;
    gw.publish_json("private.a", &json!({"secret": 1})).await;

    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"channels": ["private.a"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("no token", String::new(), 401, "unauthorized"),
        (
            "expired token",
            token(-120, &["private.a", "private.b"]),
            401,
            "unauthorized",
        ),
        (
            "forged token (another secret)",
            hs256_token(
                "another-secret-entirely-0123456",
                now_secs() + 300,
                &["private.*"],
            ),
            401,
            "unauthorized",
        ),
        (
            "unsigned token (alg none)",
            unsigned_token(&json!({"exp": now_secs() + 300, "channels": ["private.*"]})),
            401,
            "unauthorized",
        ),
        ("token without exp", no_exp, 401, "unauthorized"),
        (
            "garbage token",
            "not.a.jwt".to_string(),
            401,
            "unauthorized",
        ),
        (
            "token for another channel",
            token(300, &["private.other", "news"]),
            403,
            "forbidden",
        ),
    ];
    for (what, tok, status, code) in &cases {
        let query = if tok.is_empty() {
            String::new()
        } else {
            format!("token={tok}")
        };
        assert_refused_everywhere(
            &gw,
            ("private.a", "private.b"),
            &query,
            &[],
            (*status, code),
            what,
        )
        .await;
    }

    // The allowed thing: a valid token for the channel, on every transport.
    let good = token(300, &["news", "private.a"]);
    let (status, body) = gw
        .poll("private.a", &format!("since=0&timeout=0&token={good}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"][0]["data"]["secret"], 1, "{body}");
    let mut sse = SseClient::open(
        gw.public,
        &format!("/rt/sse/private.a?since=0&token={good}"),
        &[],
    )
    .await;
    assert_eq!(sse.expect_event(T5).await.json()["data"]["secret"], 1);
    let mut ws =
        WsClient::connect(&gw.ws_url(&format!("/rt/ws/private.a?since=0&token={good}"))).await;
    ws.expect_control("subscribed", T5).await;
    assert_eq!(ws.next_envelope(T5).await["data"]["secret"], 1);
    // A glob in the token covers the channels it matches.
    let glob = token(300, &["private.*"]);
    let (status, body) = gw
        .poll("private.zzz", &format!("timeout=0&token={glob}"))
        .await;
    assert_eq!(status, 200, "{body}");
    // Channels without a rule stay public.
    let (status, body) = gw.poll("news", "timeout=0").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn token_is_accepted_from_query_bearer_and_cookie() {
    let gw = Gateway::start_with_config(&token_config(), &[]).await;
    gw.publish_json("private.q", &json!("hello")).await;
    let tok = token(300, &["private.q"]);
    let bearer = format!("Bearer {tok}");
    let cookie = format!("theme=dark; pollbridge_token={tok}; lang=en");

    let poll_path = "/rt/poll/private.q?since=0&timeout=0";
    let ways: Vec<(&str, String, Headers)> = vec![
        ("query", format!("{poll_path}&token={tok}"), vec![]),
        (
            "bearer",
            poll_path.to_string(),
            vec![("Authorization", bearer.as_str())],
        ),
        (
            "cookie",
            poll_path.to_string(),
            vec![("Cookie", cookie.as_str())],
        ),
    ];
    for (how, path, headers) in &ways {
        let r = http("GET", &gw.public_url(path), headers, None).await;
        assert_eq!(r.status(), 200, "token via {how}: {}", r.text());
        assert_eq!(r.json()["messages"][0]["data"], "hello", "{how}");
    }

    // SSE with a bearer token, WebSocket with the cookie.
    let mut sse = SseClient::open(
        gw.public,
        "/rt/sse/private.q?since=0",
        &[("Authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(sse.expect_event(T5).await.json()["data"], "hello");
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let (mut ws, _) =
        RawWs::handshake_with(conn, "/rt/ws/private.q?since=0", &[("Cookie", &cookie)])
            .await
            .expect("WebSocket with the token cookie");
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");
    assert_eq!(ws.next_json(T5).await["data"], "hello");
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let (mut ws, _) = RawWs::handshake_with(
        conn,
        "/rt/ws/private.q",
        &[("Authorization", bearer.as_str())],
    )
    .await
    .expect("WebSocket with a bearer token");
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");

    // A cookie with another name carries no token.
    let r = http(
        "GET",
        &gw.public_url(poll_path),
        &[("Cookie", &format!("other_token={tok}"))],
        None,
    )
    .await;
    assert_error(&r, 401, "unauthorized", "token in an unrelated cookie");

    // `token_cookie` renames the cookie.
    let gw2 = Gateway::start_with_config(&token_config(), &["--token-cookie", "sess_tok"]).await;
    gw2.publish_json("private.q", &json!("hello")).await;
    let r = http(
        "GET",
        &gw2.public_url(poll_path),
        &[("Cookie", &format!("pollbridge_token={tok}"))],
        None,
    )
    .await;
    assert_error(
        &r,
        401,
        "unauthorized",
        "default cookie name after renaming",
    );
    let r = http(
        "GET",
        &gw2.public_url(poll_path),
        &[("Cookie", &format!("sess_tok={tok}"))],
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "renamed cookie: {}", r.text());
}

#[tokio::test]
async fn es256_tokens_verify_with_the_public_key_only() {
    let key = rcgen::KeyPair::generate().expect("P-256 key pair");
    let other = rcgen::KeyPair::generate().expect("P-256 key pair");
    let dir = TempDir::new();
    let public_pem = key.public_key_pem();
    let pub_path = dir.write("jwt.pub.pem", &public_pem);
    let config = format!(
        r#"
[auth]
jwt_public_key_file = "{}"

[[channels]]
pattern = "private.*"
auth = "token"
"#,
        pub_path.display()
    );
    let gw = Gateway::start_with_config(&config, &[]).await;
    gw.publish_json("private.es", &json!({"v": 7})).await;
    let private_pem = key.serialize_pem();
    let exp = now_secs() + 300;

    let good = es256_token(&private_pem, exp, &["private.es"]);
    let (status, body) = gw
        .poll("private.es", &format!("since=0&timeout=0&token={good}"))
        .await;
    assert_eq!(status, 200, "ES256 token: {body}");
    assert_eq!(body["messages"][0]["data"]["v"], 7, "{body}");
    let mut ws =
        WsClient::connect(&gw.ws_url(&format!("/rt/ws/private.es?since=0&token={good}"))).await;
    ws.expect_control("subscribed", T5).await;
    assert_eq!(ws.next_envelope(T5).await["data"]["v"], 7);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "ES256 token signed by another key",
            es256_token(&other.serialize_pem(), exp, &["private.es"]),
            401,
            "unauthorized",
        ),
        (
            "HS256 token keyed with the public key PEM (algorithm confusion)",
            hs256_token(&public_pem, exp, &["private.es"]),
            401,
            "unauthorized",
        ),
        (
            "HS256 token",
            hs256_token(SECRET, exp, &["private.es"]),
            401,
            "unauthorized",
        ),
        (
            "expired ES256 token",
            es256_token(&private_pem, now_secs() - 120, &["private.es"]),
            401,
            "unauthorized",
        ),
        (
            "ES256 token for another channel",
            es256_token(&private_pem, exp, &["private.other"]),
            403,
            "forbidden",
        ),
    ];
    for (what, tok, status, code) in &cases {
        assert_refused_everywhere(
            &gw,
            ("private.es", "private.none"),
            &format!("token={tok}"),
            &[],
            (*status, code),
            what,
        )
        .await;
    }
}

fn backend_config(url: &str, ttl: &str) -> String {
    format!(
        r#"
[auth]
auth_url = "{url}"
auth_cache_ttl = "{ttl}"

[[channels]]
pattern = "acct.*"
auth = "backend"
"#
    )
}

#[tokio::test]
async fn backend_auth_says_yes_or_no_and_answers_are_cached() {
    let backend = AuthBackend::start().await;
    let gw = Gateway::start_with_config(&backend_config(&backend.url(), "30s"), &[]).await;
    gw.publish_json("acct.1", &json!({"balance": 10})).await;

    // Yes: five polls with the same cookie cost the backend one request.
    for i in 0..5 {
        let r = http(
            "GET",
            &gw.public_url("/rt/poll/acct.1?since=0&timeout=0"),
            &[("Cookie", "theme=dark; session=good")],
            None,
        )
        .await;
        assert_eq!(
            r.status(),
            200,
            "poll {i} with a good session: {}",
            r.text()
        );
        assert_eq!(r.json()["messages"][0]["data"]["balance"], 10);
    }
    let seen = backend.requests();
    assert_eq!(
        seen.len(),
        1,
        "5 polls must cost 1 backend request: {seen:?}"
    );
    assert_eq!(seen[0].target, "/check?channel=acct.1", "{seen:?}");
    assert_eq!(
        seen[0].cookie.as_deref(),
        Some("theme=dark; session=good"),
        "the client's cookie is forwarded: {seen:?}"
    );

    // No: a bad session, and no session at all, on every transport; the
    // same answer whether or not the channel exists.
    for (what, headers) in [
        ("bad session", vec![("Cookie", "session=bad")]),
        ("no credentials", vec![]),
    ] {
        assert_refused_everywhere(
            &gw,
            ("acct.1", "acct.nobody"),
            "",
            &headers,
            (403, "forbidden"),
            what,
        )
        .await;
    }
    // The cached "yes" belongs to the good session only.
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/acct.1?since=0&timeout=0"),
        &[("Cookie", "session=bad")],
        None,
    )
    .await;
    assert_error(&r, 403, "forbidden", "bad session after a cached yes");

    // The Authorization header is forwarded too.
    let before = backend.count();
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/acct.1?since=0&timeout=0"),
        &[("Authorization", "Bearer good")],
        None,
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "bearer accepted by the backend: {}",
        r.text()
    );
    let seen = backend.requests();
    assert_eq!(seen.len(), before + 1, "{seen:?}");
    assert_eq!(seen[before].authorization.as_deref(), Some("Bearer good"));

    // Cached per channel: another channel is asked about once.
    for _ in 0..3 {
        let r = http(
            "GET",
            &gw.public_url("/rt/poll/acct.2?timeout=0"),
            &[("Cookie", "theme=dark; session=good")],
            None,
        )
        .await;
        assert_eq!(r.status(), 200, "{}", r.text());
    }
    let seen = backend.requests();
    assert_eq!(
        seen.iter()
            .filter(|r| r.target == "/check?channel=acct.2")
            .count(),
        1,
        "{seen:?}"
    );

    // SSE and WebSocket with the good session.
    let mut sse = SseClient::open(
        gw.public,
        "/rt/sse/acct.1?since=0",
        &[("Cookie", "theme=dark; session=good")],
    )
    .await;
    assert_eq!(sse.expect_event(T5).await.json()["data"]["balance"], 10);
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let (mut ws, _) = RawWs::handshake_with(
        conn,
        "/rt/ws/acct.1?since=0",
        &[("Cookie", "theme=dark; session=good")],
    )
    .await
    .expect("WebSocket with a good session");
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");
    assert_eq!(ws.next_json(T5).await["data"]["balance"], 10);

    // Public channels never ask the backend.
    let before = backend.count();
    let (status, _) = gw.poll("open", "timeout=0").await;
    assert_eq!(status, 200);
    assert_eq!(
        backend.count(),
        before,
        "a public channel asked the backend"
    );

    // With a short TTL the answer is asked again once it has expired.
    let backend2 = AuthBackend::start().await;
    let gw2 = Gateway::start_with_config(&backend_config(&backend2.url(), "500ms"), &[]).await;
    let url = gw2.public_url("/rt/poll/acct.9?timeout=0");
    let poll = || http("GET", &url, &[("Cookie", "session=good")], None);
    assert_eq!(poll().await.status(), 200);
    assert_eq!(poll().await.status(), 200);
    assert_eq!(backend2.count(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(poll().await.status(), 200);
    assert_eq!(backend2.count(), 2, "the cached answer outlived its TTL");
}

/// A backend on `url` that must answer within 500 ms.
async fn slow_backend_gateway(url: &str) -> Gateway {
    let config = backend_config(url, "30s").replace(
        "auth_cache_ttl = \"30s\"",
        "auth_cache_ttl = \"30s\"\nauth_timeout = \"500ms\"",
    );
    Gateway::start_with_config(&config, &[]).await
}

async fn poll_with_good_session(gw: &Gateway) -> Response {
    http(
        "GET",
        &gw.public_url("/rt/poll/acct.1?timeout=0"),
        &[("Cookie", "session=good")],
        None,
    )
    .await
}

#[tokio::test]
async fn backend_auth_unreachable_or_slow_fails_closed() {
    // When the backend can't say yes, nobody gets in.
    let hanging = hanging_upstream().await;
    let gw = slow_backend_gateway(&format!("{}/check", hanging.url())).await;
    let started = Instant::now();
    let r = poll_with_good_session(&gw).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "auth_timeout not applied: {:?}",
        started.elapsed()
    );
    assert!(
        r.status() >= 400,
        "a silent backend let the client in: {} {}",
        r.status(),
        r.text()
    );
    let (status, _) = gw.poll("open", "timeout=0").await;
    assert_eq!(status, 200, "public channels don't depend on the backend");

    let gw = slow_backend_gateway(&format!("http://{}/check", dead_addr())).await;
    let r = poll_with_good_session(&gw).await;
    assert!(
        r.status() >= 400,
        "an unreachable backend let the client in: {} {}",
        r.status(),
        r.text()
    );
}

/// `auth.auth_timeout` is documented as "The backend must answer within
/// this, else the client is refused (503)".
#[tokio::test]
async fn backend_auth_timeout_is_the_documented_503() {
    let hanging = hanging_upstream().await;
    let gw = slow_backend_gateway(&format!("{}/check", hanging.url())).await;
    let r = poll_with_good_session(&gw).await;
    assert_eq!(
        r.status(),
        503,
        "slow auth backend: expected 503 (auth.auth_timeout docs), got {} {}",
        r.status(),
        r.text()
    );
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused() {
    let config = "[auth]\nallowed_origins = [\"https://app.test\"]\n";
    let gw = Gateway::start_with_config(config, &[]).await;
    gw.publish_json("feed", &json!(1)).await;

    for origin in ["https://evil.test", "https://app.test.evil.test", "null"] {
        let refused = subscribe_requests(&gw, "feed", "", &[("Origin", origin)]).await;
        for (transport, r) in &refused {
            let what = format!("Origin {origin} ({transport})");
            assert_error(r, 403, "forbidden", &what);
            assert!(
                r.header("access-control-allow-origin").is_none(),
                "{what}: CORS header on a refusal"
            );
        }
    }

    // The allowed origin: poll with CORS headers, SSE, WebSocket.
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/feed?since=0&timeout=0"),
        &[("Origin", "https://app.test")],
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert!(
        r.head
            .header_all("vary")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("origin")),
        "Vary: Origin missing: {:?}",
        r.head.headers
    );
    let sse = SseClient::open(gw.public, "/rt/sse/feed", &[("Origin", "https://app.test")]).await;
    assert_eq!(
        sse.head.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    let conn = RawHttpConn::connect(gw.public).await.unwrap();
    let (mut ws, _) = RawWs::handshake_with(conn, "/rt/ws/feed", &[("Origin", "https://app.test")])
        .await
        .expect("WebSocket from the allowed origin");
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");
    // No Origin (a non-browser client) is fine without require_origin.
    let (status, body) = gw.poll("feed", "timeout=0").await;
    assert_eq!(status, 200, "poll without Origin: {body}");
    SseClient::open(gw.public, "/rt/sse/feed", &[]).await;
    let mut ws = RawWs::connect(gw.public, "/rt/ws/feed")
        .await
        .expect("WebSocket without Origin");
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");

    // require_origin: a missing Origin is refused too.
    let strict = format!("{config}require_origin = true\n");
    let gw = Gateway::start_with_config(&strict, &[]).await;
    let refused = subscribe_requests(&gw, "feed", "", &[]).await;
    for (transport, r) in &refused {
        assert_error(r, 403, "forbidden", &format!("no Origin ({transport})"));
    }
    let r = http(
        "GET",
        &gw.public_url("/rt/poll/feed?timeout=0"),
        &[("Origin", "https://app.test")],
        None,
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "allowed origin with require_origin: {}",
        r.text()
    );
}

#[tokio::test]
async fn public_publishing_needs_a_configured_key() {
    // No keys configured: the endpoint does not exist.
    let gw = Gateway::start(&[]).await;
    for headers in [vec![], vec![("Authorization", "Bearer anything")]] {
        let r = http(
            "POST",
            &gw.public_url("/rt/publish/news"),
            &headers,
            Some(b"hi"),
        )
        .await;
        assert_error(&r, 404, "not_found", "public publish without keys");
    }

    let gw = Gateway::start(&["--publish-key", "k3y-one-0123456789"]).await;
    let url = gw.public_url("/rt/publish/news");
    let cases: [(&str, Headers, u16, &str); 5] = [
        ("no key", vec![], 401, "unauthorized"),
        (
            "basic auth",
            vec![("Authorization", "Basic azN5LW9uZQ==")],
            401,
            "unauthorized",
        ),
        (
            "wrong key",
            vec![("Authorization", "Bearer k3y-two-0123456789")],
            403,
            "forbidden",
        ),
        (
            "prefix of the key",
            vec![("Authorization", "Bearer k3y-one")],
            403,
            "forbidden",
        ),
        (
            "key plus extra",
            vec![("Authorization", "Bearer k3y-one-0123456789x")],
            403,
            "forbidden",
        ),
    ];
    for (what, headers, status, code) in &cases {
        let r = http("POST", &url, headers, Some(b"nope")).await;
        assert_error(&r, *status, code, what);
    }
    let (_, body) = gw.poll("news", "since=0&timeout=0").await;
    assert_eq!(body["last_id"], 0, "a refused publish published: {body}");

    let r = http(
        "POST",
        &url,
        &[
            ("Authorization", "Bearer k3y-one-0123456789"),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"ok":true}"#),
    )
    .await;
    assert_eq!(r.status(), 200, "publish with the key: {}", r.text());
    assert_eq!(r.json(), json!({"channel": "news", "id": 1}));
    let (_, body) = gw.poll("news", "since=0&timeout=0").await;
    assert_eq!(body["messages"][0]["data"]["ok"], true, "{body}");
}

#[tokio::test]
async fn websocket_publish_needs_the_rule_and_read_access() {
    let config = format!(
        r#"
[auth]
jwt_secret = "{SECRET}"

[[channels]]
pattern = "chat.*"
allow_client_publish = true

[[channels]]
pattern = "room.*"
allow_client_publish = true
auth = "token"

[[channels]]
pattern = "private.*"
auth = "token"
"#
    );
    let gw = Gateway::start_with_config(&config, &[]).await;
    let mut alice = WsClient::connect(&gw.ws_url("/rt/ws/chat.lobby")).await;
    alice.expect_control("subscribed", T5).await;
    let mut bob = WsClient::connect(&gw.ws_url("/rt/ws/chat.lobby")).await;
    bob.expect_control("subscribed", T5).await;

    // A channel with no rule is read-only for clients.
    alice
        .send_json(&json!({"type": "publish", "channel": "news", "data": "spam"}))
        .await;
    let err = alice.expect_control("error", T5).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    assert_eq!(err["channel"], "news", "{err}");
    // A token channel the client may not read: unauthorized without a token.
    alice
        .send_json(&json!({"type": "publish", "channel": "room.1", "data": "x"}))
        .await;
    let err = alice.expect_control("error", T5).await;
    assert_eq!(err["code"], "unauthorized", "{err}");

    // The connection stays and publishing where allowed works.
    alice
        .send_json(&json!({"type": "publish", "channel": "chat.lobby", "data": {"t": "hi"}}))
        .await;
    let ack = alice.expect_control("published", T5).await;
    assert_eq!(ack["channel"], "chat.lobby", "{ack}");
    let env = bob.next_envelope(T5).await;
    assert_eq!(env["data"]["t"], "hi", "{env}");
    assert_eq!(env["id"], ack["id"], "{env} vs {ack}");

    // A token for room.2 only: room.1 is forbidden, room.2 allowed;
    // private.* is readable but its rule doesn't allow publishing.
    let tok = token(300, &["room.2", "private.*"]);
    let mut carol = WsClient::connect(&gw.ws_url(&format!("/rt/ws?token={tok}"))).await;
    carol
        .send_json(&json!({"type": "publish", "channel": "room.1", "data": "x"}))
        .await;
    let err = carol.expect_control("error", T5).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    carol
        .send_json(&json!({"type": "publish", "channel": "private.a", "data": "x"}))
        .await;
    let err = carol.expect_control("error", T5).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    carol
        .send_json(&json!({"type": "publish", "channel": "room.2", "data": "ok"}))
        .await;
    let ack = carol.expect_control("published", T5).await;
    assert_eq!(ack["id"], 1, "{ack}");

    // Nothing was published by the refused commands: the admin's first
    // message on each of those channels gets id 1.
    for ch in ["news", "room.1", "private.a"] {
        let id = gw.publish_json(ch, &json!("admin")).await;
        assert_eq!(id, 1, "a refused client publish reached {ch}");
    }
}

#[tokio::test]
async fn websocket_subscribe_commands_are_authorized_and_the_connection_stays() {
    let gw = Gateway::start_with_config(&token_config(), &[]).await;
    let tok = token(300, &["private.a"]);
    let mut ws = WsClient::connect(&gw.ws_url(&format!("/rt/ws/private.a?token={tok}"))).await;
    ws.expect_control("subscribed", T5).await;
    ws.send_json(&json!({"type": "subscribe", "channel": "private.b"}))
        .await;
    let err = ws.expect_control("error", T5).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    assert_eq!(err["channel"], "private.b", "{err}");
    // Still subscribed to what it may read, and nothing from private.b.
    gw.publish_json("private.b", &json!("hidden")).await;
    gw.publish_json("private.a", &json!("visible")).await;
    let env = ws.next_envelope(T5).await;
    assert_eq!(env["channel"], "private.a", "{env}");
    assert_eq!(env["data"], "visible", "{env}");

    // Several channels in the URL: every one must be allowed, else none.
    let r = http(
        "GET",
        &gw.public_url(&format!(
            "/rt/ws?channel=news&channel=private.a&channel=private.b&token={tok}"
        )),
        &UPGRADE,
        None,
    )
    .await;
    assert_error(&r, 403, "forbidden", "one channel of three not covered");
    let r = http(
        "GET",
        &gw.public_url("/rt/ws?channel=news&channel=private.a"),
        &UPGRADE,
        None,
    )
    .await;
    assert_error(
        &r,
        401,
        "unauthorized",
        "protected channel in a list, no token",
    );
    let mut both = WsClient::connect(&gw.ws_url(&format!(
        "/rt/ws?channel=news&channel=private.a&token={tok}"
    )))
    .await;
    both.expect_control("subscribed", T5).await;
    both.expect_control("subscribed", T5).await;

    // No token, or a forged one: unauthorized; public channels still work.
    let forged = hs256_token(
        "another-secret-entirely-0123456",
        now_secs() + 300,
        &["private.*"],
    );
    for path in ["/rt/ws".to_string(), format!("/rt/ws?token={forged}")] {
        let mut ws = WsClient::connect(&gw.ws_url(&path)).await;
        ws.send_json(&json!({"type": "subscribe", "channel": "private.a"}))
            .await;
        let err = ws.expect_control("error", T5).await;
        assert_eq!(err["code"], "unauthorized", "{path}: {err}");
        ws.send_json(&json!({"type": "subscribe", "channel": "news"}))
            .await;
        let ack = ws.expect_control("subscribed", T5).await;
        assert_eq!(ack["channel"], "news", "{ack}");
        gw.publish_json("private.a", &json!("hidden")).await;
        let id = gw.publish_json("news", &json!("public")).await;
        let env = ws.next_envelope(T5).await;
        assert_eq!(
            (env["channel"].as_str(), env["id"].as_u64()),
            (Some("news"), Some(id))
        );
    }
}

#[tokio::test]
async fn token_expiry_closes_websockets_with_1008_and_ends_sse() {
    let gw = Gateway::builder()
        .config(&token_config())
        // Expiry runs on its own timer, not on the ping tick; the idle
        // timeout is long because `keep` goes unread while the others end
        // (a loaded CI machine took long enough for a 3 s one to close it).
        .args(&["--ws-ping-interval", "1s", "--ws-idle-timeout", "60s"])
        .start()
        .await;
    let short = token(2, &["private.*"]);
    let long = token(300, &["private.*"]);
    // Token checked at the handshake.
    let mut a = WsClient::connect(&gw.ws_url(&format!("/rt/ws/private.a?token={short}"))).await;
    a.expect_control("subscribed", T5).await;
    // Token first needed by a subscribe command.
    let mut b = WsClient::connect(&gw.ws_url(&format!("/rt/ws/news?token={short}"))).await;
    b.expect_control("subscribed", T5).await;
    b.send_json(&json!({"type": "subscribe", "channel": "private.a"}))
        .await;
    assert_eq!(
        b.expect_control("subscribed", T5).await["channel"],
        "private.a"
    );
    let mut keep = WsClient::connect(&gw.ws_url(&format!("/rt/ws/private.a?token={long}"))).await;
    keep.expect_control("subscribed", T5).await;
    let mut sse =
        SseClient::open(gw.public, &format!("/rt/sse/private.a?token={short}"), &[]).await;
    let t0 = Instant::now();

    gw.publish_json("private.a", &json!("before")).await;
    assert_eq!(a.next_envelope(T5).await["data"], "before");
    assert_eq!(b.next_envelope(T5).await["data"], "before");
    assert_eq!(keep.next_envelope(T5).await["data"], "before");
    assert_eq!(sse.expect_event(T5).await.json()["data"], "before");

    let wait = Duration::from_secs(7);
    let (ca, cb, _, se) = tokio::join!(
        async { (a.expect_close(wait).await, t0.elapsed()) },
        async { (b.expect_close(wait).await, t0.elapsed()) },
        keep.expect_no_envelope(Duration::from_millis(4500)),
        async { (sse.wait_end(wait).await, t0.elapsed()) },
    );
    assert_eq!(ca.0, Some(1008), "handshake token expiry");
    assert_eq!(cb.0, Some(1008), "subscribe-command token expiry");
    se.0.expect("the SSE stream ends when its token expires");
    for (what, took) in [("ws a", ca.1), ("ws b", cb.1), ("sse", se.1)] {
        assert!(
            took >= Duration::from_millis(700),
            "{what} ended after {took:?}, before its token expired"
        );
    }
    // The session with a long-lived token is untouched.
    gw.publish_json("private.a", &json!("after")).await;
    assert_eq!(keep.next_envelope(T5).await["data"], "after");
}

#[tokio::test]
async fn connections_per_address_total_and_trusted_proxies() {
    async fn open_ok(gw: &Gateway) -> RawHttpConn {
        let mut c = RawHttpConn::connect(gw.public).await.unwrap();
        let r = c
            .request("GET", "/rt/poll/c?timeout=0", &[], None)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text());
        c
    }
    async fn refused(gw: &Gateway) -> Response {
        let mut c = RawHttpConn::connect(gw.public).await.unwrap();
        let (bytes, _) = c
            .read_to_end_within(T5)
            .await
            .expect("a refused connection is answered and closed");
        parse_response(&bytes)
    }

    let gw = Gateway::start(&["--max-connections-per-ip", "3"]).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(open_ok(&gw).await);
    }
    let r = refused(&gw).await;
    assert_error(&r, 429, "too_many_connections", "4th connection");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry >= 1);
    // The three open connections keep working.
    for c in conns.iter_mut() {
        let r = c
            .request("GET", "/rt/poll/c?timeout=0", &[], None)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Closing one frees its slot.
    drop(conns.pop());
    eventually(T5, "a slot is freed by a closed connection", || async {
        let mut c = RawHttpConn::connect(gw.public).await.ok()?;
        let r = c
            .request("GET", "/rt/poll/c?timeout=0", &[], None)
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // Connections from a trusted proxy are not counted per address.
    let gw = Gateway::start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.1",
    ])
    .await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(open_ok(&gw).await);
    }

    // The total limit: 503.
    let gw = Gateway::start(&["--max-connections", "2"]).await;
    let _a = open_ok(&gw).await;
    let _b = open_ok(&gw).await;
    let r = refused(&gw).await;
    assert_error(&r, 503, "too_many_connections", "over --max-connections");
    assert!(r.header("retry-after").is_some(), "{:?}", r.head.headers);
    drop(_a);
    eventually(T5, "a slot is freed below the total limit", || async {
        let mut c = RawHttpConn::connect(gw.public).await.ok()?;
        let r = c
            .request("GET", "/rt/poll/c?timeout=0", &[], None)
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

async fn poll_from(gw: &Gateway, forwarded: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = forwarded
        .map(|f| vec![("X-Forwarded-For", f)])
        .unwrap_or_default();
    http(
        "GET",
        &gw.public_url("/rt/poll/rate?timeout=0"),
        &headers,
        None,
    )
    .await
}

#[tokio::test]
async fn longpoll_rate_per_address_and_the_trusted_proxy_split() {
    // Rate 2/s, burst 4.
    let gw = Gateway::start(&["--longpoll-rate-per-ip", "2"]).await;
    for i in 0..4 {
        let r = poll_from(&gw, None).await;
        assert_eq!(r.status(), 200, "poll {i} within the burst: {}", r.text());
    }
    let r = poll_from(&gw, None).await;
    assert_error(&r, 429, "rate_limited", "5th poll");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Streams are not polls.
    let sse = SseClient::open(gw.public, "/rt/sse/rate", &[]).await;
    drop(sse);
    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(100)).await;
    let r = poll_from(&gw, None).await;
    assert_eq!(r.status(), 200, "after Retry-After: {}", r.text());

    // From an untrusted peer, X-Forwarded-For is ignored: one bucket.
    let gw = Gateway::start(&["--longpoll-rate-per-ip", "1"]).await;
    assert_eq!(poll_from(&gw, Some("203.0.113.1")).await.status(), 200);
    assert_eq!(poll_from(&gw, Some("203.0.113.2")).await.status(), 200);
    let r = poll_from(&gw, Some("203.0.113.3")).await;
    assert_error(&r, 429, "rate_limited", "forged X-Forwarded-For");

    // Behind a trusted proxy each forwarded client has its own bucket.
    let gw = Gateway::start(&[
        "--longpoll-rate-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.1",
    ])
    .await;
    let a = "203.0.113.1";
    assert_eq!(poll_from(&gw, Some(a)).await.status(), 200);
    assert_eq!(poll_from(&gw, Some(a)).await.status(), 200);
    let r = poll_from(&gw, Some(a)).await;
    assert_error(&r, 429, "rate_limited", "client A over its rate");
    // A client can't escape its bucket by prepending addresses, and a
    // trusted hop on the right is skipped.
    for spoofed in ["198.51.100.7, 203.0.113.1", "203.0.113.1, 127.0.0.1"] {
        let r = poll_from(&gw, Some(spoofed)).await;
        assert_error(
            &r,
            429,
            "rate_limited",
            &format!("X-Forwarded-For {spoofed}"),
        );
    }
    let b = "203.0.113.2";
    assert_eq!(poll_from(&gw, Some(b)).await.status(), 200, "client B");
    assert_eq!(poll_from(&gw, Some(b)).await.status(), 200, "client B");
    assert_eq!(
        poll_from(&gw, Some("198.51.100.7, 203.0.113.2"))
            .await
            .status(),
        429,
        "client B, spoofed prefix"
    );
}

#[tokio::test]
async fn a_request_head_trickling_in_is_cut_off() {
    let gw = Gateway::start(&["--header-read-timeout", "1s"]).await;
    let stream = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut bytes = b"GET /rt/poll/slow?timeout=0 HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 100));
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    // Meanwhile a normal client is served.
    let (status, body) = gw.poll("fast", "timeout=0").await;
    assert_eq!(status, 200, "{body}");

    let got = read_until_closed(&mut rd, Duration::from_secs(8))
        .await
        .expect("the trickling connection must be closed");
    let took = started.elapsed();
    writer.abort();
    assert!(
        took < Duration::from_secs(5),
        "cut off only after {took:?} with a 1s header timeout"
    );
    if !got.is_empty() {
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "a trickling head may only get a 408: {text:?}"
        );
    }
    // A head sent at once still works afterwards.
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn a_publish_body_trickling_in_is_cut_off() {
    let gw = Gateway::start(&[
        "--publish-key",
        "k3y-0123456789abc",
        "--body-read-timeout",
        "1s",
    ])
    .await;
    let stream = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(
        b"POST /rt/publish/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y-0123456789abc\r\n\
          Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while find(&got, b"\r\n\r\n").is_none() {
        match tokio::time::timeout(Duration::from_secs(8), rd.read(&mut chunk)).await {
            Err(_) => panic!(
                "no answer to a trickling body after {:?}",
                started.elapsed()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let took = started.elapsed();
    writer.abort();
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    let head = parse_head(&got[..find(&got, b"\r\n\r\n").expect("a response head")]);
    assert_eq!(head.status, 408, "{:?}", String::from_utf8_lossy(&got));
    let (_, body) = gw.poll("slow", "since=0&timeout=0").await;
    assert_eq!(body["last_id"], 0, "a cut-off body was published: {body}");
    // A body sent at once is published.
    let r = http(
        "POST",
        &gw.public_url("/rt/publish/slow"),
        &[("Authorization", "Bearer k3y-0123456789abc")],
        Some(b"quick"),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
}

#[tokio::test]
async fn oversized_websocket_messages_close_1009() {
    let gw = Gateway::start(&["--max-message-bytes", "1024"]).await;
    // Under the limit: a padded subscribe command is fine.
    let mut ws = RawWs::connect(gw.public, "/rt/ws").await.unwrap();
    let cmd = format!(
        r#"{{"type":"subscribe","channel":"big","pad":"{}"}}"#,
        "p".repeat(900)
    );
    assert!(cmd.len() <= 1024);
    ws.send_frame(true, OP_TEXT, cmd.as_bytes()).await.unwrap();
    let ack = ws.next_json(T5).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    // Over it in one frame.
    let big = format!(
        r#"{{"type":"subscribe","channel":"big2","pad":"{}"}}"#,
        "p".repeat(2000)
    );
    ws.send_frame(true, OP_TEXT, big.as_bytes()).await.unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1009));

    // Over it in two fragments that are each under it.
    let mut ws = RawWs::connect(gw.public, "/rt/ws").await.unwrap();
    ws.send_frame(false, OP_TEXT, &[b' '; 700]).await.unwrap();
    ws.send_frame(true, 0, &[b' '; 700]).await.unwrap();
    assert_eq!(ws.expect_close(T5).await, Some(1009));

    gw.assert_still_serving().await;
}

struct TlsGateway {
    gw: Gateway,
    _dir: TempDir,
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
}

async fn tls_gateway(cert: &TestCert) -> TlsGateway {
    let dir = TempDir::new();
    let cert_path = dir.write("cert.pem", &cert.cert_pem);
    let key_path = dir.write("key.pem", &cert.key_pem);
    let gw = Gateway::start(&[
        "--tls-cert-file",
        cert_path.to_str().unwrap(),
        "--tls-key-file",
        key_path.to_str().unwrap(),
    ])
    .await;
    TlsGateway {
        gw,
        _dir: dir,
        cert_path,
        key_path,
    }
}

#[tokio::test]
async fn tls_wss_subscribe_and_https_long_poll() {
    let cert = TestCert::generate();
    let tg = tls_gateway(&cert).await;
    let gw = &tg.gw;
    // What a browser offers for a WebSocket (HTTP/2 is in tests/http2.rs).
    let connector = tls_connector(&[&cert.der], &[b"http/1.1"]);

    // wss://
    let tls = tls_connect(gw.public, &connector)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN must pick HTTP/1.1"
    );
    assert_eq!(peer_leaf(&tls), cert.der);
    let url = format!("wss://localhost:{}/rt/ws/secure", gw.public.port());
    let mut ws = StreamWs::handshake(&url, tls).await.expect("wss handshake");
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");
    let id = gw.publish_json("secure", &json!({"tls": true})).await;
    let env = ws.next_json(T5).await;
    assert_eq!(env["id"], id, "{env}");
    assert_eq!(env["data"]["tls"], true, "{env}");
    // Commands work over TLS too.
    ws.send_json(&json!({"type": "subscribe", "channel": "secure2"}))
        .await;
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");

    // https:// long-poll, held until the next message.
    let mut tls = tls_connect(gw.public, &connector)
        .await
        .expect("TLS handshake");
    let path = format!("/rt/poll/secure?since={id}&timeout=5");
    let poll = tokio::spawn(async move { request_on(&mut tls, "GET", &path, &[], T10).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id2 = gw.publish_json("secure", &json!("held")).await;
    let r = tokio::time::timeout(T10, poll)
        .await
        .expect("https poll answered")
        .unwrap()
        .expect("https poll");
    assert_eq!(r.status(), 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["messages"][0]["id"], id2, "{body}");
    assert_eq!(body["messages"][0]["data"], "held", "{body}");
    // The wss subscriber got it as well.
    assert_eq!(ws.next_json(T5).await["data"], "held");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut c = RawHttpConn::connect(gw.public).await.unwrap();
    c.write_all(
        b"GET /rt/poll/secure?since=0&timeout=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (bytes, _) = c
        .read_to_end_within(T5)
        .await
        .expect("the plain connection is closed");
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "plain HTTP answered on the TLS port: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        WsClient::try_connect(&gw.ws_url("/rt/ws/secure"))
            .await
            .is_err(),
        "plain ws:// worked on the TLS port"
    );
    // A client that doesn't trust the certificate can't connect.
    let stranger = TestCert::generate();
    let wrong = tls_connector(&[&stranger.der], &[b"http/1.1"]);
    assert!(
        tls_connect(gw.public, &wrong).await.is_err(),
        "TLS handshake succeeded against an untrusted certificate"
    );
    // The admin listener stays plain HTTP (private).
    assert_eq!(get(&gw.admin_url("/healthz")).await.status(), 200);
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate_and_keeps_open_connections() {
    let first = TestCert::generate();
    let second = TestCert::generate();
    let tg = tls_gateway(&first).await;
    let gw = &tg.gw;
    let connector = tls_connector(&[&first.der, &second.der], &[b"http/1.1"]);

    let tls = tls_connect(gw.public, &connector).await.unwrap();
    assert_eq!(
        peer_leaf(&tls),
        first.der,
        "starts with the first certificate"
    );
    let url = format!("wss://localhost:{}/rt/ws/reload", gw.public.port());
    let mut ws = StreamWs::handshake(&url, tls).await.expect("wss handshake");
    assert_eq!(ws.next_json(T5).await["type"], "subscribed");

    std::fs::write(&tg.cert_path, &second.cert_pem).unwrap();
    std::fs::write(&tg.key_path, &second.key_pem).unwrap();
    let hup = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    };
    hup(gw.pid());
    eventually(T5, "new connections get the new certificate", || async {
        let tls = tls_connect(gw.public, &connector).await.ok()?;
        (peer_leaf(&tls) == second.der).then_some(())
    })
    .await;

    // The WebSocket opened before the reload keeps working.
    let id = gw.publish_json("reload", &json!("after reload")).await;
    let env = ws.next_json(T5).await;
    assert_eq!(
        (env["id"].as_u64(), &env["data"]),
        (Some(id), &json!("after reload"))
    );
    // And https on a new connection works with the new certificate.
    let mut tls = tls_connect(gw.public, &connector).await.unwrap();
    let r = request_on(
        &mut tls,
        "GET",
        "/rt/poll/reload?since=0&timeout=0",
        &[],
        T5,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.json()["last_id"], id);

    // A broken certificate file on reload keeps the current certificate.
    std::fs::write(&tg.cert_path, "not a certificate\n").unwrap();
    hup(gw.pid());
    eventually(T5, "the failed reload is logged", || async {
        gw.stderr_text().contains("TLS reload failed").then_some(())
    })
    .await;
    let tls = tls_connect(gw.public, &connector)
        .await
        .expect("TLS after a failed reload");
    assert_eq!(peer_leaf(&tls), second.der);
    let id = gw.publish_json("reload", &json!("still here")).await;
    assert_eq!(ws.next_json(T5).await["id"], id);
}

#[tokio::test]
async fn idle_connections_and_stalled_tls_handshakes_are_cut_off() {
    // A connection that never sends a byte holds a slot like a slow head.
    let gw = Gateway::start(&["--header-read-timeout", "1s"]).await;
    let mut c = RawHttpConn::connect(gw.public).await.unwrap();
    let started = Instant::now();
    let r = c.read_to_end_within(Duration::from_secs(8)).await;
    let took = started.elapsed();
    assert!(r.is_ok(), "idle plain connection still open after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "idle plain connection cut after {took:?}"
    );

    let cert = TestCert::generate();
    let dir = TempDir::new();
    let cert_path = dir.write("cert.pem", &cert.cert_pem);
    let key_path = dir.write("key.pem", &cert.key_pem);
    let gw = Gateway::start(&[
        "--header-read-timeout",
        "1s",
        "--tls-cert-file",
        cert_path.to_str().unwrap(),
        "--tls-key-file",
        key_path.to_str().unwrap(),
    ])
    .await;
    // No ClientHello at all.
    let mut c = RawHttpConn::connect(gw.public).await.unwrap();
    let started = Instant::now();
    let r = c.read_to_end_within(Duration::from_secs(8)).await;
    let took = started.elapsed();
    assert!(r.is_ok(), "stalled TLS handshake still open after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "stalled TLS handshake cut after {took:?}"
    );
    // TLS done, then a head trickling in.
    let connector = tls_connector(&[&cert.der], &[b"http/1.1"]);
    let tls = tls_connect(gw.public, &connector).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for b in b"GET /rt/poll/slow HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let got = read_until_closed(&mut rd, Duration::from_secs(8)).await;
    let took = started.elapsed();
    writer.abort();
    assert!(
        got.is_ok(),
        "trickling head over TLS still open after {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "trickling head over TLS cut after {took:?}"
    );
}

/// Over a connection limit the documented answer is `429` (per address)
/// or `503` (total) with `Retry-After`; on a TLS listener a client can only
/// read it over TLS.
#[tokio::test]
async fn over_a_connection_limit_a_tls_client_gets_a_readable_answer() {
    let cert = TestCert::generate();
    let dir = TempDir::new();
    let cert_path = dir.write("cert.pem", &cert.cert_pem);
    let key_path = dir.write("key.pem", &cert.key_pem);
    let connector = tls_connector(&[&cert.der], &[b"http/1.1"]);
    let mut problems = Vec::new();
    for (flag, status) in [
        ("--max-connections-per-ip", 429),
        ("--max-connections", 503),
    ] {
        let gw = Gateway::start(&[
            flag,
            "1",
            "--tls-cert-file",
            cert_path.to_str().unwrap(),
            "--tls-key-file",
            key_path.to_str().unwrap(),
        ])
        .await;
        let mut first = tls_connect(gw.public, &connector).await.unwrap();
        first
            .write_all(b"GET /rt/poll/c?timeout=0 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(T5, tokio::io::AsyncReadExt::read(&mut first, &mut buf))
            .await
            .expect("first connection answered")
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );

        match tls_connect(gw.public, &connector).await {
            Err(e) => problems.push(format!(
                "{flag} 1: the 2nd TLS client got a TLS error instead of {status}: {e}"
            )),
            Ok(mut second) => {
                match request_on(&mut second, "GET", "/rt/poll/c?timeout=0", &[], T5).await {
                    Ok(r) if r.status() == status && r.header("retry-after").is_some() => {}
                    Ok(r) => problems.push(format!(
                        "{flag} 1: expected {status} + Retry-After, got {} {:?} {}",
                        r.status(),
                        r.head.headers,
                        r.text()
                    )),
                    Err(e) => problems.push(format!("{flag} 1: no answer over TLS: {e}")),
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Kills and reaps a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ready line (and systemd's READY=1) promise a running gateway, and
/// SIGHUP is its reload signal: a reload sent as soon as it is ready must
/// not kill it. (Spawned directly, not through the harness, to signal the
/// moment the line is printed.)
#[tokio::test]
async fn sighup_right_after_the_ready_line_does_not_kill_the_gateway() {
    let cert = TestCert::generate();
    let dir = TempDir::new();
    let cert_path = dir.write("cert.pem", &cert.cert_pem);
    let key_path = dir.write("key.pem", &cert.key_pem);
    let run = move || -> Vec<String> {
        use std::io::BufRead;
        let mut died = Vec::new();
        for attempt in 0..20 {
            let child = command()
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .arg("--tls-cert-file")
                .arg(&cert_path)
                .arg("--tls-key-file")
                .arg(&key_path)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn pollbridge");
            let mut child = KillOnDrop(child);
            let stdout = child.0.stdout.take().unwrap();
            // Read on a side thread so the wait is bounded; on a panic the
            // guard kills the child, which ends that thread's read.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a ready line within 10 s");
            assert!(line.starts_with("pollbridge ready "), "{line:?}");
            let status = std::process::Command::new("kill")
                .args(["-HUP", &child.0.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success());
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(Some(exit)) = child.0.try_wait() {
                died.push(format!("attempt {attempt}: {exit}"));
            }
        }
        died
    };
    let died = tokio::task::spawn_blocking(run).await.unwrap();
    assert!(
        died.is_empty(),
        "SIGHUP right after `pollbridge ready` killed the gateway: {died:?}"
    );
}
