//! What every kind of bridged route answers a legacy client with: the
//! gateway's copy as a `200`, a `304`, or the backend's own answer
//! (pass-through); and the poll's record in the migration telemetry.

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use super::browser_cache;
use super::route::Route;
use crate::gateway::Gateway;
use crate::http::encoding::{
    compressed_body, set_content_encoding, vary_on_encoding, weak_etag, CompressOnce, Compression,
    ANSWER_CODINGS,
};
use crate::http::{Body, Request, Response};
use crate::protocol::channel::ChannelName;
use crate::protocol::compress::Coding;
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

/// The coding a legacy client's answer of `len` bytes goes out in.
pub(super) fn coding_for(gw: &Gateway, request: &HeaderMap, len: usize) -> Option<Coding> {
    let compression = Compression::new(&gw.config.compression);
    compression.for_len(compression.accepted(request, &ANSWER_CODINGS), len)
}

/// The body of a `200` from the gateway's copy: `shared` holds the copy's
/// compressed forms (made once per version), `None` to compress this
/// answer alone.
pub(super) struct CopyBody<'a> {
    pub body: bytes::Bytes,
    pub shared: Option<&'a CompressOnce>,
    pub content_type: HeaderValue,
    pub etag: HeaderValue,
}

/// A `200` a legacy client gets from the gateway's copy, compressed when
/// its `Accept-Encoding` allows (then with a weak ETag).
pub(super) fn answer_with_body(
    gw: &Gateway,
    request: &HeaderMap,
    copy: CopyBody<'_>,
    held: bool,
) -> Response {
    let delivered = gw.metrics.transport(Transport::Bridge);
    delivered.delivered.inc();
    delivered.payload_out.inc_by(copy.body.len() as u64);
    let coding = coding_for(gw, request, copy.body.len());
    let levels = Compression::new(&gw.config.compression).levels;
    let packed = coding.map(|c| match copy.shared {
        Some(shared) => shared.get(c, &copy.body, levels),
        None => crate::protocol::compress::encode(c, &copy.body, levels),
    });
    let body = compressed_body(&gw.metrics, Transport::Bridge, copy.body, packed);
    let mut resp = hyper::Response::new(Body::full(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, copy.content_type);
    representation_headers(gw, h, coding, &copy.etag);
    h.insert(header::CACHE_CONTROL, browser_cache::cache_control(held));
    resp
}

/// `ETag` (weak when compressed), `Content-Encoding` and `Vary`.
fn representation_headers(
    gw: &Gateway,
    h: &mut HeaderMap,
    coding: Option<Coding>,
    etag: &HeaderValue,
) {
    match coding {
        Some(coding) => {
            h.insert(header::ETAG, weak_etag(etag));
            set_content_encoding(h, coding);
        }
        None => {
            h.insert(header::ETAG, etag.clone());
        }
    }
    if gw.config.compression.enabled {
        vary_on_encoding(h);
    }
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

/// `304` for a client that has the copy of `len` bytes tagged `etag`: the
/// ETag as its `200` would carry it (weak when that would be compressed).
pub(super) fn not_modified(
    gw: &Gateway,
    route: &Route,
    request: &HeaderMap,
    etag: &HeaderValue,
    len: usize,
) -> Response {
    let mut resp = hyper::Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let coding = coding_for(gw, request, len);
    let h = resp.headers_mut();
    representation_headers(gw, h, coding, etag);
    h.remove(header::CONTENT_ENCODING);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        browser_cache::cache_control(route.config.hold.is_some()),
    );
    resp
}

/// The `304` of a client whose copy is current, counted as such on the
/// route (`client="not_modified"`): what snapshot and incremental routes
/// answer when no newer body is coming.
pub(super) fn counted_not_modified(
    gw: &Gateway,
    route: &Route,
    request: &HeaderMap,
    etag: &HeaderValue,
    len: usize,
) -> Response {
    route.client_not_modified.inc();
    not_modified(gw, route, request, etag, len)
}

/// Holds a poll until `changed` resolves (true), its `hold` ends or the
/// gateway shuts down (false). A route without `hold` answers at once
/// (false): the client's copy is current.
pub(super) async fn held_until<E>(
    gw: &Gateway,
    hold: Option<std::time::Duration>,
    changed: impl std::future::Future<Output = Result<impl Sized, E>>,
) -> bool {
    let Some(hold) = hold else { return false };
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
