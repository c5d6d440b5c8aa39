//! Results: one [`Phase`] per server measured, an [`Outcome`] per scenario
//! run (the gateway next to its floor, with ratios), printed as a table
//! and as one JSON line; medians over `--repeat` runs; the smoke checks.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
    pub samples: u64,
}

/// What one server did in one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    pub target: String,
    pub conns: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub messages: u64,
    /// Deliveries (messages × subscribers) or requests expected.
    pub expected: u64,
    pub deliveries: u64,
    pub losses: u64,
    pub duplicates: u64,
    pub gaps: u64,
    /// First publish (or request) to last receive, seconds.
    pub wall_s: f64,
    pub deliveries_per_s: f64,
    pub latency_ms: Latency,
    /// Server CPU per delivery (per request for proxy), µs.
    pub cpu_us_per_delivery: Option<f64>,
    pub cpu_user_us_per_delivery: Option<f64>,
    pub cpu_sys_us_per_delivery: Option<f64>,
    /// Clock ticks behind the user/system split (10 ms each).
    pub cpu_ticks: Option<u64>,
    /// Server CPU ÷ wall time: how busy its core was.
    pub server_busy: Option<f64>,
    /// Client workers' CPU per delivery, µs, and how busy their core was.
    pub client_cpu_us_per_delivery: Option<f64>,
    pub client_busy: Option<f64>,
    pub rss_base_kib: Option<u64>,
    pub rss_kib_per_conn: Option<f64>,
    /// Server-counted wire bytes (in + out) per delivery over the
    /// measured phase (gateway: `/stats`; floor: its own counters).
    pub wire_bytes_per_delivery: Option<f64>,
    /// Client-counted bytes per delivery, whole connection life.
    pub client_bytes_per_delivery: Option<f64>,
    /// Gateway `pollbridge_dropped_total` growth over the phase.
    pub server_dropped: Option<f64>,
    /// Idle phases: server CPU per connection per second, µs.
    pub idle_cpu_us_per_conn_s: Option<f64>,
    /// Proxy phase through the gateway: the upstream's own CPU per request.
    pub upstream_cpu_us_per_request: Option<f64>,
    /// Gateway processes behind these figures (1, or 2 with `--redis`);
    /// absent for floors.
    pub nodes: Option<u64>,
    /// The gateways' bus: `memory` or `redis`; absent for floors and
    /// gateways not started here.
    pub bus: Option<String>,
    /// Subscribers (connections) each node counted before measuring, in
    /// node order.
    pub node_subscribers: Vec<u64>,
    /// Each node's CPU per delivery, µs; `cpu_us_per_delivery` is their sum.
    pub node_cpu_us_per_delivery: Vec<f64>,
    /// `redis-server`'s own CPU per delivery over the same window, µs (not
    /// in `cpu_us_per_delivery`), and how busy its core was.
    pub redis_cpu_us_per_delivery: Option<f64>,
    pub redis_busy: Option<f64>,
    /// Idle phases: `redis-server`'s CPU per connection per second, µs.
    pub redis_idle_cpu_us_per_conn_s: Option<f64>,
    pub errors: Vec<String>,
    pub error_count: u64,
}

/// Folds worker `result` lines into a phase's counts and latencies.
pub fn merge_results(phase: &mut Phase, results: &[Value]) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut bytes = 0;
    for r in results {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        phase.deliveries += n("received");
        phase.losses += n("losses");
        phase.duplicates += n("duplicates");
        phase.gaps += n("gaps");
        phase.error_count += n("error_count");
        bytes += n("bytes_in") + n("bytes_out");
        if let Some(errors) = r["errors"].as_array() {
            for e in errors.iter().filter_map(Value::as_str) {
                if phase.errors.len() < 5 {
                    phase.errors.push(e.to_string());
                }
            }
        }
        for pair in r["hist"].as_array().into_iter().flatten() {
            if let (Some(v), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) {
                let _ = hist.record_n(v.max(1), c);
            }
        }
    }
    if phase.deliveries > 0 {
        phase.client_bytes_per_delivery = Some(bytes as f64 / phase.deliveries as f64);
    }
    phase.latency_ms = Latency {
        p50: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max: hist.max() as f64 / 1000.0,
        mean: hist.mean() / 1000.0,
        samples: hist.len(),
    };
}

