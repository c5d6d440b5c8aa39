//! `[[bridge]] auth`: a bridged URL that only logged-in users may read.
//! Each legacy client's credentials are checked with the backend (the route
//! itself, or `auth.auth_url`) before the shared copy is served, answers
//! are remembered per credential, a refused client gets the backend's own
//! answer, and the backend still sees one poll per interval plus one check
//! per credential.
//!
//! Backends: [`ScoresUpstream`] (in this process, real sockets; counts every
//! request) and the README's toy backend (`examples/toy-backend/backend.py`,
//! its own process).

mod common;

use std::time::{Duration, Instant};

use common::bridge_upstream::{ScoresUpstream, AUTH_PATH, INBOX_PATH};
use common::toy_backend::ToyBackend;
use common::*;
use serde_json::json;

const ALICE: &str = "Bearer alice";
const BOB: &str = "Bearer bob";

/// Bridges [`INBOX_PATH`] to channel `inbox` every 100 ms with `auth`.
fn inbox_config(upstream: &str, auth: &str, extra: &str) -> String {
    format!(
        "upstream = \"{upstream}\"\n\n[auth]\nauth_url = \"{upstream}{AUTH_PATH}\"\n\n\
         [[channels]]\npattern = \"inbox\"\nauth = \"backend\"\n\n\
         [[bridge]]\npath = \"{INBOX_PATH}\"\nchannel = \"inbox\"\ninterval = \"100ms\"\n\
         auth = \"{auth}\"\nauth_ttl = \"30s\"\n{extra}\n"
    )
}

/// One poll of the inbox with `authorization` (none: anonymous).
async fn poll(gw: &Gateway, authorization: Option<&str>, etag: Option<&str>) -> Response {
    let mut headers = vec![("Accept", "application/json")];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    if let Some(e) = etag {
        headers.push(("If-None-Match", e));
    }
    http(
        "GET",
        &gw.public_url(&format!("{INBOX_PATH}?_=1")),
        &headers,
        None,
    )
    .await
}

async fn auth_metric(gw: &Gateway, result: &str) -> f64 {
    gw.metric(
        "pollbridge_bridge_auth_checks_total",
        &[("bridge", "inbox"), ("result", result)],
    )
    .await
    .unwrap_or(0.0)
}

