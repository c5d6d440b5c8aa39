//! Content-coding negotiation: which of the codings the gateway offers
//! (gzip, brotli) a client's `Accept-Encoding` prefers, and the headers a
//! compressed (or compressible) answer carries.
//!
//! q-values are honoured (RFC 9110 §12.5.3): a coding not named gets the
//! q of `*`, if any, else 0; `identity` is acceptable unless it is given
//! q=0 (or `*;q=0` without naming it), and beats a coding only when named
//! with a higher q. The highest q wins; on a tie brotli beats gzip and both
//! beat identity.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};

use crate::config::CompressionConfig;
use crate::metrics::Metrics;
use crate::protocol::compress::{Coding, Levels};
use crate::protocol::Transport;

/// The coding to answer with, among `offered` (in order of preference on
/// a tie); `None` for identity.
pub fn negotiate(headers: &HeaderMap, offered: &[Coding]) -> Option<Coding> {
    let mut star: Option<f32> = None;
    let mut identity: Option<f32> = None;
    let mut named: [Option<f32>; 2] = [None, None];
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim();
            if token.is_empty() {
                continue;
            }
            let q = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
                })
                .next()
                .map_or(Some(1.0), |v| {
                    v.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))
                });
            let Some(q) = q else { continue };
            let slot = if token == "*" {
                &mut star
            } else if token.eq_ignore_ascii_case("identity") {
                &mut identity
            } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
                &mut named[0]
            } else if token.eq_ignore_ascii_case("br") {
                &mut named[1]
            } else {
                continue;
            };
            // The most favourable mention counts.
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
    }
    let q_of = |coding: Coding| {
        let own = match coding {
            Coding::Gzip => named[0],
            Coding::Brotli => named[1],
        };
        own.or(star).unwrap_or(0.0)
    };
    // Identity beats a coding only when named with a higher q: a client
    // that lists codings prefers them to the implicit identity.
    let identity_q = identity.unwrap_or(0.0);
    let mut best: Option<(Coding, f32)> = None;
    for &coding in offered {
        let q = q_of(coding);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.filter(|(_, q)| *q >= identity_q).map(|(c, _)| c)
}

/// What the compression settings say for one answer.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    pub enabled: bool,
    pub min_bytes: usize,
    pub levels: Levels,
}

impl Compression {
    pub fn new(config: &CompressionConfig) -> Compression {
        Compression {
            enabled: config.enabled,
            min_bytes: config.min_bytes,
            levels: Levels {
                gzip: config.gzip_level,
                brotli: config.brotli_quality,
            },
        }
    }

    /// The coding the client prefers among `offered`, if compression is on.
    pub fn accepted(&self, headers: &HeaderMap, offered: &[Coding]) -> Option<Coding> {
        if self.enabled {
            negotiate(headers, offered)
        } else {
            None
        }
    }

    /// `accepted` if an answer of `len` bytes is worth compressing.
    pub fn for_len(&self, accepted: Option<Coding>, len: usize) -> Option<Coding> {
        accepted.filter(|_| self.enabled && len >= self.min_bytes)
    }
}

/// Both codings, brotli first (it wins a tie).
pub const ANSWER_CODINGS: [Coding; 2] = [Coding::Brotli, Coding::Gzip];

/// Adds `Vary: Accept-Encoding` (next to any other `Vary`).
pub fn vary_on_encoding(headers: &mut HeaderMap) {
    let already = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
    });
    if !already {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Marks a response body as compressed with `coding`.
pub fn set_content_encoding(headers: &mut HeaderMap, coding: Coding) {
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
}

/// `plain` as `coding` (or as is), counting what compression did for
/// `transport`: the body to send.
pub fn compressed_body(
    metrics: &Metrics,
    transport: Transport,
    plain: Bytes,
    compressed: Option<Bytes>,
) -> Bytes {
    match compressed {
        Some(body) => {
            metrics
                .compression
                .record(transport, plain.len(), body.len());
            body
        }
        None => plain,
    }
}

/// A body's compressed forms, each made on first demand and shared by
/// every client that gets the same body (a bridged copy's version).
#[derive(Debug, Default)]
pub struct CompressOnce {
    gzip: std::sync::OnceLock<Bytes>,
    brotli: std::sync::OnceLock<Bytes>,
}

impl CompressOnce {
    /// `plain` in `coding`: compressed on the first call, shared after.
    pub fn get(&self, coding: Coding, plain: &[u8], levels: Levels) -> Bytes {
        let cell = match coding {
            Coding::Gzip => &self.gzip,
            Coding::Brotli => &self.brotli,
        };
        cell.get_or_init(|| crate::protocol::compress::encode(coding, plain, levels))
            .clone()
    }
}

/// The ETag of a compressed representation: the plain body's, made weak
/// (`W/"…"`), as a compressed body is not byte-for-byte the plain one. A
/// client revalidating with it still matches (weak comparison).
pub fn weak_etag(etag: &HeaderValue) -> HeaderValue {
    if etag.as_bytes().starts_with(b"W/") {
        return etag.clone();
    }
    let mut weak = Vec::with_capacity(etag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(etag.as_bytes());
    HeaderValue::from_bytes(&weak).unwrap_or_else(|_| etag.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str) -> Option<Coding> {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        negotiate(&h, &ANSWER_CODINGS)
    }

    #[test]
    fn q_values_pick_the_coding() {
        assert_eq!(negotiate(&HeaderMap::new(), &ANSWER_CODINGS), None);
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
        assert_eq!(pick("gzip, deflate, br"), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=1, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0"), None);
        assert_eq!(pick("*"), Some(Coding::Brotli));
        assert_eq!(pick("*;q=0.5, br;q=0"), Some(Coding::Gzip));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("gzip;q=0.5, identity"), None);
        assert_eq!(pick("gzip;q=0.5, identity;q=0"), Some(Coding::Gzip));
        assert_eq!(pick("deflate, compress"), None);
        assert_eq!(pick("GZIP ; Q=0.8"), Some(Coding::Gzip));
        assert_eq!(pick("gzip;q=2"), None, "an invalid q is ignored");
    }

    #[test]
    fn only_offered_codings_are_picked() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.9"),
        );
        assert_eq!(negotiate(&h, &[Coding::Gzip]), Some(Coding::Gzip));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(negotiate(&h, &[Coding::Gzip]), None);
    }
}
