//! The `deltas` scenario: `-n` WebSocket subscribers of a `state` channel
//! fed `-m` order-book snapshots (about 1.3 KB of JSON each, a few levels
//! changing per update) at `-r` per second, once as whole values and once
//! with deltas (`?delta=1` on the handshake), each against a fresh gateway
//! in the same run. Reported as two phases, `deltas on` and `deltas off`,
//! and their ratio (on ÷ off): wire bytes and gateway CPU per delivery.
//!
//! The clients run in this process (one thread, a current-thread tokio
//! runtime); the gateway's CPU is its own process's. Every client must get
//! the last update; deliveries, deltas and bytes are counted per client.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proc::cpu_delta;
use crate::report::{Outcome, Phase};
use crate::target::{Result, Target};
use crate::{wire, Opts};

/// An order book that moves a little at every update, as an exchange
/// feed's snapshots do: three levels change size, the last trade and the
/// sequence number change; prices stay (no level is inserted).
pub struct OrderBook {
    seq: u64,
    /// `(price, size, orders)` per level, best first.
    bids: Vec<(f64, f64, u64)>,
    asks: Vec<(f64, f64, u64)>,
    rng: u64,
}

impl OrderBook {
    pub fn new() -> OrderBook {
        let level = |i: usize, side: f64| {
            let price = 43_250.0 + side * (0.5 + i as f64 * 2.5);
            (
                price,
                0.25 + (i % 7) as f64 * 0.375,
                1 + (i as u64 * 7) % 13,
            )
        };
        OrderBook {
            seq: 0,
            bids: (0..LEVELS).map(|i| level(i, -1.0)).collect(),
            asks: (0..LEVELS).map(|i| level(i, 1.0)).collect(),
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: deterministic, so every run publishes the same data.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The next snapshot, as JSON text.
    pub fn next(&mut self) -> String {
        self.seq += 1;
        for _ in 0..3 {
            let r = self.random();
            let side = if r & 1 == 0 {
                &mut self.bids
            } else {
                &mut self.asks
            };
            let i = (r >> 1) as usize % side.len();
            side[i].1 = ((r >> 8) % 40_000) as f64 / 10_000.0 + 0.0001;
            side[i].2 = 1 + (r >> 24) % 20;
        }
        let r = self.random();
        let levels = |side: &[(f64, f64, u64)]| {
            side.iter()
                .map(|(p, s, o)| json!([p, s, o]))
                .collect::<Vec<_>>()
        };
        json!({
            "symbol": "BTC-EUR",
            "venue": "bench-exchange",
            "seq": self.seq,
            "bids": levels(&self.bids),
            "asks": levels(&self.asks),
            "last_trade": {"price": self.bids[0].0 + (r % 2) as f64 * 1.0, "size": (r >> 8) % 1000, "side": if r & 4 == 0 { "buy" } else { "sell" }},
            "stats": {"open": 42_980.5, "high": 43_410.0, "low": 42_805.5, "volume_24h": 1834.2291, "trades_24h": 182_113},
            "status": "trading",
        })
        .to_string()
    }
}

/// Price levels per side.
const LEVELS: usize = 25;

const CONFIG: &str = "[[channels]]\npattern = \"book.*\"\nmode = \"state\"\n";

/// Runs the scenario once: deltas off, then on.
pub fn run(opts: &Opts, run: usize) -> Result<Outcome> {
    let config = std::env::temp_dir().join(format!(
        "pollbridge-bench-{}-deltas.toml",
        std::process::id()
    ));
    std::fs::write(&config, CONFIG)?;
    let mut book = OrderBook::new();
    let bytes = (0..opts.messages).map(|_| book.next().len()).sum::<usize>()
        / opts.messages.max(1) as usize;
    let params = json!({
        "subscribers": opts.subscribers, "messages": opts.messages, "rate": opts.rate,
        "payload_bytes": bytes, "payload": "order book, 25+25 levels, 3 change per update",
        "pinned": opts.pin,
    });
    let off = phase(opts, &config, false, run)?;
    let on = phase(opts, &config, true, run)?;
    let _ = std::fs::remove_file(&config);
    Ok(Outcome::new("deltas", run, params, on, Some(off)))
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    deliveries: u64,
    deltas: u64,
    bytes_in: u64,
    last_id: u64,
    error: Option<String>,
}

fn phase(opts: &Opts, config: &Path, deltas: bool, run: usize) -> Result<Phase> {
    let label = if deltas { "deltas on" } else { "deltas off" };
    let tag = format!("deltas-{}-{run}", if deltas { "on" } else { "off" });
    let extra = [
        "--config".to_string(),
        config.to_string_lossy().into_owned(),
    ];
    let mut gw = Target::start_gateway_with(opts, None, &tag, label, &extra)?;
    gw.wait_ready(Instant::now() + Duration::from_secs(30))?;
    let (n, m) = (opts.subscribers as u64, opts.messages);
    let channel = format!("book.bench-{}-{run}", std::process::id());
    let path = format!(
        "{}/ws/{channel}{}",
        opts.prefix.trim_end_matches('/'),
        if deltas { "?delta=1" } else { "" }
    );
    let subscribed = Arc::new(AtomicU64::new(0));
    let deadline = Duration::from_secs(60) + Duration::from_secs_f64(m as f64 / opts.rate.max(1.0));
    let clients = {
        let (addr, subscribed) = (gw.public, subscribed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let tasks: Vec<_> = (0..n)
                    .map(|_| {
                        tokio::spawn(client(addr, path.clone(), m, subscribed.clone(), deadline))
                    })
                    .collect();
                let mut seen = Vec::with_capacity(tasks.len());
                for t in tasks {
                    seen.push(t.await.unwrap_or_default());
                }
                Ok::<_, std::io::Error>(seen)
            })
        })
    };
    let wait_until = Instant::now() + Duration::from_secs(60);
    while subscribed.load(Ordering::Relaxed) < n && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let connected = subscribed.load(Ordering::Relaxed);

    let stats_bytes = |gw: &mut Target| {
        gw.gateway_stats().and_then(|s| {
            let t = &s["transports"]["websocket"];
            Some(t["wire_bytes_in"].as_f64()? + t["wire_bytes_out"].as_f64()?)
        })
    };
    let bytes_before = stats_bytes(&mut gw);
    let cpu_before = gw.cpu();
    let start = Instant::now();
    let mut book = OrderBook::new();
    let publish_path = format!("/publish/{channel}");
    for i in 0..m {
        let body = book.next();
        let admin = gw.admin().ok_or("no admin address")?;
        let (status, answer) = admin.request(
            "POST",
            &publish_path,
            Some("application/json"),
            body.as_bytes(),
        )?;
        if status != 200 {
            return Err(format!("publish: {status} {}", String::from_utf8_lossy(&answer)).into());
        }
        let due = start + Duration::from_secs_f64((i + 1) as f64 / opts.rate.max(1.0));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let seen = clients.join().map_err(|_| "client thread panicked")??;
    let wall = start.elapsed().as_secs_f64();
    let cpu_after = gw.cpu();
    let bytes_after = stats_bytes(&mut gw);
    gw.stop();

    let mut phase = Phase {
        target: label.into(),
        conns: n,
        connected,
        messages: m,
        expected: n * m,
        wall_s: wall,
        ..Phase::default()
    };
    let (mut client_bytes, mut delta_count) = (0, 0);
    for s in &seen {
        phase.deliveries += s.deliveries;
        delta_count += s.deltas;
        client_bytes += s.bytes_in;
        if s.last_id < m {
            phase.losses += 1;
        }
        if let Some(e) = &s.error {
            phase.error_count += 1;
            if phase.errors.len() < 5 {
                phase.errors.push(e.clone());
            }
        }
    }
    let per = phase.deliveries.max(1) as f64;
    phase.deliveries_per_s = phase.deliveries as f64 / wall.max(1e-6);
    if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
        let d = cpu_delta(b, a);
        phase.cpu_us_per_delivery = Some(d.total_us / per);
        phase.cpu_ticks = Some(d.ticks);
        phase.server_busy = Some(d.total_us / 1e6 / wall.max(1e-6));
    }
    if let (Some(b), Some(a)) = (bytes_before, bytes_after) {
        phase.wire_bytes_per_delivery = Some((a - b) / per);
    }
    phase.client_bytes_per_delivery = Some(client_bytes as f64 / per);
    eprintln!(
        "pollbridge-bench: {label}: {} deliveries, {delta_count} as deltas, every client reached #{m}: {}",
        phase.deliveries,
        phase.losses == 0
    );
    Ok(phase)
}

