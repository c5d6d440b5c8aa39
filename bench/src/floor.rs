//! The floor servers (`pollbridge-bench floor-server …`, a child process
//! of the bench so `/proc` accounts its CPU apart): the least work a
//! server of each design can do for the same clients, so every gateway
//! figure can be read as a ratio.
//!
//! - `ws`: answers the handshake with a canned 101 and a `subscribed`
//!   frame, then never reads; per message batch it does **one `write()`
//!   of one pre-encoded buffer per connection** (1 frame, or `--batch`
//!   frames for the burst floor).
//! - `sse`: the same with a chunked `text/event-stream` head and one chunk
//!   per event.
//! - `lp`: a hand-rolled HTTP/1.1 keep-alive responder on `httparse`: a
//!   poll with nothing new after `since` is parked; the publisher answers
//!   every parked poll with one `write()` of a response encoded once.
//!   Per delivery: one read (the next poll) and one write.
//! - `upstream`: the proxy scenario's backend, a 100-byte `200` per GET.
//! - `proxy`: the proxy scenario's floor, the least a forwarding proxy can
//!   do: one keep-alive upstream connection per client connection; per
//!   request one read of the client's head, one write of it as it is to
//!   the upstream, one read of the response (head and `Content-Length`
//!   body) and one write of it to the client. No header rewriting, no
//!   pool: what any real proxy does on top is the gateway's to justify.
//!
//! All on one current-thread runtime. Stdin commands: `publish M RATE`
//! (answers `published {json}` when done), `stats` (answers
//! `stats {json}`); EOF exits. Ready line: `floor ready addr=IP:PORT`.

use std::cell::RefCell;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::client::now_us;
use crate::wire;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorMode {
    Ws,
    Sse,
    Lp,
    Upstream,
    Proxy,
}

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "pollbridge-bench floor-server")]
pub struct FloorArgs {
    #[arg(long, value_enum)]
    pub mode: FloorMode,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// The ~2 KB state value instead of padding (`wire::data`).
    #[arg(long)]
    pub state_payload: bool,
    /// Messages per write (the burst floor uses 10).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 600)]
    pub deadline_secs: u64,
    /// `proxy` mode: where requests are forwarded.
    #[arg(long)]
    pub upstream: Option<SocketAddr>,
}

/// Most messages in one long-poll answer (the gateway's default too).
const MAX_POLL_MESSAGES: usize = 1000;
const HEAD_LIMIT: usize = 16 * 1024;

#[derive(Default, Serialize)]
struct Counts {
    accepted: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// write() calls that sent bytes.
    writes: u64,
    /// Writes that hit a full socket buffer and had to wait.
    blocked_writes: u64,
    write_errors: u64,
    /// Messages handed to sockets.
    deliveries: u64,
    requests: u64,
    published: u64,
    /// Proxy mode: bytes to and from the upstream (not in `bytes_in` /
    /// `bytes_out`, which count the client side like the gateway's meter).
    upstream_bytes_in: u64,
    upstream_bytes_out: u64,
}

struct Floor {
    args: FloorArgs,
    /// ws/sse subscribers, past their handshake.
    streams: RefCell<Vec<Rc<TcpStream>>>,
    /// Parked polls and their cursors.
    waiting: RefCell<Vec<(Rc<TcpStream>, u64)>>,
    /// Every envelope published, id = index + 1 (lp only).
    history: RefCell<Vec<Vec<u8>>>,
    counts: RefCell<Counts>,
}

fn say(prefix: &str, value: &impl Serialize) {
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "{prefix} {}",
        serde_json::to_string(value).unwrap_or_default()
    );
    let _ = out.flush();
}

/// Entry point of the `floor-server` subcommand.
pub fn main(args: FloorArgs) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run(args, rx)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("floor-server: {e}");
            1
        }
    }
}

