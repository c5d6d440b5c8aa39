//! Configuration: one serde struct tree with documented defaults.
//!
//! Values come from four layers, later ones winning: the embedded defaults,
//! the TOML file (`--config`), `POLLBRIDGE_*` environment variables and
//! command-line flags. The flag and environment layers are merged into the
//! file's TOML table *before* deserialising (see [`cli`]), so every value,
//! whatever its source, goes through the same parser and the same error
//! message naming its key.

mod admin;
mod bridge;
mod bridge_auth;
pub mod cli;
mod client_limits;
mod history;
mod redis;
mod rules;
mod workers;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use admin::AdminConfig;
pub use bridge::BridgeMode;
use bridge::{
    bridge_route_problems, default_cursor_param, default_ignore_params, default_item_id,
    default_max_variants,
};
pub use bridge_auth::BridgeAuthMode;
pub use client_limits::WsClientLimits;
pub use history::HistoryConfig;
pub use redis::{PubSubMode, RedisConfig};
pub use rules::{glob_match, ChannelAuth, ChannelMode, ChannelRule, ChannelRules, ResolvedRule};

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

/// Limits that keep one client from costing the gateway without bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections on the public listener; past it new ones are
    /// answered 503 and closed. Default: 19000 (the open-file limit here is 20000).
    pub max_connections: usize,
    /// Largest published payload and largest WebSocket message from a
    /// client, in bytes. Default: 65536.
    pub max_message_bytes: usize,
    /// Messages queued per subscriber before a slow `stream` subscriber is
    /// disconnected. Default: 1024.
    pub queue_length: usize,
    /// Channels one WebSocket connection may subscribe to. Default: 64.
    pub max_subscriptions_per_connection: usize,
    /// Largest HTTP request head in bytes (request line + headers); larger
    /// heads are answered 431. Default: 16384.
    pub max_header_bytes: usize,
    /// A request head must arrive completely within this time (slowloris).
    /// Default: 10s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A publish body must arrive completely within this time. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open connections from one client address; past it new ones get 429
    /// and are closed. 0: no per-address limit. Default: 1000.
    pub max_connections_per_ip: usize,
    /// Long-polls per second from one client address (a burst of twice
    /// this is allowed); past it 429 with `Retry-After`. 0: unlimited.
    /// Default: 100.
    pub longpoll_rate_per_ip: u32,
    /// Proxies (CIDRs like `10.0.0.0/8`) whose `X-Forwarded-For` is
    /// trusted to name the client, for the per-address limits. Connections
    /// from them are not counted per address. Default: none.
    pub trusted_proxies: Vec<String>,
    /// New WebSocket and SSE sessions admitted per second, gateway-wide
    /// (a burst of one second's worth); past it `503` with a jittered
    /// `Retry-After`. 0: unlimited. Default: 2000.
    pub new_sessions_per_second: u32,
    /// An HTTP answer (long-poll, proxied, any other) or SSE stream whose
    /// socket accepts nothing for this long is closed. WebSocket sessions
    /// use `websocket.write_timeout`. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Bytes of unsent output all clients together may hold (queued live
    /// messages, streamed long-poll answers); past it the clients holding
    /// the most are dropped first and new large long-poll answers get `503`
    /// with `Retry-After`. Default: 268435456 (256 MiB).
    pub max_pending_output_bytes: usize,
    /// A client whose unsent output passes this is dropped at once.
    /// Default: 33554432 (32 MiB).
    pub client_output_hard_bytes: usize,
    /// A client whose unsent output stays past this for
    /// `client_output_soft_time` is dropped. Default: 8388608 (8 MiB).
    pub client_output_soft_bytes: usize,
    /// See `client_output_soft_bytes`. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub client_output_soft_time: Duration,
    /// Per-WebSocket-connection command and publish rates, and the cap on
    /// channels client publishes may create (`[limits.ws]`).
    pub ws: WsClientLimits,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 19_000,
            max_message_bytes: 64 * 1024,
            queue_length: 1024,
            max_subscriptions_per_connection: 64,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections_per_ip: 1000,
            longpoll_rate_per_ip: 100,
            trusted_proxies: Vec::new(),
            new_sessions_per_second: 2000,
            write_timeout: Duration::from_secs(30),
            max_pending_output_bytes: 256 * 1024 * 1024,
            client_output_hard_bytes: 32 * 1024 * 1024,
            client_output_soft_bytes: 8 * 1024 * 1024,
            client_output_soft_time: Duration::from_secs(60),
            ws: WsClientLimits::default(),
        }
    }
}

