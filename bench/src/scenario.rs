//! The scenarios: each runs its phase against the gateway and against its
//! floor, one after the other, and returns an [`Outcome`] of the two.
//!
//! A fanout phase: start the server, measure its RSS, ramp the client
//! workers up, wait until the server reports them all subscribed, measure
//! RSS again, snapshot its CPU and byte counters, publish M messages at
//! R per second, wait for every connection to have them all (or the
//! deadline), snapshot again. CPU is the server's alone (its own process);
//! the clients and the publisher run elsewhere (another core with --pin).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{now_us, Kind};
use crate::floor::FloorMode;
use crate::http::Http;
use crate::peers::{self, Peer};
use crate::proc::{cpu_delta, Cpu};
use crate::report::{merge_results, Outcome, Phase};
use crate::target::{Clients, Result, Servers, Target};
use crate::{wire, Opts, Scenario};

/// Runs one scenario once.
pub fn run(opts: &Opts, scenario: Scenario, run: usize) -> Result<Outcome> {
    match scenario {
        Scenario::WsFanout => fanout(opts, scenario, Kind::Ws, 1, opts.messages, run),
        Scenario::SseFanout => fanout(opts, scenario, Kind::Sse, 1, opts.messages, run),
        Scenario::LpFanout => fanout(opts, scenario, Kind::Lp, 1, opts.messages, run),
        Scenario::Burst => fanout(
            opts,
            scenario,
            Kind::Ws,
            opts.batch.max(1),
            opts.messages,
            run,
        ),
        Scenario::HeldPolls => fanout(opts, scenario, Kind::Lp, 1, 1, run),
        Scenario::Idle => idle(opts, run),
        Scenario::Proxy => proxy(opts, run),
        Scenario::Deltas => crate::delta::run(opts, run),
        Scenario::Smoke | Scenario::All => Err("smoke and all are expanded by main".into()),
        Scenario::FanoutSpan => Err("fanout-span is run by span::run".into()),
    }
}

fn floor_mode(kind: Kind) -> FloorMode {
    match kind {
        Kind::Ws | Kind::Http => FloorMode::Ws,
        Kind::Sse => FloorMode::Sse,
        Kind::Lp | Kind::NchanLp => FloorMode::Lp,
    }
}

pub(crate) fn path(opts: &Opts, kind: Kind, channel: &str) -> String {
    let prefix = opts.prefix.trim_end_matches('/');
    match kind {
        Kind::Ws => format!("{prefix}/ws/{channel}"),
        Kind::Sse => format!("{prefix}/sse/{channel}"),
        Kind::Lp => format!("{prefix}/poll/{channel}"),
        Kind::NchanLp => format!("/sub/{channel}"),
        Kind::Http => opts.proxy_path.clone(),
    }
}

/// The gateway's `/stats` name of a transport.
fn stats_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Ws => "websocket",
        Kind::Sse => "sse",
        Kind::Lp | Kind::NchanLp => "longpoll",
        Kind::Http => "proxy",
    }
}

