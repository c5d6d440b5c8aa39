//! Reconnect-storm and state-channel benchmark client for pollbridge.
//! Built and run by `scripts/bench/reconnect-storm.sh` (which see); it
//! starts the gateways itself so it can time the restart, and prints
//! figures, not pass/fail.
//!
//! Scenarios:
//! - `storm-hints`, `storm-immediate`, `storm-immediate-noadmission`:
//!   `--clients` WebSocket clients on one gateway (Redis bus when
//!   `--redis-url` is given), the gateway is drained (SIGTERM) and a new one
//!   started on the same port; clients follow the close reason's
//!   `retry=<ms>` hint (`hints`) or reconnect at once (`immediate`), retry a
//!   refused TCP connect every 100 ms and a `503` after its `Retry-After`.
//!   Figures: time until every client is back, reconnects per second, the
//!   new gateway's peak CPU (from /proc/PID/stat) and accept rate.
//! - `fanout-state`, `fanout-stream`: `--subscribers` WebSocket subscribers
//!   on one channel, `--slow-percent` of them slow readers, messages
//!   published at `--rate` per second for `--seconds`. Figures: deliveries
//!   per second to the fast and the slow subscribers, slow subscribers
//!   dropped, delivery latency, gateway CPU.
//!
//! Loopback only; every wait is bounded; every gateway is killed when the
//! program ends (and, through PR_SET_PDEATHSIG, when it dies).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------
// Options.

struct Opts {
    gateway_bin: String,
    redis_url: Option<String>,
    clients: usize,
    subscribers: usize,
    slow_percent: usize,
    rate: u64,
    seconds: u64,
    /// Client source addresses 127.0.0.2 … (spreads the 4-tuples).
    sources: usize,
    scenarios: Vec<String>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        gateway_bin: "target/release/pollbridge".into(),
        redis_url: None,
        clients: 10_000,
        subscribers: 1_000,
        slow_percent: 10,
        rate: 200,
        seconds: 10,
        sources: 50,
        scenarios: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--gateway-bin" => o.gateway_bin = val(),
            "--redis-url" => o.redis_url = Some(val()),
            "--clients" => o.clients = num(&val()),
            "--subscribers" => o.subscribers = num(&val()),
            "--slow-percent" => o.slow_percent = num(&val()),
            "--rate" => o.rate = num(&val()) as u64,
            "--seconds" => o.seconds = num(&val()) as u64,
            "--sources" => o.sources = num(&val()).clamp(1, 250),
            s if !s.starts_with('-') => o.scenarios.push(s.to_string()),
            other => die(&format!("unknown flag {other}")),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = [
            "storm-hints",
            "storm-immediate",
            "storm-immediate-noadmission",
            "fanout-state",
            "fanout-stream",
        ]
        .map(String::from)
        .to_vec();
    }
    o
}

fn num(s: &str) -> usize {
    s.parse()
        .unwrap_or_else(|_| die(&format!("not a number: {s}")))
}

fn die(msg: &str) -> ! {
    eprintln!("reconnect-storm: {msg}");
    std::process::exit(2)
}

// ---------------------------------------------------------------------------
// Gateway processes.

