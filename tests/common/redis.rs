//! Throw-away Redis servers for the Redis bus tests (one server, or a
//! 3-master cluster made with `redis-cli --cluster create`), and the
//! end-to-end scenarios both kinds run.
//!
//! Every server gets its own free loopback port(s) and temp directory and
//! is killed on drop, so tests run in parallel. A missing `redis-server` or
//! `redis-cli` fails the test with a message saying how to install them;
//! it never skips.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{get, Gateway, SseClient, TempDir, WsClient, T10, T5};

/// How long a server gets to answer `PING` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(15);

fn require(binary: &str) {
    // `openssl` wants a subcommand rather than a flag.
    let probe = if binary == "openssl" {
        "version"
    } else {
        "--version"
    };
    match Command::new(binary).arg(probe).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("{binary} --version failed: {out:?}"),
        Err(e) => panic!(
            "{binary} is not available ({e}): the Redis bus tests need a real Redis. \
             Run scripts/setup.sh (it installs the Debian packages redis-server and redis-tools)."
        ),
    }
}

/// A free loopback port (bound and released; the server binds it next).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    pub dir: TempDir,
}

impl RedisServer {
    /// A server without persistence.
    pub async fn start() -> RedisServer {
        Self::spawn_new(false, false).await
    }

    /// A server whose every acknowledged write survives `kill -9` (AOF,
    /// fsync on every write), for restart tests.
    pub async fn start_persistent() -> RedisServer {
        Self::spawn_new(true, false).await
    }

    /// A server without persistence on a port chosen earlier (to start a
    /// gateway before its Redis).
    pub async fn start_on_port(port: u16) -> RedisServer {
        Self::spawn(Some(port), false, false, &[]).await
    }

    /// A server without persistence, with more `redis-server` options.
    pub async fn start_with(extra: &[String]) -> RedisServer {
        Self::spawn(None, false, false, extra).await
    }

    async fn spawn_new(persistent: bool, cluster: bool) -> RedisServer {
        Self::spawn(None, persistent, cluster, &[]).await
    }

