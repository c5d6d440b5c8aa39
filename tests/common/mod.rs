//! Black-box harness: runs the real `pollbridge` binary on port 0 and talks
//! to it over real sockets.
//!
//! # Layout
//! - `mod.rs` (this file): [`Gateway`] (spawn, ready line, signals, RSS),
//!   admin helpers (publish, metrics), Prometheus text parsing.
//! - [`http`]: raw HTTP/1.1 client that counts bytes ([`RawHttpConn`]).
//! - [`ws`]: WebSocket clients (tokio-tungstenite and hand-written frames).
//! - [`sse`]: server-sent events client.
//! - [`upstream`]: echo / hanging / dead upstreams for the reverse proxy.
//!
//! Every wait is bounded, and a [`Gateway`] is killed when dropped, so a
//! broken gateway fails a test instead of hanging it or leaking a process.
#![allow(dead_code, unused_imports)]

pub mod bridge_upstream;
pub mod h2;
pub mod http;
pub mod migration;
pub mod redis;
pub mod security;
pub mod sse;
pub mod toy_backend;
pub mod upstream;
pub mod ws;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use http::{get, http, read_length_answer, split_url, Head, RawHttpConn, Response};
pub use sse::{SseClient, SseEvent};
pub use ws::{RawFrame, RawWs, WsClient, WsEvent};

/// Short timeouts used throughout the tests.
pub const T1: Duration = Duration::from_secs(1);
pub const T5: Duration = Duration::from_secs(5);
pub const T10: Duration = Duration::from_secs(10);

/// How long the binary gets to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Most stderr kept per gateway (the tail is what matters).
const STDERR_KEEP: usize = 256 * 1024;

pub fn bin_path() -> &'static str {
    env!("CARGO_BIN_EXE_pollbridge")
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "pollbridge-test-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes a file in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `Command` for the binary with no `POLLBRIDGE_*` variables inherited
/// from the test's own environment.
pub fn command() -> Command {
    let mut cmd = Command::new(bin_path());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("POLLBRIDGE_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// How to start a gateway.
#[derive(Default)]
pub struct GatewayBuilder {
    args: Vec<String>,
    config: Option<String>,
    env: Vec<(String, String)>,
    /// Leave out `--listen 127.0.0.1:0` (to test the environment variable).
    no_listen_flag: bool,
}

impl GatewayBuilder {
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn no_listen_flag(mut self) -> Self {
        self.no_listen_flag = true;
        self
    }

    pub async fn start(self) -> Gateway {
        let dir = TempDir::new();
        let mut cmd = command();
        if !self.no_listen_flag {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(["--admin-listen", "127.0.0.1:0"]);
        if let Some(toml) = &self.config {
            let path = dir.write("pollbridge.toml", toml);
            cmd.arg("--config").arg(path);
        }
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin_path()));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap();
                s.extend_from_slice(&buf[..n]);
                if s.len() > 2 * STDERR_KEEP {
                    let cut = s.len() - STDERR_KEEP;
                    s.drain(..cut);
                }
            }
        });

        let (tx, rx) = tokio::sync::oneshot::channel::<Result<String, Vec<String>>>();
        let out_pipe = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out_sink = stdout.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut before = Vec::new();
            // After the ready line, keep draining so the child never blocks
            // on a full pipe.
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut all = out_sink.lock().unwrap();
                    if all.len() < 1000 {
                        all.push(line.clone());
                    }
                }
                if tx.is_some() {
                    if line.starts_with("pollbridge ready ") {
                        let _ = tx.take().unwrap().send(Ok(line));
                    } else {
                        before.push(line);
                    }
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err(before));
            }
        });

        let mut gw = Gateway {
            public: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            child,
            stderr,
            stdout,
            _dir: dir,
        };
        let line = match tokio::time::timeout(READY_TIMEOUT, rx).await {
            Ok(Ok(Ok(line))) => line,
            Ok(Ok(Err(stdout))) => {
                gw.fail(&format!(
                    "stdout closed without a ready line (stdout before: {stdout:?})"
                ))
                .await
            }
            Ok(Err(_)) => gw.fail("stdout reader vanished").await,
            Err(_) => {
                gw.fail(&format!("no ready line within {READY_TIMEOUT:?}"))
                    .await
            }
        };
        match parse_ready_line(&line) {
            Some((public, admin)) => {
                gw.public = public;
                gw.admin = admin;
            }
            None => gw.fail(&format!("malformed ready line {line:?}")).await,
        }
        gw
    }
}

/// `pollbridge ready public=IP:PORT admin=IP:PORT` → the two addresses.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let mut words = line.split_whitespace();
    if words.next()? != "pollbridge" || words.next()? != "ready" {
        return None;
    }
    let public = words.next()?.strip_prefix("public=")?.parse().ok()?;
    let admin = words.next()?.strip_prefix("admin=")?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some((public, admin))
}

/// A running gateway process. Killed (SIGKILL) and reaped on drop.
pub struct Gateway {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Every stdout line (the first thousand).
    stdout: Arc<Mutex<Vec<String>>>,
    /// Holds the config file for the life of the process.
    _dir: TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- pollbridge stderr (tail) ----\n{}\n---- end ----",
                tail(&self.stderr_text(), 8000)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// Starts the binary on port 0 with extra flags.
    pub async fn start(args: &[&str]) -> Gateway {
        Self::builder().args(args).start().await
    }

    /// Starts the binary with a config file (written to a temp dir).
    pub async fn start_with_config(toml: &str, args: &[&str]) -> Gateway {
        Self::builder().config(toml).args(args).start().await
    }

