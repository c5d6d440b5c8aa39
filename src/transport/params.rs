//! What a realtime request asks for, read from its path, query and
//! headers: which endpoint under the prefix, which channels, from which
//! cursor, for how long. Pure functions (no gateway state), so the fuzz
//! target `realtime_request` and the property tests drive exactly the code
//! the transports run.

use std::borrow::Cow;
use std::time::Duration;

use http::HeaderValue;

use crate::http::{decode_segment, query_pairs};
use crate::protocol::channel::{parse_cursor, ChannelName, Since};
use crate::protocol::error::ApiError;

/// A path under the gateway's prefix, by endpoint. The channel of
/// `{prefix}/poll/{channel}` and the like is the percent-decoded rest of
/// the path (validated later, by the transport); in [`endpoint_raw`]'s
/// answer (`Endpoint<&str>`) it is that rest as it is, still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<Channel = String> {
    /// `{prefix}/ws` or `{prefix}/ws/{channel}`.
    WebSocket(Option<Channel>),
    Poll(Channel),
    Sse(Channel),
    Publish(Channel),
    Echo,
    ClientJs,
    ClientDts,
    Demo,
    Stats,
    /// Under the prefix, but no endpoint (404).
    Unknown,
}

/// The endpoint `path` names, or `None` when it is not under `prefix`
/// (`/rtx` is not under `/rt`): then it goes to the bridge or the proxy.
pub fn endpoint(prefix: &str, path: &str) -> Option<Endpoint> {
    Some(match endpoint_raw(prefix, path)? {
        Endpoint::WebSocket(ch) => Endpoint::WebSocket(ch.map(decode_segment)),
        Endpoint::Poll(ch) => Endpoint::Poll(decode_segment(ch)),
        Endpoint::Sse(ch) => Endpoint::Sse(decode_segment(ch)),
        Endpoint::Publish(ch) => Endpoint::Publish(decode_segment(ch)),
        Endpoint::Echo => Endpoint::Echo,
        Endpoint::ClientJs => Endpoint::ClientJs,
        Endpoint::ClientDts => Endpoint::ClientDts,
        Endpoint::Demo => Endpoint::Demo,
        Endpoint::Stats => Endpoint::Stats,
        Endpoint::Unknown => Endpoint::Unknown,
    })
}

/// [`endpoint`] without decoding (or copying) the channel: for a caller
/// that only needs to know which endpoint a path names.
pub fn endpoint_raw<'p>(prefix: &str, path: &'p str) -> Option<Endpoint<&'p str>> {
    let rest = path.strip_prefix(prefix)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    // Byte loops, not `trim_start_matches`/`split_once` (the generic char
    // searcher): this runs on every poll, twice (lean head, router).
    let slashes = rest.bytes().take_while(|&b| b == b'/').count();
    let rest = &rest[slashes..];
    let (name, arg) = match rest.bytes().position(|b| b == b'/') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    Some(match (name, arg) {
        ("ws", arg) => Endpoint::WebSocket(arg),
        ("poll", Some(ch)) => Endpoint::Poll(ch),
        ("sse", Some(ch)) => Endpoint::Sse(ch),
        ("publish", Some(ch)) => Endpoint::Publish(ch),
        ("echo", None) => Endpoint::Echo,
        ("client.js", None) => Endpoint::ClientJs,
        ("client.d.ts", None) => Endpoint::ClientDts,
        ("demo", None) => Endpoint::Demo,
        // Empty raw, empty decoded: nothing non-empty decodes to nothing.
        ("demo", Some("")) => Endpoint::Demo,
        ("stats", None) => Endpoint::Stats,
        _ => Endpoint::Unknown,
    })
}

/// The query of a poll. The strings borrow from the request's URI unless
/// they had to be percent-decoded.
#[derive(Debug)]
pub struct PollParams<'q> {
    /// `since=`: the last id the client has; absent means "what comes next".
    pub since: Option<Since>,
    /// `timeout=`, capped at `max_timeout`.
    pub timeout: Duration,
    /// The browser client's reason for falling back from WebSocket, sent
    /// on its first poll after the fallback.
    pub fallback: Option<Cow<'q, str>>,
    /// The browser client's page-load id (at most 64 bytes, else ignored),
    /// for counting distinct pollers.
    pub client_id: Option<Cow<'q, str>>,
}

/// Reads a poll's query; later repeats of a parameter win.
pub fn poll_params<'q>(
    query: Option<&'q str>,
    default_timeout: Duration,
    max_timeout: Duration,
) -> Result<PollParams<'q>, ApiError> {
    let mut since = None;
    let mut timeout = default_timeout;
    let (mut fallback, mut client_id) = (None, None);
    for (key, value) in query_pairs(query) {
        match &*key {
            "since" => since = Some(parse_cursor(&value).ok_or(ApiError::BadCursor("since"))?),
            "timeout" => timeout = parse_timeout(&value)?,
            "fallback" => fallback = Some(value),
            "cid" if value.len() <= 64 => client_id = Some(value),
            _ => {}
        }
    }
    Ok(PollParams {
        since,
        timeout: timeout.min(max_timeout),
        fallback,
        client_id,
    })
}

