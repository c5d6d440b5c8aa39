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
use crate::protocol::Transport;

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

/// What moving the long-polling clients to WebSocket would save, in parts
/// a reader can check. A WebSocket pays a one-off handshake when it opens
/// and little per message after; a long-poll pays request and response
/// heads on every poll. Mixing the two into one all-time "WebSocket cost
/// per message" made a short run (a few messages per handshake) show a
/// negative saving, so the handshake is shown apart here.
#[derive(Serialize, Debug, PartialEq)]
pub struct Savings {
    /// Long-poll wire bytes (both ways, empty polls included) per
    /// delivered message, all time.
    pub longpoll_bytes_per_message: Option<f64>,
    /// WebSocket wire bytes per delivered message on open connections
    /// (frames, pings, closes), all time, handshakes left out.
    pub websocket_bytes_per_message: Option<f64>,
    /// One WebSocket handshake (upgrade request + answer), on average.
    pub websocket_handshake_bytes: Option<f64>,
    /// `longpoll_bytes_per_message − websocket_bytes_per_message`.
    pub saved_bytes_per_message: Option<f64>,
    /// Long-poll deliveries per second over the last ~10 s.
    pub longpoll_messages_per_second: f64,
    /// `saved_bytes_per_message × longpoll_messages_per_second`: the steady
    /// saving once the WebSockets are open.
    pub saved_bytes_per_second: Option<f64>,
    /// Messages a WebSocket carries before its handshake has paid for
    /// itself: `websocket_handshake_bytes ÷ saved_bytes_per_message`.
    pub handshake_repaid_after_messages: Option<f64>,
}

#[derive(Serialize)]
pub struct Report {
    pub transports: serde_json::Map<String, serde_json::Value>,
    /// The long-poll deliveries of the last ~10 s, had they been WebSocket
    /// deliveries on open connections: `longpoll_to_websocket.saved_bytes_per_second`
    /// (kept under this name for existing readers).
    pub longpoll_to_websocket_savings_bytes_per_second: Option<f64>,
    pub longpoll_to_websocket: Savings,
    pub published: u64,
    pub window_seconds: f64,
    /// Per transport (all of them, the bridge too): what compression did.
    pub compression: serde_json::Map<String, serde_json::Value>,
}

/// What compression did on one transport, all time.
#[derive(Serialize)]
pub struct CompressionStats {
    /// Bytes of the answers, events and frames that went out compressed,
    /// as encoded before compression.
    pub bytes_before: u64,
    /// The same, as sent.
    pub bytes_after: u64,
    /// `bytes_after ÷ bytes_before` (0.25: a quarter of the bytes); none
    /// until something was compressed.
    pub ratio: Option<f64>,
}

fn compression(metrics: &Metrics) -> serde_json::Map<String, serde_json::Value> {
    Transport::ALL
        .iter()
        .map(|t| {
            let (before, after) = metrics.compression.totals(*t);
            let stats = CompressionStats {
                bytes_before: before,
                bytes_after: after,
                ratio: ratio(after as f64, before),
            };
            let value = serde_json::to_value(stats).expect("stats serialise");
            (t.as_str().to_string(), value)
        })
        .collect()
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
        let savings = savings(
            per_delivery[lp],
            rate[lp],
            current[ws],
            self.metrics.ws_handshakes.get(),
            self.metrics.ws_handshake_bytes.get(),
        );
        Report {
            transports,
            longpoll_to_websocket_savings_bytes_per_second: savings.saved_bytes_per_second,
            longpoll_to_websocket: savings,
            published: self.metrics.published.get(),
            window_seconds: window,
            compression: compression(&self.metrics),
        }
    }
}

/// The long-poll → WebSocket comparison, handshakes apart.
fn savings(
    longpoll_per_message: Option<f64>,
    longpoll_rate: f64,
    ws: Counters,
    handshakes: u64,
    handshake_bytes: u64,
) -> Savings {
    let ws_wire = (ws.wire_in + ws.wire_out).saturating_sub(handshake_bytes);
    let websocket_per_message = ratio(ws_wire as f64, ws.delivered);
    let saved = match (longpoll_per_message, websocket_per_message) {
        (Some(lp), Some(ws)) => Some(lp - ws),
        _ => None,
    };
    let handshake = ratio(handshake_bytes as f64, handshakes);
    Savings {
        longpoll_bytes_per_message: longpoll_per_message,
        websocket_bytes_per_message: websocket_per_message,
        websocket_handshake_bytes: handshake,
        saved_bytes_per_message: saved,
        longpoll_messages_per_second: longpoll_rate,
        saved_bytes_per_second: saved.map(|s| s * longpoll_rate),
        handshake_repaid_after_messages: match (handshake, saved) {
            (Some(h), Some(s)) if s > 0.0 => Some(h / s),
            _ => None,
        },
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

    #[test]
    fn a_short_run_shows_the_handshake_apart_not_a_negative_saving() {
        // Two WebSockets (260 handshake bytes each) have carried 4 messages
        // in 40 frame bytes; long-polls cost 120 bytes a message. All in
        // one, WebSocket would cost 140 bytes a message: "saving" −20.
        let ws = Counters {
            wire_in: 300,
            wire_out: 260,
            payload_out: 20,
            delivered: 4,
        };
        let s = savings(Some(120.0), 2.0, ws, 2, 520);
        assert_eq!(
            s,
            Savings {
                longpoll_bytes_per_message: Some(120.0),
                websocket_bytes_per_message: Some(10.0),
                websocket_handshake_bytes: Some(260.0),
                saved_bytes_per_message: Some(110.0),
                longpoll_messages_per_second: 2.0,
                saved_bytes_per_second: Some(220.0),
                handshake_repaid_after_messages: Some(260.0 / 110.0),
            }
        );
        let none = savings(None, 0.0, Counters::default(), 0, 0);
        assert_eq!(none.saved_bytes_per_second, None);
        assert_eq!(none.websocket_handshake_bytes, None);
    }
}