/// One subscriber: handshake, then frames until the envelope with id `m`.
async fn client(
    addr: std::net::SocketAddr,
    path: String,
    m: u64,
    subscribed: Arc<AtomicU64>,
    deadline: Duration,
) -> Seen {
    let mut seen = Seen::default();
    let result =
        tokio::time::timeout(deadline, read_all(addr, &path, m, &subscribed, &mut seen)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => seen.error = Some(e.to_string()),
        Err(_) => seen.error = Some(format!("timed out at #{}", seen.last_id)),
    }
    seen
}

async fn read_all(
    addr: std::net::SocketAddr,
    path: &str,
    m: u64,
    subscribed: &AtomicU64,
    seen: &mut Seen,
) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut head_done = false;
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        seen.bytes_in += n as u64;
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(end) = wire::head_end(&buf) else {
                continue;
            };
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(std::io::Error::other("upgrade refused"));
            }
            buf.drain(..end);
            head_done = true;
        }
        let mut used = 0;
        while let Some((frame, len)) = wire::next_frame(&buf[used..], 1 << 20)
            .map_err(|e| std::io::Error::other(e.to_string()))?
        {
            used += len;
            if let wire::Frame::Text(body) = frame {
                if body.starts_with(b"{\"type\":\"subscribed\"") {
                    subscribed.fetch_add(1, Ordering::Relaxed);
                } else if let Some(id) = wire::field_u64(body, b"\"id\":") {
                    seen.deliveries += 1;
                    seen.last_id = id;
                    if wire::find(body, b"\"delta\":").is_some() {
                        seen.deltas += 1;
                    }
                }
            }
        }
        buf.drain(..used);
        if seen.last_id >= m {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn order_book_snapshots_are_realistic_and_move_a_little() {
        let mut book = OrderBook::new();
        let a: Value = serde_json::from_str(&book.next()).unwrap();
        let b: Value = serde_json::from_str(&book.next()).unwrap();
        let len = a.to_string().len();
        assert!((1000..=4096).contains(&len), "{len} bytes");
        assert_ne!(a, b);
        assert_eq!(a["bids"].as_array().unwrap().len(), LEVELS);
        let changed = (0..LEVELS)
            .filter(|&i| a["bids"][i] != b["bids"][i] || a["asks"][i] != b["asks"][i])
            .count();
        assert!((1..=3).contains(&changed), "{changed} levels changed");
    }
}
