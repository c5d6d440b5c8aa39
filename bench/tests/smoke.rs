//! Runs `pollbridge-bench --smoke` against the gateway binary: every
//! scenario at 50 subscribers × 20 messages with its floor. Checks only
//! that the tool ran and its numbers are sane (no loss, floors measured,
//! ratios finite) — never a speed.
//!
//! The gateway binary: `$POLLBRIDGE_BIN`, else `target/debug/pollbridge`
//! of this workspace (built with `cargo build -p pollbridge` if missing).

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn gateway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("POLLBRIDGE_BIN") {
        return PathBuf::from(bin);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join("pollbridge");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // cargo releases the build lock while tests run, so this does not
        // wait on the `cargo test` that started us.
        let mut build = Command::new(cargo)
            .args(["build", "-p", "pollbridge", "--bin", "pollbridge"])
            .current_dir(&workspace)
            .spawn()
            .expect("run cargo build -p pollbridge");
        let status = wait_bounded(&mut build, Duration::from_secs(1200))
            .expect("cargo build -p pollbridge took over 20 minutes");
        assert!(status.success(), "cargo build -p pollbridge failed");
    }
    assert!(bin.exists(), "no gateway binary at {}", bin.display());
    bin
}

/// Waits for `child` up to `limit`; kills it past that.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn smoke_mode_runs_every_scenario_with_its_floor() {
    let bin = gateway_bin();
    let out_path =
        std::env::temp_dir().join(format!("pollbridge-bench-smoke-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pollbridge-bench"))
        .arg("--smoke")
        .arg("--gateway-bin")
        .arg(&bin)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pollbridge-bench");
    let status = wait_bounded(&mut child, Duration::from_secs(300));
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    println!("{stdout}");
    let status = status.expect("smoke run took over 300 s");
    assert!(status.success(), "smoke run failed ({status})");
    assert!(
        stdout.lines().any(|l| l == "smoke: ok"),
        "no `smoke: ok` line"
    );
    // One JSON line per scenario, each with its floor and a finite CPU ratio.
    let outcomes: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with("{\"scenario\""))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let names: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o["scenario"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ws-fanout",
            "sse-fanout",
            "lp-fanout",
            "burst",
            "idle",
            "held-polls",
            "proxy"
        ]
    );
    for o in &outcomes {
        assert!(o["floor"].is_object(), "{} has no floor", o["scenario"]);
        assert_eq!(o["gateway"]["losses"], 0, "{} lost messages", o["scenario"]);
    }
}
