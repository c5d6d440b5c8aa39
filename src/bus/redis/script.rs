//! What the Redis bus stores and sends, and the two Lua scripts that do it.
//!
//! Per channel `c` (prefix `pollbridge` by default):
//!
//! | name | type | holds |
//! | --- | --- | --- |
//! | `pollbridge:{c}:seq` | string | the channel's last id; never expires |
//! | `pollbridge:{c}:log` | stream | the history: entry id `<id>-0`, fields `d` (the `data` JSON) and `t` (publish time, µs since the epoch by the Redis clock) |
//! | `pollbridge:{c}:bytes` | string | bytes of the `d` fields the stream holds; expires with the stream |
//! | `pollbridge:{c}` | pub/sub channel | one message per publish: `<id>:<t>:<data>` |
//!
//! The `{c}` hash tag puts all three in one cluster slot, so one script can
//! touch them atomically and sharded pub/sub routes the notification to the
//! same shard. Channel names can't contain braces, so the tag is exact.
//!
//! History is capped by count (`history.size`, exact; 1 for `state`
//! channels), by bytes and by age, all trimmed from the head by each
//! publish (`XTRIM … MINID`, exact):
//! - bytes: the `:bytes` counter follows every entry added and trimmed;
//!   while it is over `history.max_bytes` the oldest entries go (the
//!   newest is always kept). Redis has no byte-based trimming of its own,
//!   so this is the script's count of the `data` bytes; Redis's own memory
//!   for the stream is that plus per-entry overhead, and exact trimming
//!   inside a stream node only marks entries deleted until the node (at
//!   most `stream-node-max-bytes`, 4 KiB by default, or one larger entry)
//!   empties. A lost counter is recounted from the stream.
//! - age: the stream expires `history.max_age` after its last publish,
//!   each publish trims entries older than `max_age` (a binary search over
//!   the contiguous ids: a few `XRANGE`s, not a scan), and reads skip
//!   entries older than `max_age` so an idle channel never serves stale
//!   history.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::Value;

use crate::channel::ChannelName;

/// Lua helpers shared by both scripts (Redis can't share functions
/// between scripts without `FUNCTION LOAD`, which cluster and Redis 6 make
/// awkward, so they are pasted into each).
macro_rules! lua_helpers {
    () => {
        r#"
local function fmt(n) return string.format('%.0f', n) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function entry_id(e) return tonumber(string.match(e[1], '^(%d+)')) end
local function field(e, name)
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
local function entry_ts(e) return tonumber(field(e, 't') or '0') end
-- The channel's last id: the counter, or the stream's newest entry if the
-- counter was lost (evicted, deleted) while the stream survived.
local function last_seq(seq_key, log_key)
  local seq = redis.call('GET', seq_key)
  if seq then return tonumber(seq) end
  local last = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', 1)[1]
  if last then return entry_id(last) end
  return 0
end
-- The oldest id whose entry is not older than `cutoff` (last + 1 when none
-- is). Ids in the stream are contiguous and their times ascending, so a
-- binary search needs only log2(history) single-entry reads.
local function first_fresh(log_key, last, cutoff)
  local first = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)[1]
  if not first then return last + 1 end
  if entry_ts(first) >= cutoff then return entry_id(first) end
  local lo, hi = entry_id(first) + 1, last + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XRANGE', log_key, fmt(mid) .. '-0', fmt(mid) .. '-0')[1]
    if e and entry_ts(e) >= cutoff then hi = mid else lo = mid + 1 end
  end
  return lo
end
"#
    };
}