/// Longest `timeout=` taken before capping: a day.
const TIMEOUT_CEILING_SECS: u64 = 86_400;

/// `timeout=` in seconds, fractions allowed, capped at a day.
pub fn parse_timeout(value: &str) -> Result<Duration, ApiError> {
    // Whole seconds (what clients send) without the float parser; the
    // same value the float path below gives for them.
    if !value.is_empty() && value.len() <= 18 && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = value.parse().map_err(|_| ApiError::BadTimeout)?;
        return Ok(Duration::from_secs(secs.min(TIMEOUT_CEILING_SECS)));
    }
    let secs: f64 = value.parse().map_err(|_| ApiError::BadTimeout)?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(ApiError::BadTimeout);
    }
    Ok(Duration::from_secs_f64(
        secs.min(TIMEOUT_CEILING_SECS as f64),
    ))
}

/// Where an event stream resumes: `Last-Event-ID` (what browsers send on
/// reconnect, surrounding spaces ignored) wins over `?since=`, since the
/// browser repeats the original URL but sends the id it actually got to.
pub fn sse_since(
    last_event_id: Option<&HeaderValue>,
    query: Option<&str>,
) -> Result<Option<Since>, ApiError> {
    if let Some(v) = last_event_id {
        return v
            .to_str()
            .ok()
            .and_then(|s| parse_cursor(s.trim()))
            .map(Some)
            .ok_or(ApiError::BadCursor("Last-Event-ID"));
    }
    match query_pairs(query).find(|(k, _)| k == "since") {
        Some((_, v)) => Ok(Some(parse_cursor(&v).ok_or(ApiError::BadCursor("since"))?)),
        None => Ok(None),
    }
}

/// What a WebSocket handshake subscribes to.
#[derive(Debug, PartialEq, Eq)]
pub struct WsParams {
    /// The path's channel, then each `channel=`, duplicates dropped.
    pub channels: Vec<ChannelName>,
    /// `since=` (the first one), allowed with exactly one channel.
    pub since: Option<Since>,
}

