//! The `Host` header, checked before anything else looks at a request
//! (RFC 9112 §3.2): an HTTP/1.1 request without one, with two, or with one
//! that is not `host[:port]` is answered `400`, never routed or proxied.
//! Left alone, a second `Host` line reached the upstream next to the first,
//! and `Host: evil/path?x` or `user@h` reached code that builds URLs from it.

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;

use crate::protocol::error::ApiError;

pub use crate::config::host::{is_valid_host, split_port};

/// An HTTP/2 request names its host in `:authority` (the URI), usually
/// without a `Host` header (RFC 9113 §8.3.1): the authority becomes the
/// `Host`, so [`check`] and everything after it (origin checks, the proxy,
/// the bridge) see an HTTP/2 request as they see an HTTP/1.1 one. A `Host`
/// the client sent as well is left as it is (and checked).
pub fn authority_as_host<B>(req: &mut http::Request<B>) {
    if req.version() != Version::HTTP_2 || req.headers().contains_key(header::HOST) {
        return;
    }
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    if let Some(value) = authority.and_then(|a| HeaderValue::from_bytes(a).ok()) {
        req.headers_mut().insert(header::HOST, value);
    }
}

/// The request's one valid `Host`, if it has one (HTTP/1.0 may omit it).
pub fn check(version: Version, headers: &HeaderMap) -> Result<Option<&HeaderValue>, ApiError> {
    let mut values = headers.get_all(header::HOST).iter();
    let host = match (values.next(), values.next()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "a request carries one Host header, not several".into(),
            ))
        }
        (None, _) if version == Version::HTTP_10 || version == Version::HTTP_09 => return Ok(None),
        (None, _) => {
            return Err(ApiError::BadRequest(
                "an HTTP/1.1 request needs a Host header".into(),
            ))
        }
        (Some(host), None) => host,
    };
    if is_valid_host(host.as_bytes()) {
        Ok(Some(host))
    } else {
        Err(ApiError::BadRequest(
            "the Host header must be host[:port]".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for host in hosts {
            h.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        h
    }

    #[test]
    fn one_valid_host_passes_and_a_malformed_one_is_refused() {
        // The grammar itself is tested in `config::host`.
        for ok in ["app.test:8080", "[::1]:80"] {
            assert!(check(Version::HTTP_11, &headers(&[ok])).is_ok(), "{ok}");
        }
        let err = check(Version::HTTP_11, &headers(&["user@h"])).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn an_http2_authority_becomes_the_host() {
        let request = |version| {
            let mut req = http::Request::new(());
            *req.uri_mut() = "https://app.test:8443/rt/poll/a".parse().unwrap();
            *req.version_mut() = version;
            authority_as_host(&mut req);
            req
        };
        assert_eq!(
            request(Version::HTTP_2).headers()[header::HOST],
            "app.test:8443"
        );
        let req = request(Version::HTTP_11);
        assert!(
            req.headers().get(header::HOST).is_none(),
            "HTTP/1.1 needs its own Host"
        );
    }

    #[test]
    fn missing_and_repeated() {
        let err = check(Version::HTTP_11, &HeaderMap::new()).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(check(Version::HTTP_10, &HeaderMap::new())
            .unwrap()
            .is_none());
        let err = check(Version::HTTP_11, &headers(&["a.test", "b.test"])).unwrap_err();
        assert_eq!(err.status(), 400);
        let err = check(Version::HTTP_10, &headers(&["a.test", "a.test"])).unwrap_err();
        assert_eq!(err.status(), 400);
    }
}
