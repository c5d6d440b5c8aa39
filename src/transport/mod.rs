//! Client transports: WebSocket, long-poll, server-sent events. Each reads
//! the bus through [`Bus`](crate::bus::Bus) and a
//! [`SubscriberQueue`](crate::bus::SubscriberQueue); the pieces they share
//! (cursor parsing, delivery accounting, duplicate suppression) live here.

pub mod delta;
pub mod longpoll;
pub mod params;
pub mod replay;
pub mod sse;
pub mod throttle;
pub mod websocket;
