//! `fanout-span`: how long one message takes to reach every subscriber
//! inside the gateway, by worker count — the fan-out shards' scaling.
//!
//! For each `--span-workers` count K: a gateway started with `--workers K`
//! (not pinned) and `-n` WebSocket subscribers that read nothing until the
//! end (`client-worker --hold-reads`, 1 MiB receive buffers), so the
//! clients use no CPU while the gateway writes. All of them run at once;
//! `-m` rounds of one publish to each gateway in turn (so whatever else
//! the machine does hits every K alike). For each publish: the publish
//! answer's latency (the orchestrator's request round trip), and the
//! fan-out span from the gateway's own `pollbridge_fanout_seconds` (the
//! growth of its `_sum`: one publish, one observation), read once the span
//! is over so the scrape does not compete with the writes. Then the
//! clients read everything, checking that nothing was lost, duplicated or
//! reordered.
//! The same run gives every K, so the ratio is same-run. K = 0 starts the
//! gateway without `--workers` (its default; also a build from before the
//! flag, whose answer latency is then measured without a span).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{now_us, Kind};
use crate::http::{metric_sum, Http};
use crate::proc::cpu_delta;
use crate::report::median;
use crate::scenario::{connect_budget, path, wait_subscribed};
use crate::target::{Clients, Result, Servers, Target};
use crate::{wire, Opts};

/// What one worker count gave.
struct SpanPhase {
    workers: usize,
    connected: u64,
    spans_ms: Vec<f64>,
    answers_ms: Vec<f64>,
    cpu_us_per_delivery: Option<f64>,
    losses: u64,
    duplicates: u64,
    gaps: u64,
    errors: Vec<String>,
}

impl SpanPhase {
    fn json(&self) -> Value {
        let (mut spans, mut answers) = (self.spans_ms.clone(), self.answers_ms.clone());
        json!({
            "workers": self.workers,
            "connected": self.connected,
            "span_ms_median": median(&mut spans),
            "span_ms_min": spans.iter().copied().fold(f64::NAN, f64::min),
            "span_ms_max": spans.iter().copied().fold(f64::NAN, f64::max),
            "answer_ms_median": median(&mut answers),
            "answer_ms_max": answers.iter().copied().fold(f64::NAN, f64::max),
            "spans_ms": self.spans_ms,
            "answers_ms": self.answers_ms,
            "cpu_us_per_delivery": self.cpu_us_per_delivery,
            "losses": self.losses,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "errors": self.errors,
        })
    }
}

/// Runs the scenario once; prints its table (unless `--json`) and
/// returns its JSON line. Every gateway (one per worker count) is up with
/// its subscribers at once, and the publishes go round them in turn, so
/// whatever else the machine does hits each count alike.
pub fn run(opts: &Opts, run: usize) -> Result<String> {
    let params = json!({
        "subscribers": opts.subscribers, "publishes": opts.messages,
        "payload_bytes": opts.payload_bytes, "workers": opts.span_workers,
    });
    let mut running = Vec::new();
    for &workers in &opts.span_workers {
        let channel = format!("bench-span-{}-{run}-{workers}", std::process::id());
        running.push(Running::start(opts, workers, channel)?);
    }
    for r in &mut running {
        r.cpu_before = r.servers.nodes[0].cpu();
    }
    for _ in 0..opts.messages {
        for r in &mut running {
            r.publish(opts).map_err(|e| r.servers.with_logs(e))?;
        }
    }
    let phases: Vec<SpanPhase> = running.into_iter().map(|r| r.finish(opts)).collect();
    let json: Vec<Value> = phases.iter().map(SpanPhase::json).collect();
    let base = json.first().and_then(|p| p["span_ms_median"].as_f64());
    let ratios: Vec<Option<f64>> = json
        .iter()
        .map(|p| Some(p["span_ms_median"].as_f64()? / base?))
        .collect();
    let base_min = json.first().and_then(|p| p["span_ms_min"].as_f64());
    let min_ratios: Vec<Option<f64>> = json
        .iter()
        .map(|p| Some(p["span_ms_min"].as_f64()? / base_min?))
        .collect();
    if !opts.json {
        print!("{}", table(&params, run, &json, &ratios, &min_ratios));
    }
    let line = json!({
        "scenario": "fanout-span", "run": run, "params": params,
        "phases": json, "span_ratio_vs_first": ratios,
        "min_span_ratio_vs_first": min_ratios,
    });
    Ok(line.to_string())
}

