//! The driver of a cleartext HTTP/1.1 public connection: reads each
//! request head itself, answers long-polls and SSE streams through the
//! public router without hyper, and hands the connection (with the bytes
//! already read) to hyper for anything else, for the rest of its life.
//!
//! Per request it keeps only what the answer needs: the head buffer
//! starts at 1 KiB, grows up to `limits.max_header_bytes` and is freed
//! once the head is parsed (bytes pipelined behind it are kept, bounded by
//! the same limit). While a poll is held or a stream is open the socket is
//! watched: the client closing drops the handler (the poll is released),
//! as hyper did.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::head::{self, Decision, Head};
use super::response::{chunk_size_line, encode_head, write_parts, Framing};
use crate::http::{RequestBody, Response};
use crate::net::meter::{ConnMeter, MeteredStream};
use crate::server::protocols::{Protocols, Version, PREFACE};
use crate::server::{public, App};
use crate::transport::longpoll_park::{Finished, ParkOffer};

type Stream = MeteredStream<TcpStream>;

/// The head buffer's first size; most heads of realtime GETs fit.
const FIRST_READ: usize = 1024;
/// How much a read grows the buffer of bytes that arrive while an answer
/// is pending (pipelined requests).
const WATCH_READ: usize = 512;

/// What comes next on the connection.
enum Next {
    Lean(Head),
    HandOver(Version),
    Close,
}

