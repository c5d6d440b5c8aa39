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
            label: "gateway".into(),
            kind: TargetKind::Gateway,
            pid: Some(child.pid()),
            child: Some(child),
            public,
            admin: Some(Http::new(admin)),
            log: Some(log),
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
        let mode_name = match mode {
            FloorMode::Ws => "ws",
            FloorMode::Sse => "sse",
            FloorMode::Lp => "lp",
            FloorMode::Upstream => "upstream",
        };
        let args: Vec<String> = vec![
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
        })
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
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
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
        addr: SocketAddr,
        path: &str,
        conns: usize,
        expect: u64,
    ) -> Result<Clients> {
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
                addr.to_string(),
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
            if addr.ip().is_loopback() && !sources.is_empty() {
                args.extend(["--src".into(), sources.join(",")]);
            }
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
