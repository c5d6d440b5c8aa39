//! The admin listener's checks, before any endpoint runs: a `Host` that is
//! an IP address, `localhost` or a name in `admin.allowed_hosts` (a DNS
//! name rebound to 127.0.0.1 is refused), no `Origin` but the admin page's
//! own or one in `admin.allowed_origins` (a cross-site POST is refused),
//! and the bearer token when `admin.token` is set. The health probes
//! (`GET /healthz`, `GET /readyz`) only need a well-formed `Host`.

use http::header::{self, HeaderValue};
use http::Method;

use crate::config::AdminConfig;
use crate::http::Request;
use crate::net::host;
use crate::protocol::error::ApiError;

pub struct AdminGuard {
    allowed_origins: Vec<String>,
    allowed_hosts: Vec<String>,
    token: Option<String>,
}

impl AdminGuard {
    pub fn new(config: &AdminConfig) -> Result<AdminGuard, String> {
        Ok(AdminGuard {
            allowed_origins: config.allowed_origins.clone(),
            allowed_hosts: config.allowed_hosts.clone(),
            token: config.load_token()?,
        })
    }

    /// Whether the admin listener may answer this request.
    pub fn check(&self, req: &Request) -> Result<(), ApiError> {
        self.check_parts(req.version(), req.method(), req.uri().path(), req.headers())
    }

    fn check_parts(
        &self,
        version: http::Version,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<(), ApiError> {
        let host = host::check(version, headers)?;
        if is_probe(method, path) {
            // Up / ready is all they tell, to anyone: probes and load
            // balancers may name the listener however they like.
            return Ok(());
        }
        if let Some(host) = host {
            if !self.host_allowed(host.as_bytes()) {
                return Err(ApiError::Forbidden(
                    "the admin listener does not answer to this Host name (admin.allowed_hosts)"
                        .into(),
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            if !self.origin_allowed(origin, host) {
                return Err(ApiError::Forbidden(
                    "cross-site request refused: this Origin is not in admin.allowed_origins"
                        .into(),
                ));
            }
        }
        match &self.token {
            Some(token) if !is_open(method, path) => {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::auth::bearer_token);
                match presented {
                    None => Err(ApiError::Unauthorized(
                        "the admin listener needs Authorization: Bearer TOKEN (admin.token)".into(),
                    )),
                    Some(p) if crate::auth::constant_time_eq(p.as_bytes(), token.as_bytes()) => {
                        Ok(())
                    }
                    Some(_) => Err(ApiError::Forbidden("admin token not accepted".into())),
                }
            }
            _ => Ok(()),
        }
    }

    /// An IP address (no DNS name to rebind), `localhost` (never resolved
    /// elsewhere by browsers) or a configured name.
    fn host_allowed(&self, host: &[u8]) -> bool {
        let (name, _port) = host::split_port(host);
        let Ok(name) = std::str::from_utf8(name) else {
            return false;
        };
        let is_ip = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => name.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        is_ip
            || name.eq_ignore_ascii_case("localhost")
            || self.allowed_hosts.iter().any(|allowed| {
                let (allowed_name, allowed_port) = host::split_port(allowed.as_bytes());
                match allowed_port {
                    // A configured `name:port` must match exactly.
                    Some(_) => allowed.as_bytes().eq_ignore_ascii_case(host),
                    None => allowed_name.eq_ignore_ascii_case(name.as_bytes()),
                }
            })
    }

    /// The page's own origin (same host and port as the request's `Host`,
    /// already checked above) or a listed one.
    fn origin_allowed(&self, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same_origin = match (authority, host) {
            (Some(authority), Some(host)) => {
                authority.as_bytes().eq_ignore_ascii_case(host.as_bytes())
            }
            _ => false,
        };
        same_origin
            || self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// Health probes (kubelets, load balancers, container HEALTHCHECKs): no
/// name, origin or token check.
fn is_probe(method: &Method, path: &str) -> bool {
    *method == Method::GET && matches!(path, "/healthz" | "/readyz")
}

/// Endpoints that need no token: the probes and the static admin page (it
/// reveals nothing; its requests carry the token).
fn is_open(method: &Method, path: &str) -> bool {
    is_probe(method, path) || (*method == Method::GET && path == "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(token: Option<&str>) -> AdminGuard {
        AdminGuard::new(&AdminConfig {
            allowed_origins: vec!["https://ops.test".into()],
            allowed_hosts: vec!["admin.internal".into(), "metrics.svc:9090".into()],
            token: token.map(str::to_string),
            token_file: None,
        })
        .unwrap()
    }

    fn check(g: &AdminGuard, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
        let mut map = http::HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        g.check_parts(http::Version::HTTP_11, &method.parse().unwrap(), path, &map)
            .err()
            .map(|e| e.status().as_u16())
    }

    #[test]
    fn hosts() {
        let g = guard(None);
        for ok in [
            "127.0.0.1:9090",
            "[::1]:9090",
            "10.1.2.3",
            "localhost:9090",
            "LOCALHOST",
            "admin.internal:1234",
            "metrics.svc:9090",
        ] {
            assert_eq!(check(&g, "GET", "/metrics", &[("host", ok)]), None, "{ok}");
        }
        for bad in [
            "rebind.evil",
            "rebind.evil:9090",
            "metrics.svc:1",
            "localhost.evil",
        ] {
            assert_eq!(
                check(&g, "GET", "/metrics", &[("host", bad)]),
                Some(403),
                "{bad}"
            );
        }
        assert_eq!(check(&g, "GET", "/metrics", &[("host", "a b")]), Some(400));
        assert_eq!(check(&g, "GET", "/metrics", &[]), Some(400));
        // Probes answer whatever name they are sent to.
        assert_eq!(check(&g, "GET", "/healthz", &[("host", "x")]), None);
        assert_eq!(
            check(&g, "GET", "/readyz", &[("host", "lb.internal")]),
            None
        );
    }

    #[test]
    fn origins() {
        let g = guard(None);
        let host = ("host", "127.0.0.1:9090");
        assert_eq!(
            check(&g, "POST", "/publish/a", &[host]),
            None,
            "no Origin: curl"
        );
        for ok in ["http://127.0.0.1:9090", "https://ops.test"] {
            assert_eq!(
                check(&g, "POST", "/publish/a", &[host, ("origin", ok)]),
                None,
                "{ok}"
            );
        }
        for bad in [
            "https://evil.test",
            "null",
            "http://127.0.0.1:9091",
            "http://localhost:9090",
        ] {
            assert_eq!(
                check(&g, "POST", "/publish/a", &[host, ("origin", bad)]),
                Some(403),
                "{bad}"
            );
        }
    }

    #[test]
    fn token() {
        let g = guard(Some("0123456789abcdef-admin"));
        let host = ("host", "127.0.0.1:9090");
        assert_eq!(check(&g, "GET", "/metrics", &[host]), Some(401));
        assert_eq!(
            check(
                &g,
                "GET",
                "/metrics",
                &[host, ("authorization", "Bearer nope")]
            ),
            Some(403)
        );
        assert_eq!(
            check(
                &g,
                "GET",
                "/metrics",
                &[host, ("authorization", "Bearer 0123456789abcdef-admin")]
            ),
            None
        );
        for open in ["/healthz", "/readyz", "/"] {
            assert_eq!(check(&g, "GET", open, &[host]), None, "{open}");
        }
        assert_eq!(check(&g, "POST", "/healthz", &[host]), Some(401));
        assert_eq!(check(&guard(None), "GET", "/metrics", &[host]), None);
    }
}
