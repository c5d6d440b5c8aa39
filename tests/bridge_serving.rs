//! What bridged answers tell browsers, what `--check-config` says of
//! bridge routes, and the bridge's metrics on a gateway without routes.
//!
//! A route with `hold` answers `Cache-Control: no-store` (a browser that
//! revalidates its cached copy itself would otherwise have that request
//! held, and its cache lock stalls every other tab polling the URL: see
//! src/bridge/browser_cache.rs and scripts/browser/e2e.mjs `tabs`); without
//! `hold`, answers stay `no-cache` with an `ETag`.

mod common;

use std::time::Duration;

use common::bridge_upstream::{ScoresUpstream, SCORES_PATH};
use common::*;

fn config(upstream: &str, extra: &str) -> String {
    format!(
        "upstream = \"{upstream}\"\n[[bridge]]\npath = \"{SCORES_PATH}\"\nchannel = \"scores\"\n\
         interval = \"100ms\"\n{extra}\n"
    )
}

/// `(status, Cache-Control)` of a first poll and of a revalidation with its ETag.
async fn cache_controls(gw: &Gateway) -> [(u16, Option<String>); 2] {
    let url = gw.public_url(SCORES_PATH);
    let first = get(&url).await;
    let etag = first.header("etag").expect("an ETag").to_string();
    let again = http("GET", &url, &[("If-None-Match", &etag)], None).await;
    [first, again].map(|r| (r.status(), r.header("cache-control").map(str::to_string)))
}

#[tokio::test]
async fn held_routes_keep_out_of_browser_caches() {
    let up = ScoresUpstream::start().await;
    // A short hold: the revalidation below waits it out and gets its 304.
    let held = Gateway::builder()
        .config(&config(&up.url(), "hold = \"200ms\""))
        .start()
        .await;
    let no_store = Some("no-store".to_string());
    assert_eq!(
        cache_controls(&held).await,
        [(200, no_store.clone()), (304, no_store)]
    );
    let plain = Gateway::builder()
        .config(&config(&up.url(), ""))
        .start()
        .await;
    let no_cache = Some("no-cache".to_string());
    assert_eq!(
        cache_controls(&plain).await,
        [(200, no_cache.clone()), (304, no_cache)]
    );
}

#[tokio::test]
async fn check_config_takes_the_file_directly_and_lists_bridge_routes() {
    let t = Duration::from_secs(10);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/pollbridge.toml");
    let (code, stdout, stderr) = run_to_exit(&["--check-config", example], &[], t).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("0 bridge route(s)"), "{stdout}");

    let dir = TempDir::new();
    let file = dir.write(
        "bridge.toml",
        &config("http://127.0.0.1:9", "hold = \"25s\"\nvary_by = \"Cookie\""),
    );
    let file = file.to_str().unwrap();
    for args in [
        vec!["--check-config", file],
        vec!["--check-config", "--config", file],
        vec!["--config", file, "--check-config"],
    ] {
        let (code, stdout, stderr) = run_to_exit(&args, &[], t).await;
        assert_eq!(code, Some(0), "{args:?}: {stdout}{stderr}");
        assert!(stdout.contains("1 bridge route(s)"), "{args:?}: {stdout}");
        assert!(
            stdout.contains(
                "\n  bridge /api/scores -> channel scores, every 100ms, hold 25s, vary_by Cookie"
            ),
            "{args:?}: {stdout}"
        );
    }
    // An incremental route names its cursor and where its items are.
    let chat = dir.write(
        "chat.toml",
        "upstream = \"http://127.0.0.1:9\"\n[[bridge]]\npath = \"/api/messages\"\n\
         channel = \"chat\"\nmode = \"incremental\"\nitems = \"/messages\"\n",
    );
    let (code, stdout, stderr) =
        run_to_exit(&["--check-config", chat.to_str().unwrap()], &[], t).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "\n  bridge /api/messages -> channel chat, every 1s, incremental (cursor after, items /messages, id /id)"
        ),
        "{stdout}"
    );
    // Under a snapshot route's channel, the rooms' channels would be state
    // channels, whose newer items replace unread ones: refused.
    let state = dir.write(
        "state.toml",
        "upstream = \"http://127.0.0.1:9\"\n[[bridge]]\npath = \"/api/messages\"\n\
         channel = \"chat.rooms\"\nmode = \"incremental\"\n\
         [[bridge]]\npath = \"/api/scores\"\nchannel = \"chat\"\n",
    );
    let (code, _, stderr) = run_to_exit(&["--check-config", state.to_str().unwrap()], &[], t).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("bridge[0].channel") && stderr.contains("state channel"),
        "{stderr}"
    );
    // Two different files: which one was meant is not guessed.
    let (code, _, stderr) =
        run_to_exit(&["--check-config", file, "--config", example], &[], t).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("give the file once"), "{stderr}");
}

#[tokio::test]
async fn bridge_series_exist_without_routes_and_only_then_unlabelled() {
    let plain = Gateway::start(&[]).await;
    let text = plain.metrics().await;
    for line in [
        "pollbridge_bridge_upstream_requests_total{bridge=\"\",result=\"changed\"} 0",
        "pollbridge_bridge_client_polls_total{bridge=\"\",result=\"body\"} 0",
        "pollbridge_bridge_client_polls_total{bridge=\"\",result=\"refused\"} 0",
        "pollbridge_bridge_auth_checks_total{bridge=\"\",result=\"allowed\"} 0",
    ] {
        assert!(text.contains(line), "missing {line}");
    }
    let up = ScoresUpstream::start().await;
    let bridged = Gateway::builder()
        .config(&config(&up.url(), ""))
        .start()
        .await;
    let text = bridged.metrics().await;
    assert!(
        !text.contains("bridge=\"\""),
        "placeholders next to real routes"
    );
    assert!(text
        .contains("pollbridge_bridge_auth_checks_total{bridge=\"scores\",result=\"refused\"} 0"));
}
