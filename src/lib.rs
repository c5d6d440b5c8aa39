//! pollbridge: a gateway that lets Ajax-polling web apps and WebSocket
//! clients share one live feed, in front of an existing backend.
//!
//! # Layout
//!
//! - [`config`]: the configuration tree, its defaults and the command line.
//! - [`server`]: listeners, per-connection HTTP/1.1, the public router, the
//!   admin API, byte-exact socket metering and the shutdown sequence.
//! - [`transport`]: the client transports (WebSocket, long-poll, SSE) and
//!   what they share.
//! - [`bus`]: the message bus trait, the in-memory and Redis buses, this
//!   node's fan-out hub and the per-subscriber queues.
//! - [`proxy`]: the reverse proxy to the upstream.
//! - [`bridge`]: the legacy polling bridge (`[[bridge]]` routes).
//! - [`auth`]: who may subscribe (tokens, backend delegation) and from which origins.
//! - [`metrics`]: the Prometheus registry.
//! - [`migration`]: who still polls (distinct pollers, top polling pages).
//! - [`gateway`]: the shared state every handler reaches.
//! - [`channel`], [`error`], [`http`]: names and cursors, error answers,
//!   HTTP helpers.

pub mod auth;
pub mod bridge;
pub mod bus;
pub mod config;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod migration;
pub mod net;
pub mod protocol;
pub mod proxy;
pub mod publish;
pub mod server;
pub mod transport;

pub use config::Config;
pub use gateway::Gateway;
pub use protocol::error;
pub use server::{run, App, Listeners};
