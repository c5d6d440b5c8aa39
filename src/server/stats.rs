//! The bandwidth report: per transport, what a delivered message costs on
//! the wire, how much of that is headers, and what moving the polling
//! clients to WebSocket would save. Served as JSON at `/stats` (admin, and
//! on the public listener when enabled for the demo).
//!
//! Rates come from a sampler that snapshots the counters once a second and
//! keeps the last minute, so `/stats` is cheap and its rates are smooth.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::transport::Transport;

/// Client transports shown in the report (the bridge joins later).
const REPORTED: [Transport; 4] = [
    Transport::WebSocket,
    Transport::LongPoll,
    Transport::Sse,
    Transport::Proxy,
];

/// How far back rates look.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Default)]
struct Counters {
    wire_in: u64,
    wire_out: u64,
    payload_out: u64,
    delivered: u64,
}

type Snapshot = [Counters; 4];

fn snapshot(metrics: &Metrics) -> Snapshot {
    REPORTED.map(|t| {
        let m = metrics.transport(t);
        Counters {
            wire_in: m.wire_in.get(),
            wire_out: m.wire_out.get(),
            payload_out: m.payload_out.get(),
            delivered: m.delivered.get(),
        }
    })
}

/// Periodic snapshots of the byte and delivery counters.
pub struct StatsSampler {
    metrics: Arc<Metrics>,
    samples: Mutex<VecDeque<(Instant, Snapshot)>>,
}

#[derive(Serialize)]
pub struct TransportStats {
    pub connections: i64,
    pub delivered: u64,
    pub wire_bytes_in: u64,
    pub wire_bytes_out: u64,
    pub payload_bytes_out: u64,
    /// (wire in + wire out) ÷ delivered, all time.
    pub wire_bytes_per_delivery: Option<f64>,
    /// (wire − payload) ÷ delivered: what the transport adds per message.
    pub overhead_bytes_per_delivery: Option<f64>,
    /// (wire − payload) ÷ wire.
    pub header_share: Option<f64>,
    /// Deliveries per second over the last ~10 s.
    pub messages_per_second: f64,
    /// Wire bytes per second (in + out) over the last ~10 s.
    pub wire_bytes_per_second: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub transports: serde_json::Map<String, serde_json::Value>,
    /// If every long-poll delivery of the last ~10 s had been a WebSocket
    /// delivery at the WebSocket's all-time cost per message.
    pub longpoll_to_websocket_savings_bytes_per_second: Option<f64>,
    pub published: u64,
    pub window_seconds: f64,
}

fn ratio(a: f64, b: u64) -> Option<f64> {
    (b > 0).then(|| a / b as f64)
}

impl StatsSampler {
    pub fn new(metrics: Arc<Metrics>) -> Arc<StatsSampler> {
        let first = (Instant::now(), snapshot(&metrics));
        Arc::new(StatsSampler {
            metrics,
            samples: Mutex::new(VecDeque::from([first])),
        })
    }

    /// Takes one sample; called once a second.
    pub fn sample(&self) {
        let now = Instant::now();
        let snap = snapshot(&self.metrics);
        let mut samples = self.samples.lock();
        samples.push_back((now, snap));
        while samples.len() > 61 {
            samples.pop_front();
        }
    }

    pub fn report(&self) -> Report {
        let now = Instant::now();
        let current = snapshot(&self.metrics);
        let (then, past) = {
            let samples = self.samples.lock();
            samples
                .iter()
                .find(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
                .or(samples.back())
                .copied()
                .unwrap_or((now, current))
        };
        let window = now.duration_since(then).as_secs_f64().max(1e-3);
        let mut transports = serde_json::Map::new();
        let mut per_delivery = [None; 4];
        let mut rate = [0.0; 4];
        for (i, t) in REPORTED.iter().enumerate() {
            let c = current[i];
            let p = past[i];
            let wire = (c.wire_in + c.wire_out) as f64;
            let overhead = wire - c.payload_out as f64;
            per_delivery[i] = ratio(wire, c.delivered);
            rate[i] = (c.delivered - p.delivered) as f64 / window;
            let stats = TransportStats {
                connections: self.metrics.transport(*t).connections.get(),
                delivered: c.delivered,
                wire_bytes_in: c.wire_in,
                wire_bytes_out: c.wire_out,
                payload_bytes_out: c.payload_out,
                wire_bytes_per_delivery: per_delivery[i],
                overhead_bytes_per_delivery: ratio(overhead, c.delivered),
                header_share: (wire > 0.0).then(|| overhead / wire),
                messages_per_second: rate[i],
                wire_bytes_per_second: ((c.wire_in + c.wire_out) - (p.wire_in + p.wire_out)) as f64
                    / window,
            };
            transports.insert(
                t.as_str().to_string(),
                serde_json::to_value(stats).expect("stats serialise"),
            );
        }
        let (ws, lp) = (0, 1);
        let savings = match (per_delivery[lp], per_delivery[ws]) {
            (Some(lp_cost), Some(ws_cost)) => Some(rate[lp] * (lp_cost - ws_cost)),
            _ => None,
        };
        Report {
            transports,
            longpoll_to_websocket_savings_bytes_per_second: savings,
            published: self.metrics.published.get(),
            window_seconds: window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_divides_wire_by_deliveries() {
        let metrics = Arc::new(Metrics::new());
        let sampler = StatsSampler::new(metrics.clone());
        let lp = metrics.transport(Transport::LongPoll);
        lp.wire_in.inc_by(300);
        lp.wire_out.inc_by(200);
        lp.payload_out.inc_by(100);
        lp.delivered.inc_by(5);
        let ws = metrics.transport(Transport::WebSocket);
        ws.wire_out.inc_by(60);
        ws.delivered.inc_by(5);
        let report = sampler.report();
        let lp = &report.transports["longpoll"];
        assert_eq!(lp["wire_bytes_per_delivery"], 100.0);
        assert_eq!(lp["overhead_bytes_per_delivery"], 80.0);
        assert_eq!(lp["header_share"], 0.8);
        assert_eq!(
            report.transports["websocket"]["wire_bytes_per_delivery"],
            12.0
        );
        assert!(report.transports["sse"]["wire_bytes_per_delivery"].is_null());
        assert!(
            report
                .longpoll_to_websocket_savings_bytes_per_second
                .unwrap()
                > 0.0
        );
    }
}
