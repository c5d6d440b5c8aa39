//! The bridge's own requests to the backend: conditional GETs, bounded in
//! time and size, one at a time per feed.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::ProxyConfig;

/// What one poll of the backend brought back.
#[derive(Debug)]
pub enum Fetched {
    /// 2xx with a body.
    Body {
        body: Bytes,
        content_type: Option<HeaderValue>,
        etag: Option<HeaderValue>,
        last_modified: Option<HeaderValue>,
    },
    /// 304: unchanged since the validators we sent.
    NotModified,
    /// Any other status: passed through to clients that have no copy yet.
    Status {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
    /// No answer at all.
    Failed { status: StatusCode, reason: String },
}

/// A small pooled client for gateway-originated GETs.
pub struct UpstreamClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    authority: http::uri::Authority,
    timeout: Duration,
    max_body: usize,
}

impl UpstreamClient {
    pub fn new(authority: http::uri::Authority, cfg: &ProxyConfig, max_body: usize) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(http);
        UpstreamClient {
            client,
            authority,
            timeout: cfg.timeout,
            max_body,
        }
    }

    /// One conditional GET of `path` with `headers` (validators, forwarded
    /// and vary headers). Never takes longer than the proxy timeout.
    pub async fn fetch(&self, path: &str, headers: HeaderMap) -> Fetched {
        let (parts, body) = match self.exchange(path, headers).await {
            Ok(answer) => answer,
            Err((status, reason)) => return Fetched::Failed { status, reason },
        };
        let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
        if parts.status == StatusCode::NOT_MODIFIED {
            Fetched::NotModified
        } else if parts.status.is_success() {
            Fetched::Body {
                body,
                content_type,
                etag: parts.headers.get(header::ETAG).cloned(),
                last_modified: parts.headers.get(header::LAST_MODIFIED).cloned(),
            }
        } else {
            Fetched::Status {
                status: parts.status,
                content_type,
                body,
            }
        }
    }

    /// One GET of `path` with `headers`: the answer's head and whole body
    /// (bounded), or the status and reason of a failure to get one. Never
    /// takes longer than the proxy timeout.
    pub async fn exchange(
        &self,
        path: &str,
        headers: HeaderMap,
    ) -> Result<(http::response::Parts, Bytes), (StatusCode, String)> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("bad upstream path {path:?}: {e}"),
                )
            })?;
        let mut request = Request::get(uri).body(Empty::new()).expect("valid request");
        *request.headers_mut() = headers;
        request.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("pollbridge-bridge/", env!("CARGO_PKG_VERSION"))),
        );
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let reason = if e.is_connect() {
                    format!("cannot connect to upstream {}", self.authority)
                } else {
                    format!("upstream {} failed: {e}", self.authority)
                };
                (StatusCode::BAD_GATEWAY, reason)
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e| (StatusCode::BAD_GATEWAY, format!("upstream body: {e}")))?
                .to_bytes();
            Ok::<_, (StatusCode, String)>((parts, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "upstream {} did not answer within {:?}",
                    self.authority, self.timeout
                ),
            )),
            Ok(answer) => answer,
        }
    }
}
