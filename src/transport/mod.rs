//! Client transports: WebSocket, long-poll, server-sent events. Each reads
//! the bus through [`Bus`](crate::bus::Bus) and a
//! [`SubscriberQueue`](crate::bus::SubscriberQueue); the pieces they share
//! (cursor parsing, delivery accounting, duplicate suppression) live here.

pub mod cors;
pub mod delta;
pub mod longpoll;
pub mod longpoll_park;
pub mod params;
pub mod replay;
pub mod sse;
mod sse_compressed;
mod sse_direct;
pub mod stitch;
pub mod throttle;
pub mod websocket;

use crate::gateway::Gateway;
use crate::protocol::error::ApiError;
use crate::protocol::Transport;

/// Admission control for a new session (WebSocket or SSE).
pub fn admit(gw: &Gateway, transport: Transport) -> Result<(), ApiError> {
    gw.admission.admit().map_err(|overloaded| {
        gw.metrics.transport(transport).admission_refused.inc();
        ApiError::Overloaded(overloaded.retry_after)
    })
}
