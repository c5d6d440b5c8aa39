//! The `Host` header, checked before anything else looks at a request
//! (RFC 9112 §3.2): an HTTP/1.1 request without one, with two, or with one
//! that is not `host[:port]` is answered `400`, never routed or proxied.
//! Left alone, a second `Host` line reached the upstream next to the first,
//! and `Host: evil/path?x` or `user@h` reached code that builds URLs from it.

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;

use crate::protocol::error::ApiError;

pub use crate::config::host::{is_valid_host, split_port};

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
