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

/// One scenario run: the gateway, its floor and their ratios.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub run: usize,
    pub params: Value,
    pub gateway: Phase,
    pub floor: Option<Phase>,
    /// gateway ÷ floor, for every figure both have.
    pub ratio: BTreeMap<String, f64>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

impl Outcome {
    pub fn new(
        scenario: &str,
        run: usize,
        params: Value,
        gateway: Phase,
        floor: Option<Phase>,
    ) -> Self {
        let mut r = BTreeMap::new();
        if let Some(f) = &floor {
            let g = &gateway;
            let pairs = [
                (
                    "cpu_us_per_delivery",
                    g.cpu_us_per_delivery,
                    f.cpu_us_per_delivery,
                ),
                (
                    "cpu_user",
                    g.cpu_user_us_per_delivery,
                    f.cpu_user_us_per_delivery,
                ),
                (
                    "cpu_sys",
                    g.cpu_sys_us_per_delivery,
                    f.cpu_sys_us_per_delivery,
                ),
                (
                    "latency_p50",
                    Some(g.latency_ms.p50),
                    Some(f.latency_ms.p50),
                ),
                (
                    "latency_p99",
                    Some(g.latency_ms.p99),
                    Some(f.latency_ms.p99),
                ),
                ("rss_kib_per_conn", g.rss_kib_per_conn, f.rss_kib_per_conn),
                (
                    "wire_bytes_per_delivery",
                    g.wire_bytes_per_delivery,
                    f.wire_bytes_per_delivery,
                ),
                (
                    "idle_cpu",
                    g.idle_cpu_us_per_conn_s,
                    f.idle_cpu_us_per_conn_s,
                ),
                (
                    "deliveries_per_s",
                    Some(g.deliveries_per_s),
                    Some(f.deliveries_per_s),
                ),
            ];
            for (name, a, b) in pairs {
                if let Some(v) = ratio(a, b) {
                    r.insert(name.to_string(), v);
                }
            }
        }
        Outcome {
            scenario: scenario.into(),
            run,
            params,
            gateway,
            floor,
            ratio: r,
        }
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let g = &self.gateway;
        let f = self.floor.as_ref();
        let mut out = String::new();
        out.push_str(&format!(
            "== {} (run {}) {}\n",
            self.scenario, self.run, self.params
        ));
        let flabel = f.map_or(String::new(), |f| f.target.clone());
        out.push_str(&format!(
            "{:<28}{:>16}{:>16}{:>10}\n",
            "", g.target, flabel, "ratio"
        ));
        let mut row =
            |name: &str, a: Option<f64>, b: Option<f64>, prec: usize, key: Option<&str>| {
                let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.prec$}"));
                let r = key
                    .and_then(|k| self.ratio.get(k))
                    .map_or(String::new(), |r| format!("{r:.2}x"));
                out.push_str(&format!(
                    "{name:<28}{:>16}{:>16}{r:>10}\n",
                    cell(a),
                    cell(b)
                ));
            };
        let fo = |get: fn(&Phase) -> Option<f64>| f.and_then(get);
        row(
            "connected",
            Some(g.connected as f64),
            fo(|p| Some(p.connected as f64)),
            0,
            None,
        );
        row(
            "connect failures",
            Some(g.connect_failed as f64),
            fo(|p| Some(p.connect_failed as f64)),
            0,
            None,
        );
        row(
            "rss KiB/conn",
            g.rss_kib_per_conn,
            fo(|p| p.rss_kib_per_conn),
            2,
            Some("rss_kib_per_conn"),
        );
        if g.idle_cpu_us_per_conn_s.is_some() {
            row(
                "idle cpu us/conn/s",
                g.idle_cpu_us_per_conn_s,
                fo(|p| p.idle_cpu_us_per_conn_s),
                3,
                Some("idle_cpu"),
            );
        }
        if g.expected == 0 {
            return self.errors_below(out);
        }
        row(
            "deliveries",
            Some(g.deliveries as f64),
            fo(|p| Some(p.deliveries as f64)),
            0,
            None,
        );
        row(
            "expected",
            Some(g.expected as f64),
            fo(|p| Some(p.expected as f64)),
            0,
            None,
        );
        row(
            "losses",
            Some(g.losses as f64),
            fo(|p| Some(p.losses as f64)),
            0,
            None,
        );
        row(
            "deliveries/s",
            Some(g.deliveries_per_s),
            fo(|p| Some(p.deliveries_per_s)),
            0,
            Some("deliveries_per_s"),
        );
        row(
            "latency p50 ms",
            Some(g.latency_ms.p50),
            fo(|p| Some(p.latency_ms.p50)),
            3,
            Some("latency_p50"),
        );
        row(
            "latency p99 ms",
            Some(g.latency_ms.p99),
            fo(|p| Some(p.latency_ms.p99)),
            3,
            Some("latency_p99"),
        );
        row(
            "latency max ms",
            Some(g.latency_ms.max),
            fo(|p| Some(p.latency_ms.max)),
            3,
            None,
        );
        row(
            "server cpu us/delivery",
            g.cpu_us_per_delivery,
            fo(|p| p.cpu_us_per_delivery),
            3,
            Some("cpu_us_per_delivery"),
        );
        row(
            "  user us",
            g.cpu_user_us_per_delivery,
            fo(|p| p.cpu_user_us_per_delivery),
            3,
            Some("cpu_user"),
        );
        row(
            "  sys us",
            g.cpu_sys_us_per_delivery,
            fo(|p| p.cpu_sys_us_per_delivery),
            3,
            Some("cpu_sys"),
        );
        row(
            "  (clock ticks)",
            g.cpu_ticks.map(|t| t as f64),
            fo(|p| p.cpu_ticks.map(|t| t as f64)),
            0,
            None,
        );
        row(
            "server core busy %",
            g.server_busy.map(|b| b * 100.0),
            fo(|p| p.server_busy.map(|b| b * 100.0)),
            1,
            None,
        );
        row(
            "client cpu us/delivery",
            g.client_cpu_us_per_delivery,
            fo(|p| p.client_cpu_us_per_delivery),
            3,
            None,
        );
        row(
            "client core busy %",
            g.client_busy.map(|b| b * 100.0),
            fo(|p| p.client_busy.map(|b| b * 100.0)),
            1,
            None,
        );
        row(
            "wire bytes/delivery",
            g.wire_bytes_per_delivery,
            fo(|p| p.wire_bytes_per_delivery),
            1,
            Some("wire_bytes_per_delivery"),
        );
        if g.upstream_cpu_us_per_request.is_some() {
            row(
                "upstream cpu us/request",
                g.upstream_cpu_us_per_request,
                fo(|p| p.cpu_us_per_delivery),
                3,
                None,
            );
        }
        if g.server_dropped.is_some_and(|d| d > 0.0) {
            row("gateway dropped", g.server_dropped, None, 0, None);
        }
        self.errors_below(out)
    }

    fn errors_below(&self, mut out: String) -> String {
        for p in std::iter::once(&self.gateway).chain(self.floor.iter()) {
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
        "gateway.losses",
        "floor.losses",
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
                "{k:<38}{m:>12.3}   ({lo:.3}..{hi:.3}, {spread:.0}%)\n"
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
    let phases = std::iter::once(&o.gateway).chain(o.floor.iter());
    for p in phases {
        let t = &p.target;
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
