//! [`Config::validate`]: the checks serde can't express, one function per
//! part of the configuration, all collected into one list so a user sees
//! every problem at once.
//!
//! Only syntax and consistency: nothing here reads a file or connects.
//! The files the configuration names (TLS certificate and key, JWT public
//! key, admin token file) are loaded when the gateway is built.

use std::time::Duration;

use super::bridge::bridge_route_problems;
use super::redis_url::{is_redis_url, redact};
use super::upstream::parse_upstream;
use super::{bridge_auth, rules, BridgeRoute, ChannelAuth, ChannelMode, Config};
use crate::protocol::channel::ChannelName;

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

/// The problems found so far.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn bad(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Adds a section's own (key, message) list.
    fn extend<K: AsRef<str>>(&mut self, problems: impl IntoIterator<Item = (K, String)>) {
        for (key, message) in problems {
            self.bad(key.as_ref(), message);
        }
    }
}

impl Config {
    /// Semantic checks that serde can't express. Returns every problem, not
    /// only the first.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Problems::default();
        check_general(self, &mut problems);
        check_sizes(self, &mut problems);
        check_relations(self, &mut problems);
        check_access(self, &mut problems);
        if ChannelName::new(&self.demo.channel).is_err() {
            problems.bad(
                "demo.channel",
                format!("{:?} is not a valid channel name", self.demo.channel),
            );
        }
        for (i, route) in self.bridges.iter().enumerate() {
            check_bridge(self, i, route, &mut problems);
        }
        check_channels(self, &mut problems);
        problems.extend(self.compression.problems());
        problems.extend(self.http2.problems());
        problems.0
    }
}

/// Where the gateway listens, proxies and keeps its bus; the admin
/// listener; logging.
fn check_general(cfg: &Config, problems: &mut Problems) {
    if let Some(problem) = super::workers::problem(cfg.workers) {
        problems.bad("workers", problem);
    }
    if let Some(upstream) = &cfg.upstream {
        if let Err(e) = parse_upstream(upstream) {
            problems.bad("upstream", e);
        }
    }
    if !cfg.prefix.starts_with('/') || cfg.prefix.len() < 2 || cfg.prefix.ends_with('/') {
        problems.bad(
            "prefix",
            format!("must look like \"/rt\" (got {:?})", cfg.prefix),
        );
    }
    if cfg.bus != "memory" && !is_redis_url(&cfg.bus) {
        problems.bad(
            "bus",
            format!(
                "unsupported bus {:?} (supported: \"memory\", \"redis://…\", \"rediss://…\")",
                redact(&cfg.bus)
            ),
        );
    }
    problems.extend(cfg.redis.problems(&cfg.bus));
    problems.extend(cfg.admin.problems());
    if tracing_subscriber::EnvFilter::try_new(&cfg.log_level).is_err() {
        problems.bad(
            "log_level",
            format!("not a log filter: {:?}", cfg.log_level),
        );
    }
}

