//! What the Redis bus stores and sends, and the Lua scripts that do it
//! (publish, read, rotate an epoch, leases).
//!
//! Per channel `c` (prefix `pollbridge` by default):
//!
//! | name | type | holds |
//! | --- | --- | --- |
//! | `pollbridge:{c}:seq` | string | the channel's last id; never expires |
//! | `pollbridge:{c}:epoch` | string | the epoch of that id sequence (hex); never expires |
//! | `pollbridge:{c}:log` | stream | the history: entry id `<id>-0`, fields `d` (the `data` JSON) and `t` (publish time, µs since the epoch by the Redis clock) |
//! | `pollbridge:{c}:bytes` | string | bytes of the `d` fields the stream holds; expires with the stream |
//! | `pollbridge:{c}` | pub/sub channel | one message per publish: `<id>-<epoch>:<t>:<data>` |
//!
//! **Epochs.** A channel's sequence is its `seq` key: when that is missing
//! (a new channel, or Redis lost it: flushed, evicted, restarted without
//! persistence) the next publish starts a new sequence at id 1 with a new
//! random epoch (chosen by the publishing node, passed in) and deletes any
//! history left of the old one. An existing `seq` without an epoch (data
//! written before epochs existed, or the epoch key alone evicted) gets a new
//! epoch and its ids continue. So the epoch changes whenever ids may have
//! restarted, and nodes and clients that compare it can't mistake a new
//! sequence for the old one.
//!
//! The `{c}` hash tag puts all of them in one cluster slot, so one script can
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

use crate::protocol::channel::ChannelName;
use crate::protocol::Epoch;

/// Lua helpers shared by the scripts (Redis can't share functions
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
/// KEYS: seq, log, bytes, epoch. ARGV: pub/sub channel, data, max
/// entries, max age (µs), publish command (`SPUBLISH` or `PUBLISH`), max
/// bytes, a new random epoch (used only if the sequence needs one).
/// Returns the id.
pub const PUBLISH: &str = concat!(
    lua_helpers!(),
    r#"
local seq_key, log_key, bytes_key, epoch_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local max_entries, max_age, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local function size(e) return #(field(e, 'd') or '') end
local now = now_us()
local seq = redis.call('GET', seq_key)
local epoch = redis.call('GET', epoch_key)
local id = 1
local new_epoch = not epoch
if seq then
  id = tonumber(seq) + 1
else
  -- No sequence: a new channel, or Redis lost this one. Start again at 1
  -- in a new epoch, without what is left of the old history.
  redis.call('DEL', log_key, bytes_key)
  new_epoch = true
end
if new_epoch then epoch = ARGV[7] end
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
if new_epoch then redis.call('SET', epoch_key, epoch) end
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
redis.call(ARGV[5], ARGV[1], fmt(id) .. '-' .. epoch .. ':' .. fmt(now) .. ':' .. ARGV[2])
return id
"#
);

/// Reads a channel's position and history in one consistent step.
///
/// KEYS: seq, log, epoch. ARGV: since (`""`: only the last id), limit, max
/// age (µs), a new random epoch (for a sequence written before epochs).
/// Returns `[epoch, last_id]` or `[epoch, last_id, first_kept, (id, t,
/// data)…]` with the entries after `since`, oldest first, skipping expired
/// ones. A channel without a sequence reads as epoch `""`, last id 0.
pub const READ: &str = concat!(
    lua_helpers!(),
    r#"
local seq = redis.call('GET', KEYS[1])
if not seq then
  if ARGV[1] == '' then return {'', '0'} end
  return {'', '0', '1'}
end
seq = tonumber(seq)
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[3], epoch)
end
if ARGV[1] == '' then return {epoch, fmt(seq)} end
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local first_kept = first_fresh(KEYS[2], seq, now_us() - tonumber(ARGV[3]))
local out = {epoch, fmt(seq), fmt(first_kept)}
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

/// Gives a sequence whose ids went backwards within one epoch (a failover
/// to a lagging replica) a new epoch, unless another node already did or
/// the sequence is gone (the next publish starts one).
///
/// KEYS: epoch, seq. ARGV: the epoch that went backwards, a new random
/// epoch. Returns the channel's epoch now (`""`: none).
pub const ROTATE: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if epoch == ARGV[1] and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return epoch or ''
"#;

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

    /// The epoch of the channel's id sequence.
    pub fn epoch(&self, channel: &ChannelName) -> String {
        format!("{}:{{{}}}:epoch", self.prefix, channel.as_str())
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
    /// The sequence `id` is in.
    pub epoch: Epoch,
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

/// Encodes a pub/sub message: `<id>-<epoch>:<ts>:<data>` (the publish
/// script builds the same in Lua; this is for tests).
#[cfg(test)]
pub fn encode_frame(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry.data.len() + 48);
    out.extend_from_slice(itoa::Buffer::new().format(entry.id).as_bytes());
    out.push(b'-');
    out.extend_from_slice(entry.epoch.to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(entry.ts_us).as_bytes());
    out.push(b':');
    out.extend_from_slice(&entry.data);
    out
}

