//! What an idle WebSocket connection holds, pinned by size: every idle
//! connection keeps these for its whole life, so a field or a local that
//! grows them is paid once per connection (BENCHMARKS.md, "Idle WebSocket
//! memory"). Upper bounds, measured on the debug build the tests run
//! (the release build's futures are a little smaller); a failure means
//! something new is kept across the session's wait.
//!
//! The bound that matters most is the session's future: it *is* the
//! connection's tokio task (spawned unboxed), whose allocation is about
//! 110 bytes of tokio's header and trailer plus the future, rounded up to
//! a multiple of 128 bytes. Under 530 bytes the task is 640 bytes; it was
//! a 256-byte task plus a 640-byte boxed future before.

use std::mem::size_of;

use super::{First, Session, Start};
use crate::transport::websocket::reader::Decoder;
use crate::transport::websocket::socket::{SocketWriter, WsSocket};

/// The size of what `f` returns (for futures, which have no name).
fn returned_size<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
    size_of::<R>()
}

#[test]
fn the_session_future_stays_small() {
    let run = returned_size::<Session<SocketWriter>, Box<Start>, _>(Session::run);
    let serve = returned_size::<&mut Session<SocketWriter>, First, _>(Session::serve);
    let session = size_of::<Session<SocketWriter>>();
    eprintln!("Session::run future {run}, serve future {serve}, Session {session}");
    // 632 / 256 / 312 before the shared clock, the single poll function
    // and the boxed assembler; 488 after them, 520 once sessions carried
    // their opt-in compression context. The task is rounded up to 128
    // bytes with tokio's header (~110): up to ~530 it stays at 640.
    assert!(run <= 528, "Session::run's future grew to {run} bytes");
    assert!(
        serve <= 176,
        "Session::serve's future grew to {serve} bytes"
    );
    // 272 before sessions carried their opt-in compression context (8)
    // and the delta channels of their direct-mode report (24).
    // 312 with the kick token it keeps while parked (8); 232 once the
    // direct-mode report lives only in the queue (56) and boxes its rare
    // tail (24). A parked session is this, boxed: jemalloc's 256-byte
    // class (it was the 320-byte one). 208 once the direct-mode sink is
    // made from the writer when lent (16) and the decoder's message limit
    // is a `u32` (8): the 224-byte class. 192 (the 192-byte class) with
    // the decoder's inflater boxed (8) and the last-heard time in 4 bytes
    // (`timers::Heard`, 12).
    assert!(session <= 192, "Session grew to {session} bytes");
    // What a parked connection keeps instead of the whole session, boxed:
    // up to 128 bytes, jemalloc's 128-byte class.
    let parked = size_of::<super::ParkedSession>();
    eprintln!("ParkedSession {parked}");
    assert!(parked <= 128, "ParkedSession grew to {parked} bytes");
}

#[test]
fn per_connection_structs_stay_small() {
    let sizes = [
        // 64 with a `usize` message limit, 56 with a `u32` one, 48 with
        // the inflater boxed.
        ("Decoder", size_of::<Decoder>(), 48),
        // 64 with tokio's registration inline (80 bytes in its `Arc`);
        // 40 with it boxed (64).
        ("WsSocket", size_of::<WsSocket>(), 48),
        (
            "SubscriberQueue",
            size_of::<crate::bus::SubscriberQueue>(),
            // 176, plus the delta channels of its direct-mode report
            // (deltas keep direct mode) — 24; minus the report's boxed
            // tail — 24; 136 with the delta channels boxed with the tail
            // and `u32` counts (in an `Arc`: 160-byte class, was 192).
            144,
        ),
        ("ConnMeter", size_of::<crate::net::meter::ConnMeter>(), 64),
    ];
    for (name, size, bound) in sizes {
        eprintln!("{name}: {size} bytes");
        assert!(size <= bound, "{name} grew to {size} bytes (bound {bound})");
    }
}