/// Counts and sizes that must be at least 1, durations that must be
/// longer than zero.
fn check_sizes(cfg: &Config, problems: &mut Problems) {
    problems.extend(cfg.limits.ws.problems());
    let (limits, history) = (&cfg.limits, &cfg.history);
    let positive = [
        ("history.size", history.size),
        ("history.max_bytes", history.max_bytes),
        ("history.max_total_bytes", history.max_total_bytes),
        (
            "auth.auth_cache_max_entries",
            cfg.auth.auth_cache_max_entries,
        ),
        ("limits.max_connections", limits.max_connections),
        ("limits.max_message_bytes", limits.max_message_bytes),
        ("limits.queue_length", limits.queue_length),
        (
            "limits.max_subscriptions_per_connection",
            limits.max_subscriptions_per_connection,
        ),
        ("longpoll.max_messages", cfg.longpoll.max_messages),
        ("longpoll.max_answer_bytes", cfg.longpoll.max_answer_bytes),
        (
            "limits.max_pending_output_bytes",
            limits.max_pending_output_bytes,
        ),
        (
            "limits.client_output_hard_bytes",
            limits.client_output_hard_bytes,
        ),
        (
            "limits.client_output_soft_bytes",
            limits.client_output_soft_bytes,
        ),
    ];
    for (key, value) in positive {
        if value == 0 {
            problems.bad(key, "must be at least 1");
        }
    }
    if limits.max_header_bytes < 8192 {
        problems.bad(
            "limits.max_header_bytes",
            "must be at least 8192 (hyper's smallest read buffer)",
        );
    }
    let nonzero = [
        ("websocket.ping_interval", cfg.websocket.ping_interval),
        ("websocket.idle_timeout", cfg.websocket.idle_timeout),
        ("websocket.write_timeout", cfg.websocket.write_timeout),
        ("sse.keepalive_interval", cfg.sse.keepalive_interval),
        ("limits.header_read_timeout", limits.header_read_timeout),
        ("limits.body_read_timeout", limits.body_read_timeout),
        ("limits.write_timeout", limits.write_timeout),
        ("migration.legacy_window", cfg.migration.legacy_window),
        ("proxy.connect_timeout", cfg.proxy.connect_timeout),
        ("proxy.timeout", cfg.proxy.timeout),
        ("proxy.body_timeout", cfg.proxy.body_timeout),
    ];
    for (key, value) in nonzero {
        if value.is_zero() {
            problems.bad(key, "must be longer than 0s");
        }
    }
}

/// Values that must not exceed (or must exceed) another.
fn check_relations(cfg: &Config, problems: &mut Problems) {
    if cfg.websocket.idle_timeout <= cfg.websocket.ping_interval {
        problems.bad(
            "websocket.idle_timeout",
            "must be longer than websocket.ping_interval",
        );
    }
    let hard = cfg.limits.client_output_hard_bytes;
    if cfg.limits.client_output_soft_bytes > hard {
        problems.bad(
            "limits.client_output_soft_bytes",
            "must not exceed limits.client_output_hard_bytes",
        );
    }
    if cfg.longpoll.max_answer_bytes > hard {
        problems.bad(
            "longpoll.max_answer_bytes",
            "must not exceed limits.client_output_hard_bytes",
        );
    }
    if cfg.longpoll.default_timeout > cfg.longpoll.max_timeout {
        problems.bad(
            "longpoll.default_timeout",
            "must not exceed longpoll.max_timeout",
        );
    }
}

/// Who may connect and subscribe: origins, tokens, the backend check,
/// TLS, trusted proxies.
fn check_access(cfg: &Config, problems: &mut Problems) {
    for origin in &cfg.longpoll.cors_origins {
        if origin != "*" && !is_http_origin(origin) {
            problems.bad(
                "longpoll.cors_origins",
                format!("{origin:?} is not \"*\" or an http(s) origin"),
            );
        }
    }
    let auth = &cfg.auth;
    if let Some(url) = &auth.auth_url {
        if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() {
            problems.bad("auth.auth_url", format!("{url:?} must be an http:// URL"));
        }
    }
    if auth.leeway > Duration::from_secs(3600) {
        problems.bad("auth.leeway", "must be at most 1h");
    }
    if auth.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
        problems.bad("auth.jwt_secret", "must be at least 16 bytes");
    }
    match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(_), None) => problems.bad("tls.key_file", "tls.cert_file needs tls.key_file"),
        (None, Some(_)) => problems.bad("tls.cert_file", "tls.key_file needs tls.cert_file"),
        _ => {}
    }
    for cidr in &cfg.limits.trusted_proxies {
        if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
            problems.bad(
                "limits.trusted_proxies",
                format!("{cidr:?} is not an address or CIDR"),
            );
        }
    }
    for origin in &auth.allowed_origins {
        if !is_http_origin(origin) {
            problems.bad(
                "auth.allowed_origins",
                format!("{origin:?} is not an http(s) origin"),
            );
        }
    }
}

