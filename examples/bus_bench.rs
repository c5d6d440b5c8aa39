//! Publish → deliver latency and deliveries per second for WebSocket
//! subscribers, on the in-memory bus (one node) and on the Redis bus (the
//! same subscribers spread over two nodes sharing one Redis).
//!
//! ```sh
//! cargo build --release && cargo run --release --example bus_bench -- \
//!     [--subscribers 1000] [--messages 500] [--rate 200] [--payload 100] \
//!     [--pollbridge target/release/pollbridge]
//! ```
//!
//! Starts its own `redis-server` (free loopback port, no persistence) and
//! gateways, publishes `--messages` messages at `--rate` per second on the
//! first node's admin API (one keep-alive connection), and times each
//! delivery against the publish time carried in the payload. Everything runs
//! on this machine, so the figures include the clients' own CPU.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    subscribers: usize,
    messages: usize,
    rate: f64,
    payload: usize,
    pollbridge: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        subscribers: 1000,
        messages: 500,
        rate: 200.0,
        payload: 100,
        pollbridge: "target/release/pollbridge".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--subscribers" => args.subscribers = value.parse().expect("--subscribers N"),
            "--messages" => args.messages = value.parse().expect("--messages N"),
            "--rate" => args.rate = value.parse().expect("--rate PER_SECOND"),
            "--payload" => args.payload = value.parse().expect("--payload BYTES"),
            "--pollbridge" => args.pollbridge = value,
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis(dir: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (install with scripts/setup.sh)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), format!("redis://127.0.0.1:{port}"))
}

/// Starts a gateway; returns it with its (public, admin) addresses.
fn start_gateway(bin: &str, bus: &str) -> (Proc, SocketAddr, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args([
            "--bus",
            bus,
            "--log-level",
            "warn",
            "--max-connections",
            "5000",
        ])
        .args(["--queue-length", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release first)"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("ready line");
    let mut words = line.split_whitespace().skip(2);
    let public = words.next().and_then(|w| w.strip_prefix("public="));
    let admin = words.next().and_then(|w| w.strip_prefix("admin="));
    let (Some(public), Some(admin)) = (public, admin) else {
        panic!("no ready line from {bin}: {line:?}");
    };
    (Proc(child), public.parse().unwrap(), admin.parse().unwrap())
}

/// Waits for `/readyz` to answer 200.
async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(admin).await {
            let req = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let mut out = Vec::new();
            if s.write_all(req.as_bytes()).await.is_ok()
                && s.read_to_end(&mut out).await.is_ok()
                && out.starts_with(b"HTTP/1.1 200")
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{admin} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One subscriber: the latency (µs) of each delivery and its arrival time.
async fn subscriber(
    url: String,
    messages: usize,
    ready: tokio::sync::mpsc::Sender<()>,
) -> (Vec<u64>, Option<Instant>, usize) {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    // The `subscribed` control message.
    let _ = ws.next().await;
    let _ = ready.send(()).await;
    let mut latencies = Vec::with_capacity(messages);
    let mut last_at = None;
    let mut disorder = 0;
    let mut expected_id = 1;
    while latencies.len() < messages {
        let frame = match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        let now = now_us();
        let v: serde_json::Value = serde_json::from_str(&frame).expect("json");
        let Some(id) = v["id"].as_u64() else { continue };
        if id != expected_id {
            disorder += 1;
        }
        expected_id = id + 1;
        latencies.push(now.saturating_sub(v["data"]["t"].as_u64().unwrap_or(now)));
        last_at = Some(Instant::now());
    }
    (latencies, last_at, disorder)
}

/// POSTs on one keep-alive connection; returns the round trip.
async fn publish(conn: &mut TcpStream, body: &str) -> Duration {
    let started = Instant::now();
    let req = format!(
        "POST /publish/bench HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.expect("publish write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await.expect("publish read");
        assert!(n > 0, "admin closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "publish: {head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return started.elapsed();
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Figures {
    name: String,
    deliveries: usize,
    expected: usize,
    disorder: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    per_second: f64,
    publish_p50_ms: f64,
    publish_p99_ms: f64,
}

async fn run(name: &str, nodes: &[(SocketAddr, SocketAddr)], args: &Args) -> Figures {
    for (_, admin) in nodes {
        wait_ready(*admin).await;
    }
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.subscribers);
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let (public, _) = nodes[i % nodes.len()];
        let url = format!("ws://{public}/rt/ws/bench");
        tasks.push(tokio::spawn(subscriber(
            url,
            args.messages,
            ready_tx.clone(),
        )));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for _ in 0..args.subscribers {
        ready_rx.recv().await.expect("subscriber ready");
    }

    let mut conn = TcpStream::connect(nodes[0].1).await.expect("admin");
    conn.set_nodelay(true).unwrap();
    let pad = "x".repeat(args.payload.saturating_sub(30));
    let every = Duration::from_secs_f64(1.0 / args.rate);
    let started = Instant::now();
    let mut publish_rtts = Vec::with_capacity(args.messages);
    for i in 0..args.messages {
        let due = started + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let body = format!(r#"{{"t":{},"pad":"{pad}"}}"#, now_us());
        publish_rtts.push(publish(&mut conn, &body).await.as_micros() as u64);
    }

    let mut latencies = Vec::with_capacity(args.subscribers * args.messages);
    let mut last = started;
    let mut disorder = 0;
    for task in tasks {
        let (l, at, d) = task.await.expect("subscriber");
        latencies.extend(l);
        if let Some(at) = at {
            last = last.max(at);
        }
        disorder += d;
    }
    latencies.sort_unstable();
    publish_rtts.sort_unstable();
    let span = last.duration_since(started).as_secs_f64();
    Figures {
        name: name.into(),
        deliveries: latencies.len(),
        expected: args.subscribers * args.messages,
        disorder,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().map_or(f64::NAN, |&l| l as f64 / 1000.0),
        per_second: latencies.len() as f64 / span,
        publish_p50_ms: percentile(&publish_rtts, 0.50),
        publish_p99_ms: percentile(&publish_rtts, 0.99),
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let dir = std::env::temp_dir().join(format!("pollbridge-bus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut results = Vec::new();
    {
        let (_gw, public, admin) = start_gateway(&args.pollbridge, "memory");
        results.push(run("memory, 1 node", &[(public, admin)], &args).await);
    }
    {
        let (_redis, url) = start_redis(&dir);
        let (_a, pa, aa) = start_gateway(&args.pollbridge, &url);
        let (_b, pb, ab) = start_gateway(&args.pollbridge, &url);
        results.push(run("redis, 2 nodes", &[(pa, aa), (pb, ab)], &args).await);
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "\n{} WebSocket subscribers, {} messages of ~{} bytes at {}/s (publish on node 1)\n",
        args.subscribers, args.messages, args.payload, args.rate
    );
    println!(
        "{:<16} {:>12} {:>9} {:>9} {:>9} {:>13} {:>11} {:>11} {:>9}",
        "bus",
        "deliveries",
        "p50 ms",
        "p99 ms",
        "max ms",
        "deliveries/s",
        "publish p50",
        "publish p99",
        "disorder"
    );
    for r in &results {
        println!(
            "{:<16} {:>12} {:>9.3} {:>9.3} {:>9.3} {:>13.0} {:>11.3} {:>11.3} {:>9}",
            r.name,
            format!("{}/{}", r.deliveries, r.expected),
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.per_second,
            r.publish_p50_ms,
            r.publish_p99_ms,
            r.disorder
        );
    }
}