    async fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let status = self.child.wait();
        // Give the stderr thread a moment to collect the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        panic!(
            "pollbridge failed to start: {why}; exit: {status:?}\nstderr:\n{}",
            tail(&self.stderr_text(), 8000)
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stdout lines printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `t`.
    pub async fn wait_exit(&mut self, t: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size in KiB, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn public_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.public)
    }

    /// `POST /publish/{channel}` on the admin listener.
    pub async fn publish(&self, channel: &str, body: &[u8], content_type: &str) -> (u16, Value) {
        let r = http(
            "POST",
            &self.admin_url(&format!("/publish/{channel}")),
            &[("Content-Type", content_type)],
            Some(body),
        )
        .await;
        let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status(), json)
    }

    /// Publishes a JSON value; asserts 200 and returns the id.
    pub async fn publish_json(&self, channel: &str, data: &Value) -> u64 {
        let (status, json) = self
            .publish(channel, data.to_string().as_bytes(), "application/json")
            .await;
        assert_eq!(status, 200, "publish on {channel}: {json}");
        assert_eq!(json["channel"], channel, "publish answer {json}");
        json["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("publish answer without id: {json}"))
    }

    /// Publishes a text payload; asserts 200 and returns the id.
    pub async fn publish_text(&self, channel: &str, text: &str) -> u64 {
        let (status, json) = self.publish(channel, text.as_bytes(), "text/plain").await;
        assert_eq!(status, 200, "publish on {channel}: {json}");
        json["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("publish answer without id: {json}"))
    }

    /// `POST /publish` with `[{"channel":..,"data":..},…]`.
    pub async fn publish_batch(&self, items: &[(&str, Value)]) -> (u16, Value) {
        let body: Vec<Value> = items
            .iter()
            .map(|(c, d)| serde_json::json!({"channel": c, "data": d}))
            .collect();
        let body = serde_json::to_vec(&body).unwrap();
        let r = http(
            "POST",
            &self.admin_url("/publish"),
            &[("Content-Type", "application/json")],
            Some(&body),
        )
        .await;
        let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status(), json)
    }

    /// Publishes a batch; asserts 200 and one answer per item, returns ids.
    pub async fn publish_batch_ok(&self, items: &[(&str, Value)]) -> Vec<u64> {
        let (status, json) = self.publish_batch(items).await;
        assert_eq!(status, 200, "batch publish: {json}");
        let answers = json
            .as_array()
            .unwrap_or_else(|| panic!("batch answer is not a list: {json}"));
        assert_eq!(answers.len(), items.len(), "batch answer {json}");
        answers
            .iter()
            .zip(items)
            .map(|(a, (c, _))| {
                assert_eq!(a["channel"], *c, "batch answer {a}");
                a["id"].as_u64().unwrap_or_else(|| panic!("no id in {a}"))
            })
            .collect()
    }

    /// `GET /rt/poll/{channel}?{query}`; returns status and JSON body.
    pub async fn poll(&self, channel: &str, query: &str) -> (u16, Value) {
        let r = get(&self.public_url(&format!("/rt/poll/{channel}?{query}"))).await;
        let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status(), json)
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let r = get(&self.admin_url("/metrics")).await;
        assert_eq!(r.status(), 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Waits (up to 10 s) until the sum of the samples of `name` whose
    /// labels include `labels` is `value`; an absent metric never matches.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        eventually(
            Duration::from_secs(10),
            &format!("{name}{labels:?} == {value}"),
            || async { (self.metric(name, labels).await == Some(value)).then_some(()) },
        )
        .await;
    }

    /// The hub's subscribers of `channel` on `transport` (`websocket`,
    /// `longpoll`, `sse`, `bridge`), as admin `GET /channels` lists them:
    /// 0 when the channel is not listed.
    pub async fn channel_subscribers(&self, channel: &str, transport: &str) -> u64 {
        let page = get(&self.admin_url("/channels?limit=1000")).await.json();
        page["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["channel"] == channel)
            .map(|c| c["subscribers"][transport].as_u64().expect("a count"))
            .sum()
    }

    /// The gateway still works: a publish on a fresh channel is answered
    /// and a poll returns it.
    pub async fn assert_still_serving(&self) {
        static N: AtomicU64 = AtomicU64::new(0);
        let channel = format!("alive-{}", N.fetch_add(1, Ordering::Relaxed));
        let id = self
            .publish_json(&channel, &serde_json::json!({"alive": true}))
            .await;
        let (status, json) = self
            .poll(&channel, &format!("since={}&timeout=0", id - 1))
            .await;
        assert_eq!(status, 200, "poll after publish: {json}");
        assert_eq!(json["messages"][0]["id"], id, "poll after publish: {json}");
        assert_eq!(json["messages"][0]["data"]["alive"], true, "{json}");
    }
}

/// Sum of the samples of `name` (exact metric name) whose label set includes
/// every pair of `labels`; `None` when no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if !matches {
            continue;
        }
        let v: f64 = value.trim().parse().ok()?;
        *found.get_or_insert(0.0) += v;
    }
    found
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `t`.
pub async fn eventually<T, F, Fut>(t: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + t;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not true within {t:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks an envelope's shape and returns it for more checks.
pub fn assert_envelope(v: &Value, channel: &str, id: u64, data: &Value) {
    assert_eq!(v["channel"], channel, "envelope {v}");
    assert_eq!(v["id"], id, "envelope {v}");
    assert_eq!(&v["data"], data, "envelope {v}");
}

/// Runs the binary to completion (bounded); returns status, stdout, stderr.
pub async fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
    t: Duration,
) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::from(command());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn pollbridge");
    let out = tokio::time::timeout(t, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("pollbridge {args:?} did not exit within {t:?}"))
        .expect("wait for pollbridge");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