/// One scenario run: the gateway, its floor and their ratios; with
/// `--redis` also two gateway nodes on a Redis bus.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub run: usize,
    pub params: Value,
    pub gateway: Phase,
    /// Two gateway nodes sharing one Redis bus (`--redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_bus: Option<Phase>,
    pub floor: Option<Phase>,
    /// The proxy scenario's upstream hit directly (the floor there is a
    /// minimal forwarding proxy in the gateway's place).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct: Option<Phase>,
    /// A peer server doing the gateway's job in the same run (`nginx` for
    /// `proxy`, `nchan` for `lp-fanout` and `held-polls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Phase>,
    /// gateway ÷ floor, for every figure both have.
    pub ratio: BTreeMap<String, f64>,
    /// gateway ÷ direct (proxy): what going through the gateway costs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ratio_direct: BTreeMap<String, f64>,
    /// floor ÷ direct (proxy): what going through any proxy costs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub floor_vs_direct: BTreeMap<String, f64>,
    /// gateway ÷ peer.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ratio_peer: BTreeMap<String, f64>,
    /// floor ÷ peer.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub floor_vs_peer: BTreeMap<String, f64>,
    /// redis_bus ÷ floor (the same single-process floor).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ratio_redis_bus: BTreeMap<String, f64>,
    /// redis_bus ÷ gateway: what the shared bus costs over in-process.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub redis_bus_vs_gateway: BTreeMap<String, f64>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// How to read one figure off a phase.
type Figure = fn(&Phase) -> Option<f64>;

/// a ÷ b for every figure both phases have.
fn ratios(a: &Phase, b: Option<&Phase>) -> BTreeMap<String, f64> {
    let mut r = BTreeMap::new();
    let Some(b) = b else { return r };
    let figures: [(&str, Figure); 9] = [
        ("cpu_us_per_delivery", |p| p.cpu_us_per_delivery),
        ("cpu_user", |p| p.cpu_user_us_per_delivery),
        ("cpu_sys", |p| p.cpu_sys_us_per_delivery),
        ("latency_p50", |p| Some(p.latency_ms.p50)),
        ("latency_p99", |p| Some(p.latency_ms.p99)),
        ("rss_kib_per_conn", |p| p.rss_kib_per_conn),
        ("wire_bytes_per_delivery", |p| p.wire_bytes_per_delivery),
        ("idle_cpu", |p| p.idle_cpu_us_per_conn_s),
        ("deliveries_per_s", |p| Some(p.deliveries_per_s)),
    ];
    for (name, get) in figures {
        if let Some(v) = ratio(get(a), get(b)) {
            r.insert(name.to_string(), v);
        }
    }
    r
}

impl Outcome {
    pub fn new(
        scenario: &str,
        run: usize,
        params: Value,
        gateway: Phase,
        floor: Option<Phase>,
    ) -> Self {
        Outcome {
            scenario: scenario.into(),
            run,
            params,
            ratio: ratios(&gateway, floor.as_ref()),
            gateway,
            redis_bus: None,
            floor,
            direct: None,
            peer: None,
            ratio_direct: BTreeMap::new(),
            floor_vs_direct: BTreeMap::new(),
            ratio_peer: BTreeMap::new(),
            floor_vs_peer: BTreeMap::new(),
            ratio_redis_bus: BTreeMap::new(),
            redis_bus_vs_gateway: BTreeMap::new(),
        }
    }

    /// Adds the proxy scenario's direct phase (the upstream alone).
    pub fn with_direct(mut self, phase: Option<Phase>) -> Self {
        if let Some(d) = &phase {
            self.ratio_direct = ratios(&self.gateway, Some(d));
            if let Some(f) = &self.floor {
                self.floor_vs_direct = ratios(f, Some(d));
            }
        }
        self.direct = phase;
        self
    }