fn fanout(
    opts: &Opts,
    scenario: Scenario,
    kind: Kind,
    batch: usize,
    m: u64,
    run: usize,
) -> Result<Outcome> {
    let n = opts.subscribers;
    let name = scenario.name();
    let name = name.as_str();
    let redis = opts.redis_for(scenario);
    let mut params = json!({
        "subscribers": n, "messages": m, "rate": opts.rate, "batch": batch,
        "payload_bytes": opts.payload_bytes, "pinned": opts.pin,
    });
    if redis {
        params["redis"] = json!(true);
    }
    // A fresh channel, in case the gateway is not ours and has history.
    let channel = format!("bench-{name}-{}-{run}", std::process::id());
    let gateway = {
        let mut servers = Servers::one(Target::start_gateway(opts, None, name)?);
        let mut phase = fanout_phase(opts, &mut servers, kind, &channel, n, m, batch)
            .map_err(|e| servers.with_logs(e))?;
        label_gateway(opts, &mut phase);
        phase
    };
    let redis_bus = if redis {
        let mut servers = Servers::start_redis_nodes(opts, name, 2)?;
        let mut phase = fanout_phase(opts, &mut servers, kind, &channel, n, m, batch)
            .map_err(|e| servers.with_logs(e))?;
        phase.nodes = Some(2);
        phase.bus = Some("redis".into());
        Some(phase)
    } else {
        None
    };
    let floor = if opts.no_floor {
        None
    } else {
        let label = match (kind, batch) {
            (Kind::Ws, 1) => "floor ws".to_string(),
            (Kind::Ws, b) => format!("floor burst x{b}"),
            (Kind::Sse, _) => "floor sse".into(),
            _ => "floor lp".into(),
        };
        // The same channel name, so envelopes (and wire bytes) match.
        let target = Target::start_floor(opts, floor_mode(kind), batch, &label, &channel)?;
        Some(fanout_phase(
            opts,
            &mut Servers::one(target),
            kind,
            &channel,
            n,
            m,
            batch,
        )?)
    };
    let nchan = if kind == Kind::Lp {
        peer_phase(opts, &Peer::Nchan, name, |servers| {
            fanout_phase(opts, servers, Kind::NchanLp, &channel, n, m, batch)
        })?
    } else {
        None
    };
    Ok(Outcome::new(name, run, params, gateway, floor)
        .with_redis_bus(redis_bus)
        .with_peer(nchan))
}

/// Runs `phase` against `peer` if it can run here (`--no-peers` not
/// given, nginx and the module installed); says why on stderr if not.
fn peer_phase(
    opts: &Opts,
    peer: &Peer,
    scenario: &str,
    phase: impl FnOnce(&mut Servers) -> Result<Phase>,
) -> Result<Option<Phase>> {
    if opts.no_peers {
        return Ok(None);
    }
    if let Some(why) = peers::unavailable(peer) {
        eprintln!(
            "pollbridge-bench: {scenario}: no {} phase: {why}",
            peers::label(peer)
        );
        return Ok(None);
    }
    let mut servers = Servers::one(peers::start(opts, peer, scenario)?);
    let result = phase(&mut servers).map_err(|e| servers.with_logs(e));
    result.map(Some)
}

/// Marks the single gateway's phase: one node, in-process bus (when the
/// bench started it and no `--gateway-arg` chose another bus).
fn label_gateway(opts: &Opts, phase: &mut Phase) {
    phase.nodes = Some(1);
    let own_bus =
        opts.gateway_url.is_none() && !opts.gateway_args.iter().any(|a| a.starts_with("--bus"));
    phase.bus = own_bus.then(|| "memory".into());
}

/// CPU, bytes and time at one instant.
struct Snapshot {
    /// The server nodes' CPU, added up.
    cpu: Option<Cpu>,
    node_cpu: Vec<Option<Cpu>>,
    redis_cpu: Option<Cpu>,
    client_ns: u64,
    at: Instant,
    /// Server-side wire bytes (in + out) of the transport so far.
    wire_bytes: Option<f64>,
    dropped: Option<f64>,
}

