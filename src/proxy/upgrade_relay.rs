//! The answer body of a request that went through hyper's client (an
//! upgrade the upstream refused, a `CONNECT`) on its way to the client.
//! Polling it drives the upstream connection too (no task of its own, see
//! [`upstream`](super::upstream)); the connection is closed with it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;

use super::upstream::HyperUpstream;
use crate::http::{BoxError, StreamBody};
use crate::net::meter::ConnMeter;

pub struct HyperRelay {
    incoming: Incoming,
    /// `None` once the body ended (or failed).
    upstream: Option<HyperUpstream>,
}

impl HyperRelay {
    pub fn new(incoming: Incoming, upstream: HyperUpstream) -> HyperRelay {
        HyperRelay {
            incoming,
            upstream: Some(upstream),
        }
    }

    fn release(&mut self) {
        self.upstream = None;
    }
}

impl StreamBody for HyperRelay {
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
