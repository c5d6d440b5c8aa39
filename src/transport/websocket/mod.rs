//! WebSocket transport (RFC 6455): `GET {prefix}/ws/{channel}` and
//! `GET {prefix}/ws?channel=a&channel=b`.
//!
//! The handshake is answered here (hyper does the HTTP/1.1 upgrade); the
//! channels are subscribed *before* the 101 goes out so nothing published
//! meanwhile is missed. After the upgrade the raw socket is recovered from
//! hyper (nothing of hyper's is kept) and served by one task,
//! [`session`]; [`reader`] decodes what the client sends and [`socket`]
//! is the socket shared with publishers, who write pre-encoded frames to
//! it directly while the session is idle.

pub mod command;
mod deflate;
mod guard;
mod park;
mod reader;
mod session;
mod socket;
mod ticks;

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use crate::bus::SubscriberQueue;
use crate::config::WsCompression;
use crate::gateway::Gateway;
use crate::http::{Body, Request, Response};
use crate::metrics::UpgradeFailure;
use crate::net::auto_errors::JsonAutoErrors;
use crate::net::meter::{ConnMeter, MeteredStream};
use crate::protocol::error::ApiError;
use crate::protocol::Transport;
use crate::transport::params::WsParams;
use deflate::{Deflate, DeflateContext};
use session::{Handler, InitialSubscription, Input, Session, Start};
use socket::{SocketWriter, WsSocket};

/// What a connection negotiated for permessage-deflate, and its own
/// compression state if it keeps one.
pub(crate) type Compression = (Option<Deflate>, Option<Box<DeflateContext>>);

/// The subprotocol we speak, selected when a client offers it.
pub const SUBPROTOCOL: &str = "pollbridge.v1";

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The client socket as hyper hands it back after the upgrade.
type ClientIo = JsonAutoErrors<TokioIo<MeteredStream<TcpStream>>>;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// True for a request that asks to become a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket")
}

/// `Sec-WebSocket-Accept` for a client key.
fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Handles `GET {prefix}/ws[/{channel}]`. `path_channel` is the decoded
/// path segment, if any.
pub async fn handle(
    gw: &Arc<Gateway>,
    mut req: Request,
    path_channel: Option<String>,
    peer: std::net::SocketAddr,
) -> Result<Response, ApiError> {
    let failed = |reason: UpgradeFailure| move |_: &ApiError| gw.metrics.upgrade_failed(reason);
    let WsParams { channels, since } = check_request(gw, &req, path_channel)?;

    // Every channel must be allowed before any is subscribed.
    let credentials = gw.auth.credentials(req.headers(), req.uri().query());
    let client = gw.ip_limits.client_ip(peer.ip(), req.headers());
    let mut expires = None;
    for channel in &channels {
        let grant = gw
            .auth
            .may_subscribe(channel, &credentials, client)
            .await
            .inspect_err(failed(UpgradeFailure::Auth))?;
        expires = earliest(expires, grant.expires);
    }

    // Last, so only otherwise acceptable sessions spend admission tokens.
    super::admit(gw, Transport::WebSocket).inspect_err(failed(UpgradeFailure::Limit))?;

    // Subscribe before answering, so nothing published meanwhile is lost.
    let queue = SubscriberQueue::for_client(
        gw.config.limits.queue_length,
        Transport::WebSocket,
        &gw.output,
    );
    let delta = crate::transport::delta::wants_delta(req.uri().query());
    let mut initial = Vec::with_capacity(channels.len());
    for channel in channels {
        let (subscription, history) = gw
            .subscribe(&channel, since, &queue, gw.config.history.size)
            .await?;
        initial.push(InitialSubscription {
            channel,
            subscription,
            history,
            delta,
        });
    }

    let start = Start {
        handler: Handler::Commands,
        credentials,
        client,
        expires,
        initial,
    };
    Ok(upgrade(gw, &mut req, queue, Box::new(start)))
}

/// The checks of a subscribing handshake that need no backend: method,
/// WebSocket enabled, the handshake itself, the origin, and which channels
/// from which cursor. Each refusal is counted by its reason.
fn check_request(
    gw: &Gateway,
    req: &Request,
    path_channel: Option<String>,
) -> Result<WsParams, ApiError> {
    if req.method() != http::Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    if !gw.config.websocket.enabled {
        gw.metrics.upgrade_failed(UpgradeFailure::Disabled);
        return Err(ApiError::Forbidden(
            "WebSocket is disabled on this gateway; use long-poll or SSE".into(),
        ));
    }
    check_handshake(gw, req).inspect_err(|e| {
        gw.metrics.upgrade_failed(match e {
            ApiError::ShuttingDown(_) => UpgradeFailure::Limit,
            _ => UpgradeFailure::BadHandshake,
        })
    })?;
    gw.auth
        .check_origin(req.headers())
        .inspect_err(|_| gw.metrics.upgrade_failed(UpgradeFailure::Origin))?;
    let max = gw.config.limits.max_subscriptions_per_connection;
    crate::transport::params::ws_params(path_channel, req.uri().query(), max).inspect_err(|e| {
        match e {
            ApiError::BadChannel(_) => gw.metrics.upgrade_failed(UpgradeFailure::BadHandshake),
            ApiError::TooManySubscriptions(_) => gw.metrics.upgrade_failed(UpgradeFailure::Limit),
            _ => {}
        }
    })
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Handles `GET {prefix}/echo` (only with `conformance_echo`): the same
/// session, echoing instead of interpreting commands.
pub async fn handle_echo(gw: &Arc<Gateway>, mut req: Request) -> Result<Response, ApiError> {
    if req.method() != http::Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    check_handshake(gw, &req)?;
    let queue = SubscriberQueue::for_client(
        gw.config.limits.queue_length,
        Transport::WebSocket,
        &gw.output,
    );
    let start = Start {
        handler: Handler::Echo,
        credentials: Default::default(),
        client: std::net::Ipv4Addr::UNSPECIFIED.into(),
        expires: None,
        initial: Vec::new(),
    };
    Ok(upgrade(gw, &mut req, queue, Box::new(start)))
}

/// The checks of an opening handshake (RFC 6455 §4.2.1) that decide
/// between 101 and an error.
fn check_handshake(gw: &Gateway, req: &Request) -> Result<(), ApiError> {
    if !is_upgrade(req.headers()) {
        return Err(ApiError::UpgradeRequired);
    }
    if gw.shutdown.is_cancelled() {
        return Err(gw.shutting_down());
    }
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    if !version_ok {
        return Err(ApiError::BadRequest(
            "Sec-WebSocket-Version must be 13".into(),
        ));
    }
    let key_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .is_some_and(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes())
                .is_ok_and(|d| d.len() == 16)
        });
    if !key_ok {
        return Err(ApiError::BadRequest(
            "missing or malformed Sec-WebSocket-Key".into(),
        ));
    }
    Ok(())
}

