//! The gateway's shared state: what every request handler and session can
//! reach. Built once at startup and shared behind an `Arc`.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authorizer;
use crate::bus::client_channels::ClientChannels;
use crate::bus::{
    AnyBus, Bus, BusError, HistoryRead, Hub, MemoryBus, SubscriberQueue, Subscription,
};
use crate::config::redis_url::{is_redis_url, redact};
use crate::config::{ChannelRules, Config, ConfigProblem};
use crate::metrics::stats::StatsSampler;
use crate::metrics::Metrics;
use crate::migration::Migration;
use crate::net::limits::{Admission, IpLimits};
use crate::net::output::OutputBudget;
use crate::net::tls::Tls;
use crate::protocol::channel::ChannelName;
use crate::proxy::Proxy;

/// Told when a client subscribes to a channel (see [`Gateway::subscribe`]).
pub trait ChannelDemand: Send + Sync + 'static {
    fn wanted(&self, gw: &Arc<Gateway>, channel: &ChannelName);
}

pub struct Gateway {
    pub config: Config,
    pub rules: ChannelRules,
    pub bus: AnyBus,
    pub metrics: Arc<Metrics>,
    /// Absent when no upstream is configured.
    pub proxy: Option<Proxy>,
    /// Cancelled on SIGTERM: listeners stop accepting, held polls answer,
    /// streams end, WebSockets close with 1001.
    pub shutdown: CancellationToken,
    /// Every connection and session task, so shutdown can wait for them
    /// (hyper's own graceful shutdown forgets upgraded connections).
    pub tasks: TaskTracker,
    /// Open connections on the public listener.
    pub open_connections: Arc<AtomicUsize>,
    /// The bandwidth report's sampler.
    pub stats: Arc<StatsSampler>,
    /// Cancelled (and replaced) by the admin `POST /disconnect`: every
    /// WebSocket and SSE session open at that moment ends, and clients
    /// reconnect and resume.
    kick: Mutex<CancellationToken>,
    /// Told of every subscribe: the legacy polling bridge, which starts
    /// polling a feed someone wants. Set once at startup; the bridge sits
    /// above this layer, so it registers itself here.
    demand: OnceLock<Arc<dyn ChannelDemand>>,
    /// Who may subscribe, and from which origins.
    pub auth: Arc<Authorizer>,
    /// Per-client-address limits (connections, long-poll rate).
    pub ip_limits: Arc<IpLimits>,
    /// Admission control for new WebSocket and SSE sessions.
    pub admission: Admission,
    /// TLS on the public listener, if configured.
    pub tls: Option<Tls>,
    /// Who still polls: distinct legacy clients, top polling pages.
    pub migration: Migration,
    /// Unsent output per client and in total (`limits.*output*`).
    pub output: Arc<OutputBudget>,
    /// Channels created by client publishes, capped.
    pub client_channels: ClientChannels,
    /// The admin listener's Origin, Host and token checks.
    pub admin_guard: crate::auth::admin::AdminGuard,
}