impl Snapshot {
    /// `counters_first`: read the byte counters before the CPU clock (at
    /// the start of a window) or after it (at the end), so the `/stats`
    /// request itself stays outside the measured CPU.
    /// Byte and drop counters are summed over every node.
    fn take(
        servers: &mut Servers,
        clients: &Clients,
        kind: Kind,
        counters_first: bool,
    ) -> Snapshot {
        let mut wire_bytes = None;
        let mut dropped = None;
        let mut read_counters = |servers: &mut Servers| {
            let mut bytes = Some(0.0);
            let mut drops = Some(0.0);
            for target in &mut servers.nodes {
                let (b, d) = if target.is_peer() {
                    (None, None)
                } else if target.is_gateway() {
                    let b = target.gateway_stats().and_then(|s| {
                        let t = &s["transports"][stats_key(kind)];
                        Some(t["wire_bytes_in"].as_f64()? + t["wire_bytes_out"].as_f64()?)
                    });
                    (b, target.gateway_dropped())
                } else {
                    let b = target
                        .floor_command("stats", "stats ", Duration::from_secs(10))
                        .ok()
                        .and_then(|s| Some(s["bytes_in"].as_f64()? + s["bytes_out"].as_f64()?));
                    (b, None)
                };
                bytes = bytes.zip(b).map(|(x, y)| x + y);
                drops = drops.zip(d).map(|(x, y)| x + y);
            }
            wire_bytes = bytes;
            dropped = drops;
        };
        if counters_first {
            read_counters(servers);
        }
        let node_cpu = servers.node_cpus();
        let redis_cpu = servers.redis_cpu();
        let cpu = crate::proc::cpu_sum(node_cpu.iter().copied());
        let client_ns = clients.cpu_ns();
        let at = Instant::now();
        if !counters_first {
            read_counters(servers);
        }
        Snapshot {
            cpu,
            node_cpu,
            redis_cpu,
            client_ns,
            at,
            wire_bytes,
            dropped,
        }
    }
}

/// Fills the CPU, byte and rate figures of `phase` from two snapshots.
fn account(
    phase: &mut Phase,
    before: &Snapshot,
    after: &Snapshot,
    results: &[Value],
    start_us: u64,
) {
    merge_results(phase, results);
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-6);
    let per = phase.deliveries.max(1) as f64;
    if let (Some(b), Some(a)) = (before.cpu, after.cpu) {
        let d = cpu_delta(b, a);
        phase.cpu_us_per_delivery = Some(d.total_us / per);
        // Under MIN_TICKS the user/system split is mostly rounding.
        if d.ticks >= MIN_TICKS {
            phase.cpu_user_us_per_delivery = Some(d.user_us / per);
            phase.cpu_sys_us_per_delivery = Some(d.sys_us / per);
        }
        phase.cpu_ticks = Some(d.ticks);
        phase.server_busy = Some(d.total_us / 1e6 / wall);
    }
    if before.node_cpu.len() > 1 {
        phase.node_cpu_us_per_delivery = before
            .node_cpu
            .iter()
            .zip(&after.node_cpu)
            .filter_map(|(b, a)| Some(cpu_delta((*b)?, (*a)?).total_us / per))
            .collect();
    }
    if let (Some(b), Some(a)) = (before.redis_cpu, after.redis_cpu) {
        let d = cpu_delta(b, a);
        phase.redis_cpu_us_per_delivery = Some(d.total_us / per);
        phase.redis_busy = Some(d.total_us / 1e6 / wall);
    }
    let client_us = after.client_ns.saturating_sub(before.client_ns) as f64 / 1000.0;
    phase.client_cpu_us_per_delivery = Some(client_us / per);
    phase.client_busy = Some(client_us / 1e6 / wall);
    if let (Some(b), Some(a)) = (before.wire_bytes, after.wire_bytes) {
        phase.wire_bytes_per_delivery = Some((a - b) / per);
    }
    if let (Some(b), Some(a)) = (before.dropped, after.dropped) {
        phase.server_dropped = Some(a - b);
    }
    let last_rx = results
        .iter()
        .filter_map(|r| r["last_rx_us"].as_u64())
        .max()
        .unwrap_or(0);
    let span = last_rx.saturating_sub(start_us) as f64 / 1e6;
    phase.wall_s = span;
    if span > 0.0 {
        phase.deliveries_per_s = phase.deliveries as f64 / span;
    }
}

/// Clock ticks (10 ms) needed before user and system time are shown apart.
const MIN_TICKS: u64 = 5;

pub(crate) fn connect_budget(opts: &Opts, n: usize) -> Duration {
    Duration::from_secs_f64(n as f64 / opts.ramp.max(1.0) * 2.0 + 30.0)
}