/// Assigns the next id, appends to the history and notifies subscribers,
/// atomically. Nothing is written unless the stream accepted the entry, so
/// a failed publish never consumes an id.
///
/// KEYS: seq, log, bytes. ARGV: pub/sub channel, data, max entries, max
/// age (µs), publish command (`SPUBLISH` or `PUBLISH`), max bytes.
/// Returns the id.
pub const PUBLISH: &str = concat!(
    lua_helpers!(),
    r#"
local seq_key, log_key, bytes_key = KEYS[1], KEYS[2], KEYS[3]
local max_entries, max_age, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local function size(e) return #(field(e, 'd') or '') end
local now = now_us()
local id = last_seq(seq_key, log_key) + 1
-- Bytes the stream holds: the counter, or recounted if it was lost while
-- the stream survived.
local kept = 0
if redis.call('EXISTS', log_key) == 1 then
  local counted = redis.call('GET', bytes_key)
  if counted then
    kept = tonumber(counted)
  else
    for _, e in ipairs(redis.call('XRANGE', log_key, '-', '+')) do kept = kept + size(e) end
  end
end
local added = redis.pcall('XADD', log_key, fmt(id) .. '-0', 'd', ARGV[2], 't', fmt(now))
if type(added) == 'table' and added.err then return added end
redis.call('SET', seq_key, fmt(id))
kept = kept + #ARGV[2]
-- Trim the head: past the count, older than max_age, then while over the
-- bytes (never the entry just added). Ids are contiguous.
local oldest = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)[1]
local first = entry_id(oldest)
local keep_from = math.max(first, id - max_entries + 1)
if entry_ts(oldest) < now - max_age then
  keep_from = math.max(keep_from, first_fresh(log_key, id, now - max_age))
end
keep_from = math.min(keep_from, id)
if keep_from > first then
  for _, e in ipairs(redis.call('XRANGE', log_key, '-', fmt(keep_from - 1) .. '-0')) do
    kept = kept - size(e)
  end
end
local batch = 1
while kept > max_bytes and keep_from < id do
  local entries = redis.call('XRANGE', log_key, fmt(keep_from) .. '-0', fmt(id - 1) .. '-0', 'COUNT', batch)
  if #entries == 0 then break end
  for _, e in ipairs(entries) do
    if kept <= max_bytes then break end
    kept = kept - size(e)
    keep_from = entry_id(e) + 1
  end
  batch = batch * 2
end
if keep_from > first then
  redis.call('XTRIM', log_key, 'MINID', fmt(keep_from) .. '-0')
end
redis.call('SET', bytes_key, fmt(kept))
local ttl = math.ceil(max_age / 1000)
redis.call('PEXPIRE', log_key, ttl)
redis.call('PEXPIRE', bytes_key, ttl)
redis.call(ARGV[5], ARGV[1], fmt(id) .. ':' .. fmt(now) .. ':' .. ARGV[2])
return id
"#
);