impl Gateway {
    /// Loads every file the configuration names, as [`Gateway::new`] will
    /// (the admin token file, the JWT public key, the TLS certificate and
    /// key), each failure named by its key. Config only checks syntax; this
    /// lets startup and `--check-config` report a missing or broken file as
    /// a configuration problem (exit 2) before any listener binds.
    pub fn load_problems(config: &Config) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut check = |key: &str, loaded: Result<(), String>| {
            if let Err(message) = loaded {
                problems.push(ConfigProblem {
                    key: key.into(),
                    message,
                });
            }
        };
        let admin = &config.admin;
        if admin.token.is_none() && admin.token_file.is_some() {
            check("admin.token_file", admin.load_token().map(drop));
        }
        if let Some(path) = &config.auth.jwt_public_key_file {
            check(
                "auth.jwt_public_key_file",
                crate::auth::load_public_key(path),
            );
        }
        if config.tls.cert_file.is_some() && config.tls.key_file.is_some() {
            check(
                "tls.cert_file",
                crate::net::tls::load(&config.tls, config.http2.enabled).map(drop),
            );
        }
        problems
    }

    pub fn new(config: Config) -> Result<Arc<Gateway>, String> {
        let metrics = Arc::new(Metrics::new());
        // Snapshot bridges' channels carry state (the latest body); an
        // incremental bridge's carry a stream of items.
        let rules = config.channel_rules();
        let auth = Authorizer::new(&config.auth, rules.clone(), &metrics)?;
        let client_channels = ClientChannels::new(
            config.limits.ws.max_client_channels,
            config.history.max_age,
            metrics.floods.client_channels.clone(),
        );
        let ip_limits = IpLimits::new(&config.limits);
        let admission = Admission::new(config.limits.new_sessions_per_second);
        let tls = Tls::new(&config.tls, config.http2.enabled)?;
        let admin_guard = crate::auth::admin::AdminGuard::new(&config.admin)?;
        let bridged_paths: Vec<String> = config.bridges.iter().map(|b| b.path.clone()).collect();
        let migration = Migration::new(
            config.migration.legacy_window,
            metrics.legacy_clients.clone(),
            &bridged_paths,
        );
        let hub = Hub::new(rules.clone(), config.history.clone(), metrics.clone());
        // One fan-out shard per worker thread, when there is a runtime to
        // run them on (there always is in the binary).
        let hub = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => hub.sharded(config.worker_threads(), &runtime),
            Err(_) => hub,
        };
        let bus = match config.bus.as_str() {
            "memory" => AnyBus::Memory(MemoryBus::new(hub)),
            url if is_redis_url(url) => {
                AnyBus::Redis(crate::bus::redis::RedisBus::new(hub, &config)?)
            }
            other => return Err(format!("unsupported bus {:?}", redact(other))),
        };
        let proxy = match &config.upstream {
            Some(url) => Some(Proxy::new(url, &config.proxy, metrics.clone())?),
            None => None,
        };
        let stats = StatsSampler::new(metrics.clone());
        let output = OutputBudget::new(&config.limits, metrics.clone());
        let shutdown = CancellationToken::new();
        Ok(Arc::new(Gateway {
            config,
            rules,
            bus,
            metrics,
            proxy,
            shutdown: shutdown.clone(),
            tasks: TaskTracker::new(),
            open_connections: Arc::new(AtomicUsize::new(0)),
            stats,
            demand: OnceLock::new(),
            auth,
            ip_limits,
            admission,
            tls,
            migration,
            output,
            client_channels,
            admin_guard,
            kick: Mutex::new(shutdown.child_token()),
        }))
    }

    /// Subscribes a client's queue to a channel (see [`Bus::subscribe`]).
    /// Every transport subscribes through here, so a subscriber of a bridged
    /// channel also starts the bridge's poller: a feed is polled while
    /// anyone wants it, legacy poller or subscriber.
    pub async fn subscribe(
        self: &Arc<Self>,
        channel: &ChannelName,
        since: Option<crate::protocol::channel::Since>,
        queue: &Arc<SubscriberQueue>,
        limit: usize,
    ) -> Result<(Subscription, HistoryRead), BusError> {
        let subscribed = self.bus.subscribe(channel, since, queue, limit).await?;
        if let Some(demand) = self.demand.get() {
            demand.wanted(self, channel);
        }
        Ok(subscribed)
    }

    /// Parks a long-poll on the bus ([`Bus::park_poll`]); a parked poll
    /// is demand for the channel as a subscriber is.
    pub async fn park_poll(
        self: &Arc<Self>,
        channel: &ChannelName,
        since: crate::protocol::channel::Since,
        poll: &Arc<dyn crate::bus::WaitingPoll>,
        limit: usize,
    ) -> Result<crate::bus::Parking, BusError> {
        let parking = self.bus.park_poll(channel, since, poll, limit).await?;
        if let Some(demand) = self.demand.get() {
            demand.wanted(self, channel);
        }
        Ok(parking)
    }

    /// Registers who is told of every subscribe (once, at startup).
    pub fn set_demand(&self, demand: Arc<dyn ChannelDemand>) {
        if self.demand.set(demand).is_err() {
            tracing::warn!("channel demand registered twice; keeping the first");
        }
    }

    /// A suggested reconnect delay, random within `shutdown.reconnect_window`:
    /// what clients told to go away are asked to wait, so a restart doesn't
    /// bring every client back in the same second.
    pub fn reconnect_delay(&self) -> std::time::Duration {
        let window = self.config.shutdown.reconnect_window.as_millis() as u64;
        std::time::Duration::from_millis(crate::protocol::random_below(window.max(1)))
    }

    /// The answer to a new request while draining: 503 with a spread
    /// `Retry-After`.
    pub fn shutting_down(&self) -> crate::protocol::error::ApiError {
        crate::protocol::error::ApiError::ShuttingDown(self.reconnect_delay().as_secs().max(1))
    }

    /// A token that is cancelled when the operator disconnects every
    /// session; sessions take it when they start.
    /// Cancelled by [`disconnect_all`](Self::disconnect_all) and by
    /// shutdown (it is a child of the shutdown token), so a session waits on
    /// one token for both and tells them apart by `shutdown.is_cancelled()`.
    pub fn kick_token(&self) -> CancellationToken {
        self.kick.lock().clone()
    }

    /// Ends every WebSocket and SSE session open now.
    pub fn disconnect_all(&self) {
        let old = std::mem::replace(&mut *self.kick.lock(), self.shutdown.child_token());
        old.cancel();
    }
}
