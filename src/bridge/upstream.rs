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
use crate::protocol::compress::{self, Coding};

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
    /// Ask for gzip or brotli bodies (`compression.enabled`).
    accept_compressed: bool,
}

impl UpstreamClient {
    pub fn new(
        authority: http::uri::Authority,
        cfg: &ProxyConfig,
        max_body: usize,
        accept_compressed: bool,
    ) -> Self {
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
            accept_compressed,
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
        if self.accept_compressed {
            // Fewer bytes from the backend too; the body is decoded below.
            request.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, br"),
            );
        }
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
            decoded(parts, body, self.max_body)
                .map_err(|e| (StatusCode::BAD_GATEWAY, format!("upstream body: {e}")))
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

/// The answer with its body decoded from its `Content-Encoding` (gzip or
/// brotli), at most `limit` bytes: the copy the gateway keeps (and
/// compresses again, once, for its own clients) is always the plain body.
fn decoded(
    mut parts: http::response::Parts,
    body: Bytes,
    limit: usize,
) -> Result<(http::response::Parts, Bytes), String> {
    let Some(encoding) = parts.headers.get(header::CONTENT_ENCODING) else {
        return Ok((parts, body));
    };
    let token = encoding.to_str().unwrap_or("").trim().to_owned();
    if token.is_empty() || token.eq_ignore_ascii_case("identity") {
        parts.headers.remove(header::CONTENT_ENCODING);
        return Ok((parts, body));
    }
    let coding = Coding::from_token(&token)
        .ok_or_else(|| format!("unsupported Content-Encoding {token:?}"))?;
    let plain = compress::decode(coding, &body, limit)?;
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok((parts, plain))
}
