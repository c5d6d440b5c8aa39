//! Per-channel rules (`[[channels]]`): matched on the channel name, first
//! match wins, unmatched channels get the defaults.

use serde::{Deserialize, Serialize};

/// How a channel treats slow readers and history.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelMode {
    /// Every message, in order; a subscriber that falls too far behind is
    /// disconnected.
    #[default]
    Stream,
    /// Newest value wins: a slow subscriber gets the latest message next.
    State,
}

/// Who may subscribe to a channel.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelAuth {
    /// Anyone.
    #[default]
    Public,
    /// A signed token naming the channel.
    Token,
    /// The backend's `auth_url` decides.
    Backend,
}

/// One `[[channels]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// Glob over the channel name: `*` matches any run of name characters.
    pub pattern: String,
    /// Default: `stream`.
    #[serde(default)]
    pub mode: ChannelMode,
    /// WebSocket clients may publish on matching channels. Default: false.
    #[serde(default)]
    pub allow_client_publish: bool,
    /// Default: `public`.
    #[serde(default)]
    pub auth: ChannelAuth,
    /// On a `state` channel: send any one subscriber at most one update per
    /// this interval — the newest value at each tick. Default: none.
    #[serde(default, with = "humantime_serde")]
    pub conflate_interval: Option<std::time::Duration>,
    /// WebSocket clients that negotiated permessage-deflate get matching
    /// channels' messages compressed (see `websocket.compression`); false
    /// sends them uncompressed, e.g. for payloads that are already
    /// compressed or encrypted. Default: true.
    #[serde(default = "yes")]
    pub compress: bool,
}

fn yes() -> bool {
    true
}

/// The settings that apply to one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolvedRule {
    pub mode: ChannelMode,
    pub allow_client_publish: bool,
    pub auth: ChannelAuth,
    /// Only ever set on `state` channels.
    pub conflate_interval: Option<std::time::Duration>,
    /// A rule turned WebSocket compression off (`compress = false`).
    pub uncompressed: bool,
}

/// The rule list, ready to match names.
#[derive(Debug, Clone, Default)]
pub struct ChannelRules {
    rules: Vec<ChannelRule>,
    /// Channels that are `state` unless a rule says otherwise: those fed by
    /// a polling bridge (and their per-user variants `name.*`).
    state_by_default: Vec<String>,
}

impl ChannelRules {
    pub fn new(rules: Vec<ChannelRule>) -> Self {
        ChannelRules {
            rules,
            state_by_default: Vec::new(),
        }
    }

    /// Makes `channel` (and `channel.*`) `state` channels when no rule matches.
    pub fn with_state_default(mut self, channel: &str) -> Self {
        self.state_by_default.push(channel.to_string());
        self
    }

    /// True when some rule throttles its channels (`conflate_interval`).
    pub fn has_conflate_interval(&self) -> bool {
        self.rules.iter().any(|r| {
            r.mode == ChannelMode::State && r.conflate_interval.is_some_and(|i| !i.is_zero())
        })
    }

    /// The first rule whose pattern matches `channel`, or the defaults.
    pub fn resolve(&self, channel: &str) -> ResolvedRule {
        let rule = self
            .rules
            .iter()
            .find(|rule| glob_match(rule.pattern.as_bytes(), channel.as_bytes()));
        match rule {
            Some(rule) => ResolvedRule {
                mode: rule.mode,
                allow_client_publish: rule.allow_client_publish,
                auth: rule.auth,
                conflate_interval: rule
                    .conflate_interval
                    .filter(|i| rule.mode == ChannelMode::State && !i.is_zero()),
                uncompressed: !rule.compress,
            },
            None => {
                let bridged = self.state_by_default.iter().any(|base| {
                    channel == base
                        || channel
                            .strip_prefix(base.as_str())
                            .is_some_and(|rest| rest.starts_with('.'))
                });
                ResolvedRule {
                    mode: if bridged {
                        ChannelMode::State
                    } else {
                        ChannelMode::Stream
                    },
                    ..ResolvedRule::default()
                }
            }
        }
    }
}

pub(super) fn validate_pattern(pattern: &str) -> Result<(), String> {
    let ok = !pattern.is_empty()
        && pattern
            .bytes()
            .all(|b| b == b'*' || crate::protocol::channel::is_name_byte(b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{pattern:?} is not a channel glob (name characters [A-Za-z0-9_.:@-] and *)"
        ))
    }
}

/// Glob match where `*` matches any (possibly empty) run of bytes.
/// Iterative with one backtrack point: linear in practice, never exponential.
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match(b"prices.*", b"prices.eur"));
        assert!(glob_match(b"prices.*", b"prices."));
        assert!(!glob_match(b"prices.*", b"price.eur"));
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
        assert!(glob_match(b"news", b"news"));
        assert!(!glob_match(b"news", b"news2"));
    }

    #[test]
    fn first_match_wins() {
        let rules = ChannelRules::new(vec![
            ChannelRule {
                pattern: "chat.*".into(),
                mode: ChannelMode::Stream,
                allow_client_publish: true,
                auth: ChannelAuth::Public,
                conflate_interval: None,
                compress: true,
            },
            ChannelRule {
                pattern: "*".into(),
                mode: ChannelMode::State,
                allow_client_publish: false,
                auth: ChannelAuth::Public,
                conflate_interval: None,
                compress: true,
            },
        ]);
        assert!(rules.resolve("chat.lobby").allow_client_publish);
        assert_eq!(rules.resolve("score").mode, ChannelMode::State);
        assert_eq!(
            ChannelRules::default().resolve("x"),
            ResolvedRule::default()
        );
    }
}