fn table(
    params: &Value,
    run: usize,
    phases: &[Value],
    ratios: &[Option<f64>],
    min_ratios: &[Option<f64>],
) -> String {
    let mut out = format!("== fanout-span (run {run}) {params}\n{:<28}", "");
    for p in phases {
        let head = match p["workers"].as_u64() {
            Some(0) => "default".to_string(),
            _ => format!("--workers {}", p["workers"]),
        };
        out += &format!("{head:>14}");
    }
    out.push('\n');
    let rows: [(&str, &str); 9] = [
        ("connected", "connected"),
        ("fan-out span median ms", "span_ms_median"),
        ("fan-out span min ms", "span_ms_min"),
        ("fan-out span max ms", "span_ms_max"),
        ("publish answer median ms", "answer_ms_median"),
        ("publish answer max ms", "answer_ms_max"),
        ("server cpu us/delivery", "cpu_us_per_delivery"),
        ("losses", "losses"),
        ("duplicates + gaps", "duplicates"),
    ];
    for (label, key) in rows {
        out += &format!("{label:<28}");
        for p in phases {
            let v = if key == "duplicates" {
                json!(p["duplicates"].as_u64().unwrap_or(0) + p["gaps"].as_u64().unwrap_or(0))
            } else {
                p[key].clone()
            };
            let cell = match v.as_f64() {
                Some(x) if v.is_u64() => format!("{x:.0}"),
                Some(x) => format!("{x:.3}"),
                None => "-".into(),
            };
            out += &format!("{cell:>14}");
        }
        out.push('\n');
    }
    for (label, ratios) in [
        ("span ratio vs first", ratios),
        ("min span ratio vs first", min_ratios),
    ] {
        out += &format!("{label:<28}");
        for r in ratios {
            out += &format!("{:>14}", r.map_or("-".into(), |r| format!("{r:.2}x")));
        }
        out.push('\n');
    }
    out
}

/// `pollbridge_fanout_seconds` `_count` and `_sum` now (None: a gateway
/// without the histogram, e.g. a build from before the shards).
fn spans_so_far(admin: &mut Http) -> Result<Option<(f64, f64)>> {
    let text = String::from_utf8_lossy(&admin.get("/metrics")?).into_owned();
    if !text.contains("pollbridge_fanout_seconds_count") {
        return Ok(None);
    }
    Ok(Some((
        metric_sum(&text, "pollbridge_fanout_seconds_count"),
        metric_sum(&text, "pollbridge_fanout_seconds_sum"),
    )))
}

