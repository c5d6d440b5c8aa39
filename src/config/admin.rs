//! `[admin]`: who may talk to the admin listener besides the network rule
//! (it binds to loopback by default). Browsers are the threat: a page on
//! any site can POST to `http://127.0.0.1:9090/publish`, and a DNS name
//! rebound to 127.0.0.1 can read the answers. So the listener refuses
//! cross-site `Origin`s and `Host` names it does not know, and can ask for
//! a bearer token.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::host::is_valid_host;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Origins (`https://ops.example.com`) whose pages may call the admin
    /// listener from a browser. A request with any other `Origin` gets 403;
    /// the admin page itself (same origin) always works. Default: none.
    pub allowed_origins: Vec<String>,
    /// Host names the admin listener answers to besides IP addresses and
    /// `localhost` (e.g. `pollbridge-admin.ops.svc` when scraped through a
    /// Service name). A request with any other `Host` gets 403 (DNS
    /// rebinding), except the probes `GET /healthz` and `GET /readyz`.
    /// Default: none.
    pub allowed_hosts: Vec<String>,
    /// Bearer token every admin request must carry (`Authorization: Bearer
    /// TOKEN`), except `GET /healthz`, `GET /readyz` and the admin page
    /// `GET /`; without it 401, with another one 403. Prefer `token_file`
    /// or `POLLBRIDGE_ADMIN_TOKEN` to a flag (visible in `ps`). At least 16
    /// bytes. Default: none.
    pub token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored), read
    /// at startup; e.g. a mounted Kubernetes secret. Default: none.
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The token, from `token` or read from `token_file`. Reads the file:
    /// called when the gateway is built, never by validation.
    pub fn load_token(&self) -> Result<Option<String>, String> {
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => return Err(BOTH_TOKENS.into()),
            (Some(token), None) => token.trim().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        check_token(&token)?;
        Ok(Some(token))
    }

    /// Problems with these settings, as (key, message). A `token_file` is
    /// not read here (see [`AdminConfig::load_token`]).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let token_problem = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Some(BOTH_TOKENS.to_string()),
            (Some(token), None) => check_token(token.trim()).err(),
            (None, _) => None,
        };
        if let Some(message) = token_problem {
            problems.push(("admin.token".to_string(), message));
        }
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problems.push((
                    "admin.allowed_origins".into(),
                    format!("{origin:?} is not an http(s) origin"),
                ));
            }
        }
        for host in &self.allowed_hosts {
            if !is_valid_host(host.as_bytes()) {
                problems.push((
                    "admin.allowed_hosts".into(),
                    format!("{host:?} is not a host name"),
                ));
            }
        }
        problems
    }
}

const BOTH_TOKENS: &str = "set admin.token or admin.token_file, not both";

/// The rules a token must follow, wherever it came from.
fn check_token(token: &str) -> Result<(), String> {
    if token.len() < 16 {
        return Err("the admin token must be at least 16 bytes".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the admin token must be printable ASCII without spaces".into());
    }
    Ok(())
}