/// Starts the session for an upgraded connection, on a task of its own:
/// that task then holds only the session's future (the upgrade's task ends
/// here, and nothing of it stays allocated), and nothing boxes the session.
fn spawn_session(
    gw: Arc<Gateway>,
    upgraded: hyper::upgrade::Upgraded,
    queue: Arc<SubscriberQueue>,
    start: Box<Start>,
    compression: Compression,
) {
    match upgraded.downcast::<ClientIo>() {
        Ok(parts) => {
            // The raw socket is back. Copy the (usually empty) read-ahead:
            // keeping hyper's slice would keep its whole 8 KiB read buffer
            // alive for the connection's life.
            let stream = parts.io.into_inner().into_inner();
            let read_ahead = parts.read_buf.to_vec();
            drop(parts.read_buf);
            spawn_on_socket(gw, stream, read_ahead, queue, start, compression);
        }
        Err(upgraded) => {
            // TLS: not shareable with publishers; served through a
            // lock-based split, every message by this task.
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            let input = Input::Stream(Box::new(read));
            let session = Session::new(gw.clone(), input, write, queue, Vec::new(), compression);
            gw.tasks.spawn(session.run(start));
        }
    }
}

/// Starts the session of a plain TCP connection whose 101 has been
/// written: `read_ahead` is whatever the client sent after its handshake
/// that was already read. Nothing of the HTTP layer that answered the
/// handshake is needed (or kept), so a connection driver other than hyper
/// can hand its sockets over here.
pub(crate) fn spawn_on_socket(
    gw: Arc<Gateway>,
    stream: MeteredStream<TcpStream>,
    read_ahead: Vec<u8>,
    queue: Arc<SubscriberQueue>,
    start: Box<Start>,
    compression: Compression,
) {
    let mut stream = stream;
    let mut read_ahead = read_ahead;
    // Handed over by the lean HTTP/1.1 path and not read by hyper yet: it
    // comes after hyper's read-ahead.
    if let Some(rest) = stream.take_rewound() {
        read_ahead.extend_from_slice(&rest);
    }
    let (stream, meter) = stream.into_parts();
    let socket = match WsSocket::new(stream, meter, gw.clone(), compression.0) {
        Ok(socket) => Arc::new(socket),
        Err(e) => {
            tracing::warn!(error = %e, "websocket: cannot register the upgraded socket");
            return;
        }
    };
    let input = Input::Socket(socket.clone());
    let writer = SocketWriter(socket);
    let session = Session::new(gw.clone(), input, writer, queue, read_ahead, compression);
    gw.tasks.spawn(session.run(start));
}

/// Answers 101 and hands the connection to a session once hyper lets go
/// of it.
fn upgrade(
    gw: &Arc<Gateway>,
    req: &mut Request,
    queue: Arc<SubscriberQueue>,
    start: Box<Start>,
) -> Response {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .expect("checked by check_handshake");
    let protocol_offered =
        header_has_token(req.headers(), header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);
    let negotiated = match gw.config.websocket.compression {
        WsCompression::Off => None,
        WsCompression::Shared => deflate::negotiate_for(gw, req.headers()),
    };
    // A connection that keeps compression state holds its slot (and its
    // compressor) for its life: boxed, so every other pays one pointer.
    let (deflate, answer, context) = match negotiated {
        Some((d, answer, slot)) => (
            Some(d),
            Some(answer),
            slot.map(|slot| Box::new(DeflateContext::new(d, slot))),
        ),
        None => (None, None, None),
    };
    let on_upgrade = hyper::upgrade::on(&mut *req);
    // Put there by the router, so the handshake's bytes can be told apart.
    let meter = req.extensions_mut().remove::<Arc<ConnMeter>>();
    let session_gw = gw.clone();
    let task = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        if let Some(meter) = meter {
            meter.handshake_done();
        }
        tracing::debug!("websocket open");
        spawn_session(session_gw, upgraded, queue, start, (deflate, context));
    };
    gw.tasks.spawn(task);

    let mut resp = hyper::Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key(key.as_bytes())).expect("base64 is a valid header"),
    );
    if protocol_offered {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    if let Some(answer) = answer {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_detection_is_token_based() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_upgrade(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!is_upgrade(&h));
    }
}
