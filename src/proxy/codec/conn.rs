//! One keep-alive HTTP/1.1 connection to the upstream, spoken by the
//! request's own task through the codec: the request head written in one
//! `write`, its body (if any) streamed after it, the answer head parsed
//! from the connection's read buffer — no dispatcher, no channels, no task.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::answer::{self, AnswerHead};
use super::request::{chunk_size_line, encode_head, BodyFraming};
use crate::proxy::body::GuardedBody;

/// Read this much at a time (hyper's first read size).
const READ_CHUNK: usize = 8192;

/// A request as sent upstream.
pub type UpstreamRequest = http::Request<GuardedBody>;

/// One keep-alive connection to the upstream.
pub struct Upstream {
    pub(in crate::proxy) stream: TcpStream,
    /// Bytes read and not yet consumed; empty between requests.
    pub(in crate::proxy) buf: BytesMut,
    /// It served a request before: a request it failed to send may be
    /// retried on a fresh connection (the upstream closed it while idle).
    pub reused: bool,
    /// When it was last put back in the pool.
    pub idle_since: Instant,
}

/// Why an exchange gave no answer head.
#[derive(Debug)]
pub enum ExchangeError {
    /// Not one byte of the request reached the connection: it may be
    /// retried on another.
    Unsent(io::Error),
    Io(io::Error),
    /// The upstream closed the connection before a complete answer head.
    Closed,
    /// The client's request body failed (its fault slot says how).
    ClientBody,
    /// The request body did not match its `Content-Length`.
    BodyLength,
    /// The answer is not one the codec relays (see [`answer`]).
    Refused(&'static str),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Unsent(e) | ExchangeError::Io(e) => write!(f, "{e}"),
            ExchangeError::Closed => f.write_str("connection closed before the answer head"),
            ExchangeError::ClientBody => f.write_str("client request body failed"),
            ExchangeError::BodyLength => {
                f.write_str("request body does not match its Content-Length")
            }
            ExchangeError::Refused(why) => write!(f, "answer refused: {why}"),
        }
    }
}

/// The request going out: what is still to be written, and the body.
struct Outgoing {
    parts: VecDeque<Bytes>,
    framing: BodyFraming,
    /// Bytes the `Content-Length` still allows.
    left: u64,
    /// The body has ended (its last bytes queued).
    body_done: bool,
    wrote_any: bool,
}

impl Outgoing {
    fn complete(&self) -> bool {
        self.body_done && self.parts.is_empty()
    }

    /// Writes what is queued; `Ready(Ok)` once the queue is empty.
    fn poll_flush(&mut self, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.parts.is_empty() {
            let n = {
                let slices: [IoSlice<'_>; 4] = std::array::from_fn(|i| {
                    IoSlice::new(self.parts.get(i).map_or(&[][..], |b| &b[..]))
                });
                ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote_any = true;
            let mut left = n;
            while left > 0 {
                let Some(front) = self.parts.front_mut() else {
                    break;
                };
                let take = left.min(front.len());
                front.advance(take);
                left -= take;
                if front.is_empty() {
                    self.parts.pop_front();
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Queues the body's next frame; `Pending` when it has none yet.
    fn poll_body(
        &mut self,
        body: &mut GuardedBody,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Err(_)) => Poll::Ready(Err(ExchangeError::ClientBody)),
            Some(Ok(frame)) => {
                // Trailers are dropped (see `request`).
                let Ok(data) = frame.into_data() else {
                    return Poll::Ready(Ok(()));
                };
                if data.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                match self.framing {
                    BodyFraming::Length(_) => {
                        let len = data.len() as u64;
                        if len > self.left {
                            return Poll::Ready(Err(ExchangeError::BodyLength));
                        }
                        self.left -= len;
                        self.parts.push_back(data);
                    }
                    BodyFraming::Chunked => {
                        self.parts.push_back(chunk_size_line(data.len()));
                        self.parts.push_back(data);
                        self.parts.push_back(Bytes::from_static(b"\r\n"));
                    }
                    BodyFraming::None => {}
                }
                Poll::Ready(Ok(()))
            }
            None => {
                match self.framing {
                    BodyFraming::Length(_) if self.left > 0 => {
                        return Poll::Ready(Err(ExchangeError::BodyLength))
                    }
                    BodyFraming::Chunked => self.parts.push_back(Bytes::from_static(b"0\r\n\r\n")),
                    _ => {}
                }
                self.body_done = true;
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// Reads what is readable into `buf`: the number of bytes, 0 at the end
/// of the stream.
pub(in crate::proxy) fn poll_fill(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
    ready!(Pin::new(stream).poll_read(cx, &mut rb))?;
    let n = rb.filled().len();
    // SAFETY: `poll_read` initialised the first `n` spare bytes.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

impl Upstream {
    pub fn new(stream: TcpStream) -> Upstream {
        Upstream {
            stream,
            buf: BytesMut::new(),
            reused: false,
            idle_since: Instant::now(),
        }
    }

    /// Whether it can take a request now: nothing unread, and the upstream
    /// has neither closed it nor sent anything unasked. (tokio answers
    /// from the socket's cached readiness: no system call when nothing
    /// arrived.)
    pub fn usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.stream).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Writes `req` (its body streamed) and reads until the answer head.
    /// The boolean: the whole request went out (false when the answer came
    /// first, and the connection must not be reused).
    pub async fn exchange(
        &mut self,
        req: &mut UpstreamRequest,
    ) -> Result<(AnswerHead, bool), ExchangeError> {
        let body = req.body();
        let body_shape = (!body.is_end_stream()).then(|| body.size_hint().exact());
        let (head, framing) = encode_head(req.method(), req.uri(), req.headers(), body_shape);
        let mut out = Outgoing {
            parts: VecDeque::from([head.freeze()]),
            framing,
            left: match framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            body_done: framing == BodyFraming::None,
            wrote_any: false,
        };
        let method = req.method().clone();
        let body = req.body_mut();
        let Upstream { stream, buf, .. } = self;
        poll_fn(|cx| {
            // The request first: whatever can be written now.
            while !out.complete() {
                match out.poll_flush(stream, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) if !out.wrote_any => {
                        return Poll::Ready(Err(ExchangeError::Unsent(e)))
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
                    Poll::Pending => break,
                }
                if out.body_done {
                    break;
                }
                match out.poll_body(body, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            // Then the answer, which may come before the request is done.
            loop {
                match ready!(poll_fill(stream, buf, cx)) {
                    Ok(0) => return Poll::Ready(Err(ExchangeError::Closed)),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(ExchangeError::Io(e))),
                }
                match answer::parse(buf, &method) {
                    Ok(Some(head)) => return Poll::Ready(Ok((head, out.complete()))),
                    Ok(None) => {}
                    Err(why) => return Poll::Ready(Err(ExchangeError::Refused(why))),
                }
            }
        })
        .await
    }
}
