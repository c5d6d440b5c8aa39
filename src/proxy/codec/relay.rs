//! The answer's body on its way to the client, read from the upstream
//! connection by the task that writes it to the client (no task, no
//! channel). `Content-Length` bodies are relayed as they arrive (the client
//! gets the same length), chunked ones de-chunked and checked ([`Chunked`];
//! hyper's server chunks them again for the client), close-delimited ones
//! until the upstream closes. Once the body is complete the connection
//! goes back to the [`Pool`] if it may carry another request and nothing
//! follows the body; anything else closes it. A body that fails midway
//! (cut short, bad chunk framing) ends the client's answer with an error,
//! so the client's connection is closed too: a broken answer is never
//! passed on as a whole one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use super::answer::Framing;
use super::chunked::{Chunked, Step};
use super::conn::{poll_fill, Upstream};
use crate::http::{BoxError, StreamBody};
use crate::net::meter::ConnMeter;
use crate::proxy::pool::Pool;

/// Where the body is.
enum Progress {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

pub struct Relay {
    /// `None` once handed back (or given up).
    upstream: Option<Upstream>,
    progress: Progress,
    /// The connection may carry another request after this answer.
    keep_alive: bool,
    pool: Arc<Pool>,
}

/// Why the body failed midway.
#[derive(Debug, thiserror::Error)]
#[error("upstream answer body: {0}")]
struct BodyFailed(&'static str);

impl Relay {
    pub fn new(upstream: Upstream, framing: Framing, keep_alive: bool, pool: Arc<Pool>) -> Relay {
        let progress = match framing {
            Framing::Empty | Framing::Length(0) => Progress::Done,
            Framing::Length(n) => Progress::Length(n),
            Framing::Chunked => Progress::Chunked(Chunked::new()),
            Framing::Close => Progress::Close,
        };
        let mut relay = Relay {
            upstream: Some(upstream),
            progress,
            keep_alive,
            pool,
        };
        if matches!(relay.progress, Progress::Done) {
            relay.release();
        }
        relay
    }

    /// The body is complete: the connection goes back to the pool if it
    /// can take another request.
    fn release(&mut self) {
        self.progress = Progress::Done;
        if let Some(up) = self.upstream.take() {
            if self.keep_alive && up.buf.is_empty() {
                self.pool.put(up);
            }
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.progress = Progress::Done;
        self.upstream = None;
        Poll::Ready(Some(Err(Box::new(BodyFailed(why)))))
    }
}

impl StreamBody for Relay {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(up) = &mut this.upstream else {
                return Poll::Ready(None);
            };
            match &mut this.progress {
                Progress::Done => return Poll::Ready(None),
                Progress::Length(left) => {
                    if !up.buf.is_empty() {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(up.buf.len());
                        let data = up.buf.split_to(take).freeze();
                        *left -= take as u64;
                        if *left == 0 {
                            // The last bytes: hyper's server polls no further.
                            this.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Progress::Chunked(chunked) => match chunked.step(&mut up.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        this.release();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(why) => return this.fail(why),
                },
                Progress::Close => {
                    if !up.buf.is_empty() {
                        let data = up.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match poll_fill(&mut up.stream, &mut up.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if matches!(this.progress, Progress::Close) {
                        this.progress = Progress::Done;
                        this.upstream = None;
                        return Poll::Ready(None);
                    }
                    return this.fail("the upstream closed the connection before the body's end");
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return this.fail("reading from the upstream failed"),
            }
        }
    }

    fn remaining(&self) -> Option<usize> {
        match self.progress {
            Progress::Done => Some(0),
            Progress::Length(left) => usize::try_from(left).ok(),
            Progress::Chunked(_) | Progress::Close => None,
        }
    }

    /// A proxied body is the upstream's, not counted against the client's
    /// output limits (as before this type existed).
    fn attach_meter(&self, _meter: &Arc<ConnMeter>) {}
}