/// One publish: its answer's latency, then (after it is over) its span.
fn publish_one(
    admin: &mut Http,
    channel: &str,
    payload_bytes: usize,
) -> Result<(f64, Option<f64>)> {
    let before = spans_so_far(admin)?;
    let mut body = Vec::with_capacity(payload_bytes + 64);
    wire::payload(now_us(), payload_bytes, &mut body);
    let sent = Instant::now();
    let (status, answer) = admin.request(
        "POST",
        &format!("/publish/{channel}"),
        Some("application/json"),
        &body,
    )?;
    let answer_ms = sent.elapsed().as_secs_f64() * 1e3;
    if status != 200 {
        let answer = String::from_utf8_lossy(&answer);
        return Err(format!("publish answered {status}: {answer}").into());
    }
    // Let the span end before scraping: a scrape during the fan-out would
    // be CPU taken from it.
    std::thread::sleep(Duration::from_millis(300));
    let Some((count, sum)) = before else {
        return Ok((answer_ms, None));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((now_count, now_sum)) = spans_so_far(admin)? {
            if now_count > count {
                return Ok((answer_ms, Some((now_sum - sum) * 1e3)));
            }
        }
        if Instant::now() > deadline {
            return Err("no fan-out span observed within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One gateway and its held-back subscribers, being measured.
struct Running {
    workers: usize,
    channel: String,
    servers: Servers,
    clients: Clients,
    connected: u64,
    errors: Vec<String>,
    cpu_before: Option<crate::proc::Cpu>,
    spans_ms: Vec<f64>,
    answers_ms: Vec<f64>,
}

impl Running {
    fn start(opts: &Opts, workers: usize, channel: String) -> Result<Running> {
        // 0: the gateway's default (and a build without `--workers`).
        let (label, extra) = match workers {
            0 => ("gateway".to_string(), Vec::new()),
            k => (
                format!("gateway --workers {k}"),
                vec!["--workers".to_string(), k.to_string()],
            ),
        };
        // Never pinned: the point is how the gateway uses the cores it has.
        let opts = &Opts {
            pin: false,
            ..opts.clone()
        };
        let target = Target::start_gateway_with(opts, None, "span", &label, &extra)?;
        let mut servers = Servers::one(target);
        let (n, m) = (opts.subscribers, opts.messages);
        let path = path(opts, Kind::Ws, &channel);
        let publics = servers.publics();
        let clients =
            Clients::start_with(opts, Kind::Ws, &publics, &path, n, m, &["--hold-reads"])?;
        let connected = clients
            .wait_connected(Instant::now() + connect_budget(opts, n))
            .map_err(|e| servers.with_logs(e))?;
        let mut errors = connected.errors;
        let (_, problem) = wait_subscribed(&mut servers, Kind::Ws, connected.ok);
        errors.extend(problem);
        std::thread::sleep(Duration::from_millis(opts.settle_ms));
        Ok(Running {
            workers,
            channel,
            servers,
            clients,
            connected: connected.ok,
            errors,
            cpu_before: None,
            spans_ms: Vec::new(),
            answers_ms: Vec::new(),
        })
    }

    fn publish(&mut self, opts: &Opts) -> Result<()> {
        let admin = self.servers.nodes[0].admin().ok_or("no admin address")?;
        let (answer, span) = publish_one(admin, &self.channel, opts.payload_bytes)?;
        self.answers_ms.push(answer);
        self.spans_ms.extend(span);
        Ok(())
    }

    /// Lets the clients read everything and checks what they got.
    fn finish(mut self, opts: &Opts) -> SpanPhase {
        let cpu_after = self.servers.nodes[0].cpu();
        self.clients.send_all("go");
        let results = self
            .clients
            .results(Instant::now() + Duration::from_secs(60));
        self.clients.stop();
        let sum = |key: &str| results.iter().filter_map(|r| r[key].as_u64()).sum::<u64>();
        for r in &results {
            if let Some(list) = r["errors"].as_array() {
                let errors = list.iter().filter_map(|e| e.as_str().map(String::from));
                self.errors.extend(errors);
            }
        }
        // CPU over the publishing window (scrapes included; the idle
        // connections cost next to nothing) per delivery.
        let deliveries = (self.connected * opts.messages).max(1) as f64;
        let cpu_us_per_delivery = match (self.cpu_before, cpu_after) {
            (Some(b), Some(a)) => Some(cpu_delta(b, a).total_us / deliveries),
            _ => None,
        };
        SpanPhase {
            workers: self.workers,
            connected: self.connected,
            spans_ms: self.spans_ms,
            answers_ms: self.answers_ms,
            cpu_us_per_delivery,
            losses: sum("losses"),
            duplicates: sum("duplicates"),
            gaps: sum("gaps"),
            errors: self.errors,
        }
    }
}
