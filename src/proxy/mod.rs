//! Reverse proxy: every path outside the gateway's prefix goes to the
//! upstream unchanged, bodies streamed both ways, upgrades tunnelled.
//!
//! Per request: the client's request is rewritten in place (hop-by-hop
//! headers stripped, forwarding headers added) and written upstream by the
//! proxy's own HTTP/1.1 codec ([`codec`]) on a pooled keep-alive
//! connection, spoken by the request's own task; the answer's body relays
//! back the same way. Upgrades and `CONNECT` go through hyper's client on
//! such a connection instead ([`upstream`]).

mod body;
mod codec;
mod headers;
mod pool;
mod upgrade_relay;
mod upstream;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{HeaderValue, Method, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::config::ProxyConfig;
use crate::http::{Body, Request, Response};
use crate::metrics::ConnectionGuard;
use crate::metrics::Metrics;
use crate::net::deadlines::Deadline;
use crate::protocol::error::ApiError;
use crate::protocol::Transport;
use body::{GuardedBody, Pace};
use codec::{AnswerHead, ExchangeError, Relay, Upstream, UpstreamRequest};
use pool::Pool;
use upgrade_relay::HyperRelay;
use upstream::{HyperUpstream, Target};

pub use crate::config::upstream::parse_upstream;
pub use headers::{add_forwarding, remove_hop_by_hop, upgrade_protocol};

/// A `proxy.timeout` longer than this is this (the wheel counts ticks in
/// a `u64`; a year is as good as never).
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

/// The upstream, its pooled connections and the proxy's limits.
pub struct Proxy {
    pool: Arc<Pool>,
    target: Target,
    upstream: Authority,
    /// `Host` for a request that came without one (an HTTP/1.0 client):
    /// the upstream's authority, built once.
    default_host: HeaderValue,
    timeout: std::time::Duration,
    /// How fast request bodies must arrive.
    pace: Pace,
    /// Plain requests through the codec (`proxy.codec`).
    codec: bool,
    metrics: Arc<Metrics>,
}

/// Why no answer came from the upstream.
enum Failure {
    /// No connection could be opened.
    Connect(std::io::Error),
    /// The exchange failed before the answer's head (or the answer was
    /// not one the codec relays).
    Codec(ExchangeError),
    /// hyper's client failed before the answer's head (upgrades).
    Request(hyper::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Codec(e) => write!(f, "{e}"),
            Failure::Request(e) => write!(f, "{e}"),
        }
    }
}

impl Proxy {
    pub fn new(url: &str, cfg: &ProxyConfig, metrics: Arc<Metrics>) -> Result<Proxy, String> {
        let upstream = parse_upstream(url)?;
        let default_host = HeaderValue::from_str(upstream.as_str())
            .map_err(|e| format!("upstream {url:?}: {e}"))?;
        Ok(Proxy {
            pool: Pool::new(cfg.pool_max_idle, cfg.pool_idle_timeout),
            target: Target::new(&upstream, cfg.connect_timeout),
            upstream,
            default_host,
            timeout: cfg.timeout,
            pace: Pace {
                grace: cfg.body_timeout,
                min_rate: cfg.body_min_rate,
            },
            codec: cfg.codec,
            metrics,
        })
    }