/// Serves one accepted cleartext public connection.
pub async fn serve(
    app: Arc<App>,
    protocols: Arc<Protocols>,
    mut stream: Stream,
    peer: SocketAddr,
    meter: Arc<ConnMeter>,
) {
    let mut buf = BytesMut::new();
    let mut first = true;
    // Declared after `stream`, so dropped (with any poll parked on it)
    // before the socket closes.
    let offer = ParkOffer::new(stream.get_ref().as_raw_fd(), meter.clone());
    loop {
        // No binding of the head (or of the request made from it) lives
        // past this statement: whatever does stays in the task's state
        // while a poll is parked, as the moved-from storage of a local.
        let next = match read_head(&app, &protocols, &mut stream, &mut buf, first).await {
            Next::Lean(head) => {
                // Only bytes pipelined behind the head stay; the buffer is freed.
                buf = BytesMut::from(&buf[head.len..]);
                let close = head.close;
                Ok((start_route(&app, head, peer, (&meter, &offer)), close))
            }
            Next::HandOver(version) => Err(Some(version)),
            Next::Close => Err(None),
        };
        let (route, close) = match next {
            Ok(lean) => lean,
            Err(Some(version)) => {
                stream.rewind(buf.freeze());
                return hand_over(&app, &protocols, version, stream, peer, meter).await;
            }
            Err(None) => return,
        };
        first = false;
        let keep = answer(&app, &mut stream, &mut buf, route, close, &offer).await;
        if !keep || close || app.shutdown.is_cancelled() {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// hyper's connection, boxed: its state must not size the lean
/// connection's task (every parked poll pays for that). Built and boxed
/// in a plain function: an async fn keeps a local future's storage for
/// the whole `.await` that consumes it, even once it is moved into a box.
fn hand_over<'a>(
    app: &'a Arc<App>,
    protocols: &'a Protocols,
    version: Version,
    stream: Stream,
    peer: SocketAddr,
    meter: Arc<ConnMeter>,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    let io = TokioIo::new(stream);
    Box::pin(super::super::serve_public(
        app, protocols, version, io, peer, meter, false,
    ))
}

/// Reads until the head at the start of `buf` is decided, within
/// `limits.header_read_timeout` (from the start of the wait, as hyper's
/// timer: an idle keep-alive connection is closed after it too). An idle
/// connection closes when the gateway shuts down.
async fn read_head(
    app: &App,
    protocols: &Protocols,
    stream: &mut Stream,
    buf: &mut BytesMut,
    first: bool,
) -> Next {
    let limits = &app.config.limits;
    let deadline = Instant::now() + limits.header_read_timeout;
    loop {
        if !buf.is_empty() {
            if first
                && protocols.cleartext_h2()
                && PREFACE.starts_with(&buf[..buf.len().min(PREFACE.len())])
            {
                if buf.len() >= PREFACE.len() {
                    return Next::HandOver(Version::Http2);
                }
            } else {
                match head::decide(buf, &app.config.prefix, limits.max_header_bytes) {
                    Decision::Lean(head) => return Next::Lean(head),
                    Decision::HandOver => return Next::HandOver(Version::Http1),
                    Decision::NeedMore => {}
                }
            }
        }
        if buf.len() == buf.capacity() {
            // Doubling from FIRST_READ, up to the head limit.
            let grow = buf.capacity().max(FIRST_READ);
            let left = limits.max_header_bytes.saturating_sub(buf.len());
            buf.reserve(grow.min(left).max(1));
        }
        let idle = buf.is_empty();
        // Biased, the read first: a request that is already there (a
        // polling client's next poll usually is) is read without setting
        // up the shutdown's wait (a lock in the token's tree, and another
        // to leave it).
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout_at(deadline, stream.read_buf(buf)) => read,
            _ = app.shutdown.cancelled(), if idle => return Next::Close,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // Timed out (hyper closes without an answer), closed, failed.
            _ => return Next::Close,
        }
    }
}

/// A lean request's answer, being decided by the public router. Boxed:
/// the router's future is large and lives only until the answer is
/// decided; inline it would size the connection's task (so every parked
/// poll and open stream) for the rest of its life.
type Route = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Starts routing a lean request.
fn start_route(
    app: &Arc<App>,
    head: Head,
    peer: SocketAddr,
    (meter, offer): (&Arc<ConnMeter>, &ParkOffer),
) -> Route {
    let mut req = http::Request::new(RequestBody::Empty);
    *req.uri_mut() = head.uri;
    *req.headers_mut() = head.headers;
    if !head.close {
        // A poll that must wait may park on this connection.
        req.extensions_mut().insert(offer.clone());
    }
    Box::pin(public::route(app.clone(), req, peer, meter.clone(), false))
}

/// Answers one lean request; false when the connection must close.
async fn answer(
    app: &App,
    stream: &mut Stream,
    buf: &mut BytesMut,
    route: Route,
    close: bool,
    offer: &ParkOffer,
) -> bool {
    let limit = app.config.limits.max_header_bytes;
    // A block, so that the answer's storage ends before a parked poll is
    // held (the handler that parked it returned an unused answer).
    {
        let Some(resp) = watching(stream, buf, limit, route).await else {
            return false;
        };
        if !offer.is_parked() {
            // hyper ends a connection after the answer in flight at shutdown.
            let close = close || app.shutdown.is_cancelled();
            return write_response(stream, buf, limit, resp, close)
                .await
                .is_ok();
        }
    }
    hold(app, stream, buf, offer).await
}

/// Holds the poll parked on `offer` (`transport::longpoll_park`): waits
/// for the client's next request or close, the poll's deadline, the
/// gateway's shutdown or an event only the task handles, then finishes
/// the poll; false when the connection must close.
async fn hold(app: &App, stream: &mut Stream, buf: &mut BytesMut, offer: &ParkOffer) -> bool {
    let limit = app.config.limits.max_header_bytes;
    let shutdown = app.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        let room = buf.len() < limit;
        tokio::select! {
            biased;
            () = poll_fn(|cx| offer.poll_event(cx)) => break,
            () = &mut shutdown => break,
            ready = stream.get_ref().readable(), if room => {
                if ready.is_err() {
                    return false;
                }
            }
        }
        if offer.answered() {
            // The client's next request (or its close) is `read_head`'s.
            break;
        }
        if read_arrived(stream, buf) != Some(true) {
            return false;
        }
    }
    let close = app.shutdown.is_cancelled();
    // One boxed write, so no part of the finished poll is kept in the
    // task's state beside the parked one's.
    let write = match offer.finish() {
        None | Some(Finished::Answered(None)) => return true,
        Some(Finished::Answered(Some(rest))) => Box::pin(write_tail(stream, rest)),
        Some(Finished::Respond(resp)) => write_response(stream, buf, limit, resp, close),
    };
    write.await.is_ok()
}