/// The shared checks of both modes: anonymous refused with the backend's
/// answer (`refused_status`, `refused_body`), alice and bob served one
/// copy, many polls, backend requests bounded.
async fn logged_in_clients_share_one_copy(mode: &str, refused_status: u16, refused_body: &str) {
    let up = ScoresUpstream::start().await;
    up.log_in(ALICE);
    up.log_in(BOB);
    let gw = Gateway::builder()
        .config(&inbox_config(&up.url(), mode, ""))
        .start()
        .await;
    let started = Instant::now();

    let anonymous = poll(&gw, None, None).await;
    assert_eq!(anonymous.status(), refused_status, "{}", anonymous.text());
    assert_eq!(
        anonymous.json(),
        serde_json::from_str::<serde_json::Value>(refused_body).unwrap()
    );
    assert_eq!(anonymous.header("cache-control"), Some("no-store"));
    let stranger = poll(&gw, Some("Bearer mallory"), None).await;
    assert_eq!(stranger.status(), refused_status, "{}", stranger.text());

    let alice = poll(&gw, Some(ALICE), None).await;
    assert_eq!(alice.status(), 200, "{}", alice.text());
    assert_eq!(alice.json(), json!({"unread": 1}));
    let etag = alice.header("etag").expect("an ETag").to_string();
    assert!(etag.starts_with("\"pb-"), "{etag}: the gateway's copy");
    let bob = poll(&gw, Some(BOB), None).await;
    assert_eq!(bob.status(), 200, "{}", bob.text());
    assert_eq!(bob.json(), json!({"unread": 1}));
    assert_eq!(bob.header("etag"), Some(etag.as_str()), "one copy for both");

    // Many polls: logged-in clients get 304s, the others the refusal, all
    // from what the gateway remembers.
    for _ in 0..20 {
        for who in [ALICE, BOB] {
            assert_eq!(poll(&gw, Some(who), Some(&etag)).await.status(), 304);
        }
        let refused = poll(&gw, None, Some(&etag)).await;
        assert_eq!(refused.status(), refused_status);
    }

    // A change reaches the logged-in clients, not the anonymous one.
    up.set_version(2);
    let changed = eventually(Duration::from_secs(5), "alice sees unread 2", || async {
        let r = poll(&gw, Some(ALICE), Some(&etag)).await;
        (r.status() == 200).then(|| r.json())
    })
    .await;
    assert_eq!(changed, json!({"unread": 2}));
    assert_eq!(poll(&gw, None, None).await.status(), refused_status);
    let elapsed = started.elapsed();

    // Backend requests: the gateway's polls (one per interval, one at a
    // time) plus one check per distinct credential (4: anonymous, mallory,
    // alice, bob), never one per client poll (86 polls above).
    let check_path = if mode == "route" {
        INBOX_PATH
    } else {
        AUTH_PATH
    };
    let checks = up.requests_to(AUTH_PATH).len() + up.requests_to(INBOX_PATH).len();
    let interval_polls = (elapsed.as_millis() / 100) as usize + 2;
    assert!(
        checks <= interval_polls + 4,
        "{checks} backend requests in {elapsed:?} (at most {interval_polls} polls + 4 checks)"
    );
    let anonymous_checks = up
        .requests_to(check_path)
        .iter()
        .filter(|s| s.authorization.is_none())
        .count();
    assert_eq!(anonymous_checks, 1, "anonymous clients were checked once");
    // The gateway's own polls carry an allowed client's credentials.
    assert!(up
        .requests_to(INBOX_PATH)
        .iter()
        .filter(|s| s
            .if_none_match
            .as_deref()
            .is_some_and(|e| e.starts_with("\"i")))
        .all(|s| s.authorization.as_deref() == Some(ALICE)
            || s.authorization.as_deref() == Some(BOB)));
    assert_eq!(auth_metric(&gw, "allowed").await, 2.0);
    assert_eq!(auth_metric(&gw, "refused").await, 2.0);
    assert!(
        gw.metric(
            "pollbridge_bridge_client_polls_total",
            &[("bridge", "inbox"), ("result", "refused")]
        )
        .await
        .unwrap_or(0.0)
            >= 23.0
    );
}

