//! Who may subscribe: per-channel rules choose `public`, `token` (a signed
//! JWT naming the allowed channel patterns) or `backend` (the existing
//! backend decides, answers cached); and which browser origins may connect.
//!
//! Denials never say whether a channel exists: the same 401/403 answer for
//! every channel a client may not read.

pub mod admin;
mod backend;
mod limiter;
mod origin;
mod token;

pub use backend::{kept_headers, BackendAnswer};
use std::net::IpAddr;

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};

use crate::config::{AuthConfig, ChannelAuth, ChannelRules};
use crate::http::query_pairs;
use crate::metrics::Metrics;
use crate::protocol::channel::ChannelName;
use crate::protocol::error::ApiError;

/// Checks that a public key file loads (for the start-up file checks,
/// [`crate::Gateway::load_problems`]).
pub fn load_public_key(path: &std::path::Path) -> Result<(), String> {
    token::load_public_key(path).map(|_| ())
}

/// What a client presented: its token (from `?token=`, `Authorization:
/// Bearer` or the token cookie) and the headers the backend may want.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub cookie: Option<HeaderValue>,
    pub authorization: Option<HeaderValue>,
}

impl Credentials {
    /// True when the client presented anything at all.
    pub fn is_present(&self) -> bool {
        self.token.is_some() || self.cookie.is_some() || self.authorization.is_some()
    }

    /// Everything the request presents, cookies included.
    pub fn from_request(
        headers: &HeaderMap,
        query: Option<&str>,
        token_cookie: &str,
    ) -> Credentials {
        Self::gather(headers, query, token_cookie, true)
    }

    /// What the request presents; with `with_cookies` false its cookies
    /// are left out (a cross-site request, see [`origin`]).
    fn gather(
        headers: &HeaderMap,
        query: Option<&str>,
        token_cookie: &str,
        with_cookies: bool,
    ) -> Credentials {
        let from_query = query_pairs(query)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned());
        let from_bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::to_string);
        let from_cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter(|_| with_cookies)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == token_cookie)
            .map(|(_, value)| value.to_string());
        Credentials {
            token: from_query.or(from_bearer).or(from_cookie),
            cookie: headers
                .get(header::COOKIE)
                .filter(|_| with_cookies)
                .cloned(),
            authorization: headers.get(header::AUTHORIZATION).cloned(),
        }
    }
}

/// The token of an `Authorization: Bearer …` value (the scheme name is
/// case-insensitive, RFC 9110 §11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares secrets (keys, tokens) in time that does not depend on where
/// they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A permission to read a channel, possibly until the token expires.
#[derive(Debug, Clone, Copy, Default)]
pub struct Grant {
    pub expires: Option<SystemTime>,
}

pub struct Authorizer {
    rules: ChannelRules,
    tokens: Option<token::Verifier>,
    backend: Option<backend::BackendAuth>,
    allowed_origins: Vec<String>,
    require_origin: bool,
    token_cookie: String,
}

impl Authorizer {
    pub fn new(
        config: &AuthConfig,
        rules: ChannelRules,
        metrics: &Metrics,
    ) -> Result<Arc<Authorizer>, String> {
        Ok(Arc::new(Authorizer {
            rules,
            tokens: token::Verifier::from_config(config)?,
            backend: config
                .auth_url
                .as_deref()
                .map(|url| backend::BackendAuth::new(url, config, &metrics.floods))
                .transpose()?,
            allowed_origins: config.allowed_origins.clone(),
            require_origin: config.require_origin,
            token_cookie: config.token_cookie.clone(),
        }))
    }

    /// What the request presents. Cookies count only from the gateway's
    /// own site or an allowed origin (see [`origin`]).
    pub fn credentials(&self, headers: &HeaderMap, query: Option<&str>) -> Credentials {
        let with_cookies = origin::cookies_honoured(headers, |o| self.origin_allowed(o));
        Credentials::gather(headers, query, &self.token_cookie, with_cookies)
    }