/// Writes the tail of an answer the publisher wrote in part.
async fn write_tail(stream: &mut Stream, rest: Bytes) -> std::io::Result<()> {
    write_parts(stream, &mut [rest]).await
}

/// Runs `fut` while watching the socket: bytes that arrive are kept (up
/// to `limit`); `None` when the client closed or the socket failed.
async fn watching<F: Future>(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limit: usize,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let room = buf.len() < limit;
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            ready = stream.get_ref().readable(), if room => ready.ok()?,
        }
        if !read_arrived(stream, buf)? {
            return None;
        }
    }
}

/// Takes what is readable now without waiting; false at end of stream.
fn read_arrived(stream: &mut Stream, buf: &mut BytesMut) -> Option<bool> {
    use std::task::{Context, Poll};
    buf.reserve(WATCH_READ);
    let spare = buf.spare_capacity_mut();
    let mut rb = ReadBuf::uninit(&mut spare[..WATCH_READ]);
    let waker = futures_util::task::noop_waker_ref();
    let mut cx = Context::from_waker(waker);
    match Pin::new(&mut *stream).poll_read(&mut cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            // SAFETY: poll_read initialised the first `n` spare bytes.
            unsafe { buf.set_len(buf.len() + n) };
            Some(n > 0)
        }
        Poll::Ready(Err(_)) => None,
        // Readiness was spurious: wait for the next.
        Poll::Pending => Some(true),
    }
}

/// Writes the answer: head, then the body as its frames come, watching
/// the socket meanwhile. Boxed for the same reason as [`hand_over`]: a
/// parked poll answered by its publisher never writes through here, and
/// must not carry this state.
fn write_response<'a>(
    stream: &'a mut Stream,
    buf: &'a mut BytesMut,
    limit: usize,
    resp: Response,
    close: bool,
) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>> {
    Box::pin(write_answer(stream, buf, limit, resp, close))
}

async fn write_answer(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limit: usize,
    resp: Response,
    close: bool,
) -> std::io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let framing = Framing::of(parts.status, body.size_hint().exact());
    let head = encode_head(parts.status, &parts.headers, framing, close);
    drop(parts);
    if framing == Framing::NoBody || body.is_end_stream() {
        return write_parts(stream, &mut [head, end_of(framing)]).await;
    }
    let mut pending_head = Some(head);
    loop {
        let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let Some(frame) = watching(stream, buf, limit, frame).await else {
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        };
        let data = match frame {
            None => {
                let head = pending_head.take().unwrap_or_default();
                return write_parts(stream, &mut [head, end_of(framing)]).await;
            }
            Some(Err(e)) => return Err(std::io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Trailers are not sent; an empty chunk would end the body.
                _ => continue,
            },
        };
        let head = pending_head.take().unwrap_or_default();
        match framing {
            // Already chunk-framed (an SSE stream's publisher-written tail).
            Framing::Chunked if body.prechunked() => write_parts(stream, &mut [head, data]).await?,
            Framing::Chunked => {
                let size = chunk_size_line(data.len());
                write_parts(stream, &mut [head, size, data, Bytes::from_static(b"\r\n")]).await?
            }
            _ => write_parts(stream, &mut [head, data]).await?,
        }
        if framing != Framing::Chunked && body.is_end_stream() {
            return Ok(());
        }
    }
}

/// What ends a body: the last chunk of a chunked one, nothing otherwise.
fn end_of(framing: Framing) -> Bytes {
    match framing {
        Framing::Chunked => Bytes::from_static(b"0\r\n\r\n"),
        _ => Bytes::new(),
    }
}
