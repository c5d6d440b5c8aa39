//! Runs `pollbridge-bench --smoke` against the gateway binary: every
//! scenario at 50 subscribers × 20 messages with its floor. Checks only
//! that the tool ran and its numbers are sane (no loss, floors measured,
//! ratios finite) — never a speed.
//!
//! With redis-server installed, also `--smoke --redis` on ws-fanout,
//! burst and idle (two gateway nodes on one Redis bus); skipped, with the
//! reason printed, without it.
//!
//! The gateway binary: `$POLLBRIDGE_BIN`, else `target/debug/pollbridge`
//! of this workspace (built with `cargo build -p pollbridge` if missing).

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
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

/// The smoke runs share the machine's cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `pollbridge-bench --smoke ARGS… --gateway-bin BIN` (at most 300 s);
/// asserts it succeeded and said `smoke: ok`; returns its JSON outcome lines.
fn run_smoke(args: &[&str]) -> Vec<serde_json::Value> {
    let bin = gateway_bin();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out_path = std::env::temp_dir().join(format!(
        "pollbridge-bench-smoke-{}-{}.out",
        std::process::id(),
        args.join("_").replace('-', "")
    ));
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pollbridge-bench"))
        .arg("--smoke")
        .args(args)
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
    stdout
        .lines()
        .filter(|l| l.starts_with("{\"scenario\""))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn names(outcomes: &[serde_json::Value]) -> Vec<&str> {
    outcomes
        .iter()
        .filter_map(|o| o["scenario"].as_str())
        .collect()
}

#[test]
fn smoke_mode_runs_every_scenario_with_its_floor() {
    // One JSON line per scenario, each with its floor and a finite CPU ratio.
    let outcomes = run_smoke(&[]);
    assert_eq!(
        names(&outcomes),
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
        assert!(o.get("redis_bus").is_none(), "redis_bus without --redis");
    }
    // proxy: the floor is the minimal forwarding proxy, and the upstream
    // hit directly is measured beside both, with its own ratios.
    let proxy = outcomes.last().expect("proxy ran");
    assert_eq!(proxy["floor"]["target"], "floor proxy");
    assert_eq!(proxy["direct"]["target"], "direct upstream");
    assert_eq!(
        proxy["direct"]["deliveries"],
        proxy["gateway"]["deliveries"]
    );
    assert!(proxy["ratio_direct"]["deliveries_per_s"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
}

/// Why `redis-server` cannot run here, if it cannot.
fn redis_server_missing() -> Option<String> {
    match Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`redis-server --version` failed ({})", out.status)),
        Err(e) => Some(format!("redis-server is not available ({e})")),
    }
}

/// `--smoke --redis` on ws-fanout, burst and idle: two gateway nodes on a
/// Redis the bench starts, beside the in-process gateway and the floor.
/// Checks that it ran and its numbers are sane — never a speed. Skipped
/// (with the reason printed) where there is no redis-server.
#[test]
fn smoke_two_nodes_on_a_redis_bus() {
    if let Some(why) = redis_server_missing() {
        eprintln!("skipped smoke_two_nodes_on_a_redis_bus: {why}; scripts/setup.sh installs it");
        return;
    }
    let outcomes = run_smoke(&["ws-fanout", "burst", "idle", "--redis"]);
    assert_eq!(names(&outcomes), ["ws-fanout", "burst", "idle"]);
    for o in &outcomes {
        let name = &o["scenario"];
        assert_eq!(o["params"]["redis"], true, "{name}");
        assert!(o["floor"].is_object(), "{name} has no floor");
        assert_eq!(o["gateway"]["nodes"], 1, "{name}");
        assert_eq!(o["gateway"]["bus"], "memory", "{name}");
        let r = &o["redis_bus"];
        assert!(r.is_object(), "{name} has no redis_bus phase");
        assert_eq!(r["nodes"], 2, "{name}");
        assert_eq!(r["bus"], "redis", "{name}");
        assert_eq!(r["connected"], r["conns"], "{name}: not all connected");
        assert_eq!(r["connect_failed"], 0, "{name}");
        assert_eq!(r["losses"], 0, "{name}: redis bus lost messages");
        assert_eq!(r["duplicates"], 0, "{name}");
        assert_eq!(r["deliveries"], r["expected"], "{name}");
        let per_node: Vec<u64> = r["node_subscribers"]
            .as_array()
            .expect("node_subscribers")
            .iter()
            .map(|v| v.as_u64().expect("a count"))
            .collect();
        assert_eq!(per_node.len(), 2, "{name}: {per_node:?}");
        assert!(
            per_node.iter().all(|&c| c > 0),
            "{name}: a node had no subscribers: {per_node:?}"
        );
        assert_eq!(
            per_node.iter().sum::<u64>(),
            r["connected"].as_u64().unwrap(),
            "{name}: {per_node:?}"
        );
        assert!(
            r["rss_kib_per_conn"].as_f64().is_some_and(f64::is_finite),
            "{name}: rss {}",
            r["rss_kib_per_conn"]
        );
        if r["expected"].as_u64().unwrap_or(0) > 0 {
            for key in ["cpu_us_per_delivery", "redis_cpu_us_per_delivery"] {
                assert!(
                    r[key].as_f64().is_some_and(|c| c.is_finite() && c > 0.0),
                    "{name}: {key} {}",
                    r[key]
                );
            }
            assert_eq!(
                r["node_cpu_us_per_delivery"].as_array().map(Vec::len),
                Some(2),
                "{name}"
            );
            assert!(
                o["ratio_redis_bus"]["cpu_us_per_delivery"]
                    .as_f64()
                    .is_some_and(|x| x.is_finite() && x > 0.0),
                "{name}: {}",
                o["ratio_redis_bus"]
            );
        } else {
            assert!(
                r["idle_cpu_us_per_conn_s"]
                    .as_f64()
                    .is_some_and(f64::is_finite),
                "{name}: idle cpu {}",
                r["idle_cpu_us_per_conn_s"]
            );
        }
    }
}