/// Reads a handshake's channels and cursor; at most `max_channels`.
pub fn ws_params(
    path_channel: Option<String>,
    query: Option<&str>,
    max_channels: usize,
) -> Result<WsParams, ApiError> {
    let mut channels: Vec<ChannelName> = Vec::new();
    let named = path_channel.map(Cow::Owned).into_iter().chain(
        query_pairs(query)
            .filter(|(k, _)| k == "channel")
            .map(|(_, v)| v),
    );
    for name in named {
        let channel = ChannelName::new(&name)?;
        if !channels.contains(&channel) {
            // Checked as they come: a query naming thousands of channels
            // is refused without building them all.
            if channels.len() == max_channels {
                return Err(ApiError::TooManySubscriptions(max_channels));
            }
            channels.push(channel);
        }
    }
    let since = match query_pairs(query).find(|(k, _)| k == "since") {
        Some((_, v)) => Some(parse_cursor(&v).ok_or(ApiError::BadCursor("since"))?),
        None => None,
    };
    if since.is_some() && channels.len() != 1 {
        return Err(ApiError::BadRequest(
            "`since` needs exactly one channel; for several, send subscribe commands with their own since".into(),
        ));
    }
    Ok(WsParams { channels, since })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = |p: &str| endpoint("/rt", p);
        assert_eq!(e("/rt/ws"), Some(Endpoint::WebSocket(None)));
        assert_eq!(
            e("/rt/ws/news"),
            Some(Endpoint::WebSocket(Some("news".into())))
        );
        assert_eq!(e("/rt/poll/a%20b"), Some(Endpoint::Poll("a b".into())));
        assert_eq!(e("/rt/sse/x"), Some(Endpoint::Sse("x".into())));
        assert_eq!(e("/rt/poll"), Some(Endpoint::Unknown));
        assert_eq!(e("/rt/nope"), Some(Endpoint::Unknown));
        assert_eq!(e("/rtx/ws"), None);
        assert_eq!(e("/api/rt/ws"), None);
        assert_eq!(e("/rt/poll/a/b"), Some(Endpoint::Poll("a/b".into())));
        assert_eq!(e("/rt/demo/"), Some(Endpoint::Demo));
        assert_eq!(e("//rt"), None);
        assert_eq!(e("/rt"), Some(Endpoint::Unknown));
        assert_eq!(e("/rt//poll/x"), Some(Endpoint::Poll("x".into())));
        assert_eq!(e("/rt/poll/"), Some(Endpoint::Poll("".into())));
        assert_eq!(e("/rt/echo/x"), Some(Endpoint::Unknown));
        assert_eq!(
            endpoint_raw("/rt", "/rt/poll/a%20b"),
            Some(Endpoint::Poll("a%20b"))
        );
    }

    /// The reading of a path before the byte loops and the raw step: the
    /// reference the property test holds `endpoint` to.
    fn reference_endpoint(prefix: &str, path: &str) -> Option<Endpoint> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let rest = path.strip_prefix(prefix)?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        let (name, arg) = match rest.trim_start_matches('/').split_once('/') {
            Some((name, arg)) => (name, Some(decode(arg))),
            None => (rest.trim_start_matches('/'), None),
        };
        Some(match (name, arg) {
            ("ws", arg) => Endpoint::WebSocket(arg),
            ("poll", Some(ch)) => Endpoint::Poll(ch),
            ("sse", Some(ch)) => Endpoint::Sse(ch),
            ("publish", Some(ch)) => Endpoint::Publish(ch),
            ("echo", None) => Endpoint::Echo,
            ("client.js", None) => Endpoint::ClientJs,
            ("client.d.ts", None) => Endpoint::ClientDts,
            ("demo", None) => Endpoint::Demo,
            ("demo", Some(rest)) if rest.is_empty() => Endpoint::Demo,
            ("stats", None) => Endpoint::Stats,
            _ => Endpoint::Unknown,
        })
    }

    fn kind<C>(e: &Endpoint<C>) -> &'static str {
        match e {
            Endpoint::WebSocket(_) => "ws",
            Endpoint::Poll(_) => "poll",
            Endpoint::Sse(_) => "sse",
            Endpoint::Publish(_) => "publish",
            Endpoint::Echo => "echo",
            Endpoint::ClientJs => "client.js",
            Endpoint::ClientDts => "client.d.ts",
            Endpoint::Demo => "demo",
            Endpoint::Stats => "stats",
            Endpoint::Unknown => "unknown",
        }
    }

    proptest::proptest! {
        #[test]
        fn endpoints_read_as_before(
            path in "(/rt|/rtx|/r)?(/{0,2}(ws|poll|sse|publish|echo|demo|stats|client\\.js|client\\.d\\.ts|x)(/[a-z%0-9/€\\xff]{0,6})?)?",
        ) {
            proptest::prop_assert_eq!(endpoint("/rt", &path), reference_endpoint("/rt", &path));
        }

        #[test]
        fn any_path_reads_as_before(path in proptest::prelude::any::<String>()) {
            proptest::prop_assert_eq!(endpoint("/rt", &path), reference_endpoint("/rt", &path));
            proptest::prop_assert_eq!(
                endpoint_raw("/rt", &path).as_ref().map(kind),
                endpoint("/rt", &path).as_ref().map(kind)
            );
        }
    }

    #[test]
    fn whole_second_timeouts_match_the_float_path() {
        for text in [
            "0",
            "1",
            "60",
            "0060",
            "86400",
            "86401",
            "999999999999999999",
        ] {
            let float: f64 = text.parse().unwrap();
            assert_eq!(
                parse_timeout(text).unwrap(),
                Duration::from_secs_f64(float.min(86_400.0)),
                "{text}"
            );
        }
        assert_eq!(parse_timeout("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_timeout("1e1").unwrap(), Duration::from_secs(10));
        assert_eq!(
            parse_timeout("99999999999999999999999").unwrap(),
            Duration::from_secs(86_400)
        );
        for bad in ["", "-1", "x", "inf", "NaN", "1s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn poll_queries() {
        let (d, m) = (Duration::from_secs(25), Duration::from_secs(120));
        let p = poll_params(Some("since=4&timeout=500&cid=x&fallback=blocked"), d, m).unwrap();
        assert_eq!((p.since, p.timeout), (Some(Since::plain(4)), m));
        assert_eq!(p.client_id.as_deref(), Some("x"));
        assert_eq!(poll_params(None, d, m).unwrap().timeout, d);
        assert_eq!(
            poll_params(Some("since=-1"), d, m).unwrap_err().code(),
            "bad_cursor"
        );
        assert_eq!(
            poll_params(Some("timeout=x"), d, m).unwrap_err().code(),
            "bad_timeout"
        );
    }

    #[test]
    fn sse_cursor_sources() {
        let id = HeaderValue::from_static(" 7 ");
        assert_eq!(
            sse_since(Some(&id), Some("since=3")).unwrap(),
            Some(Since::plain(7))
        );
        assert_eq!(
            sse_since(None, Some("since=3")).unwrap(),
            Some(Since::plain(3))
        );
        assert_eq!(sse_since(None, None).unwrap(), None);
        let bad = HeaderValue::from_static("x");
        assert_eq!(
            sse_since(Some(&bad), None).unwrap_err().code(),
            "bad_cursor"
        );
    }

    #[test]
    fn handshake_channels() {
        let p = ws_params(Some("a".into()), Some("channel=b&channel=a&x=1"), 8).unwrap();
        let names: Vec<&str> = p.channels.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            ws_params(None, Some("channel=a&channel=b"), 1)
                .unwrap_err()
                .code(),
            "too_many_subscriptions"
        );
        assert_eq!(
            ws_params(None, Some("channel=a&channel=b&since=1"), 8)
                .unwrap_err()
                .code(),
            "bad_request"
        );
        assert_eq!(
            ws_params(None, Some("channel=a%20b"), 8)
                .unwrap_err()
                .code(),
            "bad_channel"
        );
        assert_eq!(
            ws_params(Some("a".into()), Some("since=2"), 8)
                .unwrap()
                .since,
            Some(Since::plain(2))
        );
    }
}
