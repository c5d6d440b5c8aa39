//! Long-poll and plain Ajax polling: `GET {prefix}/poll/{channel}?since=&timeout=`.
//!
//! Stateless between requests (the cursor is the client's `since`), so any
//! node can answer any poll and no sticky sessions are needed. A poll with
//! nothing new is held on a one-off subscription until a message arrives,
//! its timeout ends or the gateway shuts down.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::bus::{Bus, HistoryRead, Message, SubscriberQueue};
use crate::channel::{parse_cursor, ChannelName};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::{json, query_pairs, Request, Response};
use crate::metrics::PollResult;
use crate::migration;
use crate::transport::{record_delivery, ConnectionGuard, Cursor, Transport};

/// The parsed query of a poll.
struct PollQuery {
    since: Option<u64>,
    timeout: Duration,
    /// The browser client's reason for falling back from WebSocket, sent
    /// on its first poll after the fallback.
    fallback: Option<String>,
    /// The browser client's page-load id, for counting distinct pollers.
    client_id: Option<String>,
}

fn parse_query(gw: &Gateway, query: Option<&str>) -> Result<PollQuery, ApiError> {
    let mut since = None;
    let mut timeout = gw.config.longpoll.default_timeout;
    let (mut fallback, mut client_id) = (None, None);
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "since" => since = Some(parse_cursor(&value).ok_or(ApiError::BadCursor("since"))?),
            "timeout" => {
                let secs: f64 = value.parse().map_err(|_| ApiError::BadTimeout)?;
                if !secs.is_finite() || secs < 0.0 {
                    return Err(ApiError::BadTimeout);
                }
                timeout = Duration::from_secs_f64(secs.min(86_400.0));
            }
            "fallback" => fallback = Some(value),
            "cid" if value.len() <= 64 => client_id = Some(value),
            _ => {}
        }
    }
    Ok(PollQuery {
        since,
        timeout: timeout.min(gw.config.longpoll.max_timeout),
        fallback,
        client_id,
    })
}

/// Handles one poll.
pub async fn handle(
    gw: &Arc<Gateway>,
    req: &Request,
    channel: &str,
    peer: std::net::SocketAddr,
) -> Result<Response, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(preflight(gw, req.headers()));
    }
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    let channel = ChannelName::new(channel)?;
    let query = parse_query(gw, req.uri().query())?;
    let client = gw.ip_limits.client_ip(peer.ip(), req.headers());
    gw.ip_limits
        .allow_poll(client)
        .map_err(|limited| ApiError::RateLimited(limited.retry_after))?;
    gw.auth.check_origin(req.headers())?;
    let credentials = gw.auth.credentials(req.headers(), req.uri().query());
    gw.auth.may_subscribe(&channel, &credentials).await?;
    if gw.shutdown.is_cancelled() {
        return Err(gw.shutting_down());
    }
    let _in_flight = ConnectionGuard::new(&gw.metrics, Transport::LongPoll);
    if let Some(reason) = &query.fallback {
        gw.metrics.fallback(reason);
    }
    gw.migration.record_poll(
        "longpoll",
        channel.as_str(),
        migration::client_key(client, req.headers(), query.client_id.as_deref()),
        migration::referer_path(req.headers()).as_deref(),
    );
    let limit = gw.config.longpoll.max_messages;

    let read = gw.bus.history(&channel, query.since, limit).await?;
    // No `since`: the client wants what comes next, after the current last id.
    let cursor = query.since.unwrap_or(read.last_id);
    let answer = if query.since.is_some()
        && (!read.messages.is_empty() || read.truncated || read.conflated)
    {
        read
    } else if query.timeout.is_zero() {
        HistoryRead {
            last_id: cursor,
            ..HistoryRead::default()
        }
    } else {
        wait(gw, &channel, cursor, query.timeout).await?
    };
    let mut resp = respond(gw, answer);
    cors(gw, req.headers(), resp.headers_mut());
    Ok(resp)
}

