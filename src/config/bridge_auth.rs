//! `[[bridge]] auth`: which legacy clients may be served a route's shared
//! copy, and the limits of the checks that decide it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BridgeRoute, ChannelAuth, ChannelRules, Config};

/// How a bridge route checks a legacy client before serving its copy.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BridgeAuthMode {
    /// Anyone gets the copy (a public snapshot).
    #[default]
    None,
    /// `GET {auth.auth_url}?channel=NAME` with the client's `Cookie` and
    /// `Authorization`: 2xx serves the copy; any other answer is passed to
    /// the client as the backend gave it.
    AuthUrl,
    /// A conditional `GET` of the route itself with the client's `Cookie`
    /// and `Authorization`: 2xx or 304 serves the copy; any other answer is
    /// the client's answer.
    Route,
}

impl BridgeAuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeAuthMode::None => "none",
            BridgeAuthMode::AuthUrl => "auth_url",
            BridgeAuthMode::Route => "route",
        }
    }
}

pub(super) fn default_auth_ttl() -> Duration {
    Duration::from_secs(10)
}

pub(super) fn default_auth_cache_size() -> usize {
    10_000
}

pub(super) fn default_auth_max_in_flight() -> usize {
    8
}

/// The longest `auth_ttl`: a logged-out user keeps the copy at most this long.
const MAX_AUTH_TTL: Duration = Duration::from_secs(300);

/// Problems of one route's `auth` settings, as (field, message).
pub(super) fn problems(config: &Config, route: &BridgeRoute) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if route.auth == BridgeAuthMode::AuthUrl && config.auth.auth_url.is_none() {
        out.push(("auth", "\"auth_url\" needs auth.auth_url".to_string()));
    }
    if route.auth_ttl.is_zero() || route.auth_ttl > MAX_AUTH_TTL {
        out.push((
            "auth_ttl",
            format!(
                "must be between 1ms and {}",
                humantime::format_duration(MAX_AUTH_TTL)
            ),
        ));
    }
    if route.auth_cache_size == 0 {
        out.push(("auth_cache_size", "must be at least 1".to_string()));
    }
    if route.auth_max_in_flight == 0 {
        out.push(("auth_max_in_flight", "must be at least 1".to_string()));
    }
    if route.auth != BridgeAuthMode::None {
        // The same data also goes out on the channel: a public channel
        // would hand it to any WebSocket, SSE or long-poll client.
        let rules = ChannelRules::new(config.channels.clone());
        if rules.resolve(&route.channel).auth == ChannelAuth::Public {
            out.push((
                "auth",
                format!(
                    "channel {:?} is public, so its subscribers would get what legacy clients \
                     must log in for; add a [[channels]] rule for it with auth = \"backend\" or \"token\"",
                    route.channel
                ),
            ));
        }
    }
    out
}
