//! Reverse proxy: every path outside the gateway's prefix goes to the
//! upstream unchanged, bodies streamed both ways, upgrades tunnelled.

mod body;
mod headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, Scheme};
use http::{StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::ProxyConfig;
use crate::http::{Body, Request, Response};
use crate::metrics::ConnectionGuard;
use crate::metrics::Metrics;
use crate::protocol::error::ApiError;
use crate::protocol::Transport;
use body::{GuardedBody, Pace};

pub use crate::config::upstream::parse_upstream;
pub use headers::{add_forwarding, remove_hop_by_hop, upgrade_protocol};

/// The pooled client and where it sends requests.
pub struct Proxy {
    client: Client<HttpConnector, GuardedBody>,
    upstream: Authority,
    timeout: std::time::Duration,
    /// How fast request bodies must arrive.
    pace: Pace,
    metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(url: &str, cfg: &ProxyConfig, metrics: Arc<Metrics>) -> Result<Proxy, String> {
        let upstream = parse_upstream(url)?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle)
            // Without a timer no task evicts idle pooled sockets.
            .pool_timer(TokioTimer::new())
            .build(http);
        Ok(Proxy {
            client,
            upstream,
            timeout: cfg.timeout,
            pace: Pace {
                grace: cfg.body_timeout,
                min_rate: cfg.body_min_rate,
            },
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
        let downstream_upgrade = upgrade.map(|proto| {
            req.headers_mut().insert(http::header::UPGRADE, proto);
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            // Taken before `req` moves into the client.
            hyper::upgrade::on(&mut req)
        });

        let result = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        self.metrics
            .proxy_duration
            .observe(started.elapsed().as_secs_f64());
        // What went wrong is logged with the upstream's address; the
        // client is told only what kind of failure it was.
        let mut resp = match result {
            Err(_) => return self.timed_out(),
            Ok(Err(e)) => return self.failed(&e, fault.as_ref(), peer),
            Ok(Ok(resp)) => resp,
        };
        self.metrics.proxy_answered(resp.status().as_u16());

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(downstream) = downstream_upgrade {
                self.tunnel(downstream, &mut resp);
                // Keep the upstream's Upgrade / Connection / Sec-WebSocket-Accept.
                return resp.map(Body::upstream);
            }
        }
        remove_hop_by_hop(resp.headers_mut());
        resp.map(Body::upstream)
    }

    /// Points the request at the upstream: same path and query, HTTP/1.1.
    fn retarget<B>(&self, req: &mut http::Request<B>) {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.upstream.clone());
        parts.path_and_query = req
            .uri()
            .path_and_query()
            .cloned()
            .or_else(|| Some("/".parse().expect("valid")));
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
        // The pooled client speaks HTTP/1.1 to the upstream whatever the client spoke.
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
    fn failed(
        &self,
        e: &hyper_util::client::legacy::Error,
        fault: Option<&body::FaultSlot>,
        peer: SocketAddr,
    ) -> Response {
        if let Some(fault) = fault.and_then(|slot| slot.get()) {
            let err = fault.to_error();
            tracing::debug!(%peer, error = %err, "proxy: client request body failed");
            return self.fail(err);
        }
        tracing::warn!(upstream = %self.upstream, error = %e, connect = e.is_connect(), "proxy: upstream request failed");
        self.fail(ApiError::UpstreamUnreachable(if e.is_connect() {
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
