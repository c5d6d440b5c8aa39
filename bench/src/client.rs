//! The client worker process (`pollbridge-bench client-worker …`, started
//! by the orchestrator, never by hand): `--conns` connections of one kind
//! on a current-thread tokio runtime, raw TCP sockets, hand-rolled
//! framing (wire.rs), one read buffer per connection and no allocation
//! per message.
//!
//! Line protocol with the orchestrator. Stdout: `connected {json}` once
//! every connection attempt has finished, `result {json}` once every
//! connection has what it expected (or on `stop`). Stdin: `go` starts the
//! request load of `--kind http`, `stop` reports and exits, EOF exits.
//! The worker also exits by itself at `--deadline-secs`.

use std::cell::{Cell, RefCell};
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::wire::{self, Frame, Stamp};

/// What each connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// WebSocket subscriber.
    Ws,
    /// Server-sent events subscriber.
    Sse,
    /// Long-poll loop (`since=` the last id seen).
    Lp,
    /// Nchan's long-poll loop (`If-Modified-Since` / `If-None-Match` from
    /// the last answer's `Last-Modified` / `Etag`; one message per answer).
    NchanLp,
    /// Keep-alive GET requests, one at a time per connection.
    Http,
}

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "pollbridge-bench client-worker")]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// Server address(es); connection i goes to the (i mod count)-th.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addr: Vec<SocketAddr>,
    /// Request path (long-poll: without the query).
    #[arg(long)]
    pub path: String,
    #[arg(long)]
    pub conns: usize,
    /// Messages each connection expects (ws/sse/lp); requests in all (http).
    #[arg(long, default_value_t = 0)]
    pub expect: u64,
    /// Source addresses, used round-robin.
    #[arg(long, value_delimiter = ',')]
    pub src: Vec<Ipv4Addr>,
    /// New connections per second.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    #[arg(long, default_value_t = 600)]
    pub deadline_secs: u64,
    /// Long-poll `timeout=` in seconds.
    #[arg(long, default_value_t = 60)]
    pub poll_timeout: u64,
    /// WebSocket: read nothing until `go` (with a 1 MiB receive buffer to
    /// hold what arrives meanwhile), so the clients use no CPU while the
    /// gateway fans out (`fanout-span`).
    #[arg(long)]
    pub hold_reads: bool,
    /// WebSocket: offer permessage-deflate and inflate compressed frames.
    #[arg(long)]
    pub deflate: bool,
}

/// Largest frame or response accepted.
const MAX_MESSAGE: usize = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Errors kept verbatim in the result (the rest are only counted).
const ERRORS_KEPT: usize = 5;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Default)]
struct Counts {
    connected: u64,
    failed: u64,
    /// Connections that ended (EOF, close frame, error) after connecting.
    ended: u64,
    done_conns: u64,
    received: u64,
    duplicates: u64,
    gaps: u64,
    bytes_in: u64,
    bytes_out: u64,
    polls: u64,
    empty_polls: u64,
    first_rx_us: u64,
    last_rx_us: u64,
    errors: Vec<String>,
    error_count: u64,
}

struct Shared {
    args: WorkerArgs,
    counts: RefCell<Counts>,
    /// Messages (or responses) received per connection.
    per_conn: RefCell<Vec<u64>>,
    hist: RefCell<Histogram<u64>>,
    handshakes: Semaphore,
    attempts_over: Notify,
    all_done: Notify,
    go: watch::Receiver<bool>,
    /// Requests not yet claimed by an http connection.
    unclaimed: Cell<u64>,
    /// One inflater for the worker's compressed frames (no context
    /// takeover from the gateway: reset after each message).
    inflater: RefCell<flate2::Decompress>,
}

impl Shared {
    fn error(&self, what: String) {
        let mut c = self.counts.borrow_mut();
        c.error_count += 1;
        if c.errors.len() < ERRORS_KEPT {
            c.errors.push(what);
        }
    }

    fn attempt_finished(&self, ok: bool) {
        let mut c = self.counts.borrow_mut();
        if ok {
            c.connected += 1;
        } else {
            c.failed += 1;
        }
        if c.connected + c.failed == self.args.conns as u64 {
            self.attempts_over.notify_one();
            self.check_done(&c);
        }
    }

