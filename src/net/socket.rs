//! The publisher's handle on a client socket its connection task owns:
//! a counted, non-blocking `send()` on the descriptor, for direct delivery
//! (the publisher writes a message's shared pre-encoded bytes itself, under
//! the subscriber queue's lock, instead of waking the connection's task).
//!
//! The raw non-blocking `send`/`recv` that it and the WebSocket's socket
//! (`transport::websocket::socket`) use live here once: a plain `send(2)`
//! with `MSG_DONTWAIT | MSG_NOSIGNAL`, without tokio's readiness
//! bookkeeping around it, each byte counted on the connection's meter. Skipping tokio's bookkeeping is safe because a write the socket
//! does not take whole ends direct mode, and the task's own writes go
//! through tokio, whose first `EAGAIN` clears its readiness as usual.
//!
//! The handle borrows the descriptor: the connection keeps the socket open
//! for as long as any publisher may write through it, i.e. it takes direct
//! mode back (`SubscriberQueue::leave_direct`, under the queue's lock)
//! before it closes the socket.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::sync::Arc;

use super::meter::ConnMeter;

/// A counted non-blocking sender on a socket owned elsewhere (see the
/// module doc for who keeps it open).
pub struct DirectSend {
    fd: RawFd,
    meter: Arc<ConnMeter>,
}

impl DirectSend {
    /// `fd` must stay open while the handle may be used (module doc).
    pub fn new(fd: RawFd, meter: Arc<ConnMeter>) -> DirectSend {
        DirectSend { fd, meter }
    }

    /// The connection's meter.
    pub fn meter(&self) -> &Arc<ConnMeter> {
        &self.meter
    }

    /// Sends what the socket takes now (`WouldBlock` when nothing), and
    /// counts it.
    pub fn try_send(&self, bytes: &[u8]) -> io::Result<usize> {
        self.try_send_vectored(&[IoSlice::new(bytes)])
    }

    /// [`try_send`](Self::try_send) of several buffers, in one call.
    pub fn try_send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // The owner keeps the descriptor open while this handle is in use.
        let n = send_vectored(self.fd, bufs)?;
        self.meter.on_write(n);
        Ok(n)
    }
}

/// A non-blocking `send()` of `bufs` (one `sendmsg()` for several).
pub fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let n = match bufs {
        // One buffer (the usual fan-out case): `send()`, which skips the
        // VFS layer `writev()` goes through (~10 % of a delivery's CPU in
        // `perf`: `vfs_writev`, `fdget_pos`).
        // SAFETY: a non-blocking send(2) on a live socket, from a live
        // buffer of `one.len()` bytes.
        [one] => unsafe {
            libc::send(
                fd,
                one.as_ptr().cast(),
                one.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        },
        // SAFETY: a non-blocking sendmsg(2) on a live socket from live
        // buffers; `IoSlice` is ABI-compatible with `iovec`.
        _ => unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
        },
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A non-blocking `recv()` appending to `buf` (room for it reserved).
pub fn recv_into(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv(2) into the vector's spare capacity, of its length;
    // only the bytes it reports written are then counted as initialized.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: recv wrote `n` bytes after the initialized part.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn sends_and_counts_until_the_socket_is_full() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let meter = ConnMeter::new(metrics.clone(), Arc::new(AtomicUsize::new(1)), None);
        let send = DirectSend::new(client.as_raw_fd(), meter);
        assert_eq!(send.try_send(b"hello").unwrap(), 5);
        let mut got = [0; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Nobody reads: the socket fills and the send would block.
        let big = vec![0u8; 1 << 16];
        let mut sent = 5;
        let err = loop {
            match send.try_send(&big) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let counted: u64 = crate::protocol::Transport::ALL
            .iter()
            .map(|t| metrics.transport(*t).wire_out.get())
            .sum();
        assert_eq!(counted, sent as u64);
    }
}
