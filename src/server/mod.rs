//! Listeners, connections and the shutdown sequence.
//!
//! [`run`] takes already-bound listeners and a shutdown future, so tests
//! (and `main`) decide the ports. Shutdown order: stop accepting, then
//! cancel the gateway's token (held polls answer, SSE streams end,
//! WebSockets close with 1001, idle keep-alive connections close), then wait
//! for every tracked task up to `shutdown.drain_timeout`.

pub mod admin;
mod app;
pub mod assets;
pub mod channel_list;
pub mod lean;
mod protocols;
pub mod public;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::bus::Bus;
use crate::gateway::Gateway;
use crate::http as h;
use crate::net::meter::{ConnMeter, MeteredStream};
use crate::net::{auto_errors, limits};
pub use app::App;
use protocols::{Protocols, Version};

/// The two bound listeners.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

/// How often history is aged and idle channels are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes, then drains. Returns whether every
/// connection finished within the drain time.
pub async fn run(app: Arc<App>, listeners: Listeners, shutdown: impl Future<Output = ()>) -> bool {
    let sweeper = tokio::spawn({
        let app = app.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            let mut last_sweep = std::time::Instant::now();
            loop {
                every.tick().await;
                app.stats.sample();
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = std::time::Instant::now();
                    app.bus.hub().sweep(last_sweep);
                    app.ip_limits.sweep();
                    app.auth.sweep();
                    app.client_channels.sweep(last_sweep);
                    app.migration.refresh();
                }
            }
        }
    });
    let reaper = tokio::spawn(app.output.clone().run_reaper());
    let public = tokio::spawn(accept_public(app.clone(), listeners.public));
    let admin = tokio::spawn(accept_admin(app.clone(), listeners.admin));

    shutdown.await;
    tracing::info!(drain = ?app.config.shutdown.drain_timeout, "shutting down: no new connections, draining");
    app.shutdown.cancel();
    // The accept loops see the token and drop their listeners.
    let _ = tokio::join!(public, admin);
    app.tasks.close();
    let drained = tokio::time::timeout(app.config.shutdown.drain_timeout, app.tasks.wait())
        .await
        .is_ok();
    sweeper.abort();
    reaper.abort();
    if drained {
        tracing::info!("drained");
    } else {
        tracing::warn!(
            open = app.tasks.len(),
            "drain time over; dropping what is left"
        );
    }
    drained
}

/// Accepts with backoff on errors (EMFILE and the like would otherwise spin).
async fn accept(gw: &Gateway, listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

fn http1_builder(gw: &Gateway) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // Without a timer hyper silently disables the header-read timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(gw.config.limits.header_read_timeout)
        .max_buf_size(gw.config.limits.max_header_bytes)
        .keep_alive(true)
        // The Date header is 37 bytes on every poll answer; the product is
        // about not paying for headers nobody reads.
        .auto_date_header(false);
    builder
}

