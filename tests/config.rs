//! Command line, configuration file and environment.

mod common;

use std::time::Duration;

use common::*;

const EXIT: Duration = Duration::from_secs(10);

/// Runs the binary with a config file and checks the bad-config contract:
/// exit code 2 and exactly one stderr line naming `key`.
async fn assert_bad_config(toml: &str, key: &str) {
    let dir = TempDir::new();
    let path = dir.write("bad.toml", toml);
    let path = path.to_str().unwrap();
    let (code, stdout, stderr) = run_to_exit(
        &[
            "--config",
            path,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
        EXIT,
    )
    .await;
    assert_eq!(code, Some(2), "config {toml:?}: stderr {stderr:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "config {toml:?}: stderr should be one line: {stderr:?}"
    );
    assert!(
        lines[0].contains(key),
        "stderr {:?} does not name {key:?}",
        lines[0]
    );
    assert!(
        !stdout.contains("ready"),
        "bad config printed a ready line: {stdout:?}"
    );
}

#[tokio::test]
async fn help_lists_the_flags() {
    let (code, stdout, stderr) = run_to_exit(&["--help"], &[], EXIT).await;
    assert_eq!(code, Some(0), "stderr {stderr:?}");
    for flag in ["--upstream", "--admin-listen", "--listen", "--config"] {
        assert!(
            stdout.contains(flag),
            "--help does not mention {flag}:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn unknown_key_exits_2_naming_it() {
    assert_bad_config("[longpoll]\ntimeuot = \"5s\"\n", "timeuot").await;
}

#[tokio::test]
async fn bad_duration_exits_2_naming_the_key() {
    assert_bad_config(
        "[websocket]\nping_interval = \"5 parsecs\"\n",
        "websocket.ping_interval",
    )
    .await;
}

#[tokio::test]
async fn bad_address_exits_2_naming_the_key() {
    // Through a flag: same parser, same error naming the key.
    let (code, _, stderr) = run_to_exit(
        &["--listen", "127.0.0.1:0", "--admin-listen", "nowhere"],
        &[],
        EXIT,
    )
    .await;
    assert_eq!(code, Some(2), "stderr {stderr:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr {stderr:?}");
    assert!(lines[0].contains("admin_listen"), "{stderr:?}");
}

#[tokio::test]
async fn bad_address_in_the_file_exits_2_naming_the_key() {
    // In the file, with the flags not overriding it.
    let dir = TempDir::new();
    let path = dir.write("bad.toml", "listen = \"not an address\"\n");
    let (code, _, stderr) = run_to_exit(
        &[
            "--config",
            path.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
        EXIT,
    )
    .await;
    assert_eq!(code, Some(2), "stderr {stderr:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr {stderr:?}");
    assert!(lines[0].contains("listen"), "{stderr:?}");
}

#[tokio::test]
async fn listen_env_var_is_honoured_and_a_flag_beats_it() {
    // Environment only.
    let gw = Gateway::builder()
        .no_listen_flag()
        .env("POLLBRIDGE_LISTEN", "127.0.0.1:0")
        .start()
        .await;
    assert!(gw.public.ip().is_loopback());
    assert_ne!(gw.public.port(), 0);
    assert_ne!(gw.public.port(), 8080, "the env var was ignored");
    let (status, body) = gw.poll("env", "timeout=0").await;
    assert_eq!(status, 200, "{body}");
    drop(gw);

    // Flag beats environment: the env var names a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let gw = Gateway::builder()
        .env("POLLBRIDGE_LISTEN", &taken_addr)
        .start()
        .await;
    assert_ne!(gw.public.to_string(), taken_addr);
    let (status, _) = gw.poll("env", "timeout=0").await;
    assert_eq!(status, 200);
    drop(taken);
}

#[tokio::test]
async fn config_file_values_apply() {
    let toml = "prefix = \"/live\"\n[history]\nsize = 3\n";
    let gw = Gateway::start_with_config(toml, &[]).await;
    for i in 1..=5 {
        gw.publish_json("cfg", &serde_json::json!(i)).await;
    }
    let r = get(&gw.public_url("/live/poll/cfg?since=0&timeout=0")).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["truncated"], true, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 3, "{body}");
    // The old prefix is no gateway path any more.
    let r = get(&gw.public_url("/rt/poll/cfg?timeout=0")).await;
    assert_eq!(r.status(), 404, "{}", r.text());
}