    /// Forwards one request and returns the upstream's answer (or 502/504,
    /// or 400/408 when the client's own body failed). `from_trusted_proxy`:
    /// the peer is in `limits.trusted_proxies` (its `Forwarded` is kept).
    pub async fn forward(
        &self,
        req: Request,
        peer: SocketAddr,
        proto: &'static str,
        from_trusted_proxy: bool,
    ) -> Response {
        let _in_flight = ConnectionGuard::new(&self.metrics, Transport::Proxy);
        let started = Instant::now();
        let mut fault = None;
        let mut req = req.map(|body| {
            let (body, slot) = GuardedBody::new(body, self.pace);
            fault = slot;
            body
        });
        let client_version = req.version();
        self.retarget(&mut req);

        let upgrade = upgrade_protocol(req.headers());
        remove_hop_by_hop(req.headers_mut());
        add_forwarding(
            req.headers_mut(),
            peer.ip(),
            proto,
            client_version,
            from_trusted_proxy,
        );
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.default_host.clone());
        }
        if upgrade.is_some() || req.method() == Method::CONNECT || !self.codec {
            return Box::pin(self.forward_hyper(req, upgrade, started, fault, peer)).await;
        }

        let result = self.within_timeout(self.send(&mut req)).await;
        self.metrics
            .proxy_duration
            .observe(started.elapsed().as_secs_f64());
        // What went wrong is logged with the upstream's address; the
        // client is told only what kind of failure it was.
        let (head, upstream, sent) = match result {
            None => return self.timed_out(),
            Some(Err(e)) => return self.failed(&e, fault.as_ref(), peer),
            Some(Ok(answer)) => answer,
        };
        drop(req);
        let AnswerHead {
            mut parts,
            framing,
            keep_alive,
            has_hop_by_hop,
        } = head;
        self.metrics.proxy_answered(parts.status.as_u16());
        if has_hop_by_hop {
            remove_hop_by_hop(&mut parts.headers);
        }
        // An answer that came before the whole request went out leaves
        // the connection mid-request: not reused.
        let relay = Relay::new(upstream, framing, keep_alive && sent, self.pool.clone());
        Response::from_parts(parts, Body::stream(relay))
    }

    /// `fut`'s output, or `None` once `proxy.timeout` has passed. The
    /// deadline is a slot on the shared timer wheel (`net::deadlines`,
    /// 100 ms ticks: a 504 comes up to 0.2 s late, never early) instead of
    /// a tokio timer of its own, whose registration, polls and removal
    /// cost ~1.4k instructions per request (callgrind).
    async fn within_timeout<F: Future>(&self, fut: F) -> Option<F::Output> {
        let deadline = Deadline::after(self.timeout.min(LONGEST_TIMEOUT));
        let mut fut = pin!(fut);
        poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => deadline.poll_due(cx).map(|()| None),
        })
        .await
    }

    /// Sends the request on a pooled connection, or a new one, and reads
    /// the answer's head. A pooled connection the upstream closed before
    /// the request went out is retried once on a new connection (a
    /// request it began to send is not: it may not be idempotent). The
    /// boolean: the whole request was sent.
    async fn send(
        &self,
        req: &mut UpstreamRequest,
    ) -> Result<(AnswerHead, Upstream, bool), Failure> {
        let mut pooled = true;
        loop {
            let mut upstream = self.connection(pooled).await?;
            match upstream.exchange(req).await {
                Ok((head, sent)) => return Ok((head, upstream, sent)),
                Err(ExchangeError::Unsent(e)) if upstream.reused => {
                    tracing::debug!(error = %e, "proxy: pooled upstream connection was closed; retrying on a new one");
                    pooled = false;
                }
                Err(e) => return Err(Failure::Codec(e)),
            }
        }
    }

    /// A pooled connection (when `pooled`) or a new one.
    async fn connection(&self, pooled: bool) -> Result<Upstream, Failure> {
        match pooled.then(|| self.pool.take()).flatten() {
            Some(upstream) => Ok(upstream),
            // Boxed: connecting is rare, and its future (address lookup,
            // connect) would otherwise size every request's.
            None => Box::pin(self.target.connect())
                .await
                .map_err(Failure::Connect),
        }
    }

    /// An upgrade (`upgrade`: the protocol asked for), a `CONNECT`, or
    /// any request with `proxy.codec = false`, through hyper's client,
    /// which hands the socket over on `101`.
    async fn forward_hyper(
        &self,
        mut req: UpstreamRequest,
        upgrade: Option<HeaderValue>,
        started: Instant,
        fault: Option<body::FaultSlot>,
        peer: SocketAddr,
    ) -> Response {
        let downstream_upgrade = upgrade.map(|proto| {
            req.headers_mut().insert(http::header::UPGRADE, proto);
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            // Taken before `req` moves upstream.
            hyper::upgrade::on(&mut req)
        });

        let result = self.within_timeout(self.send_hyper(req)).await;
        self.metrics
            .proxy_duration
            .observe(started.elapsed().as_secs_f64());
        let (mut resp, upstream) = match result {
            None => return self.timed_out(),
            Some(Err(e)) => return self.failed(&e, fault.as_ref(), peer),
            Some(Ok(answer)) => answer,
        };
        self.metrics.proxy_answered(resp.status().as_u16());

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(downstream) = downstream_upgrade {
                self.tunnel(downstream, &mut resp);
                upstream.finish_upgrade();
                // Keep the upstream's Upgrade / Connection / Sec-WebSocket-Accept.
                return resp.map(Body::upstream);
            }
        }
        remove_hop_by_hop(resp.headers_mut());
        resp.map(|incoming| Body::stream(HyperRelay::new(incoming, upstream)))
    }

    /// [`send`](Self::send) through hyper's client.
    async fn send_hyper(
        &self,
        mut req: UpstreamRequest,
    ) -> Result<(http::Response<hyper::body::Incoming>, HyperUpstream), Failure> {
        let mut pooled = true;
        loop {
            let upstream = self.connection(pooled).await?;
            let reused = upstream.reused;
            let mut upstream = HyperUpstream::handshake(upstream)
                .await
                .map_err(Failure::Connect)?;
            match upstream.exchange(req).await {
                Ok(resp) => return Ok((resp, upstream)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!(error = %e.error(), "proxy: pooled upstream connection was closed; retrying on a new one");
                        req = unsent;
                        pooled = false;
                    }
                    _ => return Err(Failure::Request(e.into_error())),
                },
            }
        }
    }

    /// Points the request at the upstream: same path and query, in origin
    /// form, HTTP/1.1. An HTTP/1.1 request is in origin form already (not
    /// rebuilt); an HTTP/2 or absolute-form one is cut down to its path.
    fn retarget<B>(&self, req: &mut http::Request<B>) {
        if req.method() == Method::CONNECT {
            // Authority form, naming the upstream.
            *req.uri_mut() = Uri::from(self.upstream.clone());
        } else if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
        // The upstream connection speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
    }

    /// The upstream sent no answer head within `proxy.timeout`: 504.
    fn timed_out(&self) -> Response {
        tracing::warn!(upstream = %self.upstream, timeout = ?self.timeout, "proxy: the upstream did not answer in time");
        self.fail(ApiError::UpstreamTimeout(format!(
            "the upstream did not answer within {:?}",
            self.timeout
        )))
    }

    /// The request failed: 400/408 when the client's own body failed
    /// first (its fault, not the upstream's), 502 otherwise.
    fn failed(&self, e: &Failure, fault: Option<&body::FaultSlot>, peer: SocketAddr) -> Response {
        if let Some(fault) = fault.and_then(|slot| slot.get()) {
            let err = fault.to_error();
            tracing::debug!(%peer, error = %err, "proxy: client request body failed");
            return self.fail(err);
        }
        let connect = matches!(e, Failure::Connect(_));
        tracing::warn!(upstream = %self.upstream, error = %e, connect, "proxy: upstream request failed");
        self.fail(ApiError::UpstreamUnreachable(if connect {
            "the upstream is unreachable".into()
        } else {
            "the upstream failed to answer".into()
        }))
    }

    /// The upstream switched protocols: joins the client's and the
    /// upstream's upgraded connections in a task of their own.
    fn tunnel(
        &self,
        downstream: hyper::upgrade::OnUpgrade,
        resp: &mut hyper::Response<hyper::body::Incoming>,
    ) {
        let upstream = hyper::upgrade::on(resp);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _tunnel = ConnectionGuard::new(&metrics, Transport::Proxy);
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Err(e) => tracing::debug!(error = %e, "proxied upgrade failed"),
            }
        });
    }

    /// The gateway's own answer (already logged), counted by status class
    /// like the upstream's answers.
    fn fail(&self, err: ApiError) -> Response {
        self.metrics.proxy_answered(err.status().as_u16());
        crate::http::error(&err)
    }
}