    /// Adds the peer's phase (nginx, Nchan) and its ratios.
    pub fn with_peer(mut self, phase: Option<Phase>) -> Self {
        if let Some(p) = &phase {
            self.ratio_peer = ratios(&self.gateway, Some(p));
            if let Some(f) = &self.floor {
                self.floor_vs_peer = ratios(f, Some(p));
            }
        }
        self.peer = phase;
        self
    }

    /// Every phase measured, in table order.
    fn phases(&self) -> impl Iterator<Item = &Phase> {
        std::iter::once(&self.gateway)
            .chain(self.redis_bus.iter())
            .chain(self.floor.iter())
            .chain(self.peer.iter())
            .chain(self.direct.iter())
    }

    /// Adds the two-node Redis bus phase and its ratios.
    pub fn with_redis_bus(mut self, phase: Option<Phase>) -> Self {
        if let Some(p) = &phase {
            self.ratio_redis_bus = ratios(p, self.floor.as_ref());
            self.redis_bus_vs_gateway = ratios(p, Some(&self.gateway));
        }
        self.redis_bus = phase;
        self
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The human-readable table: the gateway, the Redis bus nodes (if
    /// run), the floor, gateway ÷ floor and Redis bus ÷ floor.
    pub fn table(&self) -> String {
        let phases: Vec<&Phase> = self.phases().collect();
        let with_redis = self.redis_bus.is_some();
        let with_direct = self.direct.is_some();
        let mut out = String::new();
        out.push_str(&format!(
            "== {} (run {}) {}\n",
            self.scenario, self.run, self.params
        ));
        out.push_str(&format!("{:<28}", ""));
        for p in &phases {
            out.push_str(&format!("{:>16}", p.target));
        }
        if self.floor.is_none() {
            out.push_str(&format!("{:>16}", ""));
        }
        out.push_str(&format!("{:>10}", "ratio"));
        if with_redis && self.floor.is_some() {
            out.push_str(&format!("{:>12}", "bus ratio"));
        }
        if let Some(peer) = &self.peer {
            out.push_str(&format!("{:>12}", format!("vs {}", peer.target)));
        }
        if with_direct {
            out.push_str(&format!("{:>12}", "vs direct"));
        }
        out.push('\n');
        let mut row =
            |name: &str, get: &dyn Fn(&Phase) -> Option<f64>, prec: usize, key: Option<&str>| {
                let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.prec$}"));
                out.push_str(&format!("{name:<28}"));
                for p in &phases {
                    out.push_str(&format!("{:>16}", cell(get(p))));
                }
                if self.floor.is_none() {
                    out.push_str(&format!("{:>16}", ""));
                }
                let r = |map: &BTreeMap<String, f64>| {
                    key.and_then(|k| map.get(k))
                        .map_or(String::new(), |r| format!("{r:.2}x"))
                };
                out.push_str(&format!("{:>10}", r(&self.ratio)));
                if with_redis && self.floor.is_some() {
                    out.push_str(&format!("{:>12}", r(&self.ratio_redis_bus)));
                }
                if self.peer.is_some() {
                    out.push_str(&format!("{:>12}", r(&self.ratio_peer)));
                }
                if with_direct {
                    out.push_str(&format!("{:>12}", r(&self.ratio_direct)));
                }
                out.push('\n');
            };
        let g = &self.gateway;
        let count = |v: u64| Some(v as f64);
        if with_redis {
            row("nodes", &|p| p.nodes.map(|n| n as f64), 0, None);
        }
        row("connected", &|p| count(p.connected), 0, None);
        row("connect failures", &|p| count(p.connect_failed), 0, None);
        if with_redis {
            for k in 0..2 {
                row(
                    &format!("  on node {}", k + 1),
                    &|p| on_node(p, k, |p| p.node_subscribers.get(k).map(|&c| c as f64)),
                    0,
                    None,
                );
            }
        }
        row(
            "rss KiB/conn",
            &|p| p.rss_kib_per_conn,
            2,
            Some("rss_kib_per_conn"),
        );
        if g.idle_cpu_us_per_conn_s.is_some() {
            row(
                "idle cpu us/conn/s",
                &|p| p.idle_cpu_us_per_conn_s,
                3,
                Some("idle_cpu"),
            );
            if with_redis {
                row(
                    "redis idle cpu us/conn/s",
                    &|p| p.redis_idle_cpu_us_per_conn_s,
                    3,
                    None,
                );
            }
        }
        if g.expected == 0 {
            return self.errors_below(out);
        }
        row("deliveries", &|p| count(p.deliveries), 0, None);
        row("expected", &|p| count(p.expected), 0, None);
        row("losses", &|p| count(p.losses), 0, None);
        row(
            "deliveries/s",
            &|p| Some(p.deliveries_per_s),
            0,
            Some("deliveries_per_s"),
        );
        row(
            "latency p50 ms",
            &|p| Some(p.latency_ms.p50),
            3,
            Some("latency_p50"),
        );
        row(
            "latency p99 ms",
            &|p| Some(p.latency_ms.p99),
            3,
            Some("latency_p99"),
        );
        row("latency max ms", &|p| Some(p.latency_ms.max), 3, None);
        row(
            "server cpu us/delivery",
            &|p| p.cpu_us_per_delivery,
            3,
            Some("cpu_us_per_delivery"),
        );
        row(
            "  user us",
            &|p| p.cpu_user_us_per_delivery,
            3,
            Some("cpu_user"),
        );
        row(
            "  sys us",
            &|p| p.cpu_sys_us_per_delivery,
            3,
            Some("cpu_sys"),
        );
        row(
            "  (clock ticks)",
            &|p| p.cpu_ticks.map(|t| t as f64),
            0,
            None,
        );
        if with_redis {
            for k in 0..2 {
                row(
                    &format!("  node {} us", k + 1),
                    &|p| on_node(p, k, |p| p.node_cpu_us_per_delivery.get(k).copied()),
                    3,
                    None,
                );
            }
            row(
                "redis cpu us/delivery",
                &|p| p.redis_cpu_us_per_delivery,
                3,
                None,
            );
        }
        row(
            "server core busy %",
            &|p| p.server_busy.map(|b| b * 100.0),
            1,
            None,
        );
        if with_redis {
            row(
                "redis core busy %",
                &|p| p.redis_busy.map(|b| b * 100.0),
                1,
                None,
            );
        }
        row(
            "client cpu us/delivery",
            &|p| p.client_cpu_us_per_delivery,
            3,
            None,
        );
        row(
            "client core busy %",
            &|p| p.client_busy.map(|b| b * 100.0),
            1,
            None,
        );
        row(
            "wire bytes/delivery",
            &|p| p.wire_bytes_per_delivery,
            1,
            Some("wire_bytes_per_delivery"),
        );
        if g.upstream_cpu_us_per_request.is_some() {
            // The upstream's CPU behind each proxy, beside its CPU when hit directly.
            let direct = self.direct.as_ref();
            row(
                "upstream cpu us/request",
                &|p| {
                    if direct.is_some_and(|d| std::ptr::eq(p, d)) {
                        p.cpu_us_per_delivery
                    } else {
                        p.upstream_cpu_us_per_request
                    }
                },
                3,
                None,
            );
        }
        if phases
            .iter()
            .any(|p| p.server_dropped.is_some_and(|d| d > 0.0))
        {
            row("gateway dropped", &|p| p.server_dropped, 0, None);
        }
        self.errors_below(out)
    }

    fn errors_below(&self, mut out: String) -> String {
        for p in self.phases() {
            if p.error_count > 0 || !p.errors.is_empty() {
                out.push_str(&format!(
                    "{}: {} error(s), e.g. {:?}\n",
                    p.target, p.error_count, p.errors
                ));
            }
        }
        out
    }
}

/// Every numeric leaf of a JSON value, by its dotted path.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_string(), x);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {}
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Median, min and max of every numeric figure over several runs of one
/// scenario, as a table of the headline figures and one JSON line.
pub fn summary(runs: &[Outcome]) -> (String, String) {
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        let mut flat = BTreeMap::new();
        flatten(
            "",
            &serde_json::to_value(run).unwrap_or_default(),
            &mut flat,
        );
        for (k, v) in flat {
            if !k.starts_with("params.") && k != "run" {
                series.entry(k).or_default().push(v);
            }
        }
    }
    let mut med = BTreeMap::new();
    let mut min = BTreeMap::new();
    let mut max = BTreeMap::new();
    for (k, mut vs) in series {
        min.insert(k.clone(), vs.iter().copied().fold(f64::INFINITY, f64::min));
        max.insert(
            k.clone(),
            vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        med.insert(k, median(&mut vs));
    }
    let name = runs.first().map_or("", |r| r.scenario.as_str());
    let mut table = format!(
        "== {name}: median of {} runs (min..max, spread = (max-min)/median)\n",
        runs.len()
    );
    let keys = [
        "gateway.cpu_us_per_delivery",
        "floor.cpu_us_per_delivery",
        "ratio.cpu_us_per_delivery",
        "gateway.cpu_user_us_per_delivery",
        "gateway.cpu_sys_us_per_delivery",
        "gateway.latency_ms.p50",
        "floor.latency_ms.p50",
        "gateway.latency_ms.p99",
        "floor.latency_ms.p99",
        "gateway.deliveries_per_s",
        "gateway.rss_kib_per_conn",
        "floor.rss_kib_per_conn",
        "ratio.rss_kib_per_conn",
        "gateway.wire_bytes_per_delivery",
        "floor.wire_bytes_per_delivery",
        "gateway.idle_cpu_us_per_conn_s",
        "floor.idle_cpu_us_per_conn_s",
        "gateway.upstream_cpu_us_per_request",
        "floor.upstream_cpu_us_per_request",
        "floor.deliveries_per_s",
        "ratio.deliveries_per_s",
        "ratio.latency_p50",
        "direct.cpu_us_per_delivery",
        "direct.latency_ms.p50",
        "direct.deliveries_per_s",
        "ratio_direct.deliveries_per_s",
        "floor_vs_direct.deliveries_per_s",
        "peer.cpu_us_per_delivery",
        "ratio_peer.cpu_us_per_delivery",
        "floor_vs_peer.cpu_us_per_delivery",
        "peer.latency_ms.p50",
        "peer.latency_ms.p99",
        "ratio_peer.latency_p50",
        "peer.deliveries_per_s",
        "ratio_peer.deliveries_per_s",
        "peer.rss_kib_per_conn",
        "ratio_peer.rss_kib_per_conn",
        "peer.upstream_cpu_us_per_request",
        "peer.losses",
        "gateway.losses",
        "floor.losses",
        "redis_bus.cpu_us_per_delivery",
        "ratio_redis_bus.cpu_us_per_delivery",
        "redis_bus_vs_gateway.cpu_us_per_delivery",
        "redis_bus.redis_cpu_us_per_delivery",
        "redis_bus.latency_ms.p50",
        "redis_bus.latency_ms.p99",
        "redis_bus.rss_kib_per_conn",
        "redis_bus.wire_bytes_per_delivery",
        "redis_bus.idle_cpu_us_per_conn_s",
        "redis_bus.redis_idle_cpu_us_per_conn_s",
        "redis_bus.losses",
    ];
    for k in keys {
        if let (Some(m), Some(lo), Some(hi)) = (med.get(k), min.get(k), max.get(k)) {
            if *lo == 0.0 && *hi == 0.0 && !k.ends_with("losses") {
                continue; // e.g. latency in idle: nothing to show
            }
            let spread = if m.abs() > 0.0 {
                (hi - lo) / m.abs() * 100.0
            } else {
                0.0
            };
            table.push_str(&format!(
                "{k:<42}{m:>12.3}   ({lo:.3}..{hi:.3}, {spread:.0}%)\n"
            ));
        }
    }
    // Built by hand so the line starts with `{"summary"` (serde_json sorts keys).
    let json = format!(
        "{{\"summary\":{},\"runs\":{},\"median\":{},\"min\":{},\"max\":{}}}",
        Value::from(name),
        runs.len(),
        serde_json::to_string(&med).unwrap_or_default(),
        serde_json::to_string(&min).unwrap_or_default(),
        serde_json::to_string(&max).unwrap_or_default(),
    );
    (table, json)
}

/// The smoke mode's sanity checks on one outcome: it ran, nothing was
/// lost, the floor was measured and the ratios are finite. Never a speed.
pub fn smoke_problems(o: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{}: {what}", o.scenario));
        }
    };
    for p in o.phases() {
        let t = &p.target;
        let nodes = p.nodes.unwrap_or(1) as usize;
        if nodes > 1 {
            check(
                p.node_subscribers.len() == nodes && p.node_subscribers.iter().all(|&c| c > 0),
                format!("{t}: subscribers per node {:?}", p.node_subscribers),
            );
            if p.expected > 0 {
                check(
                    p.redis_cpu_us_per_delivery
                        .is_some_and(|c| c.is_finite() && c > 0.0),
                    format!(
                        "{t}: redis cpu per delivery {:?}",
                        p.redis_cpu_us_per_delivery
                    ),
                );
            }
        }
        check(
            p.connected == p.conns && p.conns > 0,
            format!("{t}: {} of {} connected", p.connected, p.conns),
        );
        check(
            p.deliveries == p.expected,
            format!("{t}: {} deliveries, expected {}", p.deliveries, p.expected),
        );
        check(
            p.losses == 0 && p.duplicates == 0,
            format!("{t}: {} lost, {} duplicated", p.losses, p.duplicates),
        );
        if p.expected > 0 {
            let l = &p.latency_ms;
            check(
                l.p50 > 0.0 && l.p99.is_finite() && l.max >= l.p50,
                format!("{t}: latency {l:?}"),
            );
            check(
                p.cpu_us_per_delivery
                    .is_some_and(|c| c.is_finite() && c > 0.0),
                format!("{t}: cpu per delivery {:?}", p.cpu_us_per_delivery),
            );
        }
        check(
            p.rss_kib_per_conn.is_some_and(f64::is_finite),
            format!("{t}: rss per conn {:?}", p.rss_kib_per_conn),
        );
    }
    check(o.floor.is_some(), "no floor measured".into());
    if o.params["redis"] == true {
        check(
            o.redis_bus.as_ref().is_some_and(|p| p.nodes == Some(2)),
            "--redis: no two-node Redis bus phase".into(),
        );
    }
    if o.gateway.expected > 0 {
        check(
            o.ratio
                .get("cpu_us_per_delivery")
                .is_some_and(|r| r.is_finite() && *r > 0.0),
            format!("cpu ratio {:?}", o.ratio.get("cpu_us_per_delivery")),
        );
    }
    check(
        o.ratio.values().all(|r| r.is_finite()),
        format!("ratios {:?}", o.ratio),
    );
    problems
}