async fn run(args: FloorArgs, mut commands: mpsc::UnboundedReceiver<String>) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener = socket.listen(4096)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.deadline_secs);
    let floor = Rc::new(Floor {
        args,
        streams: RefCell::default(),
        waiting: RefCell::default(),
        history: RefCell::default(),
        counts: RefCell::default(),
    });
    println!("floor ready addr={}", listener.local_addr()?);
    let _ = io::stdout().flush();
    let accept_floor = floor.clone();
    tokio::task::spawn_local(async move {
        for _ in 0..u64::MAX {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            accept_floor.counts.borrow_mut().accepted += 1;
            tokio::task::spawn_local(serve(accept_floor.clone(), Rc::new(stream)));
        }
    });
    for _ in 0..1_000_000 {
        let line = tokio::select! {
            line = commands.recv() => line,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let Some(line) = line else { return Ok(()) };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["publish", m, rate] => {
                let (Ok(m), Ok(rate)) = (m.parse::<u64>(), rate.parse::<f64>()) else {
                    eprintln!("floor-server: bad publish command {line:?}");
                    continue;
                };
                let started = now_us();
                publish(&floor, m, rate).await;
                say(
                    "published",
                    &serde_json::json!({"messages": m, "started_us": started, "ended_us": now_us()}),
                );
            }
            ["stats"] => say("stats", &floor.stats()),
            _ => eprintln!("floor-server: unknown command {line:?}"),
        }
    }
    Ok(())
}

impl Floor {
    fn stats(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&*self.counts.borrow()).unwrap_or_default();
        v["subscribers"] = self.streams.borrow().len().into();
        v["waiting"] = self.waiting.borrow().len().into();
        v
    }

    /// One write() of `data`; waits only if the socket buffer is full.
    async fn write(&self, s: &TcpStream, data: &[u8]) -> io::Result<()> {
        self.write_counted(s, data, |c| &mut c.bytes_out).await
    }

    /// [`write`](Self::write), with the bytes counted where `bytes` says
    /// (the proxy floor's upstream side is not client traffic).
    async fn write_counted(
        &self,
        s: &TcpStream,
        data: &[u8],
        bytes: fn(&mut Counts) -> &mut u64,
    ) -> io::Result<()> {
        let mut sent = 0;
        for _ in 0..10_000 {
            match s.try_write(&data[sent..]) {
                Ok(n) => {
                    sent += n;
                    let mut c = self.counts.borrow_mut();
                    c.writes += 1;
                    *bytes(&mut c) += n as u64;
                    if sent == data.len() {
                        return Ok(());
                    }
                    c.blocked_writes += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counts.borrow_mut().blocked_writes += 1;
                }
                Err(e) => {
                    self.counts.borrow_mut().write_errors += 1;
                    return Err(e);
                }
            }
            tokio::time::timeout(Duration::from_secs(10), s.writable())
                .await
                .map_err(|_| io::Error::other("write stalled"))??;
        }
        Err(io::Error::other("write never completed"))
    }

    /// A long-poll answer with every message after `since`.
    fn answer(&self, since: u64, out: &mut Vec<u8>) -> u64 {
        let history = self.history.borrow();
        let from = (since as usize).min(history.len());
        let to = history.len().min(from + MAX_POLL_MESSAGES);
        let mut body = Vec::with_capacity(64 + (to - from) * 160);
        body.extend_from_slice(b"{\"messages\":[");
        for (k, env) in history[from..to].iter().enumerate() {
            if k > 0 {
                body.push(b',');
            }
            body.extend_from_slice(env);
        }
        body.extend_from_slice(b"],\"last_id\":");
        wire::push_u64(&mut body, to.max(since as usize) as u64);
        body.extend_from_slice(b",\"truncated\":false}");
        out.clear();
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ",
        );
        wire::push_u64(out, body.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&body);
        (to - from) as u64
    }
}

