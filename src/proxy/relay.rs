//! The upstream's answer body on its way to the client. Polling it drives
//! the upstream connection too (no task of its own, see
//! [`upstream`](super::upstream)); once the body is complete the
//! connection goes back to the [`Pool`] if it is idle and open, and is
//! closed otherwise (a client that left mid-body, an upstream that said
//! `Connection: close` or failed).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;

use super::pool::Pool;
use super::upstream::Upstream;
use crate::http::{BoxError, StreamBody};
use crate::net::meter::ConnMeter;

pub struct Relay {
    incoming: Incoming,
    /// `None` once handed back (or given up).
    upstream: Option<Upstream>,
    pool: Arc<Pool>,
}

impl Relay {
    pub fn new(incoming: Incoming, upstream: Upstream, pool: Arc<Pool>) -> Relay {
        Relay {
            incoming,
            upstream: Some(upstream),
            pool,
        }
    }

    /// The body is complete: the connection goes back to the pool if it
    /// can take another request. Usually the poll that delivered the end
    /// of the body left it idle already; if not, it is polled once more.
    /// (Taking it from the pool polls it anyway, for a close meanwhile.)
    fn release(&mut self) {
        if let Some(mut up) = self.upstream.take() {
            if up.idle_now() || up.usable() {
                self.pool.put(up);
            }
        }
    }
}

impl StreamBody for Relay {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(up) = &mut this.upstream {
            up.drive(cx);
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.incoming.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.upstream = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn remaining(&self) -> Option<usize> {
        self.incoming
            .size_hint()
            .exact()
            .and_then(|n| usize::try_from(n).ok())
    }

    /// A proxied body is the upstream's, not counted against the client's
    /// output limits (as before this type existed).
    fn attach_meter(&self, _meter: &Arc<ConnMeter>) {}
}

impl Drop for Relay {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended (a
        // Content-Length reached, or an empty body it never polls).
        if self.incoming.is_end_stream() {
            self.release();
        }
    }
}
