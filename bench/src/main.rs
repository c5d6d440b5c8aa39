//! `pollbridge-bench`: load and cost figures for the pollbridge gateway,
//! each next to a floor measured in the same run.
//!
//! # Layout
//! - `scenario`: the scenarios and their phases (orchestrator side).
//! - `target`: the servers under test (gateway, floors) and the client
//!   worker processes.
//! - `client`: the client worker (hidden `client-worker` subcommand).
//! - `delta`: the `deltas` scenario (whole values vs deltas on a `state` channel).
//! - `floor`: the floor servers (hidden `floor-server` subcommand).
//! - `wire`: WebSocket/HTTP/SSE byte parsing and encoding.
//! - `http`: the orchestrator's blocking admin client.
//! - `peers`: nginx and Nchan, started as peers beside the gateway.
//! - `proc`: child processes, pinning, `/proc` CPU and RSS.
//! - `report`: results, tables, JSON lines, medians, smoke checks.
//! - `span`: the `fanout-span` scenario (fan-out span by worker count).

mod client;
mod delta;
mod floor;
mod http;
mod peers;
mod proc;
mod report;
mod scenario;
mod span;
mod target;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// WebSocket subscribers, one message at a time.
    WsFanout,
    /// Server-sent-events subscribers.
    SseFanout,
    /// Long-poll loops (`since=` the last id).
    LpFanout,
    /// N idle WebSocket connections: memory and idle CPU.
    Idle,
    /// N long-polls held open, then answered by one message.
    HeldPolls,
    /// WebSocket subscribers, messages published --batch at a time.
    Burst,
    /// Requests through the gateway's reverse proxy vs straight to the upstream.
    Proxy,
    /// One message at a time to N idle WebSocket subscribers: the gateway's
    /// fan-out span (pollbridge_fanout_seconds) and publish answer latency,
    /// per --span-workers count. Not part of `all`.
    FanoutSpan,
    /// WebSocket subscribers of a `state` channel, order-book updates,
    /// deltas off vs on (not part of `all`).
    Deltas,
    /// Every scenario at a small size, with sanity checks (for CI).
    Smoke,
    /// ws-fanout sse-fanout lp-fanout burst idle held-polls proxy.
    All,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string())
    }
}

const ALL: [Scenario; 7] = [
    Scenario::WsFanout,
    Scenario::SseFanout,
    Scenario::LpFanout,
    Scenario::Burst,
    Scenario::Idle,
    Scenario::HeldPolls,
    Scenario::Proxy,
];

/// The scenarios `--redis` also runs on two nodes sharing a Redis bus.
pub const REDIS_SCENARIOS: [Scenario; 3] = [Scenario::WsFanout, Scenario::Burst, Scenario::Idle];

/// Load and cost figures for pollbridge, each next to a same-run floor.
#[derive(Parser, Debug, Clone)]
#[command(name = "pollbridge-bench", version, about)]
pub struct Opts {
    /// Scenarios to run, in order.
    #[arg(value_enum, required_unless_present = "smoke")]
    pub scenarios: Vec<Scenario>,
    /// The smoke mode: every scenario small (50 × 20), floors included;
    /// checks only that it ran and its numbers are sane. Exits 1 if not.
    #[arg(long)]
    pub smoke: bool,

    /// Gateway binary to start (once per phase, on port 0).
    #[arg(long, default_value = "target/release/pollbridge")]
    pub gateway_bin: PathBuf,
    /// Extra argument for the gateway (repeatable), e.g. --gateway-arg=--ws-ping-interval=10s.
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Use a running gateway at this public address instead of starting one.
    #[arg(long)]
    pub gateway_url: Option<String>,
    /// Its admin address (required with --gateway-url).
    #[arg(long)]
    pub admin_url: Option<String>,
    /// Its process id, for CPU and RSS figures (without it they are absent).
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// With --gateway-url: the upstream the gateway proxies to (for proxy).
    #[arg(long)]
    pub upstream_url: Option<String>,
    /// Transport path prefix of the gateway.
    #[arg(long, default_value = "/rt")]
    pub prefix: String,
    /// --max-connections given to the gateway.
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,
    /// --queue-length given to the gateway.
    #[arg(long, default_value_t = 4096)]
    pub queue_length: usize,

    /// Subscribers (connections for idle and held-polls).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages published per fanout phase.
    #[arg(short = 'm', long, default_value_t = 200)]
    pub messages: u64,
    /// Messages per second.
    #[arg(short = 'r', long, default_value_t = 20.0)]
    pub rate: f64,
    /// Messages per publish request (and per floor write) in burst.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Size of each message's data, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Each message's data is a realistic ~2 KB JSON state value (a league
    /// table snapshot) instead of `--payload-bytes` of padding.
    #[arg(long)]
    pub state_payload: bool,
    /// WebSocket clients offer permessage-deflate and inflate what comes
    /// compressed (the gateway compresses once per message; with
    /// --gateway-arg=--ws-deflate-context-takeover each connection keeps
    /// its own inflater, as the gateway keeps its own compressor).
    #[arg(long)]
    pub ws_deflate: bool,

