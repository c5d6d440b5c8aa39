//! The public listener's router: client transports under the prefix, the
//! reverse proxy for everything else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use super::App;
use crate::gateway::Gateway;
use crate::http::{self as h, Request, Response};
use crate::net::meter::ConnMeter;
use crate::protocol::error::ApiError;
use crate::protocol::Transport;
use crate::publish;
use crate::transport::{longpoll, sse, websocket};

/// Where a request goes.
enum Route {
    WebSocket(Option<String>),
    Poll(String),
    Sse(String),
    Publish(String),
    Echo,
    Asset(&'static super::assets::Asset),
    Demo,
    Stats,
    UnknownGatewayPath,
    Bridge(usize),
    Proxy,
    /// Refused before routing (a bad `Host`).
    Refused(ApiError),
}

fn classify(prefix: &str, path: &str) -> Route {
    use crate::transport::params::{endpoint, Endpoint};
    match endpoint(prefix, path) {
        None => Route::Proxy,
        Some(Endpoint::WebSocket(channel)) => Route::WebSocket(channel),
        Some(Endpoint::Poll(channel)) => Route::Poll(channel),
        Some(Endpoint::Sse(channel)) => Route::Sse(channel),
        Some(Endpoint::Publish(channel)) => Route::Publish(channel),
        Some(Endpoint::Echo) => Route::Echo,
        Some(Endpoint::ClientJs) => Route::Asset(&super::assets::CLIENT_JS),
        Some(Endpoint::ClientDts) => Route::Asset(&super::assets::CLIENT_DTS),
        Some(Endpoint::Demo) => Route::Demo,
        Some(Endpoint::Stats) => Route::Stats,
        Some(Endpoint::Unknown) => Route::UnknownGatewayPath,
    }
}

impl Route {
    fn transport(&self) -> Transport {
        match self {
            Route::WebSocket(_) | Route::Echo => Transport::WebSocket,
            Route::Poll(_) => Transport::LongPoll,
            Route::Sse(_) => Transport::Sse,
            Route::Publish(_)
            | Route::Asset(_)
            | Route::Demo
            | Route::Stats
            | Route::UnknownGatewayPath
            | Route::Refused(_)
            | Route::Proxy => Transport::Proxy,
            Route::Bridge(_) => Transport::Bridge,
        }
    }
}

/// Answers one request of the public listener.
///
/// hyper allocates a connection's request future once, at the size of its
/// largest state, and keeps it for the connection's life, so every byte of
/// it is paid by every held poll and open stream. Hence a plain function
/// returning an `async move` block: the block keeps its arguments where
/// they were captured, where an `async fn` would also copy them into
/// locals (the request alone is ~250 bytes).
#[allow(clippy::manual_async_fn)] // on purpose, see above
pub fn route(
    app: Arc<App>,
    mut req: Request,
    peer: SocketAddr,
    meter: Arc<ConnMeter>,
    secure: bool,
) -> impl Future<Output = Response> + Send {
    async move {
        let route = pick_route(&app, &req);
        let http2 = req.version() == http::Version::HTTP_2;
        meter.begin_request(route.transport());
        // Before anything reads or forwards it (RFC 9112 §3.2).
        crate::net::host::authority_as_host(&mut req);
        let route = match crate::net::host::check(req.version(), req.headers()) {
            Ok(_) => route,
            Err(e) => Route::Refused(e),
        };
        if route.transport() == Transport::WebSocket {
            // The upgrade tells the meter when its handshake is over.
            req.extensions_mut().insert(meter.clone());
        }
        // The future is as large as its largest handler's (see above), so
        // the handlers larger than the poll's, none of them held by the
        // thousand, are boxed (one allocation per request) and the poll's
        // stays inline.
        let result = match route {
            Route::Refused(e) => Err(e),
            Route::WebSocket(channel) => {
                Box::pin(websocket::handle(&app.gw, req, channel, peer)).await
            }
            Route::Echo if app.config.conformance_echo => {
                Box::pin(websocket::handle_echo(&app.gw, req)).await
            }
            Route::Asset(asset) => Ok(serve_asset(asset, &req)),
            Route::Demo if app.config.demo.enabled => {
                Ok(super::assets::DEMO_HTML.serve(req.headers()))
            }
            Route::Stats if app.config.demo.public_stats() => {
                Ok(h::json_value(http::StatusCode::OK, &app.stats.report()))
            }
            Route::Echo | Route::Demo | Route::Stats => Err(ApiError::NotFound(format!(
                "{} is not enabled on this gateway",
                req.uri().path()
            ))),
            Route::Poll(channel) => longpoll::handle(&app.gw, &mut req, &channel, peer).await,
            Route::Sse(channel) => Box::pin(sse::handle(&app.gw, &req, &channel, peer)).await,
            Route::Publish(channel) => match authorize_publisher(&app, &req, &channel) {
                Ok(()) => Box::pin(publish::single(&app.gw, req, &channel)).await,
                Err(e) => Err(e),
            },
            Route::UnknownGatewayPath => Err(ApiError::NotFound(format!(
                "no gateway endpoint {}; see {p}/ws, {p}/poll/{{channel}}, {p}/sse/{{channel}}",
                req.uri().path(),
                p = app.config.prefix
            ))),
            Route::Bridge(index) => {
                Box::pin(app.bridges.handle(&app.gw, index, req, peer, secure)).await
            }
            Route::Proxy => match &app.proxy {
                Some(proxy) => {
                    let from_proxy = app.ip_limits.is_trusted(peer.ip());
                    let scheme = if secure { "https" } else { "http" };
                    Ok(Box::pin(proxy.forward(req, peer, scheme, from_proxy)).await)
                }
                None => Err(ApiError::NotFound(format!(
                    "{} is not a gateway path and no upstream is configured (--upstream)",
                    req.uri().path()
                ))),
            },
        };
        let mut resp = result.unwrap_or_else(|e| h::logged_error(&e));
        if http2 {
            // A stream its client's flow control stalls blocks no socket
            // write: the write deadline is kept by the output reaper.
            resp.body_mut().watch_stalls();
        }
        resp.body_mut().set_meter(meter);
        resp
    }
}

/// Where a request goes: a gateway endpoint under the prefix, a bridged
/// legacy poll (GET or HEAD of a `[[bridge]]` path), or the proxy.
fn pick_route(app: &App, req: &Request) -> Route {
    match classify(&app.config.prefix, req.uri().path()) {
        Route::Proxy => match app.bridges.route_for(req.uri().path()) {
            Some(index) if matches!(*req.method(), http::Method::GET | http::Method::HEAD) => {
                Route::Bridge(index)
            }
            _ => Route::Proxy,
        },
        other => other,
    }
}

/// The browser client and its types.
fn serve_asset(asset: &super::assets::Asset, req: &Request) -> Response {
    let mut resp = asset.serve(req.headers());
    // Module scripts load in CORS mode; the client is public anyway.
    resp.headers_mut().insert(
        http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        http::HeaderValue::from_static("*"),
    );
    resp
}

/// Public publishing needs one of the configured keys as a bearer token,
/// except on the demo's channel while the demo is enabled.
fn authorize_publisher(gw: &Gateway, req: &Request, channel: &str) -> Result<(), ApiError> {
    if gw.config.demo.enabled && channel == gw.config.demo.channel {
        return Ok(());
    }
    let keys = &gw.config.publish.keys;
    if keys.is_empty() {
        return Err(ApiError::NotFound(
            "publishing is not enabled on the public listener (publish.keys)".into(),
        ));
    }
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token);
    match presented {
        None => Err(ApiError::Unauthorized(
            "publishing needs Authorization: Bearer KEY".into(),
        )),
        Some(key)
            if keys
                .iter()
                .any(|k| crate::auth::constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::Forbidden("publisher key not accepted".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(classify("/rt", "/rt/ws"), Route::WebSocket(None)));
        assert!(matches!(classify("/rt", "/rt/ws/news"), Route::WebSocket(Some(c)) if c == "news"));
        assert!(matches!(classify("/rt", "/rt/poll/a%20b"), Route::Poll(c) if c == "a b"));
        assert!(matches!(classify("/rt", "/rt/sse/x"), Route::Sse(_)));
        assert!(matches!(
            classify("/rt", "/rt/poll"),
            Route::UnknownGatewayPath
        ));
        assert!(matches!(
            classify("/rt", "/rt/nope"),
            Route::UnknownGatewayPath
        ));
        assert!(matches!(classify("/rt", "/rtx/ws"), Route::Proxy));
        assert!(matches!(classify("/rt", "/api/rt/ws"), Route::Proxy));
        assert!(matches!(classify("/rt", "/rt/poll/a/b"), Route::Poll(c) if c == "a/b"));
    }
}