/// Holds the poll until something after `cursor` is published.
async fn wait(
    gw: &Arc<Gateway>,
    channel: &ChannelName,
    cursor: u64,
    timeout: Duration,
) -> Result<HistoryRead, ApiError> {
    let queue = SubscriberQueue::new(gw.config.longpoll.max_messages, Transport::LongPoll);
    let (_subscription, read) = gw
        .subscribe(
            channel,
            Some(cursor),
            &queue,
            gw.config.longpoll.max_messages,
        )
        .await?;
    if !read.messages.is_empty() || read.truncated || read.conflated {
        return Ok(read);
    }
    let mut messages = Vec::new();
    tokio::select! {
        _ = queue.drain(&mut messages, gw.config.longpoll.max_messages) => {}
        _ = tokio::time::sleep(timeout) => {}
        _ = gw.shutdown.cancelled() => {}
    }
    // A shared bus may hand us live copies of what history already had.
    let mut seen = Cursor(cursor);
    messages.retain(|m| seen.advance(m.id));
    Ok(HistoryRead {
        last_id: seen.0,
        messages,
        truncated: false,
        conflated: false,
    })
}

/// `{"messages":[…],"last_id":N,"truncated":false}` built from the shared
/// envelopes, no re-encoding.
fn respond(gw: &Gateway, answer: HistoryRead) -> Response {
    let result = if answer.truncated {
        PollResult::Truncated
    } else if answer.messages.is_empty() {
        PollResult::Empty
    } else {
        PollResult::Messages
    };
    gw.metrics.poll_answered(result);
    record_delivery(&gw.metrics, Transport::LongPoll, &answer.messages);
    let last_id = answer.messages.last().map_or(answer.last_id, |m| m.id);
    json(
        StatusCode::OK,
        encode_answer(
            &answer.messages,
            last_id,
            answer.truncated,
            answer.conflated,
        ),
    )
}

fn encode_answer(
    messages: &[Arc<Message>],
    last_id: u64,
    truncated: bool,
    conflated: bool,
) -> bytes::Bytes {
    let size: usize = messages.iter().map(|m| m.envelope.len() + 1).sum();
    let mut out = BytesMut::with_capacity(size + 64);
    out.put_slice(b"{\"messages\":[");
    for (i, msg) in messages.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(&msg.envelope);
    }
    out.put_slice(b"],\"last_id\":");
    out.put_slice(itoa::Buffer::new().format(last_id).as_bytes());
    out.put_slice(if truncated {
        b",\"truncated\":true"
    } else {
        b",\"truncated\":false"
    });
    if conflated {
        out.put_slice(b",\"conflated\":true");
    }
    out.put_u8(b'}');
    out.freeze()
}

/// The allowed origin to echo for this request, if any.
fn allowed_origin<'a>(gw: &Gateway, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let origins = &gw.config.longpoll.cors_origins;
    let text = origin.to_str().ok()?;
    let listed = origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(text));
    (listed || gw.auth.origin_allowed(text)).then_some(origin)
}

/// CORS headers for an allowed cross-site poll.
pub fn cors(gw: &Gateway, request: &HeaderMap, response: &mut HeaderMap) {
    if let Some(origin) = allowed_origin(gw, request) {
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(header::VARY, HeaderValue::from_static("Origin"));
        response.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
    }
}

/// Answers a CORS preflight.
fn preflight(gw: &Gateway, request: &HeaderMap) -> Response {
    let mut resp = json(StatusCode::NO_CONTENT, bytes::Bytes::new());
    resp.headers_mut().remove(header::CONTENT_TYPE);
    if let Some(origin) = allowed_origin(gw, request) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, OPTIONS"),
        );
        if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use std::time::Instant;

    #[test]
    fn answer_shape() {
        let ch = ChannelName::new("n").unwrap();
        let msgs = vec![
            Arc::new(Message::new(ch.clone(), 1, b"1", Instant::now())),
            Arc::new(Message::new(ch, 2, b"\"x\"", Instant::now())),
        ];
        let body = encode_answer(&msgs, 2, false, false);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"][1]["data"], "x");
        assert_eq!(v["last_id"], 2);
        assert_eq!(v["truncated"], false);
        assert!(v.get("conflated").is_none());
        let empty = encode_answer(&[], 7, true, true);
        assert_eq!(
            &empty[..],
            br#"{"messages":[],"last_id":7,"truncated":true,"conflated":true}"#
        );
    }
}