    /// Client worker processes (default: one per --conns-per-worker).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Connections per worker when --workers is not given (open-file limit is 20,000).
    #[arg(long, default_value_t = 9000)]
    pub conns_per_worker: usize,
    /// Client source addresses 127.0.0.2, .3, … (0: let the kernel pick).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(0..=250))]
    pub source_ips: u8,
    /// New connections per second, all workers together.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Pause after the last connection before measuring RSS and CPU, ms.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Pin the servers to CPU 0 and the clients to CPU 1.
    #[arg(long)]
    pub pin: bool,
    /// Skip the floors.
    #[arg(long)]
    pub no_floor: bool,
    /// Skip the peers (nginx for proxy, Nchan for lp-fanout and held-polls).
    #[arg(long)]
    pub no_peers: bool,
    /// Run each scenario this many times and print medians.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// How long idle measures idle CPU, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub idle_seconds: f64,
    /// Long-poll `timeout=`, seconds.
    #[arg(long, default_value_t = 60)]
    pub poll_timeout: u64,
    /// proxy: requests in all.
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// proxy: keep-alive connections sending them.
    #[arg(long, default_value_t = 50)]
    pub proxy_conns: usize,
    /// proxy: request path (anything outside the prefix is proxied).
    #[arg(long, default_value = "/bench/proxy")]
    pub proxy_path: String,
    /// Print only the JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Also run ws-fanout, burst and idle against two gateway nodes sharing
    /// one Redis bus (a redis-server the bench starts), beside the
    /// in-process gateway and the floor.
    #[arg(long)]
    pub redis: bool,
    /// The redis-server binary for --redis.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// fanout-span: the gateway's --workers counts to compare, in one run
    /// (0: start it without --workers).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub span_workers: Vec<usize>,
}

impl Opts {
    /// How long a worker or floor process may live at most.
    pub fn phase_deadline(&self) -> Duration {
        let connect = self.subscribers.max(self.proxy_conns) as f64 / self.ramp.max(1.0) * 2.0;
        let publish = self.messages as f64 / self.rate.max(0.001) * 1.5;
        let proxy = self.requests as f64 / 500.0;
        Duration::from_secs_f64(connect + publish + proxy + self.idle_seconds + 180.0)
    }

    /// Whether `--redis` applies to this scenario.
    pub fn redis_for(&self, scenario: Scenario) -> bool {
        self.redis && REDIS_SCENARIOS.contains(&scenario)
    }

    /// The smoke mode's sizes: the scenarios named beside `--smoke`, or all.
    fn smoke(&self) -> Opts {
        let named = self.scenarios.iter().any(|s| !matches!(s, Scenario::Smoke));
        Opts {
            scenarios: if named {
                self.scenarios.clone()
            } else {
                ALL.to_vec()
            },
            subscribers: 50,
            messages: 20,
            rate: 100.0,
            idle_seconds: 1.0,
            requests: 500,
            proxy_conns: 5,
            settle_ms: 300,
            repeat: 1,
            no_floor: false,
            ..self.clone()
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client-worker") => {
            let worker = client::WorkerArgs::parse_from(&args[1..]);
            return ExitCode::from(client::main(worker) as u8);
        }
        Some("floor-server") => {
            let floor = floor::FloorArgs::parse_from(&args[1..]);
            return ExitCode::from(floor::main(floor) as u8);
        }
        _ => {}
    }
    let mut opts = Opts::parse();
    let smoke = opts.smoke || opts.scenarios.contains(&Scenario::Smoke);
    if smoke {
        opts = opts.smoke();
    }
    if opts.redis && opts.gateway_url.is_some() {
        eprintln!("pollbridge-bench: --redis starts its own gateways; it cannot be combined with --gateway-url");
        return ExitCode::from(2);
    }
    let scenarios: Vec<Scenario> = opts
        .scenarios
        .iter()
        .flat_map(|s| match s {
            Scenario::All => ALL.to_vec(),
            Scenario::Smoke => Vec::new(),
            s => vec![*s],
        })
        .collect();
    if opts.pin {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            eprintln!("pollbridge-bench: --pin needs 2 cores, have {cores}; not pinning");
            opts.pin = false;
        } else if let Err(e) = proc::pin_to_core(target::CLIENT_CORE) {
            eprintln!("pollbridge-bench: cannot pin: {e}");
        }
    }

    if opts.redis {
        for s in scenarios.iter().filter(|s| !REDIS_SCENARIOS.contains(s)) {
            eprintln!(
                "pollbridge-bench: --redis applies to ws-fanout, burst and idle; {} runs in-process only",
                s.name()
            );
        }
    }
    let mut failed = 0;
    let mut problems = Vec::new();
    for scenario in scenarios {
        let mut runs = Vec::new();
        for run in 1..=opts.repeat.max(1) {
            eprintln!(
                "pollbridge-bench: {} run {run}/{}",
                scenario.name(),
                opts.repeat.max(1)
            );
            if scenario == Scenario::FanoutSpan {
                match span::run(&opts, run) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("pollbridge-bench: fanout-span run {run} failed: {e}");
                        problems.push(format!("fanout-span: {e}"));
                    }
                }
                continue;
            }
            match scenario::run(&opts, scenario, run) {
                Ok(outcome) => {
                    if !opts.json {
                        print!("{}", outcome.table());
                    }
                    println!("{}", outcome.json_line());
                    if smoke {
                        problems.extend(report::smoke_problems(&outcome));
                    }
                    runs.push(outcome);
                }
                Err(e) => {
                    failed += 1;
                    eprintln!(
                        "pollbridge-bench: {} run {run} failed: {e}",
                        scenario.name()
                    );
                    problems.push(format!("{}: {e}", scenario.name()));
                }
            }
        }
        if runs.len() > 1 {
            let (table, json) = report::summary(&runs);
            if !opts.json {
                print!("{table}");
            }
            println!("{json}");
        }
    }
    if smoke {
        if problems.is_empty() {
            println!("smoke: ok");
        } else {
            println!("smoke: FAILED");
            for p in &problems {
                println!("  {p}");
            }
            return ExitCode::FAILURE;
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