    fn check_done(&self, c: &Counts) {
        let attempts_over = c.connected + c.failed == self.args.conns as u64;
        let done = match self.args.kind {
            Kind::Http => c.received >= self.args.expect || c.ended >= c.connected,
            _ => c.done_conns + c.ended >= c.connected,
        };
        if attempts_over && done {
            self.all_done.notify_one();
        }
    }

    /// Connection `i` ended; it counts against completion only if it
    /// ended short of what it expected.
    fn conn_ended(&self, i: usize) {
        let finished = match self.args.kind {
            Kind::Http => false,
            _ => self.per_conn.borrow()[i] >= self.args.expect,
        };
        let mut c = self.counts.borrow_mut();
        if !finished {
            c.ended += 1;
        }
        self.check_done(&c);
    }

    fn record_latency(&self, us: u64) {
        let _ = self.hist.borrow_mut().record(us.clamp(1, 60_000_000));
    }

    /// One envelope arrived on connection `i`, `now` being its read time.
    fn on_stamp(&self, i: usize, last_id: &mut u64, stamp: Stamp, now: u64) {
        let mut c = self.counts.borrow_mut();
        if stamp.id <= *last_id {
            c.duplicates += 1;
            return;
        }
        c.gaps += stamp.id - *last_id - 1;
        *last_id = stamp.id;
        c.received += 1;
        if c.first_rx_us == 0 {
            c.first_rx_us = now;
        }
        c.last_rx_us = c.last_rx_us.max(now);
        let mut per_conn = self.per_conn.borrow_mut();
        per_conn[i] += 1;
        if per_conn[i] == self.args.expect {
            c.done_conns += 1;
            self.check_done(&c);
        }
        drop(per_conn);
        drop(c);
        self.record_latency(now.saturating_sub(stamp.t_us));
    }

    fn bytes(&self, read: usize, written: usize) {
        let mut c = self.counts.borrow_mut();
        c.bytes_in += read as u64;
        c.bytes_out += written as u64;
    }

    fn result(&self) -> serde_json::Value {
        let c = self.counts.borrow();
        let per_conn = self.per_conn.borrow();
        let expect = self.args.expect;
        let (losses, min_per_conn) = match self.args.kind {
            Kind::Http => (expect.saturating_sub(c.received), c.received),
            _ => {
                let got: Vec<u64> = per_conn.iter().copied().collect();
                let losses: u64 = got.iter().map(|&n| expect.saturating_sub(n)).sum();
                (losses, got.iter().copied().min().unwrap_or(0))
            }
        };
        let hist: Vec<[u64; 2]> = self
            .hist
            .borrow()
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect();
        json!({
            "conns": self.args.conns,
            "connected": c.connected,
            "failed": c.failed,
            "ended": c.ended,
            "received": c.received,
            "losses": losses,
            "min_per_conn": min_per_conn,
            "duplicates": c.duplicates,
            "gaps": c.gaps,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "polls": c.polls,
            "empty_polls": c.empty_polls,
            "first_rx_us": c.first_rx_us,
            "last_rx_us": c.last_rx_us,
            "error_count": c.error_count,
            "errors": c.errors,
            "hist": hist,
        })
    }
}

fn say(prefix: &str, value: &serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{prefix} {value}");
    let _ = out.flush();
}

/// Entry point of the `client-worker` subcommand.
pub fn main(args: WorkerArgs) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(args, cmd_rx))
}