    async fn spawn(
        fixed_port: Option<u16>,
        persistent: bool,
        cluster: bool,
        extra: &[String],
    ) -> RedisServer {
        require("redis-server");
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = TempDir::new();
            let port = fixed_port.unwrap_or_else(free_port);
            let d = dir.0.display().to_string();
            let mut args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--dir".into(),
                d.clone(),
                "--logfile".into(),
                format!("{d}/redis.log"),
                "--save".into(),
                "".into(),
                "--daemonize".into(),
                "no".into(),
            ];
            if persistent {
                args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
            } else {
                args.extend(["--appendonly", "no"].map(String::from));
            }
            if cluster {
                args.extend([
                    "--cluster-enabled".to_string(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("{d}/nodes.conf"),
                    "--cluster-port".into(),
                    free_port().to_string(),
                    "--cluster-node-timeout".into(),
                    "5000".into(),
                ]);
            }
            args.extend_from_slice(extra);
            let mut server = RedisServer {
                port,
                args,
                child: None,
                dir,
            };
            match server.launch().await {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    async fn launch(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if ping(self.port).await {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("exited with {status}: {}", self.log_tail()));
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "no PONG within {START_TIMEOUT:?}: {}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.0.join("redis.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        log[start..].to_string()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..50 {
            match self.launch().await {
                Ok(()) => return,
                // The port may linger for a moment after the kill.
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "redis-server did not come back on port {}: {last}",
            self.port
        );
    }

    /// Runs `redis-cli -p PORT args…`; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT args…` → stdout; panics on failure.
pub fn cli(port: u16, args: &[&str]) -> String {
    require("redis-cli");
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when the server answers `PING` with `PONG` or `NOAUTH` (not
/// `LOADING`).
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        // A server with a password answers NOAUTH: up all the same.
        Some(buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

/// A test CA and a server certificate for 127.0.0.1, made with `openssl`.
pub struct TestCerts {
    pub dir: TempDir,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        require("openssl");
        let dir = TempDir::new();
        dir.write(
            "server.ext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir.0)
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=pollbridge test CA",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        run(&ca);
        let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        run(&csr);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        TestCerts { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }
}

/// Three masters, no replicas, every slot covered.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        require("redis-cli");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::spawn_new(true, true).await);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every node reports `cluster_state:ok` and knows all
    /// three masters.
    pub async fn wait_ok(&self) {
        wait_cluster_ok(&self.nodes).await;
    }

    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Kills node `i` (`kill -9`), waits `down`, starts it again and waits
    /// until the whole cluster is ok.
    pub async fn restart_node(&mut self, i: usize, down: Duration) {
        self.nodes[i].kill();
        tokio::time::sleep(down).await;
        self.nodes[i].restart().await;
        self.wait_ok().await;
    }

    /// The index of the node serving `key`'s slot.
    pub fn owner_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0]
            .cli(&["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("keyslot answer");
        for (i, node) in self.nodes.iter().enumerate() {
            let nodes = node.cli(&["cluster", "nodes"]);
            let me = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .expect("a myself line");
            for range in me.split_whitespace().skip(8) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                    if (a..=b).contains(&slot) {
                        return i;
                    }
                }
            }
        }
        panic!("no node serves slot {slot}");
    }

    /// A channel name starting with `base` whose keys live on node `node`.
    pub fn channel_on(&self, base: &str, node: usize) -> String {
        for i in 0..10_000 {
            let name = format!("{base}{i}");
            if self.owner_of(&format!("pollbridge:{{{name}}}:seq")) == node {
                return name;
            }
        }
        panic!("no channel for node {node}");
    }
}

/// Waits until every node reports `cluster_state:ok` and knows all of
/// them.
pub async fn wait_cluster_ok(nodes: &[RedisServer]) {
    let known = format!("cluster_known_nodes:{}", nodes.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = nodes.iter().all(|n| {
            let info = n.cli(&["cluster", "info"]);
            info.contains("cluster_state:ok") && info.contains(&known)
        });
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster not ok within 30s: {}",
            nodes[0].cli(&["cluster", "info"])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- Scenarios shared by the single-server and cluster tests ----

/// Bus flags for a gateway on this Redis.
pub fn bus_args(url: &str, cluster: bool) -> Vec<String> {
    let mut args = vec!["--bus".to_string(), url.to_string()];
    if cluster {
        args.extend(["--redis-cluster".to_string(), "true".to_string()]);
    }
    args
}

/// Starts a gateway on the bus and waits until `/readyz` says ready.
pub async fn start_gateway(bus: &[String], extra: &[&str]) -> Gateway {
    let mut args: Vec<&str> = bus.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let gw = Gateway::start(&args).await;
    wait_ready(&gw, true, T10).await;
    gw
}

/// Waits for `/readyz` to answer ready (200) or not ready (503).
pub async fn wait_ready(gw: &Gateway, ready: bool, t: Duration) {
    let want = if ready { 200 } else { 503 };
    super::eventually(t, &format!("/readyz answering {want}"), || async {
        (get(&gw.admin_url("/readyz")).await.status() == want).then_some(())
    })
    .await;
}

fn ids_of(envelopes: &[Value], channel: &str) -> Vec<u64> {
    envelopes
        .iter()
        .map(|e| {
            assert_eq!(e["channel"], channel, "{e}");
            let id = e["id"].as_u64().expect("id");
            assert_eq!(e["data"]["n"], id, "payload of {e}");
            id
        })
        .collect()
}

/// A long-poll client that follows `channel` from id 0, alternating
/// between the gateways' public addresses, until it has `n` messages.
pub async fn follow_by_polling(nodes: Vec<SocketAddr>, channel: String, n: usize) -> Vec<u64> {
    let mut cursor = 0u64;
    let mut got = Vec::with_capacity(n);
    let mut turn = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "long-poll client: {} of {n} messages",
            got.len()
        );
        let node = nodes[turn % nodes.len()];
        turn += 1;
        let r = get(&format!(
            "http://{node}/rt/poll/{channel}?since={cursor}&timeout=5"
        ))
        .await;
        assert_eq!(r.status(), 200, "poll on {node}: {}", r.text());
        let body = r.json();
        assert_eq!(body["truncated"], false, "{body}");
        let messages = body["messages"].as_array().expect("messages").clone();
        for id in ids_of(&messages, &channel) {
            assert_eq!(
                id,
                cursor + 1,
                "long-poll on {node} skipped or repeated: {body}"
            );
            cursor = id;
            got.push(id);
        }
        if messages.is_empty() {
            assert_eq!(body["last_id"], cursor, "{body}");
        }
    }
    got
}

/// Reads `n` envelopes from an SSE stream.
pub async fn collect_sse(sse: &mut SseClient, channel: &str, n: usize, t: Duration) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + t;
    let mut envelopes = Vec::with_capacity(n);
    while envelopes.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_event(left).await {
            Ok(Some(ev)) => envelopes.push(ev.json()),
            other => panic!("SSE: {} of {n} events, then {other:?}", envelopes.len()),
        }
    }
    ids_of(&envelopes, channel)
}

/// 500 messages published alternately on both nodes' admin APIs reach a
/// WebSocket client on A, an SSE client on B and a long-poll client
/// alternating between A and B: all in order, ids 1..=500, once.
pub async fn fan_out_across_nodes(a: &Gateway, b: &Gateway, channel: &str) {
    const N: u64 = 500;
    let mut ws = WsClient::connect(&a.ws_url(&format!("/rt/ws/{channel}"))).await;
    ws.expect_control("subscribed", T5).await;
    let mut sse = SseClient::open(b.public, &format!("/rt/sse/{channel}?since=0"), &[]).await;
    let poller = tokio::spawn(follow_by_polling(
        vec![a.public, b.public],
        channel.to_string(),
        N as usize,
    ));

    for n in 1..=N {
        let gw = if n % 2 == 1 { a } else { b };
        let id = gw.publish_json(channel, &json!({ "n": n })).await;
        assert_eq!(
            id,
            n,
            "publish #{n} on {}",
            if n % 2 == 1 { "A" } else { "B" }
        );
    }

    let expected: Vec<u64> = (1..=N).collect();
    let ws_ids = ids_of(&ws.collect_envelopes(N as usize, T10).await, channel);
    assert_eq!(ws_ids, expected, "WebSocket on A");
    ws.expect_no_envelope(Duration::from_millis(300)).await;
    assert_eq!(
        collect_sse(&mut sse, channel, N as usize, T10).await,
        expected,
        "SSE on B"
    );
    assert_eq!(poller.await.unwrap(), expected, "long-poll alternating A/B");
}

/// Four publishers (two per node) × 250 messages on each of `channels`:
/// each channel's ids are exactly 1..=1000.
pub async fn concurrent_publishers(a: &Gateway, b: &Gateway, channels: &[&str]) {
    let admins = [a.admin, b.admin];
    let mut tasks = Vec::new();
    for p in 0..4usize {
        let admin = admins[p % 2];
        let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        tasks.push(tokio::spawn(async move {
            let mut got: Vec<(String, u64)> = Vec::new();
            for i in 0..250 {
                for channel in &channels {
                    let r = super::http(
                        "POST",
                        &format!("http://{admin}/publish/{channel}"),
                        &[("Content-Type", "application/json")],
                        Some(json!({"p": p, "i": i}).to_string().as_bytes()),
                    )
                    .await;
                    assert_eq!(r.status(), 200, "publish: {}", r.text());
                    got.push((channel.clone(), r.json()["id"].as_u64().expect("id")));
                }
            }
            got
        }));
    }
    let mut per_channel: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for task in tasks {
        for (channel, id) in task.await.unwrap() {
            per_channel.entry(channel).or_default().push(id);
        }
    }
    for channel in channels {
        let mut ids = per_channel.remove(*channel).unwrap_or_default();
        ids.sort_unstable();
        assert_eq!(ids, (1..=1000).collect::<Vec<u64>>(), "ids of {channel}");
        // And both nodes serve the same history.
        for gw in [a, b] {
            let (status, body) = gw.poll(channel, "since=0&timeout=0").await;
            assert_eq!(status, 200, "{body}");
            let ids: Vec<u64> = body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_u64().unwrap())
                .collect();
            assert_eq!(
                ids,
                (1..=1000).collect::<Vec<u64>>(),
                "history of {channel}"
            );
        }
    }
}

/// A WebSocket client leaves node A and resumes on node B with `since`:
/// exactly the missed messages, then live ones.
pub async fn resume_on_other_node(a: &Gateway, b: &Gateway, channel: &str) {
    let mut ws = WsClient::connect(&a.ws_url(&format!("/rt/ws/{channel}"))).await;
    ws.expect_control("subscribed", T5).await;
    for n in 1..=5u64 {
        a.publish_json(channel, &json!({ "n": n })).await;
    }
    let seen = ids_of(&ws.collect_envelopes(5, T5).await, channel);
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    ws.close().await;
    for n in 6..=30u64 {
        let gw = if n % 2 == 0 { a } else { b };
        gw.publish_json(channel, &json!({ "n": n })).await;
    }
    let mut ws = WsClient::connect(&b.ws_url(&format!("/rt/ws/{channel}?since=5"))).await;
    let ack = ws.expect_control("subscribed", T5).await;
    assert_eq!(ack["truncated"], false, "{ack}");
    let missed = ids_of(&ws.collect_envelopes(25, T5).await, channel);
    assert_eq!(missed, (6..=30).collect::<Vec<u64>>());
    ws.expect_no_envelope(Duration::from_millis(300)).await;
    a.publish_json(channel, &json!({ "n": 31 })).await;
    let live = ids_of(&[ws.next_envelope(T5).await], channel);
    assert_eq!(live, [31]);
}

/// What a steady publisher saw: per attempt, the HTTP status and id.
#[derive(Default)]
pub struct PublishLog {
    pub acked: Vec<u64>,
    pub unavailable: usize,
    pub other: Vec<String>,
}

/// Publishes `{"n": i}` every `every`, alternating between the admin
/// addresses, until `stop` is set; returns what each attempt got.
pub fn steady_publisher(
    admins: Vec<SocketAddr>,
    channel: String,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<PublishLog> {
    tokio::spawn(async move {
        let mut log = PublishLog::default();
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let admin = admins[i as usize % admins.len()];
            let started = tokio::time::Instant::now();
            let r = super::http(
                "POST",
                &format!("http://{admin}/publish/{channel}"),
                &[("Content-Type", "application/json")],
                Some(json!({ "i": i }).to_string().as_bytes()),
            )
            .await;
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "a publish took {:?}: publishing must never hang",
                started.elapsed()
            );
            match r.status() {
                200 => log.acked.push(r.json()["id"].as_u64().expect("id")),
                503 => log.unavailable += 1,
                s => log.other.push(format!("{s} {}", r.text())),
            }
            tokio::time::sleep(every).await;
        }
        log
    })
}

/// Records every `/readyz` answer of a gateway until `stop`.
pub fn watch_readiness(
    admin: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let status = get(&format!("http://{admin}/readyz")).await.status();
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        seen
    })
}