/// Reads a channel's position and history in one consistent step.
///
/// KEYS: seq, log. ARGV: since (`""`: only the last id), limit, max age
/// (µs). Returns `[last_id]` or `[last_id, first_kept, (id, t, data)…]`
/// with the entries after `since`, oldest first, skipping expired ones.
pub const READ: &str = concat!(
    lua_helpers!(),
    r#"
local seq = last_seq(KEYS[1], KEYS[2])
if ARGV[1] == '' then return {fmt(seq)} end
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local first_kept = first_fresh(KEYS[2], seq, now_us() - tonumber(ARGV[3]))
local out = {fmt(seq), fmt(first_kept)}
if limit > 0 then
  local start = math.max(since + 1, first_kept)
  local entries = redis.call('XRANGE', KEYS[2], fmt(start) .. '-0', '+', 'COUNT', limit)
  for _, e in ipairs(entries) do
    out[#out + 1] = fmt(entry_id(e))
    out[#out + 1] = field(e, 't') or '0'
    out[#out + 1] = field(e, 'd') or 'null'
  end
end
return out
"#
);

/// Acquires or renews a lease: KEYS[1] = lease key; ARGV[1] = this node's
/// id, ARGV[2] = time to live in ms. Returns 1 while this node holds it.
pub const LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Largest cursor passed to Lua, whose numbers are doubles: anything above
/// is from the future for any real channel, and the reset rule handles it.
pub const MAX_LUA_CURSOR: u64 = (1 << 53) - 1;

/// Key and pub/sub channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn seq(&self, channel: &ChannelName) -> String {
        format!("{}:{{{}}}:seq", self.prefix, channel.as_str())
    }

    pub fn log(&self, channel: &ChannelName) -> String {
        format!("{}:{{{}}}:log", self.prefix, channel.as_str())
    }

    /// Bytes of `data` the channel's stream holds.
    pub fn bytes(&self, channel: &ChannelName) -> String {
        format!("{}:{{{}}}:bytes", self.prefix, channel.as_str())
    }

    /// A lease named `name` tied to `channel` (same hash slot in a cluster).
    pub fn lease(&self, channel: &ChannelName, name: &str) -> String {
        format!("{}:{{{}}}:lease:{name}", self.prefix, channel.as_str())
    }

    /// The pub/sub channel carrying `channel`'s live messages.
    pub fn pubsub(&self, channel: &ChannelName) -> String {
        format!("{}:{{{}}}", self.prefix, channel.as_str())
    }

    /// The gateway channel a pub/sub channel name belongs to, if it is ours.
    pub fn channel_of(&self, pubsub: &[u8]) -> Option<ChannelName> {
        let rest = pubsub.strip_prefix(self.prefix.as_bytes())?;
        let name = rest.strip_prefix(b":{")?.strip_suffix(b"}")?;
        ChannelName::new(std::str::from_utf8(name).ok()?).ok()
    }
}

/// A message as it travels on pub/sub and in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    /// Publish time, µs since the Unix epoch by the Redis server's clock.
    pub ts_us: u64,
    /// The `data` JSON text.
    pub data: Bytes,
}

impl Entry {
    /// This node's `Instant` for the publish time, so delivery latency
    /// includes the trip through Redis. Clamped to now when the clocks
    /// disagree (Redis ahead of this node).
    pub fn published_at(&self, now: Instant, wall_now: SystemTime) -> Instant {
        let published = UNIX_EPOCH + Duration::from_micros(self.ts_us);
        let age = wall_now.duration_since(published).unwrap_or_default();
        now.checked_sub(age).unwrap_or(now)
    }
}

/// Encodes a pub/sub message: `<id>:<ts>:<data>` (the publish script builds
/// the same in Lua; this is for tests).
#[cfg(test)]
pub fn encode_frame(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry.data.len() + 32);
    out.extend_from_slice(itoa::Buffer::new().format(entry.id).as_bytes());
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(entry.ts_us).as_bytes());
    out.push(b':');
    out.extend_from_slice(&entry.data);
    out
}

/// Decodes a pub/sub message; `None` when it isn't ours or is mangled.
pub fn decode_frame(frame: &[u8]) -> Option<Entry> {
    let (id, rest) = split_number(frame)?;
    let (ts_us, data) = split_number(rest)?;
    if data.is_empty() {
        return None;
    }
    Some(Entry {
        id,
        ts_us,
        data: Bytes::copy_from_slice(data),
    })
}

/// `123:rest` → (123, rest).
fn split_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    let digits = &bytes[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, &bytes[colon + 1..]))
}

/// The answer of the [`READ`] script.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadReply {
    pub last_id: u64,
    /// The oldest id still in (unexpired) history; `last_id + 1` when empty.
    /// Absent when only the last id was asked for.
    pub first_kept: Option<u64>,
    pub entries: Vec<Entry>,
}