/// Node `k`'s figure, for a phase run on more than `k` nodes.
fn on_node(p: &Phase, k: usize, pick: impl Fn(&Phase) -> Option<f64>) -> Option<f64> {
    (p.nodes.unwrap_or(1) > k as u64).then(|| pick(p)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        let g = Phase {
            target: "gateway".into(),
            cpu_us_per_delivery: Some(6.0),
            ..Phase::default()
        };
        let f = Phase {
            target: "floor".into(),
            cpu_us_per_delivery: Some(2.0),
            ..Phase::default()
        };
        let o = Outcome::new("ws-fanout", 1, Value::Null, g, Some(f));
        assert_eq!(o.ratio["cpu_us_per_delivery"], 3.0);
        let (table, json) = summary(&[o.clone(), o]);
        assert!(table.contains("ratio.cpu_us_per_delivery"));
        assert!(json.starts_with("{\"summary\":\"ws-fanout\""));
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["median"]["ratio.cpu_us_per_delivery"], 3.0);
    }

    #[test]
    fn merges_worker_histograms() {
        let mut p = Phase::default();
        let r = serde_json::json!({"received": 4, "hist": [[1000, 2], [3000, 2]], "bytes_in": 400});
        merge_results(&mut p, &[r]);
        assert_eq!(p.deliveries, 4);
        assert_eq!(p.latency_ms.samples, 4);
        assert!((p.latency_ms.max - 3.0).abs() < 0.01);
        assert_eq!(p.client_bytes_per_delivery, Some(100.0));
    }
}