fn is_http_origin(origin: &str) -> bool {
    origin.starts_with("http://") || origin.starts_with("https://")
}

/// One `[[bridge]]` route, the `i`th.
fn check_bridge(cfg: &Config, i: usize, route: &BridgeRoute, problems: &mut Problems) {
    let key = |field: &str| format!("bridge[{i}].{field}");
    if cfg.upstream.is_none() {
        problems.bad(&key("path"), "a bridge needs `upstream` to poll");
    }
    if !route.path.starts_with('/') || route.path.contains('?') {
        problems.bad(
            &key("path"),
            format!("{:?} must be a path like \"/api/scores\"", route.path),
        );
    } else if route.path == cfg.prefix || route.path.starts_with(&format!("{}/", cfg.prefix)) {
        problems.bad(
            &key("path"),
            format!(
                "{:?} is under the gateway prefix {:?}",
                route.path, cfg.prefix
            ),
        );
    }
    if ChannelName::new(&route.channel).is_err() {
        problems.bad(
            &key("channel"),
            format!("{:?} is not a valid channel name", route.channel),
        );
    }
    if route.interval < Duration::from_millis(10) {
        problems.bad(&key("interval"), "must be at least 10ms");
    }
    if route.hold.is_some_and(|h| h.is_zero()) {
        problems.bad(&key("hold"), "must be longer than 0s (or left out)");
    }
    for name in route.vary_by.iter().chain(&route.forward_headers) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.bad(&key("vary_by"), format!("{name:?} is not a header name"));
        }
    }
    problems.extend(
        bridge_route_problems(route)
            .into_iter()
            .map(|(field, message)| (key(field), message)),
    );
    if let Some(problem) = super::bridge::incremental_channel_problem(cfg, route) {
        problems.bad(&key("channel"), problem);
    }
    if cfg.bridges[..i]
        .iter()
        .any(|other| other.path == route.path)
    {
        problems.bad(&key("path"), format!("{:?} is bridged twice", route.path));
    }
    problems.extend(
        bridge_auth::problems(cfg, route)
            .into_iter()
            .map(|(field, message)| (key(field), message)),
    );
}

/// The `[[channels]]` rules.
fn check_channels(cfg: &Config, problems: &mut Problems) {
    let has_key = cfg.auth.jwt_secret.is_some() || cfg.auth.jwt_public_key_file.is_some();
    for (i, rule) in cfg.channels.iter().enumerate() {
        let key = |field: &str| format!("channels[{i}].{field}");
        if let Err(e) = rules::validate_pattern(&rule.pattern) {
            problems.bad(&key("pattern"), e);
        }
        if rule.conflate_interval.is_some() && rule.mode != ChannelMode::State {
            problems.bad(
                &key("conflate_interval"),
                "only applies to mode = \"state\" channels",
            );
        }
        if rule.auth == ChannelAuth::Token && !has_key {
            problems.bad(
                &key("auth"),
                "\"token\" needs auth.jwt_secret or auth.jwt_public_key_file",
            );
        }
        if rule.auth == ChannelAuth::Backend && cfg.auth.auth_url.is_none() {
            problems.bad(&key("auth"), "\"backend\" needs auth.auth_url");
        }
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

    #[test]
    fn named_files_are_not_read_here() {
        // Loading them is the gateway's job at build time; validation
        // only checks that TLS names both files or neither.
        let mut cfg = Config::default();
        cfg.auth.jwt_public_key_file = Some("/nonexistent/jwt.pem".into());
        cfg.tls.cert_file = Some("/nonexistent/cert.pem".into());
        cfg.tls.key_file = Some("/nonexistent/key.pem".into());
        cfg.admin.token_file = Some("/nonexistent/admin-token".into());
        assert_eq!(cfg.validate(), vec![]);
        cfg.tls.key_file = None;
        let keys: Vec<_> = cfg.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["tls.key_file"]);
    }
}
