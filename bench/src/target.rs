//! What a phase runs against ([`Target`]: the gateway, started here or
//! already running, or a floor server) and who loads it ([`Clients`]: one
//! or more client worker processes, each under the open-file limit).

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::Kind;
use crate::floor::FloorMode;
use crate::http::{metric_sum, Http};
use crate::proc::{self, Child, Cpu};
use crate::Opts;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// The core the servers run on with `--pin`; the clients get the other.
pub const SERVER_CORE: usize = 0;
pub const CLIENT_CORE: usize = 1;

/// This executable, re-run for the hidden `floor-server` and
/// `client-worker` roles.
fn self_exe() -> String {
    std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "pollbridge-bench".into())
}

/// Whether `bin --help` lists `flag` (asked once per binary).
fn gateway_has_flag(bin: &std::path::Path, flag: &str) -> bool {
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let help = HELP.get_or_init(|| {
        std::process::Command::new(bin)
            .arg("--help")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    });
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|word| word == flag)
}

pub enum TargetKind {
    Gateway,
    Floor,
    /// nginx or Nchan (`peers`): no command channel, no byte counters.
    Peer,
}

/// A server under test.
pub struct Target {
    pub label: String,
    pub kind: TargetKind,
    child: Option<Child>,
    pid: Option<u32>,
    pub public: SocketAddr,
    admin: Option<Http>,
    pub log: Option<PathBuf>,
    /// A directory of the target's own, removed when it stops (peers).
    dir: Option<PathBuf>,
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    let bare = addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    bare.to_socket_addrs()?
        .next()
        .ok_or_else(|| format!("cannot resolve {addr}").into())
}

impl Target {
    /// Starts the gateway binary on ports chosen by the kernel.
    pub fn start_gateway(opts: &Opts, upstream: Option<SocketAddr>, tag: &str) -> Result<Target> {
        Self::start_gateway_with(opts, upstream, tag, "gateway", &[])
    }