/// WebSocket transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Accept WebSocket upgrades on `{prefix}/ws`. Default: true.
    pub enabled: bool,
    /// A ping is sent after this long without traffic from the client.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent for this long (no frame, no pong) is dropped.
    /// Default: 75s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A write to a client that makes no progress for this long drops it.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: true,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Long-poll and plain-poll transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LongPollConfig {
    /// How long a poll is held when it gives no `timeout`. Default: 25s.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Upper bound on a poll's `timeout`. Default: 120s.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Most messages in one answer; the client polls again for the rest.
    /// Default: 1000.
    pub max_messages: usize,
    /// Most bytes of messages in one answer: as many whole messages as fit
    /// (always at least one), `last_id` the last one included, so the next
    /// poll pages on from it. Default: 1048576 (1 MiB).
    pub max_answer_bytes: usize,
    /// Origins allowed to poll cross-site (CORS), e.g. `https://app.example.com`,
    /// or `*`. Default: none.
    pub cors_origins: Vec<String>,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            default_timeout: Duration::from_secs(25),
            max_timeout: Duration::from_secs(120),
            max_messages: 1000,
            max_answer_bytes: 1024 * 1024,
            cors_origins: Vec::new(),
        }
    }
}

/// Server-sent events transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// A comment line is sent after this long without an event, so proxies
    /// keep the stream open. Default: 15s.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Reconnect delay suggested to browsers (`retry:` field). Default: 2s.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            keepalive_interval: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// Reverse proxy to the upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Connecting to the upstream must succeed within this time, else 502.
    /// Default: 2s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The upstream must send its response head within this time, else 504.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Idle pooled upstream connections are closed after this long. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept to the upstream. Default: 256.
    pub pool_max_idle: usize,
    /// A proxied request body must be complete this long after its head,
    /// plus one second per `body_min_rate` bytes received; past it the
    /// client gets `408 body_timeout` (when the answer has not started) and
    /// the upstream request is aborted. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Bytes per second a proxied request body must average beyond
    /// `body_timeout` (each this many bytes extends the deadline by 1 s);
    /// 0: the whole body within `body_timeout`. Default: 1024.
    pub body_min_rate: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 256,
            body_timeout: Duration::from_secs(10),
            body_min_rate: 1024,
        }
    }
}

/// Publishing on the public listener (the admin listener always allows it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// Keys accepted as `Authorization: Bearer KEY` on
    /// `POST {prefix}/publish/{channel}`. Empty: public publishing is off.
    /// Default: none.
    pub keys: Vec<String>,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, connections get this long to finish before the process
    /// exits anyway. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Clients told to reconnect (drain, restart, operator disconnect) get
    /// a suggested delay spread at random over this window, so they don't
    /// all come back in the same second. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub reconnect_window: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(10),
            reconnect_window: Duration::from_secs(10),
        }
    }
}

