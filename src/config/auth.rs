//! The `[auth]` section: subscriber tokens, delegation to the backend
//! (`auth_url`) and its limits, and the origins browsers may connect from.
//! Only settings: the public key file is read when the gateway is built.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who may subscribe: subscriber tokens, delegation to the backend, and
/// the origins browsers may connect from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256 subscriber tokens (channels with
    /// `auth = "token"`). Default: none.
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 (RSA key) or ES256 (P-256 key) subscriber
    /// tokens. Default: none.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Cookie that may carry the token (besides `?token=` and
    /// `Authorization: Bearer`). Default: `pollbridge_token`.
    pub token_cookie: String,
    /// Backend endpoint asked whether a client may subscribe (channels with
    /// `auth = "backend"`): `GET {auth_url}?channel=NAME` with the client's
    /// `Cookie` and `Authorization`; 2xx allows. `http://` only. Default: none.
    pub auth_url: Option<String>,
    /// How long a backend answer is reused for the same credentials and
    /// channel. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// The backend must answer within this, else the client is refused
    /// (503 `auth_unavailable`, also when it is unreachable). Default: 2s.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Origins (`https://app.example.com`) allowed to open WebSockets, SSE
    /// streams and long-polls; empty allows any. Listed origins also get
    /// CORS answers. Default: none.
    pub allowed_origins: Vec<String>,
    /// With `allowed_origins` set, also refuse requests that carry no
    /// `Origin` (non-browser clients). Default: false.
    pub require_origin: bool,
    /// Backend auth requests in flight at once, gateway-wide; past it the
    /// client is refused (503 `auth_unavailable`). 0: unlimited.
    /// Default: 32.
    pub auth_max_concurrent: usize,
    /// Backend auth requests in flight at once for one client address;
    /// past it 429 `auth_rate_limited`. 0: unlimited. Default: 2.
    pub auth_max_concurrent_per_ip: usize,
    /// Backend auth requests per second, gateway-wide (a burst of one
    /// second's worth); past it 503 `auth_unavailable`. 0: unlimited.
    /// Default: 100.
    pub auth_rate: u32,
    /// Backend auth requests per second for one client address (a burst
    /// of twice this); past it 429 `auth_rate_limited`. 0: unlimited.
    /// Default: 5.
    pub auth_rate_per_ip: u32,
    /// Backend answers (grants and denials) cached at most. Default: 100000.
    pub auth_cache_max_entries: usize,
    /// Clock skew allowed between the site that signs subscriber tokens and
    /// the gateway: a token is accepted until `exp + leeway` and from
    /// `nbf - leeway`, and a WebSocket or SSE session it opened is closed
    /// at `exp + leeway`. At most 1h. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_file: None,
            token_cookie: "pollbridge_token".into(),
            auth_url: None,
            auth_cache_ttl: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(2),
            allowed_origins: Vec::new(),
            require_origin: false,
            auth_max_concurrent: 32,
            auth_max_concurrent_per_ip: 2,
            auth_rate: 100,
            auth_rate_per_ip: 5,
            auth_cache_max_entries: 100_000,
            leeway: Duration::from_secs(5),
        }
    }
}
