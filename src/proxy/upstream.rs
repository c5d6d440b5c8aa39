//! Connecting to the upstream, and hyper's client for the requests the
//! codec leaves to it: upgrades (a WebSocket through the proxy) and
//! `CONNECT`, whose `101` / `2xx` hands the socket over to a tunnel.
//!
//! Such a request takes a pooled (or new) connection's socket and speaks
//! hyper's `client::conn::http1` on it, driven by the request's own task
//! beside the answer it waits for and then beside the body it relays
//! ([`HyperRelay`](super::upgrade_relay::HyperRelay)); the connection is
//! not pooled again (an upgrade consumes it; a refused one is rare).

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::GuardedBody;
use super::codec::{Upstream, UpstreamRequest};

/// The upstream connection's own future (hyper's, with upgrades; its type
/// cannot be named, hence the box: one per connection, not per request).
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// hyper's client on an upstream connection's socket, for one request.
pub struct HyperUpstream {
    sender: SendRequest<GuardedBody>,
    /// `None` once it finished (closed by either side, failed, upgraded).
    driver: Option<Driver>,
}

/// Where and how to connect.
pub struct Target {
    /// The host as `lookup_host` takes it (an IPv6 literal unbracketed).
    host: String,
    port: u16,
    connect_timeout: Duration,
}

/// TCP keep-alive probes start after this much silence (what hyper-util's
/// connector was set to), so a vanished upstream is noticed on idle
/// pooled connections too.
const TCP_KEEPALIVE_IDLE_SECS: libc::c_int = 60;

impl Target {
    pub fn new(upstream: &Authority, connect_timeout: Duration) -> Target {
        let host = upstream.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Target {
            host: host.to_string(),
            port: upstream.port_u16().unwrap_or(80),
            connect_timeout,
        }
    }

    /// Opens a new connection (every address the host resolves to, in
    /// turn, all within `proxy.connect_timeout`).
    pub async fn connect(&self) -> io::Result<Upstream> {
        let stream = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting took over {:?}", self.connect_timeout),
                )
            })??;
        stream.set_nodelay(true)?;
        set_keepalive(&stream);
        Ok(Upstream::new(stream))
    }

    async fn open(&self) -> io::Result<TcpStream> {
        let mut last = None;
        // An IP literal is parsed, not looked up (no blocking thread).
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the upstream host has no address")
        }))
    }
}

/// `SO_KEEPALIVE` with probes after [`TCP_KEEPALIVE_IDLE_SECS`]; a failure
/// only loses the probes.
fn set_keepalive(stream: &TcpStream) {
    let fd = stream.as_raw_fd();
    let on: libc::c_int = 1;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket and option buffers of the declared length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&on as *const libc::c_int).cast(),
            len,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            (&TCP_KEEPALIVE_IDLE_SECS as *const libc::c_int).cast(),
            len,
        );
    }
}

/// Polls the connection's future; false once it has finished.
fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) -> bool {
    let Some(conn) = driver else { return false };
    match conn.as_mut().poll(cx) {
        Poll::Pending => true,
        Poll::Ready(result) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "proxy: upstream connection ended");
            }
            *driver = None;
            false
        }
    }
}

impl HyperUpstream {
    /// Speaks hyper's client on the connection's socket (it has nothing
    /// unread between requests).
    pub async fn handshake(up: Upstream) -> io::Result<HyperUpstream> {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(up.stream))
            .await
            .map_err(io::Error::other)?;
        Ok(HyperUpstream {
            sender,
            driver: Some(Box::pin(conn.with_upgrades())),
        })
    }

    /// Lets the connection read and write what it can; false once it has
    /// finished.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.driver, cx)
    }

    /// Sends `req` and drives the connection until the answer's head
    /// arrives. A request the connection could not take comes back in the
    /// error (`take_message`).
    pub async fn exchange(
        &mut self,
        req: UpstreamRequest,
    ) -> Result<http::Response<Incoming>, TrySendError<UpstreamRequest>> {
        let HyperUpstream { sender, driver } = self;
        let mut answer = pin!(sender.try_send_request(req));
        poll_fn(|cx| {
            // The connection first: it writes the request, reads the head
            // and hands it to `answer`.
            drive(driver, cx);
            answer.as_mut().poll(cx)
        })
        .await
    }

    /// The upstream switched protocols: the connection's future, run to
    /// its end in a task of its own, hands the socket to whoever waits on
    /// the answer's upgrade.
    pub fn finish_upgrade(self) {
        if let Some(conn) = self.driver {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "proxy: upstream upgrade failed");
                }
            });
        }
    }
}