/// Reads one request head into `buf`; returns its length (0 on EOF).
async fn read_request(floor: &Floor, s: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    for _ in 0..100_000 {
        if let Some(end) = wire::head_end(buf) {
            floor.counts.borrow_mut().requests += 1;
            return Ok(end);
        }
        if buf.len() > HEAD_LIMIT {
            return Err(io::Error::other("request head too large"));
        }
        s.readable().await?;
        match s.try_read_buf(buf) {
            Ok(0) => return Ok(0),
            Ok(n) => floor.counts.borrow_mut().bytes_in += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("request head never ended"))
}

async fn serve(floor: Rc<Floor>, s: Rc<TcpStream>) {
    let mut buf = Vec::with_capacity(1024);
    let result = match floor.args.mode {
        FloorMode::Ws | FloorMode::Sse => subscribe(&floor, s, &mut buf).await,
        FloorMode::Lp => poll_loop(&floor, s, &mut buf).await,
        FloorMode::Upstream => upstream_loop(&floor, s, &mut buf).await,
        FloorMode::Proxy => proxy_loop(&floor, s, &mut buf).await,
    };
    if let Err(e) = result {
        if e.kind() != io::ErrorKind::ConnectionReset {
            eprintln!("floor-server: connection: {e}");
        }
    }
}

async fn subscribe(floor: &Floor, s: Rc<TcpStream>, buf: &mut Vec<u8>) -> io::Result<()> {
    if read_request(floor, &s, buf).await? == 0 {
        return Ok(());
    }
    let mut answer = Vec::with_capacity(256);
    if floor.args.mode == FloorMode::Ws {
        // The client does not check the accept key; the floor does not
        // compute it (it is per connection, outside the measured phase).
        answer.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        );
        let subscribed = format!(
            "{{\"type\":\"subscribed\",\"channel\":\"{}\",\"last_id\":0,\"truncated\":false}}",
            floor.args.channel
        );
        wire::server_frame(1, subscribed.as_bytes(), &mut answer);
    } else {
        answer.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
              transfer-encoding: chunked\r\n\r\n",
        );
    }
    floor.write(&s, &answer).await?;
    floor.streams.borrow_mut().push(s);
    Ok(())
}

async fn poll_loop(floor: &Floor, s: Rc<TcpStream>, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut answer = Vec::with_capacity(512);
    for _ in 0..u64::MAX {
        let end = read_request(floor, &s, buf).await?;
        if end == 0 {
            return Ok(());
        }
        let since = {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            request
                .parse(&buf[..end])
                .map_err(|e| io::Error::other(format!("bad request: {e}")))?;
            let path = request.path.unwrap_or("/").as_bytes();
            wire::field_u64(path, b"since=")
        };
        buf.drain(..end);
        let last = floor.history.borrow().len() as u64;
        let since = since.unwrap_or(last);
        if since < last {
            let n = floor.answer(since, &mut answer);
            floor.counts.borrow_mut().deliveries += n;
            floor.write(&s, &answer).await?;
        } else {
            floor.waiting.borrow_mut().push((s.clone(), since));
        }
    }
    Ok(())
}

async fn upstream_loop(floor: &Floor, s: Rc<TcpStream>, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut answer =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n".to_vec();
    answer.resize(answer.len() + 100, b'x');
    for _ in 0..u64::MAX {
        let end = read_request(floor, &s, buf).await?;
        if end == 0 {
            return Ok(());
        }
        buf.drain(..end);
        floor.write(&s, &answer).await?;
        floor.counts.borrow_mut().deliveries += 1;
    }
    Ok(())
}

