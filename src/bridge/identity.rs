//! A feed's identity: which backend answer a legacy poll stands for.
//!
//! Two polls share a feed when they would get the same answer from the
//! backend: same route, same query string once cache busters
//! (`ignore_params`) and, on incremental routes, the client's own cursor
//! are left out, and the same `vary_by` header value. Parameters are put in
//! a canonical order (stable by name, so repeated names keep their order),
//! so `?b=2&a=1` and `?a=1&b=2` are one feed.
//!
//! Each feed other than the route's plain one publishes on
//! `{channel}.{key}`, `key` being 32 hex digits of a SHA-1 over the
//! identity, so neither a query value nor a cookie appears in a channel
//! name (and two identities never share a channel).

use http::header::HeaderValue;
use sha1::{Digest, Sha1};

use crate::config::{BridgeMode, BridgeRoute};
use crate::http::query_pairs;

/// The identity of one feed of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedIdentity {
    /// The canonical query the gateway polls with ("" for none).
    pub query: String,
    /// The `vary_by` header value (never empty).
    pub vary_value: Option<HeaderValue>,
    /// "" for the route's plain feed, else the channel suffix.
    pub key: String,
}

impl FeedIdentity {
    /// The identity of a poll with `query` and `vary_value` on `route`.
    pub fn of(route: &BridgeRoute, query: Option<&str>, vary_value: Option<HeaderValue>) -> Self {
        let query = canonical_query(query, |name| is_excluded(route, name));
        let vary_value = vary_value.filter(|v| !v.is_empty());
        let key = variant_key(&query, vary_value.as_ref().map(HeaderValue::as_bytes));
        FeedIdentity {
            query,
            vary_value,
            key,
        }
    }

    /// The route's plain feed: no query, no `vary_by` value.
    pub fn plain() -> Self {
        FeedIdentity {
            query: String::new(),
            vary_value: None,
            key: String::new(),
        }
    }

    /// The channel this feed publishes on.
    pub fn channel_name(&self, base: &str) -> String {
        if self.key.is_empty() {
            base.to_string()
        } else {
            format!("{base}.{}", self.key)
        }
    }

    /// Path and query of the backend request for this feed, with `extra`
    /// (`name=value`, already encoded) appended to the query.
    pub fn upstream_target(&self, path: &str, extra: Option<&str>) -> String {
        let mut target = path.to_string();
        for (i, part) in [self.query.as_str(), extra.unwrap_or("")]
            .into_iter()
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            target.push(if i == 0 { '?' } else { '&' });
            target.push_str(part);
        }
        target
    }
}

/// Parameters that don't pick a feed: cache busters, and the client's own
/// cursor on an incremental route.
fn is_excluded(route: &BridgeRoute, name: &str) -> bool {
    route.ignore_params.iter().any(|p| p == name)
        || (route.mode == BridgeMode::Incremental && route.cursor_param == name)
}

/// The query's parameters minus the excluded ones, stably sorted by name
/// and re-encoded (`application/x-www-form-urlencoded`).
pub fn canonical_query(query: Option<&str>, excluded: impl Fn(&str) -> bool) -> String {
    let mut pairs: Vec<_> = query_pairs(query)
        .filter(|(name, _)| !excluded(name))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in &pairs {
        out.append_pair(name, value);
    }
    out.finish()
}

/// The channel suffix of an identity: "" for the plain feed; the SHA-1 of
/// the `vary_by` value alone for a feed without a query (as before queries
/// counted, so those channel names stay the same); else of
/// `?{query}\0{vary value}`. Header values never hold a NUL, so a value
/// can't pose as a query.
fn variant_key(query: &str, vary_value: Option<&[u8]>) -> String {
    let digest = match (query.is_empty(), vary_value) {
        (true, None) => return String::new(),
        (true, Some(value)) => Sha1::digest(value),
        (false, value) => {
            let mut hash = Sha1::new();
            hash.update(b"?");
            hash.update(query.as_bytes());
            hash.update(b"\0");
            hash.update(value.unwrap_or_default());
            hash.finalize()
        }
    };
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The client's cursor on an incremental route.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientCursor {
    /// No cursor parameter (or an empty one): a first poll.
    Missing,
    One(String),
    /// The parameter more than once: only the backend knows what it means.
    Ambiguous,
}

