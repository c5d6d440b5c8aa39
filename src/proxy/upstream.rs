//! One HTTP/1.1 connection to the upstream, driven by the task of the
//! request that uses it.
//!
//! hyper-util's pooled client (used before) ran every upstream connection
//! in a task of its own, so each request crossed tasks several times (the
//! request in, the head back, the body back) and spawned one more task per
//! response to put the connection back in the pool once it was idle, after
//! a pool checkout keyed by scheme and authority and a URI rebuilt twice.
//! Here the downstream connection's task polls the upstream connection's
//! future itself, beside the answer it waits for and then beside the body
//! it relays ([`Relay`](super::relay::Relay)), as the bench's floor proxy
//! does: per request no task, no cross-task wake-up.
//!
//! Between requests a connection waits in the [`Pool`](super::pool::Pool),
//! polled by no one; taking it out polls it once (with a no-op waker) so a
//! connection the upstream closed meanwhile is seen closed and dropped.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::GuardedBody;

/// The upstream connection's own future (hyper's, with upgrades; its type
/// cannot be named, hence the box: one per connection, not per request).
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// A request as sent upstream.
pub type UpstreamRequest = http::Request<GuardedBody>;

/// One keep-alive connection to the upstream.
pub struct Upstream {
    sender: SendRequest<GuardedBody>,
    /// `None` once it finished (closed by either side, failed, upgraded).
    driver: Option<Driver>,
    /// It served a request before: a request it failed to send may be
    /// retried on a fresh connection (the upstream closed it while idle).
    pub reused: bool,
    /// When it was last put back in the pool.
    pub idle_since: Instant,
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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        Ok(Upstream {
            sender,
            driver: Some(Box::pin(conn.with_upgrades())),
            reused: false,
            idle_since: Instant::now(),
        })
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

impl Upstream {
    /// Lets the connection read and write what it can; false once it has
    /// finished.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.driver, cx)
    }

    /// Whether its last poll left it idle and waiting for a request (no
    /// poll: what the connection did since is not seen).
    pub fn idle_now(&self) -> bool {
        self.driver.is_some() && self.sender.is_ready()
    }

    /// Whether it can take a request now: still open and idle.
    pub fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx) && self.sender.is_ready()
    }

    /// Sends `req` and drives the connection until the answer's head
    /// arrives. A request the connection could not take comes back in the
    /// error (`take_message`).
    pub async fn exchange(
        &mut self,
        req: UpstreamRequest,
    ) -> Result<http::Response<Incoming>, TrySendError<UpstreamRequest>> {
        let Upstream { sender, driver, .. } = self;
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