struct Gateway {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    _config: Option<TempFile>,
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Gateway {
    /// Starts the gateway on `listen` and waits (≤ 20 s) for its ready line.
    fn start(opts: &Opts, listen: &str, extra: &[&str], config: Option<&str>) -> Gateway {
        let mut cmd = Command::new(&opts.gateway_bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("POLLBRIDGE_") {
                cmd.env_remove(&k);
            }
        }
        cmd.args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .args([
                "--max-connections",
                "20000",
                "--max-connections-per-ip",
                "0",
                "--log-level",
                "warn",
            ])
            .args(extra);
        let config = config.map(|text| {
            let path = std::env::temp_dir().join(format!(
                "reconnect-storm-{}-{}.toml",
                std::process::id(),
                Instant::now().elapsed().as_nanos()
            ));
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(&path);
            TempFile(path)
        });
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| die(&format!("start {}: {e}", opts.gateway_bin)));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("pollbridge ready ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                die("the gateway printed no ready line within 20 s")
            }
        };
        let mut public = None;
        let mut admin = None;
        for w in line.split_whitespace() {
            if let Some(a) = w.strip_prefix("public=") {
                public = a.parse().ok();
            }
            if let Some(a) = w.strip_prefix("admin=") {
                admin = a.parse().ok();
            }
        }
        Gateway {
            child,
            public: public.expect("public address"),
            admin: admin.expect("admin address"),
            _config: config,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.pid() as i32, libc::SIGTERM);
        }
    }

    /// Waits for exit (bounded); kills it if it overstays.
    fn wait_exit(&mut self, t: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CPU ticks (user + system) of a process, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Samples a process's CPU every 100 ms until stopped; returns
/// (time since start, CPU % over the last 100 ms) pairs.
struct CpuSampler {
    stop: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<Vec<(Duration, f64)>>,
}

impl CpuSampler {
    fn start(pid: u32, origin: Instant) -> CpuSampler {
        let stop = Arc::new(AtomicUsize::new(0));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let tck = clk_tck();
            let mut out = Vec::new();
            let mut last = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
            // Bounded: 10 minutes of samples at most.
            for _ in 0..6000 {
                if flag.load(Ordering::Relaxed) != 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                let Some(t) = cpu_ticks(pid) else { break };
                let now = Instant::now();
                let dt = now.duration_since(last.0).as_secs_f64();
                out.push((
                    now.duration_since(origin),
                    (t - last.1) as f64 / tck / dt * 100.0,
                ));
                last = (now, t);
            }
            out
        });
        CpuSampler { stop, handle }
    }

    fn finish(self) -> Vec<(Duration, f64)> {
        self.stop.store(1, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Peak of a 100 ms series smoothed over `window` samples, and the mean.
fn cpu_figures(samples: &[(Duration, f64)], from: Duration, to: Duration) -> (f64, f64, f64) {
    let inside: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, c)| *c)
        .collect();
    if inside.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let peak_100ms = inside.iter().cloned().fold(0.0, f64::max);
    let peak_1s = inside
        .windows(10.min(inside.len()))
        .map(|w| w.iter().sum::<f64>() / w.len() as f64)
        .fold(0.0, f64::max);
    let mean = inside.iter().sum::<f64>() / inside.len() as f64;
    (peak_100ms, peak_1s, mean)
}

// ---------------------------------------------------------------------------
// HTTP to the admin listener.

async fn admin_request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        s.write_all(body).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| die(&format!("admin {method} {path}: no answer")))
}

/// A keep-alive connection to the admin listener (for steady publishing).
struct AdminConn {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: SocketAddr,
}

impl AdminConn {
    async fn connect(addr: SocketAddr) -> AdminConn {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| die("connect to the admin listener"));
        stream.set_nodelay(true).ok();
        AdminConn {
            stream,
            buf: Vec::new(),
            addr,
        }
    }

    /// `POST path` with a JSON body; returns status and body.
    async fn post(&mut self, path: &str, body: &[u8]) -> (u16, String) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let exchange = async {
            self.stream.write_all(head.as_bytes()).await.ok()?;
            self.stream.write_all(body).await.ok()?;
            let mut chunk = [0u8; 4096];
            let end = loop {
                if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p;
                }
                let n = self.stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())?;
            self.buf.drain(..end + 4);
            while self.buf.len() < len {
                let n = self.stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            let body: Vec<u8> = self.buf.drain(..len).collect();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| die(&format!("admin POST {path}: no answer")))
    }
}

async fn publish(gw: &Gateway, channel: &str, data: &str) -> u64 {
    let (status, body) = admin_request(
        gw.admin,
        "POST",
        &format!("/publish/{channel}"),
        data.as_bytes(),
    )
    .await;
    if status != 200 {
        die(&format!("publish: {status} {body}"));
    }
    json_u64(&body, "\"id\":").unwrap_or_else(|| die(&format!("publish answer {body}")))
}