/// Waits (bounded) until the servers count `want` subscribers of `kind`
/// between them. Returns what each node counted last, and an error if the
/// count fell short.
pub(crate) fn wait_subscribed(
    servers: &mut Servers,
    kind: Kind,
    want: u64,
) -> (Vec<u64>, Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut per_node = vec![0; servers.nodes.len()];
    for _ in 0..10_000 {
        for (k, target) in servers.nodes.iter_mut().enumerate() {
            per_node[k] = if target.is_peer() {
                match target.peer_subscribers() {
                    Some(n) => n,
                    None => return (Vec::new(), None),
                }
            } else if target.is_gateway() {
                match target.gateway_stats() {
                    Some(s) => s["transports"][stats_key(kind)]["connections"]
                        .as_u64()
                        .unwrap_or(0),
                    // An external gateway without /stats: nothing to wait on.
                    None => return (Vec::new(), None),
                }
            } else {
                let key = if kind == Kind::Lp {
                    "waiting"
                } else {
                    "subscribers"
                };
                match target.floor_command("stats", "stats ", Duration::from_secs(10)) {
                    Ok(v) => v[key].as_u64().unwrap_or(0),
                    Err(e) => return (per_node, Some(e.to_string())),
                }
            };
        }
        if per_node.iter().sum::<u64>() >= want || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen: u64 = per_node.iter().sum();
    let problem = (seen < want)
        .then(|| format!("server counted {seen} of {want} subscribers before publishing"));
    (per_node, problem)
}

fn rss_growth(before: Option<u64>, after: Option<u64>, conns: u64) -> Option<f64> {
    Some((after? as f64 - before? as f64) / conns.max(1) as f64)
}

fn fanout_phase(
    opts: &Opts,
    target: &mut Servers,
    kind: Kind,
    channel: &str,
    n: usize,
    m: u64,
    batch: usize,
) -> Result<Phase> {
    let mut phase = Phase {
        target: target.label.clone(),
        conns: n as u64,
        messages: m,
        ..Phase::default()
    };
    std::thread::sleep(Duration::from_millis(200));
    phase.rss_base_kib = target.rss_kib();
    // Spread evenly over the nodes: connection i goes to node i mod count.
    let mut clients = Clients::start(
        opts,
        kind,
        &target.publics(),
        &path(opts, kind, channel),
        n,
        m,
    )?;
    let connected = clients.wait_connected(Instant::now() + connect_budget(opts, n))?;
    phase.connected = connected.ok;
    phase.connect_failed = connected.failed;
    phase.expected = connected.ok * m;
    phase.errors.extend(connected.errors);
    let (per_node, problem) = wait_subscribed(target, kind, connected.ok);
    phase.node_subscribers = per_node;
    phase.errors.extend(problem);
    std::thread::sleep(Duration::from_millis(opts.settle_ms));
    phase.rss_kib_per_conn = rss_growth(phase.rss_base_kib, target.rss_kib(), connected.ok);

    let before = Snapshot::take(target, &clients, kind, true);
    let start_us = now_us();
    let publishing = Duration::from_secs_f64(m as f64 / opts.rate.max(0.001));
    publish(opts, target, channel, m, batch)?;
    let grace = Duration::from_secs(10).max(publishing / 2);
    let results = clients.results(before.at + publishing + grace);
    let after = Snapshot::take(target, &clients, kind, false);
    clients.stop();
    account(&mut phase, &before, &after, &results, start_us);
    Ok(phase)
}

/// Publishes `m` messages at `--rate`, `batch` per request, through the
/// first node.
fn publish(opts: &Opts, servers: &mut Servers, channel: &str, m: u64, batch: usize) -> Result<()> {
    let target = servers.nodes.first_mut().ok_or("no server")?;
    if target.is_peer() {
        let publisher = target.admin().ok_or("no publisher address")?;
        let shape = (opts.payload_bytes, opts.state_payload);
        return publish_nchan(publisher, channel, m, opts.rate, shape);
    }
    if !target.is_gateway() {
        let wait = Duration::from_secs_f64(m as f64 / opts.rate.max(0.001) + 60.0);
        target.floor_command(&format!("publish {m} {}", opts.rate), "published ", wait)?;
        return Ok(());
    }
    let admin = target.admin().ok_or("no admin address")?;
    let shape = (opts.payload_bytes, opts.state_payload);
    publish_gateway(admin, channel, m, opts.rate, batch, shape)
}

fn publish_gateway(
    admin: &mut Http,
    channel: &str,
    m: u64,
    rate: f64,
    batch: usize,
    (payload_bytes, state): (usize, bool),
) -> Result<()> {
    let batch = batch.max(1) as u64;
    let every = Duration::from_secs_f64(batch as f64 / rate.max(0.001));
    let single = format!("/publish/{channel}");
    let mut body = Vec::with_capacity(256 * batch as usize);
    let start = Instant::now();
    for b in 0..m.div_ceil(batch) {
        let slot = start + every * b as u32;
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let k = batch.min(m - b * batch);
        body.clear();
        let t = now_us();
        let path = if batch == 1 {
            wire::data(t, payload_bytes, state, &mut body);
            single.as_str()
        } else {
            body.push(b'[');
            for i in 0..k {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(b"{\"channel\":\"");
                body.extend_from_slice(channel.as_bytes());
                body.extend_from_slice(b"\",\"data\":");
                wire::data(t, payload_bytes, state, &mut body);
                body.push(b'}');
            }
            body.push(b']');
            "/publish"
        };
        let (status, answer) = admin.request("POST", path, Some("application/json"), &body)?;
        if status != 200 {
            return Err(format!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&answer)
            )
            .into());
        }
    }
    Ok(())
}