async fn run(args: WorkerArgs, mut commands: mpsc::UnboundedReceiver<String>) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.deadline_secs);
    let (go_tx, go) = watch::channel(false);
    let shared = Rc::new(Shared {
        counts: RefCell::new(Counts::default()),
        per_conn: RefCell::new(vec![0; args.conns]),
        hist: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
        handshakes: Semaphore::new(args.inflight.max(1)),
        attempts_over: Notify::new(),
        all_done: Notify::new(),
        go,
        inflater: RefCell::new(flate2::Decompress::new(false)),
        unclaimed: Cell::new(if args.kind == Kind::Http {
            args.expect
        } else {
            0
        }),
        args,
    });
    if shared.args.conns == 0 {
        shared.attempts_over.notify_one();
        shared.all_done.notify_one();
    }
    tokio::task::spawn_local(ramp(shared.clone()));

    let mut reported = false;
    let mut announced = false;
    for _ in 0..1_000_000 {
        tokio::select! {
            _ = shared.attempts_over.notified(), if !announced => {
                announced = true;
                let c = shared.counts.borrow();
                say("connected", &json!({
                    "connected": c.connected, "failed": c.failed, "errors": c.errors,
                }));
            }
            _ = shared.all_done.notified(), if announced && !reported => {
                reported = true;
                say("result", &shared.result());
            }
            cmd = commands.recv() => match cmd.as_deref().map(str::trim) {
                Some("go") => { let _ = go_tx.send(true); }
                Some("stop") => {
                    if !reported {
                        say("result", &shared.result());
                    }
                    return 0;
                }
                Some(_) => {}
                None => return 0,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if !reported {
                    shared.error("worker deadline reached".into());
                    say("result", &shared.result());
                }
                return 0;
            }
        }
    }
    0
}

/// Opens the connections at `--ramp` per second.
async fn ramp(shared: Rc<Shared>) {
    let start = tokio::time::Instant::now();
    let per = Duration::from_secs_f64(1.0 / shared.args.ramp.max(1.0));
    for i in 0..shared.args.conns {
        tokio::time::sleep_until(start + per * i as u32).await;
        tokio::task::spawn_local(connection(shared.clone(), i));
    }
}

async fn connection(shared: Rc<Shared>, i: usize) {
    let opened = {
        let _permit = shared.handshakes.acquire().await.expect("never closed");
        tokio::time::timeout(CONNECT_TIMEOUT, open(&shared, i)).await
    };
    let (stream, buf, head) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            shared.error(format!("connect/handshake: {e}"));
            shared.attempt_finished(false);
            return;
        }
        Err(_) => {
            shared.error("connect/handshake timed out".into());
            shared.attempt_finished(false);
            return;
        }
    };
    shared.attempt_finished(true);
    let stream = if shared.args.hold_reads {
        match hold(&shared, stream).await {
            Ok(stream) => stream,
            Err(e) => {
                shared.error(format!("connection {i}: {e}"));
                shared.conn_ended(i);
                return;
            }
        }
    } else {
        stream
    };
    let outcome = match shared.args.kind {
        Kind::Ws => ws_loop(&shared, i, stream, buf, head.deflate_context).await,
        Kind::Sse => sse_loop(&shared, i, stream, buf, head).await,
        Kind::Lp => lp_loop(&shared, i, stream, buf).await,
        Kind::NchanLp => nchan_loop(&shared, i, stream, buf).await,
        Kind::Http => http_loop(&shared, stream, buf).await,
    };
    if let Err(e) = outcome {
        shared.error(format!("connection {i}: {e}"));
    }
    shared.conn_ended(i);
}

/// `--hold-reads`: keeps the socket out of the runtime's epoll until
/// `go`, so what the gateway writes meanwhile only queues in the receive
/// buffer. A registered socket would make every write wake this process's
/// one epoll instance, whose lock the gateway's threads would then fight
/// over (the kernel runs loopback receive processing on the sender's CPU):
/// clients on other machines share nothing of the kind.
async fn hold(shared: &Shared, stream: TcpStream) -> io::Result<TcpStream> {
    let parked = stream.into_std()?;
    let mut go = shared.go.clone();
    while !*go.borrow_and_update() {
        if go.changed().await.is_err() {
            break;
        }
    }
    TcpStream::from_std(parked)
}

/// Head facts the SSE loop needs.
#[derive(Default, Clone, Copy)]
struct Head {
    chunked: bool,
    /// WebSocket: the gateway keeps permessage-deflate context takeover
    /// (its answer lacks `server_no_context_takeover`), so this connection
    /// needs an inflater of its own, kept between messages.
    deflate_context: bool,
}