async fn metric(gw: &Gateway, name: &str, label: &str) -> f64 {
    let (_, text) = admin_request(gw.admin, "GET", "/metrics", b"").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The number after `key` in a JSON text (`"id":` → 42).
fn json_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------
// A minimal WebSocket client.

enum Connect {
    Open(Ws),
    /// 503 with Retry-After seconds; true: `shutting_down` (a draining
    /// node), false: `overloaded` (admission control).
    Refused(u64, bool),
    /// Anything else (no listener, reset, timeout, other status).
    Failed,
}

struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

enum Frame {
    Text(Vec<u8>),
    Close(u16, String),
    End,
}

async fn ws_connect(
    source: Ipv4Addr,
    server: SocketAddr,
    path: &str,
    rcvbuf: Option<u32>,
) -> Connect {
    let attempt = async {
        let socket = TcpSocket::new_v4().ok()?;
        if let Some(size) = rcvbuf {
            // A slow client on a small link: a small receive buffer, and a
            // small MSS so the gateway's side does not buffer megabytes for
            // it either (on loopback its send buffer would grow to ~4 MB).
            socket.set_recv_buffer_size(size).ok()?;
            let mss: libc::c_int = 536;
            // SAFETY: setsockopt on a socket we own, with a valid int.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_TCP,
                    libc::TCP_MAXSEG,
                    &mss as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return None;
            }
        }
        socket.bind(SocketAddr::from((source, 0))).ok()?;
        let mut stream = socket.connect(server).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() > 65536 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        Some(match status {
            101 => Connect::Open(Ws {
                stream,
                buf: buf[end + 4..].to_vec(),
                start: 0,
            }),
            503 => {
                let secs = head
                    .lines()
                    .find_map(|l| l.strip_prefix("retry-after:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(1);
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
                    .min(4096);
                while buf.len() < end + 4 + len {
                    let n = stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[end + 4..]);
                Connect::Refused(secs, body.contains("shutting_down"))
            }
            _ => Connect::Failed,
        })
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Some(c)) => c,
        _ => Connect::Failed,
    }
}

impl Ws {
    /// The next text or close frame (pings answered, pongs skipped).
    async fn next(&mut self) -> Frame {
        loop {
            if let Some((op, payload)) = self.take() {
                match op {
                    1 => return Frame::Text(payload),
                    8 => {
                        let code = if payload.len() >= 2 {
                            u16::from_be_bytes([payload[0], payload[1]])
                        } else {
                            1005
                        };
                        let reason =
                            String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                        // Answer the close (masked, empty payload but the code).
                        let _ = self.send(8, &code.to_be_bytes()).await;
                        return Frame::Close(code, reason);
                    }
                    9 => {
                        let _ = self.send(10, &payload).await;
                    }
                    _ => {}
                }
                continue;
            }
            if self.start > 0 && self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Frame::End,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads at most `max` bytes (for slow readers), parsing frames out of
    /// them; returns the text frames completed, or None at the end.
    async fn read_some(&mut self, max: usize, texts: &mut Vec<Vec<u8>>) -> Option<()> {
        let mut chunk = vec![0u8; max];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
        }
        while let Some((op, payload)) = self.take() {
            match op {
                1 => texts.push(payload),
                8 => return None,
                9 => {
                    let _ = self.send(10, &payload).await;
                }
                _ => {}
            }
        }
        Some(())
    }

    fn take(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buf[self.start..];
        if b.len() < 2 {
            return None;
        }
        let op = b[0] & 0x0f;
        let mut len = (b[1] & 0x7f) as usize;
        let mut pos = 2;
        if len == 126 {
            if b.len() < 4 {
                return None;
            }
            len = u16::from_be_bytes([b[2], b[3]]) as usize;
            pos = 4;
        } else if len == 127 {
            if b.len() < 10 {
                return None;
            }
            len = u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize;
            pos = 10;
        }
        if b.len() < pos + len {
            return None;
        }
        let payload = b[pos..pos + len].to_vec();
        self.start += pos + len;
        if self.start > 65536 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Some((op, payload))
    }

    async fn send(&mut self, op: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = vec![0x80 | op, 0x80 | payload.len() as u8];
        let mask = [1u8, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f).await
    }
}

fn source(i: usize, sources: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8)
}

// ---------------------------------------------------------------------------
// The reconnect storm.

#[derive(Default)]
struct StormLog {
    reconnected_at: Option<Instant>,
    refusals: usize,
    drain_refusals: usize,
    failures: usize,
    got_end: bool,
    hint: Option<u64>,
    close_code: Option<u16>,
    problem: Option<String>,
}

struct StormShared {
    server: SocketAddr,
    hints: bool,
    sources: usize,
    connected: AtomicUsize,
    reconnected: AtomicUsize,
    ended: AtomicUsize,
    deadline: Instant,
}

async fn storm_client(
    i: usize,
    sh: Arc<StormShared>,
    gate: Arc<tokio::sync::Semaphore>,
) -> StormLog {
    let mut log = StormLog::default();
    let mut last = 0u64;
    let mut first = true;
    let src = source(i, sh.sources);
    loop {
        let permit = if first {
            Some(gate.acquire().await.unwrap())
        } else {
            None
        };
        let mut ws = loop {
            if Instant::now() > sh.deadline {
                log.problem = Some("deadline".into());
                return log;
            }
            match ws_connect(src, sh.server, &format!("/rt/ws/storm?since={last}"), None).await {
                Connect::Open(ws) => break ws,
                Connect::Refused(secs, draining) => {
                    if draining {
                        log.drain_refusals += 1;
                    } else {
                        log.refusals += 1;
                    }
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
                Connect::Failed => {
                    log.failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        drop(permit);
        if first {
            sh.connected.fetch_add(1, Ordering::Relaxed);
            first = false;
        } else {
            log.reconnected_at = Some(Instant::now());
            sh.reconnected.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let left = sh.deadline.saturating_duration_since(Instant::now());
            let frame = match tokio::time::timeout(left, ws.next()).await {
                Ok(f) => f,
                Err(_) => {
                    log.problem = Some("deadline while reading".into());
                    return log;
                }
            };
            match frame {
                Frame::Text(t) => {
                    let t = String::from_utf8_lossy(&t);
                    if t.contains("\"type\"") {
                        continue;
                    }
                    if let Some(id) = json_u64(&t, "\"id\":") {
                        last = last.max(id);
                    }
                    if t.contains("\"end\":true") {
                        log.got_end = true;
                        sh.ended.fetch_add(1, Ordering::Relaxed);
                        return log;
                    }
                }
                Frame::Close(code, reason) => {
                    log.close_code = Some(code);
                    let hint = reason.find("retry=").and_then(|at| {
                        reason[at + 6..]
                            .chars()
                            .take_while(|c| c.is_ascii_digit())
                            .collect::<String>()
                            .parse::<u64>()
                            .ok()
                    });
                    log.hint = hint;
                    drop(ws);
                    if sh.hints {
                        if let Some(ms) = hint {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                    }
                    break;
                }
                Frame::End => {
                    // Dropped without a close frame: reconnect at once.
                    break;
                }
            }
        }
    }
}

async fn storm(opts: &Opts, name: &str) {
    let (hints, admission) = match name {
        "storm-hints" => (true, "2000"),
        "storm-immediate" => (false, "2000"),
        "storm-immediate-noadmission" => (false, "0"),
        _ => unreachable!(),
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut bus: Vec<&str> = Vec::new();
    if let Some(url) = &opts.redis_url {
        bus.extend(["--bus", url.as_str(), "--redis-key-prefix"]);
    }
    let prefix = format!("bench{port}");
    if opts.redis_url.is_some() {
        bus.push(&prefix);
    }
    let mut first_args = bus.clone();
    first_args.extend(["--new-sessions-per-second", "0", "--drain-timeout", "20s"]);
    let mut old = Gateway::start(opts, &listen, &first_args, None);

    let deadline = Instant::now() + Duration::from_secs(240);
    let sh = Arc::new(StormShared {
        server: old.public,
        hints,
        sources: opts.sources,
        connected: AtomicUsize::new(0),
        reconnected: AtomicUsize::new(0),
        ended: AtomicUsize::new(0),
        deadline,
    });
    let gate = Arc::new(tokio::sync::Semaphore::new(500));
    let t_connect = Instant::now();
    let clients: Vec<_> = (0..opts.clients)
        .map(|i| tokio::spawn(storm_client(i, sh.clone(), gate.clone())))
        .collect();
    wait_for(
        &sh.connected,
        opts.clients,
        Duration::from_secs(120),
        "initial connects",
    )
    .await;
    let connect_time = t_connect.elapsed();
    publish(&old, "storm", r#"{"before":"restart"}"#).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The restart.
    let origin = Instant::now();
    let old_cpu = CpuSampler::start(old.pid(), origin);
    old.sigterm();
    let old_exit = tokio::task::spawn_blocking(move || {
        let s = old.wait_exit(Duration::from_secs(30));
        (s, origin.elapsed(), old_cpu.finish())
    });
    let port_free = bounded_until(Duration::from_secs(20), || {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    });
    if !port_free {
        die("the old gateway kept its port for 20 s");
    }
    let mut new_args = bus.clone();
    new_args.extend(["--new-sessions-per-second", admission]);
    let new = Gateway::start(opts, &listen, &new_args, None);
    let new_cpu = CpuSampler::start(new.pid(), origin);
    let new_up = origin.elapsed();
    let all_back = wait_for(
        &sh.reconnected,
        opts.clients,
        Duration::from_secs(120),
        "reconnects",
    )
    .await;
    let all_back_at = all_back.duration_since(origin);
    let old_exit = old_exit.await.unwrap();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_samples = new_cpu.finish();
    let refused_metric = metric(&new, "pollbridge_admission_refused_total", "websocket").await;
    publish(&new, "storm", r#"{"end":true}"#).await;
    wait_for(
        &sh.ended,
        opts.clients,
        Duration::from_secs(60),
        "end message",
    )
    .await;
    let mut logs = Vec::with_capacity(clients.len());
    for c in clients {
        logs.push(c.await.unwrap());
    }

    // Figures.
    let mut per_second = vec![0usize; (all_back_at.as_secs() + 1) as usize];
    let mut per_100ms = vec![0usize; (all_back_at.as_millis() / 100 + 1) as usize];
    for l in &logs {
        if let Some(at) = l.reconnected_at {
            let d = at.duration_since(origin);
            per_second[d.as_secs() as usize] += 1;
            per_100ms[(d.as_millis() / 100) as usize] += 1;
        }
    }
    let refusals: usize = logs.iter().map(|l| l.refusals).sum();
    let drain_refusals: usize = logs.iter().map(|l| l.drain_refusals).sum();
    let failures: usize = logs.iter().map(|l| l.failures).sum();
    let problems = logs.iter().filter(|l| l.problem.is_some()).count();
    let with_hint = logs.iter().filter(|l| l.hint.is_some()).count();
    let closed_1001 = logs.iter().filter(|l| l.close_code == Some(1001)).count();
    let (peak100, peak1s, mean) = cpu_figures(&new_samples, Duration::ZERO, all_back_at);
    let (old_peak100, _, old_mean) = cpu_figures(&old_exit.2, Duration::ZERO, old_exit.1);
    let busiest_second = per_second.iter().max().copied().unwrap_or(0);
    let busiest_100ms = per_100ms.iter().max().copied().unwrap_or(0);
    let active_secs = all_back_at.as_secs_f64() - new_up.as_secs_f64();
    println!(
        "== {name}: {} WebSocket clients, restart on {} ==",
        opts.clients,
        if opts.redis_url.is_some() {
            "the Redis bus"
        } else {
            "the memory bus"
        }
    );
    println!(
        "  initial connect of all clients:        {:.2} s",
        connect_time.as_secs_f64()
    );
    println!(
        "  new gateway ready after SIGTERM:       {:.3} s",
        new_up.as_secs_f64()
    );
    println!(
        "  all clients reconnected after SIGTERM: {:.2} s",
        all_back_at.as_secs_f64()
    );
    println!("  old gateway exited after SIGTERM:      {:.2} s ({:?}), its CPU: peak {:.0} %, mean {:.0} %",
        old_exit.1.as_secs_f64(), old_exit.0.map(|s| s.code()), old_peak100, old_mean);
    println!("  reconnects per second:                 {per_second:?}");
    println!("  accept rate: peak {busiest_second}/s (1 s), {}/s (100 ms), mean {:.0}/s from ready to all back",
        busiest_100ms * 10, opts.clients as f64 / active_secs.max(0.001));
    println!("  new gateway CPU until all back:        peak {peak100:.0} % (100 ms), {peak1s:.0} % (1 s), mean {mean:.0} %");
    println!("  503 overloaded (new gateway): {refusals} (it counted {refused_metric}); 503 shutting_down (old gateway, draining): {drain_refusals}; refused/failed TCP connects: {failures}");
    println!("  close frames 1001: {closed_1001}, with a retry= hint: {with_hint}; clients with problems: {problems}; got the message after: {}",
        logs.iter().filter(|l| l.got_end).count());
}

/// Waits until `counter` reaches `n`; returns when.
async fn wait_for(counter: &AtomicUsize, n: usize, t: Duration, what: &str) -> Instant {
    let deadline = Instant::now() + t;
    loop {
        let c = counter.load(Ordering::Relaxed);
        if c >= n {
            return Instant::now();
        }
        if Instant::now() > deadline {
            die(&format!("{what}: {c} of {n} within {t:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn bounded_until(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

// ---------------------------------------------------------------------------
// Fan-out to fast and slow subscribers, state vs stream.

#[derive(Default)]
struct SubLog {
    delivered: u64,
    last_id: u64,
    out_of_order: u64,
    ended_at: Option<Instant>,
    latencies_us: Vec<u32>,
}

fn now_us(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

async fn fast_subscriber(
    mut ws: Ws,
    origin: Instant,
    stop: Arc<AtomicU64>,
    sample: bool,
) -> SubLog {
    let mut log = SubLog::default();
    loop {
        let f = tokio::select! {
            f = ws.next() => f,
            _ = wait_flag(&stop) => return log,
        };
        match f {
            Frame::Text(t) => {
                let t = String::from_utf8_lossy(&t);
                let Some(id) = json_u64(&t, "\"id\":") else {
                    continue;
                };
                if t.contains("\"type\"") {
                    continue;
                }
                if id <= log.last_id {
                    log.out_of_order += 1;
                }
                log.last_id = id;
                log.delivered += 1;
                if sample {
                    if let Some(sent) = json_u64(&t, "\"t\":") {
                        log.latencies_us
                            .push(now_us(origin).saturating_sub(sent) as u32);
                    }
                }
            }
            Frame::Close(..) | Frame::End => {
                log.ended_at = Some(Instant::now());
                return log;
            }
        }
    }
}

async fn slow_subscriber(mut ws: Ws, stop: Arc<AtomicU64>) -> SubLog {
    let mut log = SubLog::default();
    let mut texts = Vec::new();
    loop {
        // 1 KiB every 500 ms: about 2 KiB/s.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = wait_flag(&stop) => return log,
        }
        let r = tokio::select! {
            r = ws.read_some(1024, &mut texts) => r,
            _ = wait_flag(&stop) => return log,
        };
        for t in texts.drain(..) {
            let t = String::from_utf8_lossy(&t);
            if !t.contains("\"type\"") {
                log.delivered += 1;
                log.last_id = json_u64(&t, "\"id\":").unwrap_or(log.last_id);
            }
        }
        if r.is_none() {
            log.ended_at = Some(Instant::now());
            return log;
        }
    }
}

async fn wait_flag(flag: &AtomicU64) {
    while flag.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fanout(opts: &Opts, name: &str) {
    let mode = if name == "fanout-state" {
        "state"
    } else {
        "stream"
    };
    let config = "[[channels]]\npattern = \"state.*\"\nmode = \"state\"\n";
    let channel = format!("{mode}.bench");
    let gw = Gateway::start(
        opts,
        "127.0.0.1:0",
        &["--new-sessions-per-second", "0"],
        Some(config),
    );
    let slow_n = opts.subscribers * opts.slow_percent / 100;
    let fast_n = opts.subscribers - slow_n;
    let origin = Instant::now();
    let stop = Arc::new(AtomicU64::new(0));
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for i in 0..opts.subscribers {
        let is_slow = i < slow_n;
        let rcvbuf = is_slow.then_some(4096);
        let mut ws = match ws_connect(
            source(i, opts.sources),
            gw.public,
            &format!("/rt/ws/{channel}"),
            rcvbuf,
        )
        .await
        {
            Connect::Open(ws) => ws,
            _ => die("fan-out subscriber could not connect"),
        };
        if !is_slow {
            // Its `subscribed` message.
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Frame::Text(_)) => {}
                _ => die("no subscribed message"),
            }
            fast.push(tokio::spawn(fast_subscriber(
                ws,
                origin,
                stop.clone(),
                i % 10 == 0,
            )));
        } else {
            slow.push(tokio::spawn(slow_subscriber(ws, stop.clone())));
        }
    }

    let pad = "x".repeat(250);
    let total = opts.rate * opts.seconds;
    let sampler = CpuSampler::start(gw.pid(), origin);
    let started = origin.elapsed();
    let t0 = Instant::now();
    let mut admin = AdminConn::connect(gw.admin).await;
    let mut published = 0u64;
    // One message per request, evenly spaced at --rate.
    for k in 0..total {
        let body = format!(r#"{{"t":{},"pad":"{pad}"}}"#, now_us(origin));
        let (status, answer) = admin
            .post(&format!("/publish/{channel}"), body.as_bytes())
            .await;
        if status != 200 {
            die(&format!("publish: {status} {answer}"));
        }
        published += 1;
        let due = t0 + Duration::from_micros(1_000_000 * (k + 1) / opts.rate);
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    // Let the fast readers take what is on its way, then stop everyone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Who is still subscribed, as the gateway sees it (a dropped slow reader
    // only notices once it has read what was already in its socket).
    let (_, channels) = admin_request(gw.admin, "GET", "/channels", b"").await;
    let still_subscribed = channels
        .find(&format!("\"channel\":\"{channel}\""))
        .and_then(|at| json_u64(&channels[at..], "\"websocket\":"))
        .unwrap_or(0);
    let ended = origin.elapsed();
    stop.store(1, Ordering::Relaxed);
    let samples = sampler.finish();
    let mut fast_logs = Vec::new();
    for f in fast {
        fast_logs.push(f.await.unwrap());
    }
    let mut slow_logs = Vec::new();
    for s in slow {
        slow_logs.push(s.await.unwrap());
    }
    let conflated = metric(&gw, "pollbridge_conflated_total", "websocket").await;
    let dropped = metric(&gw, "pollbridge_dropped_total", "slow_consumer").await;

    let window = (ended - started).as_secs_f64();
    let fast_total: u64 = fast_logs.iter().map(|l| l.delivered).sum();
    let slow_total: u64 = slow_logs.iter().map(|l| l.delivered).sum();
    let fast_cut = fast_logs.iter().filter(|l| l.ended_at.is_some()).count();
    let slow_cut = slow_logs.iter().filter(|l| l.ended_at.is_some()).count();
    let fast_complete = fast_logs
        .iter()
        .filter(|l| l.delivered == published)
        .count();
    let disorder: u64 = fast_logs.iter().map(|l| l.out_of_order).sum();
    let mut lat: Vec<u32> = fast_logs
        .iter()
        .flat_map(|l| l.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let (peak100, peak1s, mean) = cpu_figures(&samples, started, ended);
    println!("== {name}: {} subscribers ({fast_n} fast, {slow_n} slow: 4 KiB receive buffer, MSS 536, 1 KiB read every 500 ms), {} msg/s × {} s, ~300-byte payloads ==",
        opts.subscribers, opts.rate, opts.seconds);
    println!("  published {published} in {publish_secs:.2} s");
    println!("  deliveries to fast subscribers: {fast_total} = {:.0}/s ({fast_complete} of {fast_n} got all {published}; {fast_cut} cut off; {disorder} out of order)",
        fast_total as f64 / window);
    println!("  deliveries to slow subscribers: {slow_total} = {:.0}/s ({slow_cut} of {slow_n} saw their connection end)",
        slow_total as f64 / window);
    println!(
        "  still subscribed at the end (gateway's /channels): {still_subscribed} of {}",
        opts.subscribers
    );
    println!(
        "  fast-subscriber latency (10 % sample): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("  gateway CPU: peak {peak100:.0} % (100 ms), {peak1s:.0} % (1 s), mean {mean:.0} %");
    println!(
        "  conflated_total{{websocket}} {conflated}, dropped_total{{slow_consumer}} {dropped}"
    );
}

fn main() {
    let opts = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        for s in opts.scenarios.clone() {
            match s.as_str() {
                "storm-hints" | "storm-immediate" | "storm-immediate-noadmission" => {
                    storm(&opts, &s).await
                }
                "fanout-state" | "fanout-stream" => fanout(&opts, &s).await,
                other => die(&format!("unknown scenario {other}")),
            }
            // Let TIME_WAIT and the kernel settle between scenarios.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    // Every gateway has been dropped (killed) by now.
}
