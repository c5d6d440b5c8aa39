//! A client's request body on its way to the upstream, with two guards:
//!
//! - **Pace.** The body must be complete by `proxy.body_timeout` after the
//!   head, extended by one second per `proxy.body_min_rate` bytes received
//!   (Apache's `RequestReadTimeout body=…,MinRate=…`). One byte every 4 s
//!   used to hold the client and an upstream connection for as long as the
//!   client liked; a steady upload of any size still goes through.
//! - **Blame.** When the body fails (too slow, or malformed chunked
//!   framing), that is recorded, so the proxy answers the client's fault
//!   as one (408 / 400, counted as 4xx, logged at debug) instead of as
//!   `502 upstream_unreachable`.
//!
//! Failing the body makes hyper's client abort the upstream request (its
//! connection is closed, not pooled). Bodiless requests (most of them)
//! carry no guard and allocate nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::http::{BoxError, RequestBody};
use crate::protocol::error::ApiError;

/// How fast a proxied request body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Time allowed before any byte has to count.
    pub grace: Duration,
    /// Bytes per second that each buy one more second; 0: the whole body
    /// within `grace`.
    pub min_rate: u64,
}

impl Pace {
    /// The deadline for a body that started at `start` and has delivered
    /// `received` bytes so far.
    fn deadline(&self, start: Instant, received: u64) -> Instant {
        let earned = match self.min_rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs(received / rate),
        };
        start
            .checked_add(self.grace.saturating_add(earned))
            .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365))
    }
}

/// Why the client's body failed, as the proxy will answer it.
#[derive(Debug, Clone)]
pub enum ClientBodyFault {
    /// Slower than [`Pace`] allows.
    TooSlow { received: u64, elapsed: Duration },
    /// Not a valid body (bad chunked framing, cut short, …).
    Malformed(String),
}

impl ClientBodyFault {
    pub fn to_error(&self) -> ApiError {
        match self {
            ClientBodyFault::TooSlow { received, elapsed } => ApiError::BodyTooSlow(format!(
                "the request body arrived too slowly ({received} bytes in {elapsed:.1?}; see proxy.body_timeout and proxy.body_min_rate)"
            )),
            ClientBodyFault::Malformed(why) => {
                ApiError::BadRequest(format!("malformed request body: {why}"))
            }
        }
    }
}

/// Where the body reports its fault; read by the proxy after the upstream
/// request failed.
pub type FaultSlot = Arc<OnceLock<ClientBodyFault>>;

/// The error the body hands hyper's client (which then aborts the request).
#[derive(Debug, thiserror::Error)]
#[error("client request body failed")]
struct ClientBodyFailed;

struct Guard {
    pace: Pace,
    start: Instant,
    received: u64,
    /// Fires at the deadline for what had arrived when it was last set;
    /// re-armed (not failed) when more has arrived since.
    timer: Pin<Box<Sleep>>,
    fault: FaultSlot,
}

/// The request body as sent upstream.
pub struct GuardedBody {
    inner: RequestBody,
    /// None for a body that is empty from the start.
    guard: Option<Box<Guard>>,
}

impl GuardedBody {
    /// Wraps a client's body; the returned slot is filled if it fails.
    pub fn new(inner: RequestBody, pace: Pace) -> (GuardedBody, Option<FaultSlot>) {
        if inner.is_end_stream() {
            return (GuardedBody { inner, guard: None }, None);
        }
        let start = Instant::now();
        let fault = FaultSlot::default();
        let guard = Guard {
            pace,
            start,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(pace.deadline(start, 0))),
            fault: fault.clone(),
        };
        let body = GuardedBody {
            inner,
            guard: Some(Box::new(guard)),
        };
        (body, Some(fault))
    }
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(guard), Some(data)) = (&mut this.guard, frame.data_ref()) {
                    guard.received = guard.received.saturating_add(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(guard) = &this.guard {
                    let _ = guard.fault.set(ClientBodyFault::Malformed(e.to_string()));
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some(guard) = &mut this.guard else {
                    return Poll::Pending;
                };
                while guard.timer.as_mut().poll(cx).is_ready() {
                    let due = guard.pace.deadline(guard.start, guard.received);
                    if due <= Instant::now() {
                        let _ = guard.fault.set(ClientBodyFault::TooSlow {
                            received: guard.received,
                            elapsed: guard.start.elapsed(),
                        });
                        return Poll::Ready(Some(Err(Box::new(ClientBodyFailed))));
                    }
                    guard.timer.as_mut().reset(due);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_min_rate_worth_of_bytes_buys_a_second() {
        let start = Instant::now();
        let pace = Pace {
            grace: Duration::from_secs(10),
            min_rate: 1024,
        };
        assert_eq!(pace.deadline(start, 0), start + Duration::from_secs(10));
        assert_eq!(pace.deadline(start, 1023), start + Duration::from_secs(10));
        assert_eq!(
            pace.deadline(start, 10 * 1024),
            start + Duration::from_secs(20)
        );
        let whole = Pace {
            grace: Duration::from_secs(3),
            min_rate: 0,
        };
        assert_eq!(
            whole.deadline(start, u64::MAX),
            start + Duration::from_secs(3)
        );
        // No overflow however much arrives or however long the grace.
        let huge = Pace {
            grace: Duration::MAX,
            min_rate: 1,
        };
        let _ = huge.deadline(start, u64::MAX);
    }
}