/// Connects (from the next source address) and, for ws/sse, completes the
/// handshake. Returns the stream and the bytes read past the head.
async fn open(shared: &Shared, i: usize) -> io::Result<(TcpStream, Vec<u8>, Head)> {
    let args = &shared.args;
    let socket = TcpSocket::new_v4()?;
    if args.hold_reads {
        // Everything that arrives before `go` waits here.
        socket.set_recv_buffer_size(1 << 20)?;
    }
    if !args.src.is_empty() {
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option buffer. Defers the port choice to
        // connect(), so each source address has its own 28k ports per
        // destination.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(SocketAddr::from((args.src[i % args.src.len()], 0)))?;
    }
    let addr = args.addr[i % args.addr.len()];
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let request = match args.kind {
        Kind::Ws => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            args.path,
            addr,
            if args.deflate {
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            } else {
                ""
            }
        ),
        Kind::Sse => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            args.path, addr
        ),
        Kind::Lp | Kind::NchanLp | Kind::Http => return Ok((stream, buf, Head::default())),
    };
    stream.write_all(request.as_bytes()).await?;
    let end = read_head(&mut stream, &mut buf).await?;
    shared.bytes(end, request.len());
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut response = httparse::Response::new(&mut headers);
    response
        .parse(&buf[..end])
        .map_err(|e| io::Error::other(format!("bad response head: {e}")))?;
    let status = response.code.unwrap_or(0);
    let wanted = if args.kind == Kind::Ws { 101 } else { 200 };
    if status != wanted {
        return Err(io::Error::other(format!(
            "status {status}, wanted {wanted}"
        )));
    }
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && wire::find(&h.value.to_ascii_lowercase(), b"chunked").is_some()
    });
    let deflate_context = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-extensions")
            && wire::find(&h.value.to_ascii_lowercase(), b"permessage-deflate").is_some()
            && wire::find(&h.value.to_ascii_lowercase(), b"server_no_context_takeover").is_none()
    });
    buf.drain(..end);
    Ok((
        stream,
        buf,
        Head {
            chunked,
            deflate_context,
        },
    ))
}

/// Reads until `buf` holds a complete HTTP head; returns its length.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    for _ in 0..10_000 {
        if let Some(end) = wire::head_end(buf) {
            return Ok(end);
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("response head over 64 KiB"));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Err(io::Error::other("response head never ended"))
}

