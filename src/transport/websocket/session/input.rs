//! Where a WebSocket session's inbound bytes come from: the shared raw
//! socket, or any other stream (TLS).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncRead;

use super::super::socket::WsSocket;

/// Where the session's inbound bytes come from.
pub enum Input {
    /// The raw TCP socket, shared with the writer and the publishers:
    /// waits for readiness and holds no buffer while idle.
    Socket(Arc<WsSocket>),
    /// Any other stream (TLS), read through the decoder's buffer.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl Input {
    /// Appends what the client sent to `buf`; 0 at end of stream. Nothing
    /// is consumed unless it returns `Ready`; on a plain socket an empty
    /// `buf` holds no allocation while this is pending.
    ///
    /// A poll function rather than an `async fn`: the session waits on it in
    /// a `select!` that every idle connection holds, and a future here would
    /// add its state (72 bytes) to that.
    pub(super) fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        match self {
            Input::Socket(socket) => socket.poll_read_into(cx, buf),
            Input::Stream(stream) => {
                // Kept while pending: this is polled on every wake-up, and
                // a TLS stream holds far larger buffers of its own anyway.
                buf.reserve(4096);
                tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
            }
        }
    }
}