/// Reads one response (head and `Content-Length` body) into `buf`;
/// returns its length (0 on EOF before any byte).
async fn read_response(floor: &Floor, s: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut want = None;
    for _ in 0..100_000 {
        if want.is_none() {
            if let Some(end) = wire::head_end(buf) {
                let (_, length) = wire::response_head(&buf[..end])?;
                want = Some(end + length);
            } else if buf.len() > HEAD_LIMIT {
                return Err(io::Error::other("upstream response head too large"));
            }
        }
        if let Some(total) = want.filter(|&total| buf.len() >= total) {
            return Ok(total);
        }
        s.readable().await?;
        match s.try_read_buf(buf) {
            Ok(0) if buf.is_empty() => return Ok(0),
            Ok(0) => return Err(io::Error::other("upstream closed mid-response")),
            Ok(n) => floor.counts.borrow_mut().upstream_bytes_in += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("upstream response never ended"))
}

async fn proxy_loop(floor: &Floor, client: Rc<TcpStream>, buf: &mut Vec<u8>) -> io::Result<()> {
    let to = floor
        .args
        .upstream
        .ok_or_else(|| io::Error::other("proxy mode needs --upstream"))?;
    let upstream = TcpStream::connect(to).await?;
    upstream.set_nodelay(true)?;
    let mut answer = Vec::with_capacity(1024);
    for _ in 0..u64::MAX {
        let end = read_request(floor, &client, buf).await?;
        if end == 0 {
            return Ok(());
        }
        floor
            .write_counted(&upstream, &buf[..end], |c| &mut c.upstream_bytes_out)
            .await?;
        buf.drain(..end);
        let total = read_response(floor, &upstream, &mut answer).await?;
        if total == 0 {
            return Err(io::Error::other("upstream closed"));
        }
        floor.write(&client, &answer[..total]).await?;
        answer.drain(..total);
        floor.counts.borrow_mut().deliveries += 1;
    }
    Ok(())
}

/// Publishes `m` messages at `rate` per second, `--batch` at a time.
async fn publish(floor: &Floor, m: u64, rate: f64) {
    let batch = floor.args.batch.max(1) as u64;
    let batches = m.div_ceil(batch);
    let every = Duration::from_secs_f64(batch as f64 / rate.max(0.001));
    let start = tokio::time::Instant::now();
    let mut data = Vec::with_capacity(256);
    let mut env = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(4096);
    for b in 0..batches {
        tokio::time::sleep_until(start + every * b as u32).await;
        let t = now_us();
        let k = batch.min(m - b * batch);
        out.clear();
        for _ in 0..k {
            let id = {
                let mut c = floor.counts.borrow_mut();
                c.published += 1;
                c.published
            };
            data.clear();
            wire::data(
                t,
                floor.args.payload_bytes,
                floor.args.state_payload,
                &mut data,
            );
            env.clear();
            wire::envelope(&floor.args.channel, id, &data, &mut env);
            match floor.args.mode {
                FloorMode::Ws => wire::server_frame(1, &env, &mut out),
                FloorMode::Sse => wire::sse_chunk(id, &env, &mut out),
                FloorMode::Lp => floor.history.borrow_mut().push(env.clone()),
                FloorMode::Upstream | FloorMode::Proxy => {}
            }
        }
        match floor.args.mode {
            FloorMode::Ws | FloorMode::Sse => {
                let subscribers = floor.streams.borrow().len();
                for idx in 0..subscribers {
                    let s = floor.streams.borrow()[idx].clone();
                    if floor.write(&s, &out).await.is_ok() {
                        floor.counts.borrow_mut().deliveries += k;
                    }
                }
            }
            FloorMode::Lp => {
                let waiting = std::mem::take(&mut *floor.waiting.borrow_mut());
                // Parked polls nearly all share one cursor: encode once per cursor.
                let mut encoded_for = None;
                let mut n = 0;
                for (s, since) in &waiting {
                    if encoded_for != Some(*since) {
                        n = floor.answer(*since, &mut out);
                        encoded_for = Some(*since);
                    }
                    if floor.write(s, &out).await.is_ok() {
                        floor.counts.borrow_mut().deliveries += n;
                    }
                }
            }
            FloorMode::Upstream | FloorMode::Proxy => {}
        }
    }
}