/// One `[[bridge]]` route: the gateway polls the backend's existing
/// polling URL itself and answers the legacy clients from its copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeRoute {
    /// The backend's polling URL path, e.g. `/api/scores`. Legacy clients
    /// keep polling it; its query string (minus `ignore_params`) is part
    /// of the feed they get: each distinct query is its own feed.
    pub path: String,
    /// The channel its changes are published on.
    pub channel: String,
    /// How often the gateway asks the backend. Default: 1s.
    #[serde(default = "default_bridge_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Hold a poll whose `If-None-Match` is current until the next change,
    /// up to this long. Default: none (answer 304 at once).
    #[serde(default, with = "humantime_serde")]
    pub hold: Option<Duration>,
    /// Request header that tells users apart (`Cookie`, `Authorization`):
    /// each distinct value gets its own poller and its own channel
    /// `{channel}.{hash}`. Default: none (one shared copy).
    #[serde(default)]
    pub vary_by: Option<String>,
    /// Request headers copied from the legacy client that started a poller
    /// to its upstream requests (e.g. `Accept-Language`). Default: none.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// A poller nobody asked for (no legacy poll, no subscriber) for this
    /// long stops. Default: 60s.
    #[serde(default = "default_bridge_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Query parameters that are not part of a feed's identity (cache
    /// busters such as jQuery's `_=<timestamp>`): dropped before the query
    /// picks the feed, and never sent to the backend. Default: `["_"]`.
    #[serde(default = "default_ignore_params")]
    pub ignore_params: Vec<String>,
    /// Most feeds (distinct query × `vary_by` value) the route polls at
    /// once. A request for one more is proxied to the backend unchanged
    /// (counted in `pollbridge_bridge_variants_refused_total`) until an
    /// idle feed expires. Default: 100.
    #[serde(default = "default_max_variants")]
    pub max_variants: usize,
    /// `snapshot` (each answer is the whole state) or `incremental` (each
    /// answer holds the items after the client's cursor). Default: snapshot.
    #[serde(default)]
    pub mode: BridgeMode,
    /// Incremental mode: the query parameter carrying the cursor, the id of
    /// the last item a client has. Default: `after`.
    #[serde(default = "default_cursor_param")]
    pub cursor_param: String,
    /// Incremental mode: JSON pointer to the array of items in the
    /// backend's answer (`/messages`). Default: `""` (the answer is the array).
    #[serde(default)]
    pub items: String,
    /// Incremental mode: JSON pointer to an item's id inside an item (a
    /// number or a string). Default: `/id`.
    #[serde(default = "default_item_id")]
    pub item_id: String,
    /// Who may be served the shared copy: `none` (anyone), `auth_url`
    /// (the `auth.auth_url` delegation) or `route` (a conditional request
    /// to this path with the client's own `Cookie`/`Authorization`). A
    /// client the backend refuses gets the backend's answer. Default: none.
    #[serde(default)]
    pub auth: BridgeAuthMode,
    /// How long a check's answer is reused for the same credentials.
    /// Default: 10s (at most 5m).
    #[serde(default = "bridge_auth::default_auth_ttl", with = "humantime_serde")]
    pub auth_ttl: Duration,
    /// Distinct credentials whose answers are remembered; past it expired
    /// answers are dropped, then new ones are not remembered. Default: 10000.
    #[serde(default = "bridge_auth::default_auth_cache_size")]
    pub auth_cache_size: usize,
    /// Checks waiting on the backend at once; a client that cannot get one
    /// within `auth.auth_timeout` gets `503 auth_unavailable`. Default: 8.
    #[serde(default = "bridge_auth::default_auth_max_in_flight")]
    pub auth_max_in_flight: usize,
}

fn default_bridge_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_bridge_idle() -> Duration {
    Duration::from_secs(60)
}

/// Migration telemetry: who still polls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationConfig {
    /// Distinct legacy pollers are counted over this sliding window.
    /// Default: 5m.
    #[serde(with = "humantime_serde")]
    pub legacy_window: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            legacy_window: Duration::from_secs(300),
        }
    }
}

/// TLS on the public listener. Both files or neither; re-read on SIGHUP
/// without dropping connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). Default: none (plain HTTP).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Default: none.
    pub key_file: Option<std::path::PathBuf>,
}