/// Publishes `m` envelopes to an Nchan peer at `rate`, one per
/// `POST /pub/{channel}`: the envelope the gateway would send (ids from 1),
/// which Nchan passes on as it is.
fn publish_nchan(
    publisher: &mut Http,
    channel: &str,
    m: u64,
    rate: f64,
    (payload_bytes, state): (usize, bool),
) -> Result<()> {
    let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let path = format!("/pub/{channel}");
    let mut data = Vec::with_capacity(256);
    let mut env = Vec::with_capacity(256);
    let start = Instant::now();
    for id in 1..=m {
        let slot = start + every * (id - 1) as u32;
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        data.clear();
        env.clear();
        wire::data(now_us(), payload_bytes, state, &mut data);
        wire::envelope(channel, id, &data, &mut env);
        let (status, answer) = publisher.request("POST", &path, Some("application/json"), &env)?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "nchan publish answered {status}: {}",
                String::from_utf8_lossy(&answer)
            )
            .into());
        }
    }
    Ok(())
}

fn idle(opts: &Opts, run: usize) -> Result<Outcome> {
    let n = opts.subscribers;
    let redis = opts.redis_for(Scenario::Idle);
    let mut params =
        json!({"connections": n, "idle_seconds": opts.idle_seconds, "pinned": opts.pin});
    if redis {
        params["redis"] = json!(true);
    }
    let channel = format!("bench-idle-{}-{run}", std::process::id());
    let gateway = {
        let mut servers = Servers::one(Target::start_gateway(opts, None, "idle")?);
        let mut phase =
            idle_phase(opts, &mut servers, &channel, n).map_err(|e| servers.with_logs(e))?;
        label_gateway(opts, &mut phase);
        phase
    };
    let redis_bus = if redis {
        let mut servers = Servers::start_redis_nodes(opts, "idle", 2)?;
        let mut phase =
            idle_phase(opts, &mut servers, &channel, n).map_err(|e| servers.with_logs(e))?;
        phase.nodes = Some(2);
        phase.bus = Some("redis".into());
        Some(phase)
    } else {
        None
    };
    let floor = if opts.no_floor {
        None
    } else {
        let target = Target::start_floor(opts, FloorMode::Ws, 1, "floor ws", &channel)?;
        Some(idle_phase(opts, &mut Servers::one(target), &channel, n)?)
    };
    Ok(Outcome::new("idle", run, params, gateway, floor).with_redis_bus(redis_bus))
}