/// Parses the [`READ`] script's reply.
pub fn parse_read_reply(value: Value) -> Result<ReadReply, String> {
    let Value::Array(items) = value else {
        return Err(format!("unexpected read reply {value:?}"));
    };
    let mut items = items.into_iter();
    let number = |v: Option<Value>, what: &str| -> Result<u64, String> {
        match v {
            Some(Value::BulkString(b)) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad {what} in read reply")),
            Some(Value::Int(n)) if n >= 0 => Ok(n as u64),
            other => Err(format!("bad {what} in read reply: {other:?}")),
        }
    };
    let last_id = number(items.next(), "last id")?;
    let first_kept = match items.len() {
        0 => None,
        _ => Some(number(items.next(), "first kept id")?),
    };
    let mut entries = Vec::with_capacity(items.len() / 3);
    while items.len() > 0 {
        let id = number(items.next(), "entry id")?;
        let ts_us = number(items.next(), "entry time")?;
        let data = match items.next() {
            Some(Value::BulkString(b)) => Bytes::from(b),
            other => return Err(format!("bad entry data in read reply: {other:?}")),
        };
        entries.push(Entry { id, ts_us, data });
    }
    Ok(ReadReply {
        last_id,
        first_kept,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("pollbridge");
        let ch = name("prices.eur:x@y-1");
        assert_eq!(keys.seq(&ch), "pollbridge:{prices.eur:x@y-1}:seq");
        assert_eq!(keys.log(&ch), "pollbridge:{prices.eur:x@y-1}:log");
        assert_eq!(keys.pubsub(&ch), "pollbridge:{prices.eur:x@y-1}");
        for key in [
            keys.seq(&ch),
            keys.log(&ch),
            keys.bytes(&ch),
            keys.pubsub(&ch),
        ] {
            assert_eq!(
                redis::cluster_routing::Slot::for_key(key.as_bytes()),
                redis::cluster_routing::Slot::for_key(b"prices.eur:x@y-1"),
                "{key}"
            );
        }
        assert_eq!(keys.channel_of(keys.pubsub(&ch).as_bytes()), Some(ch));
        assert_eq!(keys.channel_of(b"pollbridge:{a b}"), None);
        assert_eq!(keys.channel_of(b"other:{news}"), None);
        assert_eq!(keys.channel_of(b"pollbridge:{news}:seq"), None);
    }

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let entry = Entry {
            id: 42,
            ts_us: 1_700_000_000_123_456,
            data: Bytes::from_static(br#"{"a":"x:y"}"#),
        };
        let frame = encode_frame(&entry);
        assert_eq!(frame, br#"42:1700000000123456:{"a":"x:y"}"#);
        assert_eq!(decode_frame(&frame), Some(entry));
        for bad in [
            &b""[..],
            b"42",
            b"42:17",
            b"42:17:",
            b":17:1",
            b"4x:17:1",
            b"42::1",
            b"99999999999999999999999:1:1",
        ] {
            assert_eq!(
                decode_frame(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn publish_time_becomes_a_local_instant() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let ts = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let past = Entry {
            id: 1,
            ts_us: ts(wall - Duration::from_millis(250)),
            data: Bytes::from_static(b"1"),
        };
        let age = now - past.published_at(now, wall);
        assert!(age >= Duration::from_millis(249) && age <= Duration::from_millis(251));
        let future = Entry {
            ts_us: ts(wall + Duration::from_secs(5)),
            ..past
        };
        assert_eq!(future.published_at(now, wall), now);
    }

    #[test]
    fn read_replies_parse() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let only_last = Value::Array(vec![bulk("17")]);
        assert_eq!(
            parse_read_reply(only_last).unwrap(),
            ReadReply {
                last_id: 17,
                first_kept: None,
                entries: vec![]
            }
        );
        let full = Value::Array(vec![
            bulk("9"),
            bulk("8"),
            bulk("8"),
            bulk("1000"),
            bulk("{}"),
            bulk("9"),
            bulk("2000"),
            bulk("\"x\""),
        ]);
        let reply = parse_read_reply(full).unwrap();
        assert_eq!(reply.last_id, 9);
        assert_eq!(reply.first_kept, Some(8));
        assert_eq!(
            reply.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            [8, 9]
        );
        assert_eq!(&reply.entries[1].data[..], b"\"x\"");
        assert!(parse_read_reply(Value::Nil).is_err());
        assert!(parse_read_reply(Value::Array(vec![bulk("x")])).is_err());
        assert!(parse_read_reply(Value::Array(vec![bulk("1"), bulk("1"), bulk("1")])).is_err());
    }
}