/// Who may subscribe: subscriber tokens, delegation to the backend, and
/// the origins browsers may connect from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256 subscriber tokens (channels with
    /// `auth = "token"`). Default: none.
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 (RSA key) or ES256 (P-256 key) subscriber
    /// tokens. Default: none.
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// Cookie that may carry the token (besides `?token=` and
    /// `Authorization: Bearer`). Default: `pollbridge_token`.
    pub token_cookie: String,
    /// Backend endpoint asked whether a client may subscribe (channels with
    /// `auth = "backend"`): `GET {auth_url}?channel=NAME` with the client's
    /// `Cookie` and `Authorization`; 2xx allows. `http://` only. Default: none.
    pub auth_url: Option<String>,
    /// How long a backend answer is reused for the same credentials and
    /// channel. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// The backend must answer within this, else the client is refused
    /// (503 `auth_unavailable`, also when it is unreachable). Default: 2s.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Origins (`https://app.example.com`) allowed to open WebSockets, SSE
    /// streams and long-polls; empty allows any. Listed origins also get
    /// CORS answers. Default: none.
    pub allowed_origins: Vec<String>,
    /// With `allowed_origins` set, also refuse requests that carry no
    /// `Origin` (non-browser clients). Default: false.
    pub require_origin: bool,
    /// Backend auth requests in flight at once, gateway-wide; past it the
    /// client is refused (503 `auth_unavailable`). 0: unlimited.
    /// Default: 32.
    pub auth_max_concurrent: usize,
    /// Backend auth requests in flight at once for one client address;
    /// past it 429 `auth_rate_limited`. 0: unlimited. Default: 2.
    pub auth_max_concurrent_per_ip: usize,
    /// Backend auth requests per second, gateway-wide (a burst of one
    /// second's worth); past it 503 `auth_unavailable`. 0: unlimited.
    /// Default: 100.
    pub auth_rate: u32,
    /// Backend auth requests per second for one client address (a burst
    /// of twice this); past it 429 `auth_rate_limited`. 0: unlimited.
    /// Default: 5.
    pub auth_rate_per_ip: u32,
    /// Backend answers (grants and denials) cached at most. Default: 100000.
    pub auth_cache_max_entries: usize,
    /// Clock skew allowed between the site that signs subscriber tokens and
    /// the gateway: a token is accepted until `exp + leeway` and from
    /// `nbf - leeway`, and a WebSocket or SSE session it opened is closed
    /// at `exp + leeway`. At most 1h. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_file: None,
            token_cookie: "pollbridge_token".into(),
            auth_url: None,
            auth_cache_ttl: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(2),
            allowed_origins: Vec::new(),
            require_origin: false,
            auth_max_concurrent: 32,
            auth_max_concurrent_per_ip: 2,
            auth_rate: 100,
            auth_rate_per_ip: 5,
            auth_cache_max_entries: 100_000,
            leeway: Duration::from_secs(5),
        }
    }
}

/// The live demo page and the read-only figures it shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo page at `{prefix}/demo`, and let anyone publish on
    /// `demo.channel` from it without a key. Default: false.
    pub enabled: bool,
    /// The channel the demo reads and publishes. Default: `demo`.
    pub channel: String,
    /// Serve the bandwidth figures at `{prefix}/stats` on the public
    /// listener. Default: on exactly when the demo is.
    pub public_stats: Option<bool>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: false,
            channel: "demo".into(),
            public_stats: None,
        }
    }
}

impl DemoConfig {
    pub fn public_stats(&self) -> bool {
        self.public_stats.unwrap_or(self.enabled)
    }
}

/// One problem found in a configuration, naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key '{}': {}", self.key, self.message)
    }
}