async fn accept_public(app: Arc<App>, listener: TcpListener) {
    // Shared: a clone per connection would put both builders (hundreds of
    // bytes) in every connection's task.
    let builder = Arc::new(Protocols::new(&app));
    let max = app.config.limits.max_connections;
    while let Some((stream, peer)) = accept(&app, &listener).await {
        if app.open_connections.fetch_add(1, Ordering::Relaxed) >= max {
            app.open_connections.fetch_sub(1, Ordering::Relaxed);
            app.tasks.spawn(refuse(app.clone(), stream, Refusal::Total));
            continue;
        }
        let ip_slot = match app.ip_limits.connect(peer.ip()) {
            Ok(slot) => slot,
            Err(limits::AddressFull) => {
                app.open_connections.fetch_sub(1, Ordering::Relaxed);
                app.tasks
                    .spawn(refuse(app.clone(), stream, Refusal::PerAddress));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let meter = ConnMeter::new(app.metrics.clone(), app.open_connections.clone(), ip_slot);
        let stream = MeteredStream::new(stream, meter.clone())
            .with_write_timeout(app.config.limits.write_timeout);
        let conn_app = app.clone();
        let builder = builder.clone();
        app.tasks.spawn(async move {
            match &conn_app.tls {
                // The lean HTTP/1.1 path; it hands anything else to hyper.
                None => lean::serve(conn_app, builder, stream, peer, meter).await,
                // Boxed: the TLS branch's future (handshake, TLS stream) is
                // ~2.4 KB bigger than the plain one, and without the box
                // every plain connection's task would be sized for it.
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    Box::pin(serve_tls(
                        &conn_app, &builder, acceptor, stream, peer, meter,
                    ))
                    .await
                }
            }
        });
    }
}

/// The TLS handshake (with the same deadline as a request head), then
/// [`serve_public`] over the TLS stream.
async fn serve_tls(
    app: &Arc<App>,
    builder: &Protocols,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: MeteredStream<TcpStream>,
    peer: SocketAddr,
    meter: Arc<ConnMeter>,
) {
    let handshake = acceptor.accept(stream);
    match tokio::time::timeout(app.config.limits.header_read_timeout, handshake).await {
        Ok(Ok(tls_stream)) => {
            let version = protocols::after_alpn(tls_stream.get_ref().1.alpn_protocol());
            let io = TokioIo::new(tls_stream);
            serve_public(app, builder, version, io, peer, meter, true).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on one accepted public
/// connection until it ends or the gateway shuts down.
///
/// On HTTP/2 the connection's bytes are metered to the transport of the
/// request most recently begun on it ([`ConnMeter::begin_request`]):
/// streams of different transports multiplexed on one connection blur the
/// per-transport split, the total stays exact (docs/http.md).
async fn serve_public<I>(
    app: &Arc<App>,
    builder: &Protocols,
    version: Version,
    io: I,
    peer: SocketAddr,
    meter: Arc<ConnMeter>,
    secure: bool,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc_app = app.clone();
    let conn_meter = meter.clone();
    let service = service_fn(move |req| {
        let app = svc_app.clone();
        let meter = meter.clone();
        let req = req.map(h::RequestBody::from);
        async move { Ok::<_, Infallible>(public::route(app, req, peer, meter, secure).await) }
    });
    tracing::debug!(%peer, secure, ?version, "connection open");
    let result = match version {
        Version::Http1 => {
            let io = auto_errors::JsonAutoErrors::new(io);
            if app.shutdown.is_cancelled() {
                // Handed over by the lean path during the drain with a
                // request already read: answer it (`connection: close`),
                // then close. A graceful shutdown before hyper has read
                // anything would drop it unanswered.
                let mut h1 = builder.h1.clone();
                h1.keep_alive(false);
                h1.serve_connection(io, service).with_upgrades().await
            } else {
                let conn = builder.h1.serve_connection(io, service).with_upgrades();
                until_shutdown(app, conn, |c| c.graceful_shutdown()).await
            }
        }
        // Boxed: an HTTP/2 connection's state is kilobytes larger than an
        // HTTP/1.1 one's, and unboxed it would size every connection's task
        // (every held poll, every SSE stream) for it.
        // A client dropped by the output limits is dropped with its whole
        // connection: its stalled stream blocks no write that could fail.
        Version::Http2 => {
            let conn = builder.h2.serve_connection(io, service);
            let served = until_shutdown(app, conn, |c| c.graceful_shutdown());
            Box::pin(async {
                tokio::select! {
                    result = served => result,
                    () = conn_meter.until_killed() => Ok(()),
                }
            })
            .await
        }
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(e) => tracing::debug!(%peer, error = %e, "connection closed with an error"),
    }
}

/// Drives a connection; when the gateway shuts down, asks it to finish
/// gracefully (HTTP/1.1: after the request in flight; HTTP/2: GOAWAY).
async fn until_shutdown<C>(
    app: &App,
    conn: C,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        // The connection first: it reads bytes handed over by the lean
        // path before a shutdown can ask it to stop.
        biased;
        result = conn.as_mut() => result,
        _ = app.shutdown.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// Which connection limit a refused connection hit.
enum Refusal {
    /// `limits.max_connections`: the gateway as a whole is full.
    Total,
    /// `limits.max_connections_per_ip`: this client address is.
    PerAddress,
}

/// Over a connection limit: a short 503/429 and close, never a queue.
/// On a TLS listener the answer goes through a (time-bounded) handshake,
/// so the client can read it.
async fn refuse(app: Arc<App>, stream: TcpStream, refusal: Refusal) {
    let (status, body) = match refusal {
        Refusal::Total => (
            "503 Service Unavailable",
            r#"{"error":"too_many_connections","message":"the gateway is at its connection limit"}"#,
        ),
        Refusal::PerAddress => (
            "429 Too Many Requests",
            r#"{"error":"too_many_connections","message":"too many connections from this address"}"#,
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let deadline = Duration::from_secs(2);
    let answer = async {
        match &app.tls {
            None => {
                let mut stream = stream;
                let _ = stream.write_all(response.as_bytes()).await;
            }
            Some(tls) => {
                if let Ok(mut tls_stream) = tls.acceptor().accept(stream).await {
                    let _ = tls_stream.write_all(response.as_bytes()).await;
                    let _ = tls_stream.shutdown().await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(deadline, answer).await;
}

async fn accept_admin(app: Arc<App>, listener: TcpListener) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.limits.header_read_timeout)
        // As on the public listener; also lets JsonAutoErrors recognise
        // hyper's own error answers.
        .auto_date_header(false);
    while let Some((stream, peer)) = accept(&app, &listener).await {
        let svc_app = app.clone();
        let service = service_fn(move |req| {
            let app = svc_app.clone();
            let req = req.map(h::RequestBody::from);
            async move { Ok::<_, Infallible>(admin::route(app, req).await) }
        });
        let io = auto_errors::JsonAutoErrors::new(TokioIo::new(stream));
        let conn = builder.serve_connection(io, service);
        let token = app.shutdown.clone();
        app.tasks.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = token.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
