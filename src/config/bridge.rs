//! One `[[bridge]]` route: the path it bridges and the channel it feeds,
//! and which feeds it polls and how their answers are shaped (the mode,
//! query-string identity, the variant cap and the incremental keys), with
//! their defaults and checks. Who may be served a copy: `bridge_auth.rs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BridgeAuthMode, ChannelMode, ChannelRules, Config};

/// Highest `max_variants` accepted: each variant is a poller of the backend.
const MAX_VARIANTS_LIMIT: usize = 100_000;

/// How a `[[bridge]]` route's answers relate to each other.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BridgeMode {
    /// Every answer is the whole current state; published on a `state` channel.
    #[default]
    Snapshot,
    /// Answers are the items after the client's cursor; every item is
    /// published as one message on a `stream` channel.
    Incremental,
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
    #[serde(
        default = "super::bridge_auth::default_auth_ttl",
        with = "humantime_serde"
    )]
    pub auth_ttl: Duration,
    /// Distinct credentials whose answers are remembered; past it expired
    /// answers are dropped, then new ones are not remembered. Default: 10000.
    #[serde(default = "super::bridge_auth::default_auth_cache_size")]
    pub auth_cache_size: usize,
    /// Checks waiting on the backend at once; a client that cannot get one
    /// within `auth.auth_timeout` gets `503 auth_unavailable`. Default: 8.
    #[serde(default = "super::bridge_auth::default_auth_max_in_flight")]
    pub auth_max_in_flight: usize,
}

fn default_bridge_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_bridge_idle() -> Duration {
    Duration::from_secs(60)
}

fn default_ignore_params() -> Vec<String> {
    vec!["_".into()]
}

fn default_max_variants() -> usize {
    100
}

fn default_cursor_param() -> String {
    "after".into()
}

fn default_item_id() -> String {
    "/id".into()
}

/// The problems of one route's feed settings, as (field, reason).
pub(super) fn bridge_route_problems(route: &BridgeRoute) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if route.max_variants == 0 || route.max_variants > MAX_VARIANTS_LIMIT {
        problems.push((
            "max_variants",
            format!("must be between 1 and {MAX_VARIANTS_LIMIT}"),
        ));
    }
    if route.ignore_params.iter().any(|p| p.is_empty()) {
        problems.push(("ignore_params", "names must not be empty".into()));
    }
    if route.mode == BridgeMode::Incremental {
        if route.cursor_param.is_empty() {
            problems.push(("cursor_param", "must not be empty".into()));
        } else if route.ignore_params.contains(&route.cursor_param) {
            problems.push((
                "cursor_param",
                format!("{:?} is also in ignore_params", route.cursor_param),
            ));
        }
        for (field, pointer) in [("items", &route.items), ("item_id", &route.item_id)] {
            if !is_json_pointer(pointer) {
                problems.push((
                    field,
                    format!("{pointer:?} is not a JSON pointer (\"\" or \"/name/...\")"),
                ));
            }
        }
    }
    problems
}

impl Config {
    /// The channel rules the gateway runs with: the `[[channels]]` rules,
    /// and `state` by default for the channels snapshot routes feed (their
    /// feeds' `{channel}.{hash}` too).
    pub fn channel_rules(&self) -> ChannelRules {
        self.bridges
            .iter()
            .filter(|b| b.mode == BridgeMode::Snapshot)
            .fold(ChannelRules::new(self.channels.clone()), |rules, b| {
                rules.with_state_default(&b.channel)
            })
    }
}

/// An incremental route publishes each item as one message, so its
/// channels must be `stream` channels: on a `state` channel (a
/// `[[channels]]` rule, or a name under a snapshot route's channel) a newer
/// item would replace one a subscriber has not read yet.
pub(super) fn incremental_channel_problem(config: &Config, route: &BridgeRoute) -> Option<String> {
    if route.mode != BridgeMode::Incremental {
        return None;
    }
    let rules = config.channel_rules();
    // The plain feed's channel, and the shape of every query feed's.
    let query_feed = format!("{}.{}", route.channel, "0".repeat(32));
    [route.channel.clone(), query_feed]
        .into_iter()
        .find(|name| rules.resolve(name).mode == ChannelMode::State)
        .map(|name| {
            format!(
                "an incremental route needs stream channels, but {name:?} is a state channel \
                 (a [[channels]] rule with mode = \"state\", or under a snapshot route's \
                 channel): newer items would replace unread ones"
            )
        })
}

/// RFC 6901: empty (the whole document) or `/`-separated reference tokens,
/// `~` only as `~0` or `~1`.
fn is_json_pointer(pointer: &str) -> bool {
    if pointer.is_empty() {
        return true;
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return false;
    };
    let bytes = rest.as_bytes();
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(extra: &str) -> Vec<&'static str> {
        let route: BridgeRoute =
            toml::from_str(&format!("path = \"/m\"\nchannel = \"m\"\n{extra}")).unwrap();
        bridge_route_problems(&route)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn feed_settings_are_checked() {
        assert!(problems("").is_empty());
        assert!(problems("mode = \"incremental\"").is_empty());
        assert_eq!(problems("max_variants = 0"), ["max_variants"]);
        assert_eq!(problems("ignore_params = [\"\"]"), ["ignore_params"]);
        // Incremental keys are checked on incremental routes only.
        assert!(problems("items = \"messages\"").is_empty());
        assert_eq!(
            problems("mode = \"incremental\"\nitems = \"messages\"\nitem_id = \"/a~2\""),
            ["items", "item_id"]
        );
        assert_eq!(
            problems("mode = \"incremental\"\ncursor_param = \"_\""),
            ["cursor_param"]
        );
    }

    /// The `channel` problems of a configuration with these routes and rules.
    fn channel_problems(toml: &str) -> Vec<String> {
        let config: Config = toml::from_str(toml).unwrap();
        config
            .bridges
            .iter()
            .filter_map(|route| incremental_channel_problem(&config, route))
            .collect()
    }

    #[test]
    fn incremental_routes_need_stream_channels() {
        let chat = "[[bridge]]\npath = \"/m\"\nchannel = \"chat.rooms\"\nmode = \"incremental\"\n";
        assert!(channel_problems(chat).is_empty());
        // Under a snapshot route's channel: its feeds would be state.
        let under = format!("{chat}[[bridge]]\npath = \"/s\"\nchannel = \"chat\"\n");
        let problems = channel_problems(&under);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("\"chat.rooms\""), "{problems:?}");
        // A state rule for the room feeds only.
        let rule = format!("{chat}[[channels]]\npattern = \"chat.rooms.*\"\nmode = \"state\"\n");
        assert!(channel_problems(&rule)[0].contains("chat.rooms.000"));
        // A stream rule is what the route needs anyway.
        let stream = format!("{under}[[channels]]\npattern = \"chat.rooms*\"\n");
        assert!(channel_problems(&stream).is_empty());
    }

    #[test]
    fn json_pointers() {
        for ok in ["", "/", "/messages", "/a/0/id", "/a~1b", "/m~0"] {
            assert!(is_json_pointer(ok), "{ok:?}");
        }
        for bad in ["messages", "/a~", "/a~2", "#/a"] {
            assert!(!is_json_pointer(bad), "{bad:?}");
        }
    }
}
