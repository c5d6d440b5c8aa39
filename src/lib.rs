//! pollbridge: a gateway that lets Ajax-polling web apps and WebSocket
//! clients share one live feed, in front of an existing backend.
//!
//! # Layout
//!
//! Layers, bottom first; a module imports only the layers below it
//! (`tests/layers.rs` keeps it so; docs/layout.md is the map):
//!
//! - [`protocol`]: the vocabulary — channel names, cursors and epochs, the
//!   transport label, the message envelope and its encodings for every
//!   transport, error answers. Imports nothing else of the crate.
//! - [`config`]: the configuration tree, its defaults, syntax checks and the
//!   command line (pure: files it names are read when the gateway is built).
//! - [`metrics`]: the Prometheus registry.
//! - [`net`]: socket metering, output limits, token buckets, per-address
//!   limits, TLS; [`migration`]: who still polls.
//! - [`http`]: response bodies and JSON answers.
//! - [`auth`]: who may subscribe, from which origins, and the admin checks;
//!   [`bus`]: the bus trait, the in-memory and Redis buses, this node's
//!   fan-out hub and the per-subscriber queues; [`proxy`]: the reverse proxy.
//! - [`gateway`]: the shared state every handler and session reaches.
//! - [`transport`]: WebSocket, long-poll, SSE; [`publish`]: publishing over HTTP.
//! - [`bridge`]: the legacy polling bridge (`[[bridge]]` routes).
//! - [`server`]: listeners, the public router, the admin API, the shutdown
//!   sequence.

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