    /// Whether the request's origin may connect at all.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            Some(origin) if self.origin_allowed(origin) => Ok(()),
            Some(_) => Err(ApiError::Forbidden("origin not allowed".into())),
            None if self.require_origin => {
                Err(ApiError::Forbidden("an Origin header is required".into()))
            }
            None => Ok(()),
        }
    }

    /// True when the allow-list names any origin (`auth.allowed_origins`);
    /// without one, [`origin_allowed`](Self::origin_allowed) is always false.
    pub fn lists_origins(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    /// True when `origin` is on the allow-list (also used for CORS).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// [`may_subscribe`](Self::may_subscribe) for a one-off request (a
    /// poll, an event stream): credentials are gathered from it only when
    /// the channel's rule looks at them, so a public channel's request
    /// parses no cookie or token.
    pub async fn may_subscribe_request(
        &self,
        channel: &ChannelName,
        headers: &HeaderMap,
        query: Option<&str>,
        client: IpAddr,
    ) -> Result<Grant, ApiError> {
        match self.rules.resolve(channel.as_str()).auth {
            ChannelAuth::Public => Ok(Grant::default()),
            auth => {
                let credentials = self.credentials(headers, query);
                // Boxed: the check's future is large and only these requests wait on it.
                Box::pin(self.check(auth, channel, &credentials, client)).await
            }
        }
    }

    /// Whether these credentials, presented from `client` (whose backend
    /// checks are bounded per address), may subscribe to `channel`.
    pub async fn may_subscribe(
        &self,
        channel: &ChannelName,
        credentials: &Credentials,
        client: IpAddr,
    ) -> Result<Grant, ApiError> {
        let auth = self.rules.resolve(channel.as_str()).auth;
        self.check(auth, channel, credentials, client).await
    }

    /// Forgets expired backend answers and idle per-address limits.
    pub fn sweep(&self) {
        if let Some(backend) = &self.backend {
            backend.sweep();
        }
    }

    /// The `auth_url` backend's own answer for these credentials, uncached
    /// (`None` without `auth.auth_url`).
    pub async fn backend_answer(
        &self,
        channel: &ChannelName,
        credentials: &Credentials,
    ) -> Option<Result<BackendAnswer, ApiError>> {
        let backend = self.backend.as_ref()?;
        Some(backend.answer(channel, credentials).await)
    }

    /// What the channel's rule (`auth`) says of these credentials.
    async fn check(
        &self,
        auth: ChannelAuth,
        channel: &ChannelName,
        credentials: &Credentials,
        client: IpAddr,
    ) -> Result<Grant, ApiError> {
        match auth {
            ChannelAuth::Public => Ok(Grant::default()),
            ChannelAuth::Token => {
                let verifier = self
                    .tokens
                    .as_ref()
                    .ok_or_else(|| ApiError::Forbidden("not allowed to subscribe".into()))?;
                let token = credentials.token.as_deref().ok_or_else(|| {
                    ApiError::Unauthorized("a subscriber token is required".into())
                })?;
                verifier.allows(token, channel.as_str())
            }
            ChannelAuth::Backend => {
                let backend = self
                    .backend
                    .as_ref()
                    .ok_or_else(|| ApiError::Forbidden("not allowed to subscribe".into()))?;
                backend.allows(channel, credentials, client).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; pollbridge_token=fromcookie"),
        );
        let c = Credentials::from_request(&h, None, "pollbridge_token");
        assert_eq!(c.token.as_deref(), Some("fromcookie"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer frombearer"),
        );
        let c = Credentials::from_request(&h, None, "pollbridge_token");
        assert_eq!(c.token.as_deref(), Some("frombearer"));
        let c = Credentials::from_request(&h, Some("x=1&token=fromquery"), "pollbridge_token");
        assert_eq!(c.token.as_deref(), Some("fromquery"));
        assert!(c.cookie.is_some() && c.authorization.is_some());
    }

    #[test]
    fn origins() {
        let config = AuthConfig {
            allowed_origins: vec!["https://app.test".into()],
            ..AuthConfig::default()
        };
        let auth = Authorizer::new(&config, ChannelRules::default(), &Metrics::new()).unwrap();
        let mut h = HeaderMap::new();
        assert!(
            auth.check_origin(&h).is_ok(),
            "no Origin: a non-browser client"
        );
        h.insert(header::ORIGIN, HeaderValue::from_static("https://app.test"));
        assert!(auth.check_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.test"),
        );
        assert_eq!(auth.check_origin(&h).unwrap_err().status(), 403);
        let strict = Authorizer::new(
            &AuthConfig {
                require_origin: true,
                ..config
            },
            ChannelRules::default(),
            &Metrics::new(),
        )
        .unwrap();
        assert_eq!(
            strict.check_origin(&HeaderMap::new()).unwrap_err().status(),
            403
        );
    }
}