#[tokio::test]
async fn route_auth_refuses_with_the_backends_answer_and_shares_one_copy() {
    logged_in_clients_share_one_copy("route", 401, r#"{"error":"login required"}"#).await;
}

#[tokio::test]
async fn auth_url_refuses_with_the_backends_answer_and_shares_one_copy() {
    logged_in_clients_share_one_copy("auth_url", 403, r#"{"error":"not logged in"}"#).await;
}

#[tokio::test]
async fn the_refusal_keeps_the_backends_headers() {
    let up = ScoresUpstream::start().await;
    let gw = Gateway::builder()
        .config(&inbox_config(&up.url(), "route", ""))
        .start()
        .await;
    let refused = poll(&gw, None, None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"inbox\"")
    );
    assert_eq!(refused.header("content-type"), Some("application/json"));
    // Refused clients start no poller: the backend saw the check only.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.requests_to(INBOX_PATH).len(), 1);
}

#[tokio::test]
async fn a_flood_of_made_up_credentials_is_bounded() {
    let up = ScoresUpstream::start().await;
    up.log_in(ALICE);
    up.set_delay(Duration::from_millis(50));
    let gw = Gateway::builder()
        .config(&inbox_config(
            &up.url(),
            "route",
            "auth_max_in_flight = 2\nauth_cache_size = 16",
        ))
        .start()
        .await;
    assert_eq!(poll(&gw, Some(ALICE), None).await.status(), 200);
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..60 {
        let url = gw.public_url(INBOX_PATH);
        flood.spawn(async move {
            let token = format!("Bearer made-up-{i}");
            http("GET", &url, &[("Authorization", &token)], None)
                .await
                .status()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = flood.join_next().await {
        statuses.push(status.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 503),
        "{statuses:?}"
    );
    // At most 2 checks at once, plus the gateway's own poll.
    assert!(up.max_in_flight() <= 3, "{} in flight", up.max_in_flight());
    // The logged-in client is still remembered and served.
    let alice = poll(&gw, Some(ALICE), None).await;
    assert_eq!(alice.status(), 200, "{}", alice.text());
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn a_public_channel_for_an_auth_route_is_a_configuration_error() {
    let cfg = "upstream = \"http://127.0.0.1:9\"\n[[bridge]]\npath = \"/api/inbox\"\n\
               channel = \"inbox\"\nauth = \"route\"\n";
    let dir = TempDir::new();
    let file = dir.write("pollbridge.toml", cfg);
    let (code, _, stderr) = run_to_exit(
        &["--check-config", file.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("bridge[0].auth"), "{stderr}");
    assert!(stderr.contains("public"), "{stderr}");
    let cfg = cfg.replace("auth = \"route\"", "auth = \"auth_url\"");
    let file = dir.write("pollbridge.toml", &cfg);
    let (code, _, stderr) = run_to_exit(
        &["--check-config", file.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("needs auth.auth_url"), "{stderr}");
}

#[tokio::test]
async fn the_toy_backends_inbox_is_served_to_logged_in_users_only() {
    let toy = ToyBackend::start();
    let alice = toy.log_in("alice").await;
    let bob = toy.log_in("bob").await;
    let gw = Gateway::builder()
        .config(&format!(
            "upstream = \"{url}\"\n[auth]\nauth_url = \"{url}/auth\"\n\
             [[channels]]\npattern = \"inbox\"\nauth = \"backend\"\n\
             [[bridge]]\npath = \"/api/inbox\"\nchannel = \"inbox\"\ninterval = \"200ms\"\n\
             auth = \"route\"\n",
            url = toy.url()
        ))
        .start()
        .await;
    let inbox = gw.public_url("/api/inbox");
    let started = Instant::now();

    let anonymous = get(&inbox).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.json(), json!({"error": "login required"}));
    let a = http("GET", &inbox, &[("Cookie", &alice)], None).await;
    let b = http("GET", &inbox, &[("Cookie", &bob)], None).await;
    assert_eq!(
        (a.status(), b.status()),
        (200, 200),
        "{} {}",
        a.text(),
        b.text()
    );
    assert_eq!(a.json(), json!({"unread": 0}));
    assert_eq!(a.header("etag"), b.header("etag"), "one copy");
    let etag = a.header("etag").unwrap().to_string();
    for _ in 0..15 {
        for cookie in [&alice, &bob] {
            let r = http(
                "GET",
                &inbox,
                &[("Cookie", cookie), ("If-None-Match", &etag)],
                None,
            )
            .await;
            assert_eq!(r.status(), 304);
        }
        assert_eq!(get(&inbox).await.status(), 401);
    }
    let elapsed = started.elapsed();
    let served = toy.stats().await["api_inbox_requests"].as_u64().unwrap() as usize;
    let bound = (elapsed.as_millis() / 200) as usize + 2 + 3;
    assert!(
        served <= bound,
        "toy backend served {served} inbox requests in {elapsed:?} for 48 client polls (bound {bound})"
    );
}

/// An `auth` route shares only its plain URL's answer: a poll with another
/// query goes to the backend as it is, with the client's own credentials
/// (its feed would be checked against the route's URL, not the query's,
/// and would publish on a `{channel}.{hash}` channel no rule was checked
/// for).
#[tokio::test]
async fn queries_on_an_auth_route_go_to_the_backend_with_the_clients_credentials() {
    let up = ScoresUpstream::start().await;
    up.log_in(ALICE);
    let gw = Gateway::builder()
        .config(&inbox_config(&up.url(), "route", ""))
        .start()
        .await;
    let target = format!("{INBOX_PATH}?folder=work");
    for _ in 0..3 {
        let r = http(
            "GET",
            &gw.public_url(&target),
            &[("Authorization", ALICE)],
            None,
        )
        .await;
        assert_eq!(r.status(), 200, "{}", r.text());
        assert!(
            !r.header("etag").unwrap_or("").starts_with("\"pb-"),
            "the backend's own answer, not a gateway copy"
        );
    }
    let passed = up
        .seen()
        .into_iter()
        .filter(|s| s.target == target && s.authorization.as_deref() == Some(ALICE))
        .count();
    assert_eq!(passed, 3, "each poll with a query reached the backend");
    let channels = http("GET", &gw.admin_url("/channels"), &[], None)
        .await
        .json();
    let names: Vec<&str> = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["channel"].as_str())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("inbox.")),
        "no per-query channel on an auth route: {names:?}"
    );
}
