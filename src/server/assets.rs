//! Static files built into the binary: the browser client, the demo page
//! and the admin page. Nothing is read from disk at run time.

use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use crate::http::{text, Response};

/// A file served from memory, with a content hash as its ETag.
pub struct Asset {
    pub body: &'static str,
    pub content_type: &'static str,
    /// `Cache-Control` value.
    pub cache: &'static str,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str, cache: &'static str) -> Asset {
        Asset {
            body,
            content_type,
            cache,
            etag: OnceLock::new(),
        }
    }

    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            // FNV-1a: stable across builds of the same content.
            let hash = self.body.bytes().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            });
            HeaderValue::from_str(&format!("\"{hash:016x}\"")).expect("hex is a valid header")
        })
    }

    /// `200` with the file, or `304` when the client's copy is current.
    pub fn serve(&self, request: &HeaderMap) -> Response {
        let etag = self.etag();
        let fresh = request.get(header::IF_NONE_MATCH).is_some_and(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii() == etag.as_bytes())
        });
        let mut resp = if fresh {
            let mut r = text(StatusCode::NOT_MODIFIED, self.content_type, "");
            r.headers_mut().remove(header::CONTENT_TYPE);
            r
        } else {
            text(StatusCode::OK, self.content_type, self.body)
        };
        let h = resp.headers_mut();
        h.insert(header::ETAG, etag.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(self.cache));
        resp
    }
}

/// The browser client, `{prefix}/client.js`.
pub static CLIENT_JS: Asset = Asset::new(
    include_str!("../../client/pollbridge.js"),
    "text/javascript; charset=utf-8",
    // Revalidated after an hour; the ETag makes that a 304.
    "public, max-age=3600",
);

/// Its TypeScript declarations, `{prefix}/client.d.ts`.
pub static CLIENT_DTS: Asset = Asset::new(
    include_str!("../../client/pollbridge.d.ts"),
    "application/typescript; charset=utf-8",
    "public, max-age=3600",
);

/// The live demo, `{prefix}/demo`.
pub static DEMO_HTML: Asset = Asset::new(
    include_str!("../../client/demo/index.html"),
    "text/html; charset=utf-8",
    "no-cache",
);

/// The admin bandwidth page, `/` on the admin listener.
pub static ADMIN_HTML: Asset = Asset::new(
    include_str!("../../assets/admin.html"),
    "text/html; charset=utf-8",
    "no-cache",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_revalidation() {
        let first = CLIENT_JS.serve(&HeaderMap::new());
        assert_eq!(first.status(), 200);
        let etag = first.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(CLIENT_JS.serve(&again).status(), 304);
    }

    #[test]
    fn pages_are_self_contained() {
        for page in [&ADMIN_HTML, &DEMO_HTML] {
            for external in ["http://", "https://", "//cdn"] {
                let offending: Vec<&str> = page
                    .body
                    .lines()
                    .filter(|l| l.contains(external) && !l.contains("www.w3.org/2000/svg"))
                    .collect();
                assert!(
                    offending.is_empty(),
                    "external URL in a page: {offending:?}"
                );
            }
        }
    }
}