fn idle_phase(opts: &Opts, target: &mut Servers, channel: &str, n: usize) -> Result<Phase> {
    let mut phase = Phase {
        target: target.label.clone(),
        conns: n as u64,
        ..Phase::default()
    };
    std::thread::sleep(Duration::from_millis(200));
    phase.rss_base_kib = target.rss_kib();
    let mut clients = Clients::start(
        opts,
        Kind::Ws,
        &target.publics(),
        &path(opts, Kind::Ws, channel),
        n,
        0,
    )?;
    let connected = clients.wait_connected(Instant::now() + connect_budget(opts, n))?;
    phase.connected = connected.ok;
    phase.connect_failed = connected.failed;
    phase.errors.extend(connected.errors);
    let (per_node, problem) = wait_subscribed(target, Kind::Ws, connected.ok);
    phase.node_subscribers = per_node;
    phase.errors.extend(problem);
    std::thread::sleep(Duration::from_millis(opts.settle_ms));
    phase.rss_kib_per_conn = rss_growth(phase.rss_base_kib, target.rss_kib(), connected.ok);
    let before = Snapshot::take(target, &clients, Kind::Ws, true);
    std::thread::sleep(Duration::from_secs_f64(opts.idle_seconds));
    let after = Snapshot::take(target, &clients, Kind::Ws, false);
    if let (Some(b), Some(a)) = (before.cpu, after.cpu) {
        let secs = after.at.duration_since(before.at).as_secs_f64();
        phase.idle_cpu_us_per_conn_s =
            Some(cpu_delta(b, a).total_us / connected.ok.max(1) as f64 / secs);
    }
    if let (Some(b), Some(a)) = (before.redis_cpu, after.redis_cpu) {
        let secs = after.at.duration_since(before.at).as_secs_f64();
        phase.redis_idle_cpu_us_per_conn_s =
            Some(cpu_delta(b, a).total_us / connected.ok.max(1) as f64 / secs);
    }
    let results = clients.results(Instant::now());
    clients.stop();
    merge_results(&mut phase, &results);
    Ok(phase)
}