/// Ids delivered in order, once, without gaps, from 1 to at least every
/// acknowledged id.
fn assert_exactly_once(what: &str, delivered: &[u64], acked: &[u64]) {
    let expected: Vec<u64> = (1..=delivered.len() as u64).collect();
    assert_eq!(
        delivered,
        expected.as_slice(),
        "{what}: not 1..N in order once"
    );
    let delivered: HashSet<u64> = delivered.iter().copied().collect();
    let missing: Vec<u64> = acked
        .iter()
        .filter(|id| !delivered.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: acknowledged but never delivered: {missing:?}"
    );
}

/// Reads envelopes of `channel` from a WebSocket until it has id `last`.
async fn ws_until(ws: &mut WsClient, last: u64, t: Duration) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + t;
    let mut ids = Vec::new();
    while ids.last().is_none_or(|&id| id < last) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "WebSocket: stuck at {:?} waiting for {last}",
            ids.last()
        );
        let env = ws.next_envelope(left).await;
        ids.push(env["id"].as_u64().expect("id"));
    }
    ids
}

async fn sse_until(sse: &mut SseClient, last: u64, t: Duration) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + t;
    let mut ids = Vec::new();
    while ids.last().is_none_or(|&id| id < last) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_event(left).await {
            Ok(Some(ev)) => ids.push(ev.json()["id"].as_u64().expect("id")),
            other => panic!(
                "SSE: stuck at {:?} waiting for {last}: {other:?}",
                ids.last()
            ),
        }
    }
    ids
}

