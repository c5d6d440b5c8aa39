//! Channel names and cursors as clients send them.

use std::fmt;
use std::sync::Arc;

use super::Epoch;

/// Longest channel name in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A validated channel name: 1–128 bytes of `[A-Za-z0-9_.:@-]`. Cheap to
/// clone (shared), so every message and subscription can carry one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel name must be 1-{MAX_NAME_LEN} bytes of [A-Za-z0-9_.:@-]")]
pub struct BadChannelName;

pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

impl ChannelName {
    pub fn new(name: &str) -> Result<Self, BadChannelName> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(is_name_byte) {
            return Err(BadChannelName);
        }
        Ok(ChannelName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Where a client resumes: the last id it has and, when it sent one, the
/// epoch (sequence) that id belongs to. A plain id (`epoch: None`, what
/// clients sent before epochs existed) is taken to be in the channel's
/// current sequence; see `docs/protocol.md`, "Cursors and resets".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    pub id: u64,
    pub epoch: Option<Epoch>,
}

impl Since {
    /// A cursor in a known sequence (a plain id when `epoch` is `NONE`).
    pub fn at(id: u64, epoch: Epoch) -> Since {
        Since {
            id,
            epoch: (!epoch.is_none()).then_some(epoch),
        }
    }

    /// A plain id, epoch unknown.
    pub fn plain(id: u64) -> Since {
        Since { id, epoch: None }
    }
}

impl fmt::Display for Since {
    /// The text [`parse_cursor`] reads back: `N` or `N-E`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.epoch {
            Some(epoch) => write!(f, "{}-{epoch}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// Parses a cursor (`since`, `Last-Event-ID`): `N` (an unsigned decimal
/// id) or `N-E` (the id and its epoch in hex, as pollbridge hands them out).
pub fn parse_cursor(text: &str) -> Option<Since> {
    let (id, epoch) = match text.split_once('-') {
        Some((id, epoch)) => (id, Some(Epoch::parse(epoch.as_bytes())?)),
        None => (text, None),
    };
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Since {
        id: id.parse().ok()?,
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(ChannelName::new("news").is_ok());
        assert!(ChannelName::new("a.b:c@d-e_f").is_ok());
        assert!(ChannelName::new(&"x".repeat(128)).is_ok());
        assert!(ChannelName::new(&"x".repeat(129)).is_err());
        assert!(ChannelName::new("").is_err());
        assert!(ChannelName::new("a b").is_err());
        assert!(ChannelName::new("a/b").is_err());
        assert!(ChannelName::new("é").is_err());
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor("0"), Some(Since::plain(0)));
        assert_eq!(parse_cursor("42"), Some(Since::plain(42)));
        let with_epoch = parse_cursor("42-1f").unwrap();
        assert_eq!((with_epoch.id, with_epoch.epoch), (42, Epoch::parse(b"1f")));
        assert_eq!(parse_cursor("42-"), None);
        assert_eq!(parse_cursor("42-xyz"), None);
        assert_eq!(parse_cursor("-1f"), None);
        assert_eq!(parse_cursor("1-2-3"), None);
        assert_eq!(parse_cursor("-1"), None);
        assert_eq!(parse_cursor("+1"), None);
        assert_eq!(parse_cursor(""), None);
        assert_eq!(parse_cursor("99999999999999999999999"), None);
    }
}