fn proxy(opts: &Opts, run: usize) -> Result<Outcome> {
    let params = json!({
        "connections": opts.proxy_conns, "requests": opts.requests,
        "path": opts.proxy_path, "pinned": opts.pin,
    });
    // The upstream: ours (a hand-rolled responder), or the one given.
    let mut upstream =
        match &opts.upstream_url {
            Some(_) if opts.gateway_url.is_none() => return Err(
                "--upstream-url is for --gateway-url; without it the bench starts its own upstream"
                    .into(),
            ),
            Some(_) => None,
            None => Some(Servers::one(Target::start_floor(
                opts,
                FloorMode::Upstream,
                1,
                "direct upstream",
                "bench",
            )?)),
        };
    let upstream_addr = match (&upstream, &opts.upstream_url) {
        (Some(u), _) => u.publics()[0],
        (None, Some(url)) => {
            use std::net::ToSocketAddrs;
            url.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_socket_addrs()?
                .next()
                .ok_or("bad --upstream-url")?
        }
        (None, None) => unreachable!("one of them is set"),
    };
    let (direct, floor) = if opts.no_floor {
        (None, None)
    } else {
        let direct = proxy_phase(
            opts,
            upstream.as_mut(),
            None,
            upstream_addr,
            "direct upstream",
        )?;
        // The floor: a minimal forwarding proxy where the gateway runs
        // (same core with --pin), so both proxies share the machine with
        // the upstream the same way.
        let mut forwarder = Servers::one(Target::start_floor_with(
            opts,
            FloorMode::Proxy,
            1,
            "floor proxy",
            "bench",
            Some(upstream_addr),
        )?);
        let addr = forwarder.publics()[0];
        let floor = proxy_phase(
            opts,
            Some(&mut forwarder),
            upstream.as_mut(),
            addr,
            "floor proxy",
        )?;
        (Some(direct), Some(floor))
    };
    // nginx `proxy_pass` with upstream keepalive, where the gateway runs.
    let nginx = peer_phase(
        opts,
        &Peer::Proxy {
            upstream: upstream_addr,
        },
        "proxy",
        |nginx| {
            let addr = nginx.publics()[0];
            proxy_phase(opts, Some(nginx), upstream.as_mut(), addr, "nginx")
        },
    )?;
    let mut gateway = Servers::one(Target::start_gateway(opts, Some(upstream_addr), "proxy")?);
    let addr = gateway.publics()[0];
    let mut via = proxy_phase(opts, Some(&mut gateway), upstream.as_mut(), addr, "gateway")
        .map_err(|e| gateway.with_logs(e))?;
    label_gateway(opts, &mut via);
    Ok(Outcome::new("proxy", run, params, via, floor)
        .with_direct(direct)
        .with_peer(nginx))
}

fn proxy_phase(
    opts: &Opts,
    mut server: Option<&mut Servers>,
    mut upstream: Option<&mut Servers>,
    addr: std::net::SocketAddr,
    label: &str,
) -> Result<Phase> {
    let conns = opts.proxy_conns;
    let mut phase = Phase {
        target: label.into(),
        conns: conns as u64,
        expected: opts.requests,
        ..Phase::default()
    };
    phase.rss_base_kib = server.as_ref().and_then(|s| s.rss_kib());
    let mut clients = Clients::start(
        opts,
        Kind::Http,
        &[addr],
        &opts.proxy_path,
        conns,
        opts.requests,
    )?;
    let connected = clients.wait_connected(Instant::now() + connect_budget(opts, conns))?;
    phase.connected = connected.ok;
    phase.connect_failed = connected.failed;
    phase.errors.extend(connected.errors);
    std::thread::sleep(Duration::from_millis(opts.settle_ms.min(500)));
    phase.rss_kib_per_conn = rss_growth(
        phase.rss_base_kib,
        server.as_ref().and_then(|s| s.rss_kib()),
        connected.ok,
    );
    let up_before = upstream.as_ref().and_then(|u| u.cpu());
    let before = match &mut server {
        Some(s) => Snapshot::take(s, &clients, Kind::Http, true),
        None => Snapshot {
            cpu: None,
            node_cpu: Vec::new(),
            redis_cpu: None,
            client_ns: clients.cpu_ns(),
            at: Instant::now(),
            wire_bytes: None,
            dropped: None,
        },
    };
    let start_us = now_us();
    clients.send_all("go");
    let budget = Duration::from_secs_f64(opts.requests as f64 / 500.0 + 60.0);
    let results = clients.results(before.at + budget);
    let after = match &mut server {
        Some(s) => Snapshot::take(s, &clients, Kind::Http, false),
        None => Snapshot {
            cpu: None,
            node_cpu: Vec::new(),
            redis_cpu: None,
            client_ns: clients.cpu_ns(),
            at: Instant::now(),
            wire_bytes: None,
            dropped: None,
        },
    };
    let up_after = upstream.as_mut().and_then(|u| u.cpu());
    clients.stop();
    account(&mut phase, &before, &after, &results, start_us);
    if let (Some(b), Some(a)) = (up_before, up_after) {
        phase.upstream_cpu_us_per_request =
            Some(cpu_delta(b, a).total_us / phase.deliveries.max(1) as f64);
    }
    Ok(phase)
}