/// Reads one whole response with a `Content-Length` body. Returns
/// (status, head length, body length); the bytes stay in `buf`.
async fn read_response(
    shared: &Shared,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<(u16, usize, usize)> {
    let before = buf.len();
    let head = read_head(stream, buf).await?;
    let (status, length) = wire::response_head(&buf[..head])?;
    if length > MAX_MESSAGE {
        return Err(io::Error::other(format!("response body of {length} bytes")));
    }
    buf.reserve(head + length);
    for _ in 0..100_000 {
        if buf.len() >= head + length {
            break;
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    if buf.len() < head + length {
        return Err(io::Error::other("response body never completed"));
    }
    shared.bytes(buf.len().saturating_sub(before), 0);
    Ok((status, head, length))
}

/// WebSocket: parse frames, answer pings, stop on close or EOF.
async fn ws_loop(
    shared: &Shared,
    i: usize,
    mut s: TcpStream,
    mut buf: Vec<u8>,
    deflate_context: bool,
) -> io::Result<()> {
    // The connection's own inflater when the gateway keeps its context.
    let mut own = deflate_context.then(|| flate2::Decompress::new(false));
    let mut last_id = 0;
    let mut pong = Vec::with_capacity(132);
    let mut closed = None;
    loop {
        let now = now_us();
        let mut pos = 0;
        pong.clear();
        loop {
            // RSV1: a permessage-deflate message (only if negotiated).
            let deflated = buf.len() > pos && buf[pos] & 0x40 != 0;
            match wire::next_frame(&buf[pos..], MAX_MESSAGE) {
                Ok(Some((frame, used))) => {
                    match frame {
                        Frame::Text(env) if deflated => {
                            let env = match own.as_mut() {
                                Some(d) => wire::inflate_keeping(env, d)?,
                                None => wire::inflate(env, &mut shared.inflater.borrow_mut())?,
                            };
                            if let Some(stamp) = wire::envelope_stamp(&env) {
                                shared.on_stamp(i, &mut last_id, stamp, now);
                            }
                        }
                        Frame::Text(env) => {
                            if let Some(stamp) = wire::envelope_stamp(env) {
                                shared.on_stamp(i, &mut last_id, stamp, now);
                            }
                        }
                        Frame::Ping(p) => wire::client_control_frame(10, p, &mut pong),
                        Frame::Close(code) => closed = Some(code.unwrap_or(1005)),
                        _ => {}
                    }
                    pos += used;
                }
                Ok(None) => break,
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        buf.drain(..pos);
        if !pong.is_empty() {
            s.write_all(&pong).await?;
            shared.bytes(0, pong.len());
        }
        if let Some(code) = closed {
            let got = shared.per_conn.borrow()[i];
            if got < shared.args.expect {
                return Err(io::Error::other(format!("closed with {code}")));
            }
            return Ok(());
        }
        let n = s.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        shared.bytes(n, 0);
    }
}

/// SSE: de-chunk, split events, read `data:` envelopes.
async fn sse_loop(
    shared: &Shared,
    i: usize,
    mut s: TcpStream,
    mut buf: Vec<u8>,
    head: Head,
) -> io::Result<()> {
    let mut last_id = 0;
    let mut events = Vec::with_capacity(4096);
    let mut dechunk = wire::Dechunk::default();
    loop {
        let now = now_us();
        let finished = if head.chunked {
            dechunk
                .feed(&buf, &mut events)
                .map_err(|_| io::Error::other("bad chunked encoding"))?
        } else {
            events.extend_from_slice(&buf);
            false
        };
        buf.clear();
        wire::take_sse_events(&mut events, |data| {
            if let Some(stamp) = wire::envelope_stamp(data) {
                shared.on_stamp(i, &mut last_id, stamp, now);
            }
        });
        if events.len() > MAX_MESSAGE {
            return Err(io::Error::other("SSE event never ended"));
        }
        if finished {
            return Ok(());
        }
        let n = s.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        shared.bytes(n, 0);
    }
}

/// Long-poll: poll `since=` the last id seen until everything expected
/// has arrived. Stays connected (idle) afterwards.
async fn lp_loop(shared: &Shared, i: usize, mut s: TcpStream, mut buf: Vec<u8>) -> io::Result<()> {
    let args = &shared.args;
    let mut request = Vec::with_capacity(256);
    let mut since = 0u64;
    let max_polls = args.expect * 4 + 1000;
    for _ in 0..max_polls {
        if shared.per_conn.borrow()[i] >= args.expect {
            // Stay connected, as a real client would, until the worker exits.
            return std::future::pending().await;
        }
        request.clear();
        request.extend_from_slice(b"GET ");
        request.extend_from_slice(args.path.as_bytes());
        request.extend_from_slice(b"?since=");
        wire::push_u64(&mut request, since);
        request.extend_from_slice(b"&timeout=");
        wire::push_u64(&mut request, args.poll_timeout);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: bench\r\n\r\n");
        s.write_all(&request).await?;
        shared.bytes(0, request.len());
        let (status, head, length) = read_response(shared, &mut s, &mut buf).await?;
        let now = now_us();
        if status != 200 {
            return Err(io::Error::other(format!("poll answered {status}")));
        }
        let mut got = 0;
        let mut last_id = since;
        let answer = wire::poll_answer(&buf[head..head + length], |stamp| {
            got += 1;
            shared.on_stamp(i, &mut last_id, stamp, now);
        })
        .ok_or_else(|| io::Error::other("poll answer without last_id"))?;
        {
            let mut c = shared.counts.borrow_mut();
            c.polls += 1;
            if got == 0 {
                c.empty_polls += 1;
            }
        }
        since = answer.max(last_id);
        buf.drain(..head + length);
    }
    Err(io::Error::other("poll limit reached"))
}

/// Nchan's long-poll: one message per answer, the cursor in the answer's
/// `Last-Modified` and `Etag`, sent back as `If-Modified-Since` and
/// `If-None-Match` (Nchan's protocol; the body is the envelope the bench
/// published). Stays connected (idle) once everything expected arrived.
async fn nchan_loop(
    shared: &Shared,
    i: usize,
    mut s: TcpStream,
    mut buf: Vec<u8>,
) -> io::Result<()> {
    let args = &shared.args;
    let mut request = Vec::with_capacity(256);
    let mut cursor = NchanCursor::default();
    let mut last_id = 0;
    let max_polls = args.expect * 4 + 1000;
    for _ in 0..max_polls {
        if shared.per_conn.borrow()[i] >= args.expect {
            return std::future::pending().await;
        }
        request.clear();
        request.extend_from_slice(b"GET ");
        request.extend_from_slice(args.path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nHost: bench\r\n");
        cursor.write_headers(&mut request);
        request.extend_from_slice(b"\r\n");
        s.write_all(&request).await?;
        shared.bytes(0, request.len());
        let (status, head, length) = read_response(shared, &mut s, &mut buf).await?;
        let now = now_us();
        let mut got = 0;
        match status {
            200 => {
                cursor.update(&buf[..head]);
                if let Some(stamp) = wire::envelope_stamp(&buf[head..head + length]) {
                    got += 1;
                    shared.on_stamp(i, &mut last_id, stamp, now);
                }
            }
            // Nothing new before Nchan's subscriber timeout.
            304 | 408 => {}
            other => return Err(io::Error::other(format!("nchan poll answered {other}"))),
        }
        {
            let mut c = shared.counts.borrow_mut();
            c.polls += 1;
            if got == 0 {
                c.empty_polls += 1;
            }
        }
        buf.drain(..head + length);
    }
    Err(io::Error::other("poll limit reached"))
}

/// Where an Nchan long-poller is: the last answer's `Last-Modified` and
/// `Etag` (none before the first message).
#[derive(Default)]
struct NchanCursor {
    last_modified: Vec<u8>,
    etag: Vec<u8>,
}

impl NchanCursor {
    fn write_headers(&self, out: &mut Vec<u8>) {
        if self.last_modified.is_empty() {
            return;
        }
        out.extend_from_slice(b"If-Modified-Since: ");
        out.extend_from_slice(&self.last_modified);
        out.extend_from_slice(b"\r\nIf-None-Match: ");
        out.extend_from_slice(&self.etag);
        out.extend_from_slice(b"\r\n");
    }

    /// Takes the cursor from a complete response head.
    fn update(&mut self, head: &[u8]) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if response.parse(head).is_err() {
            return;
        }
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("last-modified") {
                self.last_modified.clear();
                self.last_modified.extend_from_slice(h.value);
            } else if h.name.eq_ignore_ascii_case("etag") {
                self.etag.clear();
                self.etag.extend_from_slice(h.value);
            }
        }
    }
}

/// Keep-alive GETs, one at a time, until the shared request budget is
/// spent; latency is request written → response complete.
async fn http_loop(shared: &Shared, mut s: TcpStream, mut buf: Vec<u8>) -> io::Result<()> {
    let mut go = shared.go.clone();
    let _ = go.wait_for(|g| *g).await;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: bench\r\nUser-Agent: pollbridge-bench\r\n\r\n",
        shared.args.path
    );
    for _ in 0..shared.args.expect {
        let left = shared.unclaimed.get();
        if left == 0 {
            return std::future::pending().await;
        }
        shared.unclaimed.set(left - 1);
        let sent = Instant::now();
        s.write_all(request.as_bytes()).await?;
        shared.bytes(0, request.len());
        let (status, head, length) = read_response(shared, &mut s, &mut buf).await?;
        if status != 200 {
            return Err(io::Error::other(format!("request answered {status}")));
        }
        buf.drain(..head + length);
        shared.record_latency(sent.elapsed().as_micros() as u64);
        let now = now_us();
        let mut c = shared.counts.borrow_mut();
        c.received += 1;
        if c.first_rx_us == 0 {
            c.first_rx_us = now;
        }
        c.last_rx_us = now;
        shared.check_done(&c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchan_cursor_comes_from_the_last_answer() {
        let mut cursor = NchanCursor::default();
        let mut out = Vec::new();
        cursor.write_headers(&mut out);
        assert!(out.is_empty(), "no cursor before the first message");
        cursor.update(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nLast-Modified: Mon, 07 Dec 2026 10:52:49 GMT\r\nEtag: 3\r\n\r\n",
        );
        cursor.write_headers(&mut out);
        assert_eq!(
            out,
            b"If-Modified-Since: Mon, 07 Dec 2026 10:52:49 GMT\r\nIf-None-Match: 3\r\n"
        );
    }
}
