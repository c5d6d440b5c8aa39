//! Delegating the decision to the existing backend: `GET {auth_url}?channel=NAME`
//! with the client's `Cookie` and `Authorization`; 2xx allows, anything else
//! denies. Answers are cached per (credentials, channel) for
//! `auth.auth_cache_ttl` — denials as well as grants, so asking again
//! costs the backend nothing either way —, in at most
//! `auth.auth_cache_max_entries` entries. What does reach the backend is
//! bounded by the [`AuthLimiter`].

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::header;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::limiter::AuthLimiter;
use super::{Credentials, Grant};
use crate::config::AuthConfig;
use crate::metrics::FloodMetrics;
use crate::protocol::channel::ChannelName;
use crate::protocol::error::ApiError;

pub struct BackendAuth {
    client: Client<HttpConnector, Empty<Bytes>>,
    url: String,
    ttl: Duration,
    timeout: Duration,
    /// (hash of the credentials, channel) → (allowed, until).
    cache: DashMap<(u64, ChannelName), (bool, Instant)>,
    /// `auth.auth_cache_max_entries`.
    max_cached: usize,
    limiter: AuthLimiter,
    requests: prometheus::IntCounter,
    cached_gauge: prometheus::IntGauge,
}

impl BackendAuth {
    pub fn new(
        url: &str,
        config: &AuthConfig,
        metrics: &FloodMetrics,
    ) -> Result<BackendAuth, String> {
        url.parse::<http::Uri>()
            .map_err(|e| format!("auth.auth_url {url:?}: {e}"))?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.auth_timeout));
        Ok(BackendAuth {
            client: Client::builder(TokioExecutor::new()).build(http),
            url: url.to_string(),
            ttl: config.auth_cache_ttl,
            timeout: config.auth_timeout,
            cache: DashMap::new(),
            max_cached: config.auth_cache_max_entries.max(1),
            limiter: AuthLimiter::new(config, metrics),
            requests: metrics.auth_backend_requests.clone(),
            cached_gauge: metrics.auth_cache_entries.clone(),
        })
    }

    /// Whether the backend lets these credentials (presented from `client`)
    /// read `channel`.
    pub async fn allows(
        &self,
        channel: &ChannelName,
        credentials: &Credentials,
        client: IpAddr,
    ) -> Result<Grant, ApiError> {
        let key = (credentials_hash(credentials), channel.clone());
        let cached = self.cache.get(&key).map(|e| *e.value());
        let allowed = match cached {
            Some((allowed, until)) if until > Instant::now() => allowed,
            _ => {
                let permit = self.limiter.acquire(client)?;
                let allowed = self.ask(channel, credentials).await;
                drop(permit);
                let allowed = allowed?;
                self.remember(key, allowed);
                allowed
            }
        };
        if allowed {
            Ok(Grant::default())
        } else {
            Err(ApiError::Forbidden("not allowed to subscribe".into()))
        }
    }

    /// Caches an answer. When full, expired answers go first; if none
    /// have expired, the cache starts over (the limiter bounds how fast it
    /// refills: `auth_rate × auth_cache_ttl` entries at most).
    fn remember(&self, key: (u64, ChannelName), allowed: bool) {
        let now = Instant::now();
        if self.cache.len() >= self.max_cached {
            self.cache.retain(|_, (_, until)| *until > now);
            if self.cache.len() >= self.max_cached {
                self.cache.clear();
            }
        }
        self.cache.insert(key, (allowed, now + self.ttl));
        self.cached_gauge.set(self.cache.len() as i64);
    }

    /// Forgets expired answers and idle per-address limits.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.cache.retain(|_, (_, until)| *until > now);
        self.cached_gauge.set(self.cache.len() as i64);
        self.limiter.sweep();
    }

    async fn ask(
        &self,
        channel: &ChannelName,
        credentials: &Credentials,
    ) -> Result<bool, ApiError> {
        let response = self.request(channel, credentials).await?;
        Ok(response.status().is_success())
    }

    /// The backend's whole answer for these credentials, uncached: its
    /// status, the headers a refusal needs (`Content-Type`, `Location`,
    /// `WWW-Authenticate`) and at most [`MAX_ANSWER_BODY`] bytes of body.
    /// For callers that pass a refusal on as the backend gave it (the
    /// bridge's `auth = "auth_url"`).
    pub async fn answer(
        &self,
        channel: &ChannelName,
        credentials: &Credentials,
    ) -> Result<BackendAnswer, ApiError> {
        let exchange = async {
            let response = self.request(channel, credentials).await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, ApiError>(BackendAnswer {
                status: parts.status,
                headers: kept_headers(&parts.headers),
                body,
            })
        };
        // `request` bounds the head; this bounds the body too.
        tokio::time::timeout(self.timeout * 2, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::AuthUnavailable(
                    "the authorisation backend did not answer in time".into(),
                ))
            })
    }

    async fn request(
        &self,
        channel: &ChannelName,
        credentials: &Credentials,
    ) -> Result<http::Response<hyper::body::Incoming>, ApiError> {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let uri = format!("{}{separator}channel={}", self.url, channel.as_str());
        let mut request = http::Request::get(uri)
            .body(Empty::new())
            .map_err(|e| ApiError::AuthUnavailable(format!("auth request: {e}")))?;
        if let Some(cookie) = &credentials.cookie {
            request.headers_mut().insert(header::COOKIE, cookie.clone());
        }
        if let Some(authorization) = &credentials.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization.clone());
        }
        self.requests.inc();
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "backend auth request failed");
                Err(ApiError::AuthUnavailable(
                    "the authorisation backend is unreachable".into(),
                ))
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "backend auth request timed out");
                Err(ApiError::AuthUnavailable(
                    "the authorisation backend did not answer in time".into(),
                ))
            }
        }
    }
}

/// Largest refusal body passed on to a client; the rest is dropped.
pub const MAX_ANSWER_BODY: usize = 64 * 1024;

/// A backend answer, kept to pass on as it was.
#[derive(Debug, Clone)]
pub struct BackendAnswer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The headers of a backend answer that mean something to the client of a
/// refusal (what it is, where to log in, how to authenticate).
pub fn kept_headers(from: &http::HeaderMap) -> http::HeaderMap {
    let mut kept = http::HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::LOCATION,
        header::WWW_AUTHENTICATE,
    ] {
        if let Some(value) = from.get(&name) {
            kept.insert(name, value.clone());
        }
    }
    kept
}

fn credentials_hash(credentials: &Credentials) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    credentials
        .cookie
        .as_ref()
        .map(|v| v.as_bytes())
        .hash(&mut hasher);
    credentials
        .authorization
        .as_ref()
        .map(|v| v.as_bytes())
        .hash(&mut hasher);
    credentials.token.hash(&mut hasher);
    hasher.finish()
}