/// Flags that make the gateways notice a Redis outage quickly in tests.
pub const FAST_RECOVERY: &[&str] = &[
    "--redis-health-interval",
    "200ms",
    "--redis-command-timeout",
    "1s",
    "--redis-connect-timeout",
    "1s",
    "--redis-reconnect-min-delay",
    "50ms",
    "--redis-reconnect-max-delay",
    "500ms",
];

/// Redis goes away in the middle of a steady publish stream and comes back
/// (`outage` kills and restarts it): publishes in between get 503, `/readyz`
/// goes not-ready and back, and connected clients get every acknowledged
/// message exactly once, in order.
pub async fn survive_restart<F, Fut>(a: &Gateway, b: &Gateway, channel: &str, outage: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ws = WsClient::connect(&a.ws_url(&format!("/rt/ws/{channel}"))).await;
    ws.expect_control("subscribed", T5).await;
    let mut sse = SseClient::open(b.public, &format!("/rt/sse/{channel}"), &[]).await;
    // Wait for B's subscription too: a first message must reach both.
    let first = a.publish_json(channel, &json!({ "i": 0 })).await;
    assert_eq!(first, 1);
    assert_eq!(ws.next_envelope(T5).await["id"], 1);
    assert_eq!(sse_until(&mut sse, 1, T5).await, [1]);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readiness = [
        watch_readiness(a.admin, stop.clone()),
        watch_readiness(b.admin, stop.clone()),
    ];
    let stop_publishing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = steady_publisher(
        vec![a.admin, b.admin],
        channel.to_string(),
        Duration::from_millis(10),
        stop_publishing.clone(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    outage().await;
    // Keep publishing for a while after Redis is back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_publishing.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = publisher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let [ra, rb] = readiness;
    let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());

    assert!(
        log.other.is_empty(),
        "unexpected publish answers: {:?}",
        log.other
    );
    assert!(log.unavailable > 0, "no publish got 503 during the outage");
    assert!(
        log.acked.len() > 20,
        "too few acknowledged publishes: {}",
        log.acked.len()
    );
    let mut acked = log.acked.clone();
    acked.insert(0, first);
    let last = *acked.iter().max().unwrap();
    for (name, seen) in [("A", &ra), ("B", &rb)] {
        assert_eq!(seen.first(), Some(&200), "node {name} readiness {seen:?}");
        assert!(
            seen.contains(&503),
            "node {name} never went not-ready: {seen:?}"
        );
        assert_eq!(
            seen.last(),
            Some(&200),
            "node {name} not ready again: {seen:?}"
        );
    }

    let mut ws_ids = vec![1];
    ws_ids.extend(ws_until(&mut ws, last, T10).await);
    let mut sse_ids = vec![1];
    sse_ids.extend(sse_until(&mut sse, last, T10).await);
    // A publish answered 503 may still have been stored (Redis wrote it but
    // the answer was lost): it must arrive once too. Read what is left.
    let quiet = Duration::from_millis(500);
    while let super::WsEvent::Json(env) = ws.recv(quiet).await {
        ws_ids.push(env["id"].as_u64().expect("id"));
    }
    while let Ok(Some(ev)) = sse.next_event(quiet).await {
        sse_ids.push(ev.json()["id"].as_u64().expect("id"));
    }
    assert_exactly_once("WebSocket on A", &ws_ids, &acked);
    assert_exactly_once("SSE on B", &sse_ids, &acked);
    for gw in [a, b] {
        let reconnects = gw
            .metric("pollbridge_redis_reconnects_total", &[])
            .await
            .unwrap_or(0.0);
        assert!(reconnects >= 1.0, "reconnects_total {reconnects}");
    }
}
