//! Which HTTP version a public connection speaks, and hyper's builders
//! for both, with the gateway's limits.
//!
//! HTTP/1.1 is the default. HTTP/2 is spoken on a TLS connection whose
//! ALPN chose `h2` (offered when `http2.enabled`), and on a cleartext
//! connection that opens with the HTTP/2 preface when `http2.cleartext` is
//! set (prior knowledge, no `Upgrade: h2c`). The first bytes of a
//! cleartext connection are awaited within `limits.header_read_timeout`,
//! like a request head.
//!
//! The HTTP/2 limits: `http2.max_concurrent_streams` streams at once,
//! headers up to `limits.max_header_bytes` (a larger head is answered
//! 431), rapid-reset floods closed by `http2.max_pending_accept_reset_streams`
//! and `http2.max_local_error_reset_streams` (GOAWAY), a stream's unsent
//! output bounded by `http2.max_send_buffer_bytes`, dead peers found by
//! PINGs every `http2.ping_interval`.

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::gateway::Gateway;

/// The HTTP/2 connection preface.
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// The builders of the public listener's connections.
#[derive(Clone)]
pub struct Protocols {
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
    /// `http2.cleartext`: look for the preface on plain connections.
    cleartext_h2: bool,
}

impl Protocols {
    pub fn new(gw: &Gateway) -> Protocols {
        let cfg = &gw.config;
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(cfg.http2.max_concurrent_streams)
            .max_header_list_size(u32::try_from(cfg.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(cfg.http2.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(cfg.http2.max_local_error_reset_streams)
            .max_send_buf_size(cfg.http2.max_send_buffer_bytes)
            .keep_alive_interval(cfg.http2.ping_interval)
            .keep_alive_timeout(cfg.limits.write_timeout)
            // As on HTTP/1.1: no Date header nobody reads.
            .auto_date_header(false);
        Protocols {
            h1: super::http1_builder(gw),
            h2,
            cleartext_h2: cfg.http2.enabled && cfg.http2.cleartext,
        }
    }

    /// `http2.cleartext`: a plain connection opening with the HTTP/2
    /// preface speaks HTTP/2 (the lean path's head reading looks).
    pub(super) fn cleartext_h2(&self) -> bool {
        self.cleartext_h2
    }
}

/// The version a TLS handshake's ALPN chose.
pub fn after_alpn(protocol: Option<&[u8]>) -> Version {
    match protocol {
        Some(b"h2") => Version::Http2,
        _ => Version::Http1,
    }
}