/// Decodes a pub/sub message; `None` when it isn't ours or is mangled. A
/// message of a version without epochs (`<id>:<ts>:<data>`, a node not yet
/// upgraded) decodes with [`Epoch::NONE`]: "the epoch being followed".
pub fn decode_frame(frame: &[u8]) -> Option<Entry> {
    let dash = frame.iter().position(|&b| b == b'-' || b == b':')?;
    if frame[dash] == b':' {
        let (id, rest) = split_number(frame)?;
        let (ts_us, data) = split_number(rest)?;
        return (!data.is_empty()).then(|| Entry {
            id,
            epoch: Epoch::NONE,
            ts_us,
            data: Bytes::copy_from_slice(data),
        });
    }
    let id = parse_digits(&frame[..dash])?;
    let rest = &frame[dash + 1..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let epoch = Epoch::parse(&rest[..colon])?;
    let (ts_us, data) = split_number(&rest[colon + 1..])?;
    if data.is_empty() {
        return None;
    }
    Some(Entry {
        id,
        epoch,
        ts_us,
        data: Bytes::copy_from_slice(data),
    })
}

/// `123:rest` → (123, rest).
fn split_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    Some((parse_digits(&bytes[..colon])?, &bytes[colon + 1..]))
}

/// An unsigned decimal number, nothing else.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The answer of the [`READ`] script.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadReply {
    /// The sequence's epoch ([`Epoch::NONE`]: the channel has none).
    pub epoch: Epoch,
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
    let epoch = match items.next() {
        Some(Value::BulkString(b)) if b.is_empty() => Epoch::NONE,
        Some(Value::BulkString(b)) => {
            Epoch::parse(&b).ok_or_else(|| "bad epoch in read reply".to_string())?
        }
        other => return Err(format!("bad epoch in read reply: {other:?}")),
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
        entries.push(Entry {
            id,
            epoch,
            ts_us,
            data,
        });
    }
    Ok(ReadReply {
        epoch,
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
        assert_eq!(keys.epoch(&ch), "pollbridge:{prices.eur:x@y-1}:epoch");
        assert_eq!(keys.pubsub(&ch), "pollbridge:{prices.eur:x@y-1}");
        for key in [
            keys.seq(&ch),
            keys.log(&ch),
            keys.bytes(&ch),
            keys.epoch(&ch),
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
            epoch: Epoch::parse(b"9f").unwrap(),
            ts_us: 1_700_000_000_123_456,
            data: Bytes::from_static(br#"{"a":"x:y"}"#),
        };
        let frame = encode_frame(&entry);
        assert_eq!(frame, br#"42-9f:1700000000123456:{"a":"x:y"}"#);
        assert_eq!(decode_frame(&frame), Some(entry));
        // A node without epochs (mid-upgrade) sends `<id>:<ts>:<data>`.
        let legacy = decode_frame(b"7:17:1").unwrap();
        assert_eq!(
            (legacy.id, legacy.epoch, legacy.ts_us),
            (7, Epoch::NONE, 17)
        );
        for bad in [
            &b""[..],
            b"42",
            b"42-9f",
            b"42-9f:17",
            b"42-9f:17:",
            b"-9f:17:1",
            b"4x-9f:17:1",
            b"42-:17:1",
            b"42-xy:17:1",
            b"42-9f::1",
            b"99999999999999999999999-9f:1:1",
            b"42:17:",
            b"4x:17:1",
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
            epoch: Epoch::NONE,
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
        let only_last = Value::Array(vec![bulk("e7"), bulk("17")]);
        assert_eq!(
            parse_read_reply(only_last).unwrap(),
            ReadReply {
                epoch: Epoch::parse(b"e7").unwrap(),
                last_id: 17,
                first_kept: None,
                entries: vec![]
            }
        );
        let none = parse_read_reply(Value::Array(vec![bulk(""), bulk("0")])).unwrap();
        assert_eq!((none.epoch, none.last_id), (Epoch::NONE, 0));
        let full = Value::Array(vec![
            bulk("e7"),
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
        assert!(parse_read_reply(Value::Array(vec![bulk("e7"), bulk("x")])).is_err());
        assert!(parse_read_reply(Value::Array(vec![bulk("xyz"), bulk("1")])).is_err());
        let short = vec![bulk("e7"), bulk("1"), bulk("1"), bulk("1")];
        assert!(parse_read_reply(Value::Array(short)).is_err());
    }
}
