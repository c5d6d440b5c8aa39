//! Configuration: one serde struct tree with documented defaults.
//!
//! Values come from four layers, later ones winning: the embedded defaults,
//! the TOML file (`--config`), `POLLBRIDGE_*` environment variables and
//! command-line flags. The flag and environment layers are merged into the
//! file's TOML table *before* deserialising (see [`cli`]), so every value,
//! whatever its source, goes through the same parser and the same error
//! message naming its key.
//!
//! Config is the layer under everything but the vocabulary (`channel`): it
//! parses and checks syntax only. Files it names (TLS certificate and key,
//! the JWT public key, the admin token file) are read, and Redis and the
//! upstream are connected to, when the gateway is built. The URL and `Host`
//! syntax helpers live here ([`redis_url`], [`upstream`], [`host`]) so the
//! layers above call down into config, never the reverse.

mod admin;
mod auth;
mod bridge;
mod bridge_auth;
pub mod cli;
mod client_limits;
mod compression;
mod demo;
mod flags;
mod history;
pub mod host;
mod limits;
mod load;
mod migration;
mod proxy;
mod publish;
mod redis;
pub mod redis_url;
mod rules;
mod shutdown;
mod tls;
mod transports;
pub mod upstream;
mod validate;
mod workers;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use admin::AdminConfig;
pub use auth::AuthConfig;
pub use bridge::{BridgeMode, BridgeRoute};
pub use bridge_auth::BridgeAuthMode;
pub use client_limits::WsClientLimits;
pub use compression::{CompressionConfig, Http2Config};
pub use demo::DemoConfig;
pub use history::HistoryConfig;
pub use limits::LimitsConfig;
pub use migration::MigrationConfig;
pub use proxy::ProxyConfig;
pub use publish::PublishConfig;
pub use redis::{PubSubMode, RedisConfig};
pub use rules::{glob_match, ChannelAuth, ChannelMode, ChannelRule, ChannelRules, ResolvedRule};
pub use shutdown::ShutdownConfig;
pub use tls::TlsConfig;
pub use transports::{LongPollConfig, SseConfig, WebSocketConfig, WsCompression};
pub use validate::ConfigProblem;

/// The whole configuration. Every field has a default, so an empty file (or
/// no file) gives a working gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Public listener: client transports under `prefix` and the reverse proxy.
    /// Default: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener: metrics, health, publishing. Default: `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Origin, Host and token checks of the admin listener.
    pub admin: AdminConfig,
    /// The backend every non-gateway path is proxied to (`http://host:port`).
    /// Default: none (such paths answer 404).
    pub upstream: Option<String>,
    /// Path prefix of the client transports. Default: `/rt`.
    pub prefix: String,
    /// Message bus: `memory` (one process), or a Redis shared by every node:
    /// `redis://[[user]:password@]host[:port][/db]`, `rediss://…` for TLS
    /// (see `[redis]`). Default: `memory`.
    pub bus: String,
    pub redis: RedisConfig,
    /// Log filter when `RUST_LOG` is not set (`error`..`trace`). Default: `info`.
    pub log_level: String,
    /// Worker threads of the runtime, each also a fan-out shard writing its
    /// share of every channel's subscribers (1..=1024). Default: none (the
    /// number of cores).
    pub workers: Option<usize>,
    pub history: HistoryConfig,
    pub limits: LimitsConfig,
    pub websocket: WebSocketConfig,
    pub longpoll: LongPollConfig,
    pub sse: SseConfig,
    /// gzip and brotli on HTTP answers.
    pub compression: CompressionConfig,
    /// HTTP/2 on the public listener.
    pub http2: Http2Config,
    pub proxy: ProxyConfig,
    pub publish: PublishConfig,
    pub shutdown: ShutdownConfig,
    pub demo: DemoConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub migration: MigrationConfig,
    /// Serve a WebSocket echo endpoint at `{prefix}/echo` (same session code
    /// as subscribers), for the Autobahn conformance suite. Default: false.
    pub conformance_echo: bool,
    /// Per-channel rules, first match wins.
    pub channels: Vec<ChannelRule>,
    /// Legacy polling bridge routes (`[[bridge]]`).
    #[serde(rename = "bridge")]
    pub bridges: Vec<BridgeRoute>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin: AdminConfig::default(),
            upstream: None,
            prefix: "/rt".into(),
            bus: "memory".into(),
            redis: RedisConfig::default(),
            log_level: "info".into(),
            workers: None,
            history: HistoryConfig::default(),
            limits: LimitsConfig::default(),
            websocket: WebSocketConfig::default(),
            longpoll: LongPollConfig::default(),
            sse: SseConfig::default(),
            compression: CompressionConfig::default(),
            http2: Http2Config::default(),
            proxy: ProxyConfig::default(),
            publish: PublishConfig::default(),
            shutdown: ShutdownConfig::default(),
            demo: DemoConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            migration: MigrationConfig::default(),
            conformance_echo: false,
            channels: Vec::new(),
            bridges: Vec::new(),
        }
    }
}