    /// [`Target::start_gateway`] labelled `label`, with `extra` arguments
    /// before the `--gateway-arg` ones.
    pub fn start_gateway_with(
        opts: &Opts,
        upstream: Option<SocketAddr>,
        tag: &str,
        label: &str,
        extra: &[String],
    ) -> Result<Target> {
        if let Some(url) = &opts.gateway_url {
            if upstream.is_some() && opts.upstream_url.is_none() {
                return Err("the proxy scenario against --gateway-url needs --upstream-url".into());
            }
            let admin = opts
                .admin_url
                .as_deref()
                .ok_or("--gateway-url needs --admin-url")?;
            return Ok(Target {
                label: "gateway".into(),
                kind: TargetKind::Gateway,
                child: None,
                pid: opts.gateway_pid,
                public: resolve(url)?,
                admin: Some(Http::new(resolve(admin)?)),
                log: None,
                dir: None,
            });
        }
        let bin = &opts.gateway_bin;
        if !bin.exists() {
            return Err(format!(
                "gateway binary {} not found (build it with `cargo build --release`, or pass --gateway-bin)",
                bin.display()
            )
            .into());
        }
        let history = (opts.messages + 100).max(1000);
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--max-connections".into(),
            opts.max_connections.to_string(),
            "--queue-length".into(),
            opts.queue_length.to_string(),
            "--history-size".into(),
            history.to_string(),
        ]);
        // Per-client-address limits would throttle a load test whose
        // thousands of clients share four addresses: lift them where this
        // gateway build has them.
        for flag in ["--max-connections-per-ip", "--longpoll-rate-per-ip"] {
            if gateway_has_flag(bin, flag) {
                args.extend([flag.to_string(), "0".into()]);
            }
        }
        if let Some(up) = upstream {
            args.extend(["--upstream".into(), format!("http://{up}")]);
        }
        args.extend(extra.iter().cloned());
        args.extend(opts.gateway_args.iter().cloned());
        let log = std::env::temp_dir().join(format!(
            "pollbridge-bench-{}-gateway-{tag}.log",
            std::process::id()
        ));
        let stderr = std::fs::File::create(&log)?;
        let child = Child::spawn(
            "gateway",
            &bin.to_string_lossy(),
            &args,
            opts.pin.then_some(SERVER_CORE),
            Stdio::from(stderr),
        )?;
        let ready = child
            .expect_line(
                "pollbridge ready ",
                Instant::now() + Duration::from_secs(30),
            )
            .ok_or_else(|| {
                format!(
                    "gateway did not print its ready line; its log: {}",
                    log.display()
                )
            })?;
        let field = |name: &str| -> Result<SocketAddr> {
            let value = ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .ok_or_else(|| format!("no {name} in ready line {ready:?}"))?;
            Ok(value.parse()?)
        };
        let (public, admin) = (field("public=")?, field("admin=")?);
        Ok(Target {
            label: label.into(),
            kind: TargetKind::Gateway,
            pid: Some(child.pid()),
            child: Some(child),
            public,
            admin: Some(Http::new(admin)),
            log: Some(log),
            dir: None,
        })
    }

    /// Starts a floor server (`--batch` frames per write).
    pub fn start_floor(
        opts: &Opts,
        mode: FloorMode,
        batch: usize,
        label: &str,
        channel: &str,
    ) -> Result<Target> {
        Target::start_floor_with(opts, mode, batch, label, channel, None)
    }

    /// Starts a floor server; `upstream` is where the `proxy` floor forwards.
    pub fn start_floor_with(
        opts: &Opts,
        mode: FloorMode,
        batch: usize,
        label: &str,
        channel: &str,
        upstream: Option<SocketAddr>,
    ) -> Result<Target> {
        let mode_name = match mode {
            FloorMode::Ws => "ws",
            FloorMode::Sse => "sse",
            FloorMode::Lp => "lp",
            FloorMode::Upstream => "upstream",
            FloorMode::Proxy => "proxy",
        };
        let mut args: Vec<String> = vec![
            "floor-server".into(),
            "--mode".into(),
            mode_name.into(),
            "--batch".into(),
            batch.to_string(),
            "--payload-bytes".into(),
            opts.payload_bytes.to_string(),
            "--channel".into(),
            channel.into(),
            "--deadline-secs".into(),
            opts.phase_deadline().as_secs().to_string(),
        ];
        if opts.state_payload {
            args.push("--state-payload".into());
        }
        if let Some(upstream) = upstream {
            args.extend(["--upstream".into(), upstream.to_string()]);
        }
        let child = Child::spawn(
            label,
            &self_exe(),
            &args,
            opts.pin.then_some(SERVER_CORE),
            Stdio::inherit(),
        )?;
        let ready = child
            .expect_line(
                "floor ready addr=",
                Instant::now() + Duration::from_secs(10),
            )
            .ok_or("floor server did not start")?;
        Ok(Target {
            label: label.into(),
            kind: TargetKind::Floor,
            pid: Some(child.pid()),
            child: Some(child),
            public: ready.parse()?,
            admin: None,
            log: None,
            dir: None,
        })
    }

    /// A peer started by `peers`, serving at `public`; `dir` is removed
    /// when it stops.
    pub fn peer(
        label: &str,
        child: Child,
        public: SocketAddr,
        log: PathBuf,
        dir: PathBuf,
    ) -> Target {
        Target {
            label: label.into(),
            kind: TargetKind::Peer,
            pid: Some(child.pid()),
            child: Some(child),
            public,
            // Nchan's status page and publisher are on its public port.
            admin: Some(Http::new(public)),
            log: Some(log),
            dir: Some(dir),
        }
    }

    pub fn is_peer(&self) -> bool {
        matches!(self.kind, TargetKind::Peer)
    }

    /// Subscribers an Nchan peer counts (its `nchan_stub_status`).
    pub fn peer_subscribers(&mut self) -> Option<u64> {
        let status = self.admin.as_mut()?.get(crate::peers::NCHAN_STATUS).ok()?;
        crate::peers::nchan_subscribers(&status)
    }

    pub fn cpu(&self) -> Option<Cpu> {
        proc::cpu(self.pid?).ok()
    }

    pub fn rss_kib(&self) -> Option<u64> {
        proc::rss_kib(self.pid?).ok()
    }

    pub fn is_gateway(&self) -> bool {
        matches!(self.kind, TargetKind::Gateway)
    }

    /// The gateway's `/stats` report.
    pub fn gateway_stats(&mut self) -> Option<Value> {
        let body = self.admin.as_mut()?.get("/stats").ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// `pollbridge_dropped_total`, all labels.
    pub fn gateway_dropped(&mut self) -> Option<f64> {
        let body = self.admin.as_mut()?.get("/metrics").ok()?;
        Some(metric_sum(
            &String::from_utf8_lossy(&body),
            "pollbridge_dropped_total",
        ))
    }

    /// Waits (bounded) until the gateway's `/readyz` answers 200: with a
    /// Redis bus, until its Redis connections are up.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        let mut last = String::from("no answer");
        for _ in 0..10_000 {
            let admin = self.admin.as_mut().ok_or("no admin address")?;
            match admin.request("GET", "/readyz", None, b"") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => {
                    last = format!("{status} {}", String::from_utf8_lossy(&body).trim())
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.log.as_ref().map_or(String::new(), |l| {
            format!(" (gateway log: {})", l.display())
        });
        Err(format!("{} not ready: /readyz {last}{log}", self.label).into())
    }

    pub fn admin(&mut self) -> Option<&mut Http> {
        self.admin.as_mut()
    }

    /// Sends a command to the floor server and returns its answer line.
    pub fn floor_command(&mut self, command: &str, answer: &str, wait: Duration) -> Result<Value> {
        let child = self.child.as_mut().ok_or("not a floor server")?;
        child.send(command)?;
        let line = child
            .expect_line(answer, Instant::now() + wait)
            .ok_or_else(|| format!("floor server did not answer {command:?}"))?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Stops a server started here (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(5));
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The servers of one phase: one gateway or floor, or several gateway
/// nodes sharing a Redis bus (`--redis`). Dropping it stops the nodes,
/// then Redis.
pub struct Servers {
    pub label: String,
    pub nodes: Vec<Target>,
    pub redis: Option<Redis>,
}

impl Servers {
    pub fn one(target: Target) -> Servers {
        Servers {
            label: target.label.clone(),
            nodes: vec![target],
            redis: None,
        }
    }

    /// Starts a `redis-server` and `count` gateways on it (`--bus
    /// redis://…`), each ready (`/readyz` 200). On any failure everything
    /// started so far is stopped.
    pub fn start_redis_nodes(opts: &Opts, tag: &str, count: usize) -> Result<Servers> {
        let redis = Redis::start(opts, tag)?;
        let extra = vec!["--bus".to_string(), redis.url()];
        let mut nodes = Vec::with_capacity(count);
        for k in 1..=count {
            nodes.push(Target::start_gateway_with(
                opts,
                None,
                &format!("{tag}-node{k}"),
                &format!("node {k}"),
                &extra,
            )?);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &mut nodes {
            node.wait_ready(deadline)?;
        }
        Ok(Servers {
            label: format!("redis bus x{count}"),
            nodes,
            redis: Some(redis),
        })
    }

    pub fn publics(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|t| t.public).collect()
    }

    /// The nodes' CPU times added up.
    pub fn cpu(&self) -> Option<Cpu> {
        proc::cpu_sum(self.nodes.iter().map(Target::cpu))
    }

    pub fn node_cpus(&self) -> Vec<Option<Cpu>> {
        self.nodes.iter().map(Target::cpu).collect()
    }

    pub fn redis_cpu(&self) -> Option<Cpu> {
        self.redis.as_ref().and_then(Redis::cpu)
    }

    /// The nodes' VmRSS added up (Redis not included).
    pub fn rss_kib(&self) -> Option<u64> {
        self.nodes.iter().map(Target::rss_kib).sum::<Option<u64>>()
    }

    /// Adds the gateway log paths to an error.
    pub fn with_logs(&self, e: Error) -> Error {
        let logs: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|t| t.log.as_ref().map(|l| l.display().to_string()))
            .collect();
        let redis_log = self.redis.as_ref().map_or(String::new(), |r| {
            format!("; redis log: {}", r.log().display())
        });
        if logs.is_empty() {
            e
        } else {
            format!("{e} (gateway log: {}{redis_log})", logs.join(", ")).into()
        }
    }
}

/// A throw-away `redis-server` for `--redis`: a free loopback port, its
/// own temp directory, no persistence (`--save '' --appendonly no`),
/// pinned to the servers' core with `--pin`. Killed (and its directory
/// removed) on drop; `PR_SET_PDEATHSIG` kills it with the bench too.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

/// A free loopback port and an empty scratch directory for one attempt at
/// starting a helper server (`kind`: redis, nginx), removed by
/// [`remove_stale_dirs`] if the bench dies before it does.
pub fn fresh_port_and_dir(
    kind: &str,
    tag: &str,
    attempt: usize,
) -> Result<(u16, std::path::PathBuf)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!(
        "pollbridge-bench-{}-{kind}-{tag}-{attempt}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok((port, dir))
}

/// How long a fresh `redis-server` gets to answer `PING`.
const REDIS_START: Duration = Duration::from_secs(15);

impl Redis {
    pub fn start(opts: &Opts, tag: &str) -> Result<Redis> {
        remove_stale_dirs();
        let mut last = String::new();
        for attempt in 0..5 {
            let (port, dir) = fresh_port_and_dir("redis", tag, attempt)?;
            let d = dir.display().to_string();
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &d,
                "--logfile",
                &format!("{d}/redis.log"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut redis = Redis {
                child: None,
                port,
                dir,
            };
            let bin = opts.redis_server.to_string_lossy();
            let child = Child::spawn(
                "redis",
                &bin,
                &args,
                opts.pin.then_some(SERVER_CORE),
                Stdio::null(),
            )
            .map_err(|e| {
                format!(
                    "{e} (--redis needs redis-server: scripts/setup.sh installs it, or pass --redis-server PATH)"
                )
            })?;
            redis.child = Some(child);
            match redis.wait_pong() {
                Ok(()) => return Ok(redis),
                Err(e) => last = e, // dropped: killed, directory removed
            }
        }
        Err(format!("could not start redis-server: {last}").into())
    }

    fn wait_pong(&mut self) -> std::result::Result<(), String> {
        let deadline = Instant::now() + REDIS_START;
        for _ in 0..10_000 {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if !child.alive() {
                    return Err(format!("redis-server exited: {}", self.log_tail()));
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "no PONG within {REDIS_START:?}: {}",
            self.log_tail()
        ))
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let start = log.len().saturating_sub(1000);
        log.get(start..).unwrap_or_default().trim().to_string()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cpu(&self) -> Option<Cpu> {
        proc::cpu(self.child.as_ref()?.pid()).ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the Redis and nginx directories of earlier bench runs that were
/// killed (by a signal, so no `Drop` ran): `pollbridge-bench-PID-redis-*`
/// and `…-nginx-*` in the temp directory whose PID is gone. At most 1000
/// entries looked at.
pub fn remove_stale_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten().take(1000) {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pollbridge-bench-"))
        else {
            continue;
        };
        let Some((pid, tail)) = rest.split_once('-') else {
            continue;
        };
        let gone = pid
            .parse::<u32>()
            .is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
        let ours = tail.starts_with("redis-") || tail.starts_with("nginx-");
        if gone && ours && entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// True when a Redis on `port` answers `PING` with `PONG` (bounded: 500 ms).
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A group of client worker processes sharing one phase's connections.
pub struct Clients {
    workers: Vec<Child>,
}

/// What all workers reported once connected.
pub struct Connected {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

impl Clients {
    /// Starts enough workers for `conns` connections of `kind` to `addr`.
    pub fn start(
        opts: &Opts,
        kind: Kind,
        addrs: &[SocketAddr],
        path: &str,
        conns: usize,
        expect: u64,
    ) -> Result<Clients> {
        Self::start_with(opts, kind, addrs, path, conns, expect, &[])
    }

    /// [`Clients::start`] with `extra` worker arguments.
    pub fn start_with(
        opts: &Opts,
        kind: Kind,
        addrs: &[SocketAddr],
        path: &str,
        conns: usize,
        expect: u64,
        extra: &[&str],
    ) -> Result<Clients> {
        let addr_list = addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if addrs.is_empty() {
            return Err("no server address for the clients".into());
        }
        let workers = opts
            .workers
            .unwrap_or_else(|| conns.div_ceil(opts.conns_per_worker.max(1)))
            .clamp(1, conns.max(1));
        let sources: Vec<String> = (0..opts.source_ips)
            .map(|k| Ipv4Addr::new(127, 0, 0, 2 + k).to_string())
            .collect();
        let kind_name = match kind {
            Kind::Ws => "ws",
            Kind::Sse => "sse",
            Kind::Lp => "lp",
            Kind::NchanLp => "nchan-lp",
            Kind::Http => "http",
        };
        let mut started = Vec::with_capacity(workers);
        for w in 0..workers {
            let share = conns / workers + usize::from(w < conns % workers);
            let expect = if kind == Kind::Http {
                expect / workers as u64 + u64::from((w as u64) < expect % workers as u64)
            } else {
                expect
            };
            let mut args: Vec<String> = vec![
                "client-worker".into(),
                "--kind".into(),
                kind_name.into(),
                "--addr".into(),
                addr_list.clone(),
                "--path".into(),
                path.into(),
                "--conns".into(),
                share.to_string(),
                "--expect".into(),
                expect.to_string(),
                "--ramp".into(),
                (opts.ramp / workers as f64).to_string(),
                "--deadline-secs".into(),
                opts.phase_deadline().as_secs().to_string(),
                "--poll-timeout".into(),
                opts.poll_timeout.to_string(),
            ];
            if opts.ws_deflate && kind == Kind::Ws {
                args.push("--deflate".into());
            }
            if addrs.iter().all(|a| a.ip().is_loopback()) && !sources.is_empty() {
                args.extend(["--src".into(), sources.join(",")]);
            }
            args.extend(extra.iter().map(|a| a.to_string()));
            let pin = opts.pin.then_some(CLIENT_CORE);
            started.push(Child::spawn(
                &format!("client-{w}"),
                &self_exe(),
                &args,
                pin,
                Stdio::inherit(),
            )?);
        }
        Ok(Clients { workers: started })
    }

    /// Sum of the workers' CPU clocks, ns.
    pub fn cpu_ns(&self) -> u64 {
        self.workers
            .iter()
            .filter_map(|w| proc::cpu(w.pid()).ok())
            .map(|c| c.total_ns)
            .sum()
    }

    /// Waits for every worker's `connected` line.
    pub fn wait_connected(&self, deadline: Instant) -> Result<Connected> {
        let mut all = Connected {
            ok: 0,
            failed: 0,
            errors: Vec::new(),
        };
        for w in &self.workers {
            let line = w
                .expect_line("connected ", deadline)
                .ok_or_else(|| format!("{} never finished connecting", w.name()))?;
            let v: Value = serde_json::from_str(&line)?;
            all.ok += v["connected"].as_u64().unwrap_or(0);
            all.failed += v["failed"].as_u64().unwrap_or(0);
            if let Some(errors) = v["errors"].as_array() {
                all.errors
                    .extend(errors.iter().filter_map(|e| e.as_str().map(String::from)));
            }
        }
        Ok(all)
    }

    pub fn send_all(&mut self, command: &str) {
        for w in &mut self.workers {
            let _ = w.send(command);
        }
    }

    /// Collects every worker's `result` line: waits until `deadline` for
    /// them to finish by themselves, then asks the rest to `stop`.
    pub fn results(&mut self, deadline: Instant) -> Vec<Value> {
        let mut results = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            let line = w.expect_line("result ", deadline).or_else(|| {
                let _ = w.send("stop");
                w.expect_line("result ", Instant::now() + Duration::from_secs(10))
            });
            if let Some(v) = line.and_then(|l| serde_json::from_str(&l).ok()) {
                results.push(v);
            } else {
                results.push(serde_json::json!({"error_count": 1,
                    "errors": [format!("{} gave no result", w.name())]}));
            }
        }
        results
    }

    /// Tells every worker to stop and waits for them to exit.
    pub fn stop(&mut self) {
        self.send_all("stop");
        for w in &mut self.workers {
            w.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop();
    }
}
