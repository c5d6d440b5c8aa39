//! Which origins a cookie is honoured from.
//!
//! A browser attaches the site's cookies to a WebSocket handshake (and to
//! an EventSource or `fetch` with credentials) from *any* page, and the
//! default `auth.allowed_origins` lets any page connect. So a token or
//! session taken from a cookie is honoured only when the request comes from
//! the gateway's own site: no `Origin` (not a cross-site browser request),
//! an `Origin` on `auth.allowed_origins`, or one naming the same host as
//! the request's `Host`. Otherwise the request is judged as if it carried
//! no cookie (cross-site WebSocket hijacking, CSWSH).

use http::header::{self, HeaderMap};

/// True when `origin` (`scheme://host[:port]`) names the host of `host`
/// (`host[:port]`): same name, and the same port where one is written
/// (`:80` and `:443` count as unwritten, so a TLS-terminating proxy in
/// front does not make the gateway's own pages cross-site).
pub fn same_host(origin: &str, host: &str) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let (a_name, a_port) = name_and_port(authority);
    let (h_name, h_port) = name_and_port(host);
    !a_name.is_empty() && a_name.eq_ignore_ascii_case(h_name) && a_port == h_port
}

fn name_and_port(host: &str) -> (&str, Option<&str>) {
    let (name, port) = crate::net::host::split_port(host.as_bytes());
    let name = std::str::from_utf8(name).unwrap_or("");
    let port = port
        .and_then(|p| std::str::from_utf8(p).ok())
        .filter(|p| !matches!(*p, "80" | "443"));
    (name, port)
}

/// Whether cookie credentials count for this request; `listed` says
/// whether an origin is on `auth.allowed_origins`.
pub fn cookies_honoured(headers: &HeaderMap, listed: impl Fn(&str) -> bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    listed(origin) || same_host(origin, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_compares_names_and_written_ports() {
        assert!(same_host("https://app.test", "app.test"));
        assert!(same_host("http://APP.test:8080", "app.test:8080"));
        assert!(same_host("https://app.test", "app.test:443"));
        assert!(same_host("http://[::1]:8080", "[::1]:8080"));
        assert!(!same_host("https://evil.test", "app.test"));
        assert!(!same_host("https://app.test.evil", "app.test"));
        assert!(!same_host("http://app.test:8081", "app.test:8080"));
        assert!(!same_host("null", "app.test"));
        assert!(!same_host("https://", ""));
    }
}
