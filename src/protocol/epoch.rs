//! Epochs: the identity of a channel's id sequence.
//!
//! Ids alone can't tell two sequences apart: when Redis loses a channel's
//! data (a restart without persistence, `FLUSHALL`, eviction, a failover to
//! a replica that lagged) its ids start again at 1, and once the new ids pass
//! the last one a node or client saw, "next id" looks continuous although
//! messages were lost. So every sequence gets an epoch, created together
//! with it (by the Redis publish script, or per process start by the
//! in-memory bus), carried by every message and history read and by the
//! cursors clients hold. A different epoch means the sequence the cursor
//! was in is gone: the client is told `truncated` and continues on the new
//! one.
//!
//! An epoch is a random 48-bit number, written as 1–12 lowercase hex
//! digits. Comparing two is comparing two `u64`s.

use std::fmt;

/// A sequence's identity. [`Epoch::NONE`] (0): no sequence yet (a channel
/// nobody has published on), or not known.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Epoch(u64);

/// Epochs are 48 bits: short in cursors and SSE ids, and still a one in
/// 2^48 chance that a new sequence gets its predecessor's epoch.
const MASK: u64 = (1 << 48) - 1;

/// Longest epoch text (12 hex digits, 16 tolerated when parsing).
const MAX_TEXT: usize = 16;

impl Epoch {
    pub const NONE: Epoch = Epoch(0);

    /// A fresh random epoch (never `NONE`).
    pub fn random() -> Epoch {
        loop {
            let value = super::random_below(u64::MAX) & MASK;
            if value != 0 {
                return Epoch(value);
            }
        }
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// Parses the hex text form; `None` for anything else (empty is not an
    /// epoch: callers map it to [`Epoch::NONE`] themselves).
    pub fn parse(text: &[u8]) -> Option<Epoch> {
        if text.is_empty() || text.len() > MAX_TEXT || !text.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        u64::from_str_radix(text, 16).ok().map(Epoch)
    }

    /// The hex text into `buf`; returns it.
    pub fn encode(self, buf: &mut [u8; MAX_TEXT]) -> &str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut value = self.0;
        let mut start = MAX_TEXT;
        loop {
            start -= 1;
            buf[start] = HEX[(value & 0xf) as usize];
            value >>= 4;
            if value == 0 {
                break;
            }
        }
        std::str::from_utf8(&buf[start..]).expect("hex digits are ASCII")
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(&mut [0; MAX_TEXT]))
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

/// A cursor as text: `N-E` (id and epoch), or `N` when the epoch is
/// [`Epoch::NONE`]. What SSE ids, the long-poll `cursor` and the WebSocket
/// `cursor` carry, and what `since` / `Last-Event-ID` accept back.
pub fn cursor_text(id: u64, epoch: Epoch) -> String {
    if epoch.is_none() {
        id.to_string()
    } else {
        format!("{id}-{epoch}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for value in [1u64, 0xf, 0x10, 0xabcdef, MASK] {
            let epoch = Epoch(value);
            let text = epoch.to_string();
            assert_eq!(Epoch::parse(text.as_bytes()), Some(epoch), "{text}");
        }
        assert_eq!(Epoch(0xabc).to_string(), "abc");
        assert_eq!(Epoch::parse(b"ABC"), Some(Epoch(0xabc)));
        for bad in [&b""[..], b"xyz", b"-1", b"12345678901234567", b"1 2"] {
            assert_eq!(Epoch::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_epochs_are_48_bit_and_differ() {
        let a = Epoch::random();
        let b = Epoch::random();
        assert!(!a.is_none() && a.0 <= MASK && b.0 <= MASK);
        assert_ne!(a, b);
    }

    #[test]
    fn cursor_texts() {
        assert_eq!(cursor_text(42, Epoch(0x1f)), "42-1f");
        assert_eq!(cursor_text(0, Epoch::NONE), "0");
    }
}
