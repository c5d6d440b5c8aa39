//! The vocabulary every layer speaks, at the bottom of the house: channel
//! names, the transport label, the message envelope and its encodings for
//! every transport (WebSocket frame, SSE event, long-poll answer), ids,
//! epochs and cursors, payload checks, and the error answers. Nothing here
//! imports any other module of the crate.

pub mod channel;
pub mod compress;
pub mod cursor;
pub mod deflate;
pub mod delta;
pub mod epoch;
pub mod error;
pub mod json_check;
pub mod json_patch;
pub mod message;
pub mod poll_answer;
pub mod transport;
pub mod ws_frame;

pub use channel::{parse_cursor, BadChannelName, ChannelName, Since, MAX_NAME_LEN};
pub use cursor::{Cursor, Step};
pub use epoch::{cursor_text, Epoch};
pub use json_check::{check_json, MAX_JSON_DEPTH};
pub use message::{Message, Payload, PayloadError};
pub use transport::Transport;

/// A cheap random number in `0..n` (not for anything secret): new epochs,
/// and the jitter that spreads clients' retries.
pub fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::Instant::now().elapsed().as_nanos());
    h.finish() % n.max(1)
}
