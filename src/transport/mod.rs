//! Client transports: WebSocket, long-poll, server-sent events. Each reads
//! the bus through [`Bus`](crate::bus::Bus) and a
//! [`SubscriberQueue`](crate::bus::SubscriberQueue); the pieces they share
//! (cursor parsing, delivery accounting, duplicate suppression) live here.

pub mod longpoll;
pub mod params;
pub mod replay;
pub mod sse;
mod sse_gzip;
pub mod throttle;
pub mod websocket;
