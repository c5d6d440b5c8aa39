//! The `upstream` URL's syntax: `http://host[:port]`, no path. Checked
//! without connecting; the proxy connects when it is used.

use http::uri::{Authority, Scheme};
use http::Uri;

/// Checks an upstream URL: `http://host[:port]`, no path.
pub fn parse_upstream(url: &str) -> Result<Authority, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}): {url:?}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!("must start with http:// (got {url:?})"));
    }
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
    {
        return Err(format!("must not have a path (got {url:?})"));
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| format!("needs a host (got {url:?})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:3000").unwrap().as_str(),
            "127.0.0.1:3000"
        );
        assert_eq!(
            parse_upstream("http://backend/").unwrap().as_str(),
            "backend"
        );
        assert!(parse_upstream("https://x").is_err());
        assert!(parse_upstream("http://x/api").is_err());
        assert!(parse_upstream("127.0.0.1:3000").is_err());
    }
}
