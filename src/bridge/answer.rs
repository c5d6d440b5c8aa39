//! What every kind of bridged route answers a legacy client with: the
//! gateway's copy as a `200`, a `304`, or the backend's own answer
//! (pass-through); and the poll's record in the migration telemetry.

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use super::browser_cache;
use super::route::Route;
use crate::gateway::Gateway;
use crate::http::{Body, Request, Response};
use crate::protocol::channel::ChannelName;
use crate::protocol::error::ApiError;
use crate::protocol::Transport;

/// The request's `vary_by` header value, if the route has one.
pub(super) fn vary_value(route: &Route, headers: &HeaderMap) -> Option<HeaderValue> {
    route
        .vary_header
        .as_ref()
        .and_then(|name| headers.get(name))
        .cloned()
}

/// The client headers a feed started by this request sends to the backend.
pub(super) fn forwarded_headers(route: &Route, headers: &HeaderMap) -> HeaderMap {
    let mut forwarded = HeaderMap::new();
    for name in &route.forward {
        if let Some(value) = headers.get(name) {
            forwarded.insert(name.clone(), value.clone());
        }
    }
    forwarded
}

/// Counts a legacy poll in the migration telemetry.
pub(super) fn record_poll(
    gw: &Gateway,
    route: &Route,
    channel: &ChannelName,
    req: &Request,
    peer: std::net::SocketAddr,
) {
    let client = gw.ip_limits.client_ip(peer.ip(), req.headers());
    gw.migration.record_poll(
        &route.config.path,
        channel.as_str(),
        crate::migration::client_key(client, req.headers(), None),
        crate::migration::referer_path(req.headers()).as_deref(),
    );
}

/// Sends a legacy poll to the backend unchanged, as if there were no
/// bridge: past `max_variants`, and for what only the backend can answer.
pub(super) async fn pass_through(
    gw: &Gateway,
    route: &Route,
    req: Request,
    peer: std::net::SocketAddr,
    secure: bool,
) -> Result<Response, ApiError> {
    route.client_proxied.inc();
    let proxy = gw
        .proxy
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("bridge configured without an upstream".into()))?;
    let from_proxy = gw.ip_limits.is_trusted(peer.ip());
    let scheme = if secure { "https" } else { "http" };
    Ok(proxy.forward(req, peer, scheme, from_proxy).await)
}

/// A `200` a legacy client gets from the gateway's copy.
pub(super) fn answer_with_body(
    gw: &Gateway,
    body: bytes::Bytes,
    content_type: HeaderValue,
    etag: HeaderValue,
    held: bool,
) -> Response {
    let delivered = gw.metrics.transport(Transport::Bridge);
    delivered.delivered.inc();
    delivered.payload_out.inc_by(body.len() as u64);
    let mut resp = hyper::Response::new(Body::full(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, browser_cache::cache_control(held));
    resp
}

/// True when the request's `If-None-Match` names `etag`.
pub(super) fn client_has(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| {
            let t = t.trim_ascii();
            t == etag.as_bytes() || t == b"*" || t.strip_prefix(b"W/") == Some(etag.as_bytes())
        })
}

pub(super) fn not_modified(route: &Route, etag: &HeaderValue) -> Response {
    let mut resp = hyper::Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    resp.headers_mut().insert(header::ETAG, etag.clone());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        browser_cache::cache_control(route.config.hold.is_some()),
    );
    resp
}

/// Holds a poll until `changed` resolves (true), its `hold` ends or the
/// gateway shuts down (false).
pub(super) async fn held_until<E>(
    gw: &Gateway,
    hold: std::time::Duration,
    changed: impl std::future::Future<Output = Result<impl Sized, E>>,
) -> bool {
    tokio::select! {
        changed = tokio::time::timeout(hold, changed) => changed.is_ok_and(|r| r.is_ok()),
        _ = gw.shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let etag = HeaderValue::from_static("\"pb-3\"");
        let mut h = HeaderMap::new();
        assert!(!client_has(&h, &etag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"pb-2\", W/\"pb-3\""),
        );
        assert!(client_has(&h, &etag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"pb-30\""));
        assert!(!client_has(&h, &etag));
    }
}