impl Config {
    /// Semantic checks that serde can't express. Returns every problem, not
    /// only the first.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: key.into(),
                message,
            })
        };
        if let Some(upstream) = &self.upstream {
            if let Err(e) = crate::proxy::parse_upstream(upstream) {
                bad("upstream", e);
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 || self.prefix.ends_with('/') {
            bad(
                "prefix",
                format!("must look like \"/rt\" (got {:?})", self.prefix),
            );
        }
        if self.bus != "memory" && !crate::bus::redis::is_redis_url(&self.bus) {
            bad(
                "bus",
                format!(
                    "unsupported bus {:?} (supported: \"memory\", \"redis://…\", \"rediss://…\")",
                    crate::bus::redis::redact(&self.bus)
                ),
            );
        }
        for (key, message) in self.redis.problems(&self.bus) {
            bad(&key, message);
        }
        for (key, message) in self.admin.problems() {
            bad(&key, message);
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            bad(
                "log_level",
                format!("not a log filter: {:?}", self.log_level),
            );
        }
        if let Some(problem) = workers::problem(self.workers) {
            bad("workers", problem);
        }
        for (key, message) in self.limits.ws.problems() {
            bad(&key, message);
        }
        let positive = [
            ("history.size", self.history.size),
            ("history.max_bytes", self.history.max_bytes),
            ("history.max_total_bytes", self.history.max_total_bytes),
            (
                "auth.auth_cache_max_entries",
                self.auth.auth_cache_max_entries,
            ),
            ("limits.max_connections", self.limits.max_connections),
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            ("limits.queue_length", self.limits.queue_length),
            (
                "limits.max_subscriptions_per_connection",
                self.limits.max_subscriptions_per_connection,
            ),
            ("longpoll.max_messages", self.longpoll.max_messages),
            ("longpoll.max_answer_bytes", self.longpoll.max_answer_bytes),
            (
                "limits.max_pending_output_bytes",
                self.limits.max_pending_output_bytes,
            ),
            (
                "limits.client_output_hard_bytes",
                self.limits.client_output_hard_bytes,
            ),
            (
                "limits.client_output_soft_bytes",
                self.limits.client_output_soft_bytes,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if self.limits.max_header_bytes < 8192 {
            bad(
                "limits.max_header_bytes",
                "must be at least 8192 (hyper's smallest read buffer)".into(),
            );
        }
        let nonzero = [
            ("websocket.ping_interval", self.websocket.ping_interval),
            ("websocket.idle_timeout", self.websocket.idle_timeout),
            ("websocket.write_timeout", self.websocket.write_timeout),
            ("sse.keepalive_interval", self.sse.keepalive_interval),
            (
                "limits.header_read_timeout",
                self.limits.header_read_timeout,
            ),
            ("limits.body_read_timeout", self.limits.body_read_timeout),
            ("limits.write_timeout", self.limits.write_timeout),
            ("migration.legacy_window", self.migration.legacy_window),
            ("proxy.connect_timeout", self.proxy.connect_timeout),
            ("proxy.timeout", self.proxy.timeout),
            ("proxy.body_timeout", self.proxy.body_timeout),
        ];
        for (key, value) in nonzero {
            if value.is_zero() {
                bad(key, "must be longer than 0s".into());
            }
        }
        if self.websocket.idle_timeout <= self.websocket.ping_interval {
            bad(
                "websocket.idle_timeout",
                "must be longer than websocket.ping_interval".into(),
            );
        }
        if self.limits.client_output_soft_bytes > self.limits.client_output_hard_bytes {
            bad(
                "limits.client_output_soft_bytes",
                "must not exceed limits.client_output_hard_bytes".into(),
            );
        }
        if self.longpoll.max_answer_bytes > self.limits.client_output_hard_bytes {
            bad(
                "longpoll.max_answer_bytes",
                "must not exceed limits.client_output_hard_bytes".into(),
            );
        }
        if self.longpoll.default_timeout > self.longpoll.max_timeout {
            bad(
                "longpoll.default_timeout",
                "must not exceed longpoll.max_timeout".into(),
            );
        }
        for origin in &self.longpoll.cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                bad(
                    "longpoll.cors_origins",
                    format!("{origin:?} is not \"*\" or an http(s) origin"),
                );
            }
        }
        if let Some(url) = &self.auth.auth_url {
            if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() {
                bad("auth.auth_url", format!("{url:?} must be an http:// URL"));
            }
        }
        if let Some(path) = &self.auth.jwt_public_key_file {
            if let Err(e) = crate::auth::load_public_key(path) {
                bad("auth.jwt_public_key_file", e);
            }
        }
        if self.auth.leeway > Duration::from_secs(3600) {
            bad("auth.leeway", "must be at most 1h".into());
        }
        if self
            .auth
            .jwt_secret
            .as_deref()
            .is_some_and(|s| s.len() < 16)
        {
            bad("auth.jwt_secret", "must be at least 16 bytes".into());
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), Some(_)) => {
                if let Err(e) = crate::server::tls::load(&self.tls) {
                    bad("tls.cert_file", e);
                }
            }
            (None, None) => {}
            (Some(_), None) => bad("tls.key_file", "tls.cert_file needs tls.key_file".into()),
            (None, Some(_)) => bad("tls.cert_file", "tls.key_file needs tls.cert_file".into()),
        }
        for cidr in &self.limits.trusted_proxies {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                bad(
                    "limits.trusted_proxies",
                    format!("{cidr:?} is not an address or CIDR"),
                );
            }
        }
        for origin in &self.auth.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                bad(
                    "auth.allowed_origins",
                    format!("{origin:?} is not an http(s) origin"),
                );
            }
        }
        if crate::channel::ChannelName::new(&self.demo.channel).is_err() {
            bad(
                "demo.channel",
                format!("{:?} is not a valid channel name", self.demo.channel),
            );
        }
        for (i, route) in self.bridges.iter().enumerate() {
            let key = |field: &str| format!("bridge[{i}].{field}");
            if self.upstream.is_none() {
                bad(&key("path"), "a bridge needs `upstream` to poll".into());
            }
            if !route.path.starts_with('/') || route.path.contains('?') {
                bad(
                    &key("path"),
                    format!("{:?} must be a path like \"/api/scores\"", route.path),
                );
            } else if route.path == self.prefix
                || route.path.starts_with(&format!("{}/", self.prefix))
            {
                bad(
                    &key("path"),
                    format!(
                        "{:?} is under the gateway prefix {:?}",
                        route.path, self.prefix
                    ),
                );
            }
            if crate::channel::ChannelName::new(&route.channel).is_err() {
                bad(
                    &key("channel"),
                    format!("{:?} is not a valid channel name", route.channel),
                );
            }
            if route.interval < Duration::from_millis(10) {
                bad(&key("interval"), "must be at least 10ms".into());
            }
            if route.hold.is_some_and(|h| h.is_zero()) {
                bad(&key("hold"), "must be longer than 0s (or left out)".into());
            }
            for name in route.vary_by.iter().chain(&route.forward_headers) {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    bad(&key("vary_by"), format!("{name:?} is not a header name"));
                }
            }
            for problem in bridge_route_problems(route) {
                bad(&key(problem.0), problem.1);
            }
            if self.bridges[..i]
                .iter()
                .any(|other| other.path == route.path)
            {
                bad(&key("path"), format!("{:?} is bridged twice", route.path));
            }
            for (field, message) in bridge_auth::problems(self, route) {
                bad(&key(field), message);
            }
        }
        for (i, rule) in self.channels.iter().enumerate() {
            if let Err(e) = rules::validate_pattern(&rule.pattern) {
                bad(&format!("channels[{i}].pattern"), e);
            }
            if rule.conflate_interval.is_some() && rule.mode != ChannelMode::State {
                bad(
                    &format!("channels[{i}].conflate_interval"),
                    "only applies to mode = \"state\" channels".into(),
                );
            }
            let has_key = self.auth.jwt_secret.is_some() || self.auth.jwt_public_key_file.is_some();
            if rule.auth == ChannelAuth::Token && !has_key {
                bad(
                    &format!("channels[{i}].auth"),
                    "\"token\" needs auth.jwt_secret or auth.jwt_public_key_file".into(),
                );
            }
            if rule.auth == ChannelAuth::Backend && self.auth.auth_url.is_none() {
                bad(
                    &format!("channels[{i}].auth"),
                    "\"backend\" needs auth.auth_url".into(),
                );
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), vec![]);
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut cfg = Config {
            prefix: "rt".into(),
            ..Config::default()
        };
        cfg.limits.queue_length = 0;
        cfg.websocket.idle_timeout = Duration::from_secs(1);
        let keys: Vec<_> = cfg.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            vec!["prefix", "limits.queue_length", "websocket.idle_timeout"]
        );
    }
}