/// The value of `param` in `query`.
pub fn client_cursor(query: Option<&str>, param: &str) -> ClientCursor {
    let mut values = query_pairs(query).filter(|(name, _)| name == param);
    match (values.next(), values.next()) {
        (None, _) => ClientCursor::Missing,
        (Some(_), Some(_)) => ClientCursor::Ambiguous,
        (Some((_, v)), None) if v.is_empty() => ClientCursor::Missing,
        (Some((_, v)), None) => ClientCursor::One(v.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(mode: BridgeMode) -> BridgeRoute {
        let mode = match mode {
            BridgeMode::Snapshot => "snapshot",
            BridgeMode::Incremental => "incremental",
        };
        toml::from_str(&format!(
            "path = \"/api/m\"\nchannel = \"m\"\nmode = \"{mode}\""
        ))
        .unwrap()
    }

    #[test]
    fn queries_are_canonical_and_busters_dropped() {
        let r = route(BridgeMode::Snapshot);
        let a = FeedIdentity::of(&r, Some("room=42&_=1700000000&lang=en"), None);
        let b = FeedIdentity::of(&r, Some("lang=en&room=42&_=5"), None);
        assert_eq!(a, b);
        assert_eq!(a.query, "lang=en&room=42");
        assert_eq!(a.key.len(), 32);
        let other = FeedIdentity::of(&r, Some("room=7&lang=en"), None);
        assert_ne!(a.key, other.key);
        // Only the cache buster: the plain feed.
        assert_eq!(
            FeedIdentity::of(&r, Some("_=3"), None),
            FeedIdentity::plain()
        );
        assert_eq!(FeedIdentity::of(&r, None, None).channel_name("m"), "m");
        // Repeated names keep their order: `a=2&a=1` may mean something else.
        let x = FeedIdentity::of(&r, Some("a=1&a=2"), None);
        let y = FeedIdentity::of(&r, Some("a=2&a=1"), None);
        assert_ne!(x.key, y.key);
        // Encodings of the same value are one feed.
        let s1 = FeedIdentity::of(&r, Some("q=a%20b"), None);
        let s2 = FeedIdentity::of(&r, Some("q=a+b"), None);
        assert_eq!(s1, s2);
        assert_eq!(s1.upstream_target("/api/m", None), "/api/m?q=a+b");
    }

    #[test]
    fn vary_values_and_queries_never_share_a_channel() {
        let r = route(BridgeMode::Snapshot);
        let cookie = HeaderValue::from_static("room=42");
        let by_cookie = FeedIdentity::of(&r, None, Some(cookie.clone()));
        let by_query = FeedIdentity::of(&r, Some("room=42"), None);
        let both = FeedIdentity::of(&r, Some("room=42"), Some(cookie));
        assert_ne!(by_cookie.key, by_query.key);
        assert_ne!(both.key, by_query.key);
        assert_ne!(both.key, by_cookie.key);
        // Unchanged from before queries counted: SHA-1 of the value.
        assert_eq!(by_cookie.key, "412f8f5f930e62225abeb3f4272ee1a6");
        // An empty header value is no value.
        let empty = FeedIdentity::of(&r, None, Some(HeaderValue::from_static("")));
        assert_eq!(empty, FeedIdentity::plain());
        assert!(crate::protocol::channel::ChannelName::new(&both.channel_name("scores")).is_ok());
    }

    #[test]
    fn the_cursor_is_no_part_of_an_incremental_feed() {
        let r = route(BridgeMode::Incremental);
        let a = FeedIdentity::of(&r, Some("room=4&after=10"), None);
        let b = FeedIdentity::of(&r, Some("after=99&room=4&_=1"), None);
        assert_eq!(a, b);
        assert_eq!(
            a.upstream_target("/api/m", Some("after=100")),
            "/api/m?room=4&after=100"
        );
        assert_eq!(
            FeedIdentity::plain().upstream_target("/api/m", Some("after=1")),
            "/api/m?after=1"
        );
        // On a snapshot route `after` is an ordinary parameter.
        let s = route(BridgeMode::Snapshot);
        assert_ne!(FeedIdentity::of(&s, Some("after=1"), None).key, "");
    }

    #[test]
    fn client_cursors() {
        assert_eq!(client_cursor(None, "after"), ClientCursor::Missing);
        assert_eq!(
            client_cursor(Some("after="), "after"),
            ClientCursor::Missing
        );
        assert_eq!(
            client_cursor(Some("room=1&after=a%2Fb"), "after"),
            ClientCursor::One("a/b".into())
        );
        assert_eq!(
            client_cursor(Some("after=1&after=2"), "after"),
            ClientCursor::Ambiguous
        );
    }
}
