//! The `[compression]` section (gzip and brotli on HTTP answers) and the
//! `[http2]` section (HTTP/2 on the public listener and its limits).

use serde::{Deserialize, Serialize};

/// gzip and brotli on long-poll answers, SSE streams and bridged copies,
/// chosen from the client's `Accept-Encoding`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Compress answers for clients that accept it; false sends everything
    /// uncompressed (and asks bridged backends for identity). Default: true.
    pub enabled: bool,
    /// Answers (and SSE events) shorter than this many bytes go out
    /// uncompressed: below it the coding costs more than it saves.
    /// Default: 512.
    pub min_bytes: usize,
    /// gzip level, 1 (fast) to 9 (small). Default: 6.
    pub gzip_level: u32,
    /// brotli quality, 0 (fast) to 11 (small). Default: 5.
    pub brotli_quality: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            min_bytes: 512,
            gzip_level: 6,
            brotli_quality: 5,
        }
    }
}

impl CompressionConfig {
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(1..=9).contains(&self.gzip_level) {
            problems.push(("compression.gzip_level", "must be 1 to 9".into()));
        }
        if self.brotli_quality > 11 {
            problems.push(("compression.brotli_quality", "must be 0 to 11".into()));
        }
        problems
    }
}

/// HTTP/2 on the public listener: ALPN `h2` on TLS, and optionally
/// prior-knowledge HTTP/2 on a cleartext listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Offer `h2` in the TLS handshake (ALPN). Default: true.
    pub enabled: bool,
    /// Also accept prior-knowledge HTTP/2 (`h2c`, no upgrade) on a
    /// listener without TLS. Default: false.
    pub cleartext: bool,
    /// Streams one HTTP/2 connection may have open at once; more are
    /// refused (`REFUSED_STREAM`). Default: 100.
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the gateway looked at
    /// them (rapid reset, CVE-2023-44487); past it the connection is
    /// closed (`GOAWAY ENHANCE_YOUR_CALM`). Default: 20.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway may reset for a client's protocol errors on one
    /// connection; past it the connection is closed. Default: 32.
    pub max_local_error_reset_streams: usize,
    /// Bytes buffered per stream for a client that doesn't read; the
    /// stream's body is polled again only when they have gone out.
    /// Default: 65536.
    pub max_send_buffer_bytes: usize,
    /// A PING is sent after this long without frames from the client; no
    /// answer within `limits.write_timeout` closes the connection.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: std::time::Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            enabled: true,
            cleartext: false,
            max_concurrent_streams: 100,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 32,
            max_send_buffer_bytes: 64 * 1024,
            ping_interval: std::time::Duration::from_secs(30),
        }
    }
}

impl Http2Config {
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.max_concurrent_streams == 0 {
            problems.push(("http2.max_concurrent_streams", "must be at least 1".into()));
        }
        if self.max_send_buffer_bytes == 0 {
            problems.push(("http2.max_send_buffer_bytes", "must be at least 1".into()));
        }
        if self.ping_interval.is_zero() {
            problems.push(("http2.ping_interval", "must be longer than 0s".into()));
        }
        problems
    }
}
