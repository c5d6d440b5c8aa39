//! The invariants the fuzz targets check, one function per parser.
//!
//! `tests/properties.rs` includes this file by path, so the fuzzer, the
//! property tests and the replay of `corpus/` and `regressions/` all assert
//! exactly the same things. Every function panics on a broken invariant
//! (that is what libFuzzer reports as a crash) and returns normally for any
//! input the parser may legitimately refuse.
//!
//! It uses only crates pollbridge itself depends on (`serde_json`, `toml`),
//! so the main crate's tests need nothing extra to include it.

use std::time::Instant;

use pollbridge::config::cli::from_toml_str;
use pollbridge::config::glob_match;
use pollbridge::protocol::channel::{parse_cursor, ChannelName, Since, MAX_NAME_LEN};
use pollbridge::protocol::ws_frame as frame;
use pollbridge::protocol::{Epoch, Message, Payload, MAX_JSON_DEPTH};
use pollbridge::transport::websocket::command::{self, Command};
use serde_json::Value;

// ---------------------------------------------------------------- commands

/// Every `code` a refused command may carry.
pub const COMMAND_ERROR_CODES: &[&str] = &[
    "bad_json",
    "bad_command",
    "unknown_command",
    "bad_channel",
    "bad_cursor",
];

/// What a command should parse to, computed from a `serde_json::Value`
/// with the documented rules; compared with the real parser's answer.
#[derive(Debug, PartialEq)]
pub enum Expected {
    /// Channel, cursor, and whether deltas were asked for.
    Subscribe(String, Option<Since>, bool),
    Unsubscribe(String),
    Publish(String, Value),
    Refused(&'static str),
}

impl Expected {
    fn of(parsed: &Result<Command, command::CommandError>) -> Expected {
        match parsed {
            Ok(Command::Subscribe {
                channel,
                since,
                delta,
            }) => Expected::Subscribe(channel.as_str().to_owned(), *since, *delta),
            Ok(Command::Unsubscribe { channel }) => {
                Expected::Unsubscribe(channel.as_str().to_owned())
            }
            Ok(Command::Publish { channel, payload }) => Expected::Publish(
                channel.as_str().to_owned(),
                serde_json::from_slice(&payload.to_json_bytes()).expect("a checked payload parses"),
            ),
            Err(e) => Expected::Refused(e.code),
        }
    }
}

/// The reference: a JSON object, `type` and `channel` strings (or absent /
/// null), `since` an unsigned integer or a decimal string, `data` present
/// (`null` included) for `publish`.
pub fn reference_command(object: &serde_json::Map<String, Value>) -> Expected {
    let string_or_absent = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    };
    let (Ok(kind), Ok(channel)) = (string_or_absent("type"), string_or_absent("channel")) else {
        return Expected::Refused("bad_json");
    };
    let Some(kind) = kind else {
        return Expected::Refused("bad_command");
    };
    if !matches!(kind.as_str(), "subscribe" | "unsubscribe" | "publish") {
        return Expected::Refused("unknown_command");
    }
    let Some(channel) = channel else {
        return Expected::Refused("bad_command");
    };
    if !reference_channel_ok(&channel) {
        return Expected::Refused("bad_channel");
    }
    match kind.as_str() {
        "subscribe" => {
            let since = match object.get("since") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(n) => Some(Since::plain(n)),
                    None => return Expected::Refused("bad_cursor"),
                },
                Some(Value::String(s)) => match reference_cursor(s) {
                    Some(n) => Some(n),
                    None => return Expected::Refused("bad_cursor"),
                },
                Some(_) => return Expected::Refused("bad_cursor"),
            };
            // `delta`: a boolean (or absent / null: false).
            let delta = match object.get("delta") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Expected::Refused("bad_command"),
            };
            Expected::Subscribe(channel, since, delta)
        }
        "unsubscribe" => Expected::Unsubscribe(channel),
        // `"data":null` publishes `null`, like an HTTP publish of `null`;
        // data nested deeper than every publish path allows is refused.
        _ => match object.get("data") {
            None => Expected::Refused("bad_command"),
            Some(data) if depth(data) > MAX_JSON_DEPTH => Expected::Refused("bad_json"),
            Some(data) => Expected::Publish(channel, data.clone()),
        },
    }
}

/// True when a JSON object repeats one of the five keys the parser reads
/// (serde refuses that as `bad_json`; `Value` silently keeps the last).
fn repeats_a_command_key(text: &str) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = Vec::new();
            let mut repeated = false;
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if ["type", "channel", "since", "data", "delta"].contains(&key.as_str()) {
                    repeated |= seen.contains(&key);
                    seen.push(key);
                }
            }
            Ok(repeated)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Keys).unwrap_or(false)
}

/// `command::parse` never panics, refuses with a documented code and a
/// well-formed error message, agrees with [`reference_command`] on JSON
/// objects, and what it accepts survives a canonical re-encoding.
pub fn check_command(text: &str) {
    let parsed = command::parse(text);
    match &parsed {
        Err(e) => {
            assert!(
                COMMAND_ERROR_CODES.contains(&e.code),
                "undocumented code {:?}",
                e.code
            );
            let answer: Value =
                serde_json::from_slice(&e.to_json()).expect("the error answer is JSON");
            assert_eq!(answer["type"], "error");
            assert_eq!(answer["code"], e.code);
            assert!(answer["message"].is_string());
            assert_eq!(
                answer.get("channel").and_then(Value::as_str),
                e.channel.as_deref()
            );
        }
        Ok(cmd) => {
            let canonical = match cmd {
                Command::Subscribe {
                    channel,
                    since,
                    delta,
                } => {
                    let since = since.map(|s| s.to_string());
                    serde_json::json!({"type": "subscribe", "channel": channel.as_str(), "since": since, "delta": delta})
                }
                Command::Unsubscribe { channel } => {
                    serde_json::json!({"type": "unsubscribe", "channel": channel.as_str()})
                }
                Command::Publish { channel, payload } => {
                    let data: Value = serde_json::from_slice(&payload.to_json_bytes())
                        .expect("a checked payload parses");
                    serde_json::json!({"type": "publish", "channel": channel.as_str(), "data": data})
                }
            };
            // Exact, floats included: pollbridge enables serde_json's
            // `float_roundtrip` (without it ~1 in 10 17-digit floats moved).
            let again = command::parse(&canonical.to_string());
            assert_eq!(Expected::of(&again), Expected::of(&parsed), "{canonical}");
        }
    }
    // The differential check, on the documented form: one JSON object
    // without repeated command keys.
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => {
            if !repeats_a_command_key(text) {
                assert_eq!(
                    Expected::of(&parsed),
                    reference_command(&object),
                    "input {text:?}"
                );
            }
        }
        // Any other JSON value is not a command, even one serde could read
        // as the command struct (`["subscribe","news",null,null]`).
        Ok(_) => assert_eq!(
            Expected::of(&parsed),
            Expected::Refused("bad_json"),
            "input {text:?}"
        ),
        Err(_) => {}
    }
}

// ---------------------------------------------------------------- channels and cursors

/// The documented rule: 1–128 bytes of `[A-Za-z0-9_.:@-]`.
pub fn reference_channel_ok(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
}

/// An unsigned decimal integer of at most 20 digits that fits in a `u64`.
pub fn reference_cursor(text: &str) -> Option<Since> {
    // `N` or `N-E`: 1–20 decimal digits that fit a u64, then optionally
    // `-` and 1–16 hex digits (the epoch).
    let (id, epoch) = match text.find('-') {
        Some(dash) => (&text[..dash], Some(&text[dash + 1..])),
        None => (text, None),
    };
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = id
        .bytes()
        .fold(0u128, |acc, b| acc * 10 + u128::from(b - b'0'));
    let id = u64::try_from(value).ok()?;
    let epoch = match epoch {
        None => None,
        Some(e) if !e.is_empty() && e.len() <= 16 && e.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(Epoch::parse(e.as_bytes()).expect("hex digits parse"))
        }
        Some(_) => return None,
    };
    Some(Since { id, epoch })
}

/// `ChannelName::new` agrees with the documented rule, keeps the name as
/// given, and an accepted name needs no escaping in JSON or in a path.
pub fn check_channel_name(text: &str) {
    match ChannelName::new(text) {
        Ok(name) => {
            assert!(reference_channel_ok(text), "accepted {text:?}");
            assert_eq!(name.as_str(), text);
            assert_eq!(name.to_string(), text);
            // Message::new copies the name into the envelope unescaped.
            assert_eq!(
                serde_json::to_string(text).expect("a str serialises"),
                format!("\"{text}\"")
            );
            assert_eq!(pollbridge::http::decode_segment(text), text);
        }
        Err(e) => {
            assert!(!reference_channel_ok(text), "refused {text:?}");
            assert!(!e.to_string().is_empty());
        }
    }
}

/// `parse_cursor` agrees with [`reference_cursor`]; printed ids parse back.
pub fn check_cursor(text: &str) {
    let parsed = parse_cursor(text);
    assert_eq!(parsed, reference_cursor(text), "cursor {text:?}");
    if let Some(n) = parsed {
        assert_eq!(parse_cursor(&n.to_string()), Some(n));
    }
}

/// Reference glob: the textbook recursion (`*` matches any run, possibly
/// empty), memoised so that many stars stay polynomial.
pub fn reference_glob(pattern: &[u8], name: &[u8]) -> bool {
    /// `memo[i * (name.len() + 1) + j]`: 0 unknown, 1 no match, 2 match.
    fn go(p: &[u8], n: &[u8], i: usize, j: usize, memo: &mut [u8]) -> bool {
        let slot = i * (n.len() + 1) + j;
        if memo[slot] != 0 {
            return memo[slot] == 2;
        }
        let result = match p.get(i) {
            None => j == n.len(),
            Some(b'*') => go(p, n, i + 1, j, memo) || (j < n.len() && go(p, n, i, j + 1, memo)),
            Some(&c) => n.get(j) == Some(&c) && go(p, n, i + 1, j + 1, memo),
        };
        memo[slot] = if result { 2 } else { 1 };
        result
    }
    let mut memo = vec![0u8; (pattern.len() + 1) * (name.len() + 1)];
    go(pattern, name, 0, 0, &mut memo)
}

/// `glob_match` agrees with [`reference_glob`].
pub fn check_glob(pattern: &[u8], name: &[u8]) {
    assert_eq!(
        glob_match(pattern, name),
        reference_glob(pattern, name),
        "pattern {:?} name {:?}",
        String::from_utf8_lossy(pattern),
        String::from_utf8_lossy(name)
    );
}

/// The `channel_cursor` target: the whole input as a channel name and as a
/// cursor; split at the first newline (never part of a name or pattern),
/// the two halves as a glob pattern and a name.
pub fn check_channel_cursor(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_channel_name(&text);
    check_cursor(&text);
    if let Some(cut) = data.iter().position(|&b| b == b'\n') {
        let (pattern, name) = (&data[..cut], &data[cut + 1..]);
        // Channel names are at most 128 bytes and configured patterns not
        // much longer; the reference is quadratic.
        if pattern.len() <= 256 && name.len() <= 256 {
            check_glob(pattern, name);
        }
        for part in [pattern, name] {
            let part = String::from_utf8_lossy(part);
            check_channel_name(&part);
            check_cursor(&part);
        }
    }
}

// ---------------------------------------------------------------- configuration

/// True when the text names something that reading would block on or
/// take long to read (a device, FIFO, socket or a big file). `validate()`
/// reads key and certificate files; the fuzzer must not make it read
/// `/dev/zero`.
fn names_unsafe_file(table: &toml::Table) -> bool {
    fn value(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => {
                !s.is_empty()
                    && std::fs::metadata(s)
                        .is_ok_and(|m| (!m.is_file() && !m.is_dir()) || m.len() > 1 << 20)
            }
            toml::Value::Array(items) => items.iter().any(value),
            toml::Value::Table(t) => t.values().any(value),
            _ => false,
        }
    }
    table.values().any(value)
}

/// Stands in for a Redis password in [`check_config`].
const PASSWORD_MARKER: &str = "Qz7pW3xK9vR2";

/// The password of a `redis://user:password@host` URL, as `redact` sees it.
fn redis_password(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..host_end].rfind('@')?;
    rest[..at].split_once(':').map(|(_, password)| password)
}

/// The configuration loader never panics; a refusal is a non-empty list of
/// one-line problems naming a key (the gateway prints each as one stderr
/// line) that never shows the Redis password; an accepted configuration is
/// valid and survives a round trip through TOML unchanged.
pub fn check_config(text: &str) {
    let table = text.parse::<toml::Table>().ok();
    if table.as_ref().is_some_and(names_unsafe_file) {
        return;
    }
    match from_toml_str(text) {
        Ok(config) => {
            assert_eq!(config.validate(), vec![], "accepted but invalid");
            let again = toml::to_string(&config).expect("a loaded configuration serialises");
            match from_toml_str(&again) {
                Ok(reloaded) => assert_eq!(reloaded, config, "round trip through\n{again}"),
                Err(problems) => panic!("re-reading\n{again}\nfailed: {problems:?}"),
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a reason");
            for problem in &problems {
                // The key may be empty: `"" = 1` is named as `config key ''`.
                let line = problem.to_string();
                assert!(!line.contains('\n'), "a problem spans lines: {line:?}");
            }
        }
    }
    // The Redis password never shows: the same file with the password
    // swapped for a marker that no message contains by chance must not
    // name the marker. (Looking for the input's own password instead flags
    // "passwords" such as `t be between 1 and`, which messages do contain.)
    let bus = table
        .as_ref()
        .and_then(|t| t.get("bus"))
        .and_then(toml::Value::as_str);
    if let Some(password) = bus.and_then(redis_password) {
        if !password.is_empty() && text.matches(password).count() == 1 {
            let marked = text.replacen(password, PASSWORD_MARKER, 1);
            // The marker must now be the password, as `redact` sees it (not
            // a key name, nor part of the user name: `uh:::@c` has the
            // password `::`, and replacing the first `::` makes the user
            // `uhMARKER`).
            let marked_bus = marked
                .parse::<toml::Table>()
                .ok()
                .and_then(|t| t.get("bus").and_then(|b| b.as_str().map(str::to_owned)));
            let in_bus = marked_bus.as_deref().and_then(redis_password) == Some(PASSWORD_MARKER);
            if let (true, Err(problems)) = (in_bus, from_toml_str(&marked)) {
                for problem in &problems {
                    assert!(
                        !problem.to_string().contains(PASSWORD_MARKER),
                        "the Redis password leaks: {problem}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- publish bodies and frames

/// A decoded server frame: (FIN, opcode, payload).
pub fn decode_frame(bytes: &[u8]) -> (bool, u8, &[u8]) {
    assert!(bytes.len() >= 2, "a frame has a 2-byte header");
    let (fin, rsv, opcode) = (bytes[0] & 0x80 != 0, bytes[0] & 0x70, bytes[0] & 0x0f);
    assert_eq!(rsv, 0, "no extension bits");
    assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
    let (len, header) = match bytes[1] & 0x7f {
        126 => {
            let len = u16::from_be_bytes([bytes[2], bytes[3]]) as u64;
            assert!(len >= 126, "length {len} not in its shortest form");
            (len, 4)
        }
        127 => {
            let len = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
            assert!(len > 0xffff, "length {len} not in its shortest form");
            assert_eq!(len >> 63, 0, "the most significant length bit is 0");
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    assert_eq!(bytes.len() as u64, header + len, "header length matches");
    (fin, opcode, &bytes[header as usize..])
}

/// `frame::encode` writes one final, unmasked frame whose header decodes
/// back to the opcode and length.
pub fn check_frame(opcode: u8, payload: &[u8]) {
    let encoded = frame::encode(opcode, payload);
    let (fin, decoded_opcode, decoded) = decode_frame(&encoded);
    assert!(fin);
    assert_eq!(decoded_opcode, opcode);
    assert_eq!(decoded, payload);
}

/// Builds a message around `data` and checks its three encodings: the
/// envelope is one line with `data` at its end, the SSE event has exactly
/// one `data:` line, the WebSocket frame is one text frame with the
/// envelope as UTF-8 payload.
pub fn check_message(channel: &ChannelName, id: u64, data: &[u8]) -> Message {
    let epoch = Epoch::parse(b"e1").expect("an epoch");
    let msg = Message::new(channel.clone(), epoch, id, data, Instant::now());
    assert_eq!(msg.data(), data);
    assert_eq!(msg.payload_len, data.len());
    assert!(
        !msg.envelope.iter().any(|&b| b == b'\n' || b == b'\r'),
        "an envelope holds no line break: {:?}",
        String::from_utf8_lossy(&msg.envelope)
    );
    let envelope = std::str::from_utf8(&msg.envelope).expect("the envelope is UTF-8");
    let prefix = format!("{{\"channel\":\"{channel}\",\"id\":{id},\"data\":");
    assert!(envelope.starts_with(&prefix) && envelope.ends_with('}'));

    let event = msg.sse_event();
    assert_eq!(
        &event[..],
        format!("id: {id}-e1\ndata: {envelope}\n\n").as_bytes()
    );
    let lines: Vec<&[u8]> = event.split(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), 4, "id line, data line, blank line");
    let data_lines = lines.iter().filter(|l| l.starts_with(b"data:")).count();
    assert_eq!(data_lines, 1);

    let (fin, opcode, payload) = decode_frame(msg.ws_frame());
    assert!(fin);
    assert_eq!(opcode, frame::OP_TEXT);
    assert_eq!(payload, &msg.envelope[..]);
    msg
}

/// The envelope parses as an object with exactly `channel`, `id` and
/// `data`, in that order; returns `data`.
fn envelope_data(msg: &Message, channel: &ChannelName, id: u64) -> Value {
    let envelope: Value = serde_json::from_slice(&msg.envelope).expect("the envelope is JSON");
    let object = envelope.as_object().expect("the envelope is an object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, ["channel", "id", "data"]);
    assert_eq!(object["channel"], channel.as_str());
    assert_eq!(object["id"], id);
    object["data"].clone()
}

/// Nesting depth of a JSON value (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The `publish_body` target: the bytes as a JSON body and as a text body,
/// each through `Payload`, `to_json_bytes`, `Message` and its encodings.
pub fn check_publish_body(body: &[u8]) {
    let channels = ["news", "a", "prices.eur:1@x-y_z", &"c".repeat(MAX_NAME_LEN)];
    let channel = ChannelName::new(channels[body.len() % channels.len()]).expect("valid");
    let id = match body.len() % 5 {
        0 => u64::MAX,
        1 => 1,
        _ => body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }),
    };
    let parsed = serde_json::from_slice::<Value>(body).ok();

    // The one JSON check of every publish path: exactly what parses into
    // native values (numbers within f64, no lone surrogates) and nests at
    // most MAX_JSON_DEPTH levels.
    let acceptable = parsed.as_ref().filter(|v| depth(v) <= MAX_JSON_DEPTH);
    match (Payload::json(body), acceptable) {
        (Ok(payload), Some(input)) => {
            let data = payload.to_json_bytes();
            // Minifying is idempotent: the stored data is its own payload.
            assert_eq!(Payload::json(&data).as_ref(), Ok(&payload));
            let msg = check_message(&channel, id, &data);
            assert_eq!(&envelope_data(&msg, &channel, id), input);
            let reparsed: Value = serde_json::from_slice(msg.data()).expect("data is JSON");
            assert_eq!(&reparsed, input);
        }
        (Err(_), None) => {}
        (Ok(_), None) => panic!("accepted a body that does not parse back (or is too deep)"),
        (Err(e), Some(_)) => panic!("refused a parseable JSON body: {e}"),
    }

    match Payload::text(body) {
        Ok(payload) => {
            let text = std::str::from_utf8(body).expect("a text payload is UTF-8");
            let msg = check_message(&channel, id, &payload.to_json_bytes());
            assert_eq!(
                envelope_data(&msg, &channel, id),
                Value::String(text.to_owned())
            );
        }
        Err(_) => assert!(std::str::from_utf8(body).is_err(), "refused UTF-8 text"),
    }
}

// ---------------------------------------------------------------- realtime request heads

/// Reference for `timeout=`: any float Rust reads, finite and not
/// negative, capped at a day.
pub fn reference_timeout(text: &str) -> Option<std::time::Duration> {
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && secs >= 0.0)
        .then(|| std::time::Duration::from_secs_f64(secs.min(86_400.0)))
}

/// Every error a realtime request's head may be refused with: a JSON body
/// `{"error":code,"message":…}` whose code is one of `codes`.
fn check_refusal(e: &pollbridge::protocol::error::ApiError, codes: &[&str]) {
    assert!(codes.contains(&e.code()), "unexpected code {:?}", e.code());
    assert_eq!(e.status().as_u16() / 100, 4, "a client error: {e}");
    let body: Value = serde_json::from_slice(&e.body()).expect("the error body is JSON");
    assert_eq!(body["error"], e.code());
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// The `realtime_request` target: up to three newline-separated parts, a
/// request path, its query and a `Last-Event-ID` value (none of them can
/// hold a newline on the wire), through what the realtime routes parse:
/// the endpoint under the prefix, a poll's query, an event stream's
/// cursor and a WebSocket handshake's channels.
pub fn check_realtime_request(data: &[u8]) {
    use pollbridge::http::{decode_segment, query_pairs};
    use pollbridge::transport::params::{self, Endpoint};

    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let path = parts.next().unwrap_or("");
    let query = parts.next();
    let last_event_id = parts.next();

    // Endpoints: under the prefix exactly when the path starts with it at a
    // segment boundary; a channel argument is the decoded rest.
    let prefix = "/rt";
    let routed = params::endpoint(prefix, path);
    let under = path
        .strip_prefix(prefix)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    assert_eq!(routed.is_some(), under.is_some(), "path {path:?}");
    let path_channel = match (&routed, under) {
        (Some(endpoint), Some(rest)) => {
            let rest = rest.trim_start_matches('/');
            let arg = |name: &str| {
                let raw = rest
                    .strip_prefix(name)
                    .and_then(|r| r.strip_prefix('/'))
                    .expect("the endpoint name leads the rest");
                decode_segment(raw)
            };
            match endpoint {
                Endpoint::Poll(ch) => assert_eq!(*ch, arg("poll")),
                Endpoint::Sse(ch) => assert_eq!(*ch, arg("sse")),
                Endpoint::Publish(ch) => assert_eq!(*ch, arg("publish")),
                Endpoint::WebSocket(Some(ch)) => assert_eq!(*ch, arg("ws")),
                Endpoint::WebSocket(None) => assert_eq!(rest, "ws"),
                _ => {}
            }
            match endpoint {
                Endpoint::WebSocket(ch) => ch.clone(),
                _ => None,
            }
        }
        _ => None,
    };

    // A poll's query, against a walk of the pairs with the reference
    // parsers: the first bad value refuses, later repeats win.
    let (default, max) = (
        std::time::Duration::from_secs(25),
        std::time::Duration::from_secs(120),
    );
    let mut expected = Ok((None, default));
    for (key, value) in query_pairs(query) {
        let Ok((since, timeout)) = expected else {
            break;
        };
        expected = match &*key {
            "since" => reference_cursor(&value)
                .map(|n| (Some(n), timeout))
                .ok_or("bad_cursor"),
            "timeout" => reference_timeout(&value)
                .map(|t| (since, t))
                .ok_or("bad_timeout"),
            _ => Ok((since, timeout)),
        };
    }
    match (params::poll_params(query, default, max), expected) {
        (Ok(p), Ok((since, timeout))) => {
            assert_eq!(p.since, since, "query {query:?}");
            assert_eq!(p.timeout, timeout.min(max), "query {query:?}");
            assert!(p.client_id.as_ref().is_none_or(|c| c.len() <= 64));
        }
        (Err(e), Err(code)) => {
            check_refusal(&e, &["bad_cursor", "bad_timeout"]);
            assert_eq!(e.code(), code, "query {query:?}");
        }
        (got, want) => panic!("query {query:?}: got {got:?}, want {want:?}"),
    }

    // An event stream's cursor: Last-Event-ID (trimmed) over `since`.
    let header = last_event_id.and_then(|v| http::HeaderValue::from_str(v).ok());
    let from_query = query_pairs(query).find(|(k, _)| k == "since");
    let expected = match (&header, &from_query) {
        (Some(h), _) => h
            .to_str()
            .ok()
            .and_then(|s| reference_cursor(s.trim()))
            .map(Some)
            .ok_or(()),
        (None, Some((_, v))) => reference_cursor(v).map(Some).ok_or(()),
        (None, None) => Ok(None),
    };
    match params::sse_since(header.as_ref(), query) {
        Ok(since) => assert_eq!(Ok(since), expected),
        Err(e) => {
            check_refusal(&e, &["bad_cursor"]);
            assert!(expected.is_err());
        }
    }

    // A WebSocket handshake's channels.
    let max_channels = 4;
    let named: Vec<String> = path_channel
        .iter()
        .cloned()
        .chain(
            query_pairs(query)
                .filter(|(k, _)| k == "channel")
                .map(|(_, v)| v.into_owned()),
        )
        .collect();
    match params::ws_params(path_channel, query, max_channels) {
        Ok(p) => {
            let mut distinct: Vec<&str> = Vec::new();
            for name in &named {
                assert!(reference_channel_ok(name), "accepted {name:?}");
                if !distinct.contains(&name.as_str()) {
                    distinct.push(name);
                }
            }
            let got: Vec<&str> = p.channels.iter().map(|c| c.as_str()).collect();
            assert_eq!(got, distinct, "in order, without repeats");
            assert!(got.len() <= max_channels);
            let since = query_pairs(query)
                .find(|(k, _)| k == "since")
                .map(|(_, v)| reference_cursor(&v).expect("accepted since"));
            assert_eq!(p.since, since);
            if since.is_some() {
                assert_eq!(got.len(), 1, "since needs exactly one channel");
            }
        }
        Err(e) => {
            check_refusal(
                &e,
                &[
                    "bad_channel",
                    "too_many_subscriptions",
                    "bad_cursor",
                    "bad_request",
                ],
            );
            match e.code() {
                "bad_channel" => assert!(named.iter().any(|n| !reference_channel_ok(n))),
                "too_many_subscriptions" => {
                    let mut distinct: Vec<&str> = Vec::new();
                    for n in &named {
                        if !distinct.contains(&n.as_str()) {
                            distinct.push(n);
                        }
                    }
                    assert!(distinct.len() > max_channels);
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------- raw request heads (lean path)

/// The prefix and head limits the `request_head` target runs with: the
/// default head limit, and a small one that inputs reach.
pub const HEAD_PREFIX: &str = "/rt";
pub const HEAD_LIMITS: [usize; 2] = [16 * 1024, 256];

/// RFC 9110 `tchar`: what a header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Header lines as (lower-cased name, value) pairs.
pub type HeaderLines = Vec<(String, Vec<u8>)>;

/// The reference reading of a head the lean path took, split by hand
/// (independent of `httparse`): any empty lines, `GET SP target SP HTTP/1.1 CRLF`, then
/// `name ":" OWS value OWS CRLF` lines (names of `tchar`s, values without
/// control characters but HTAB), then `CRLF`. Returns the target and the
/// (lower-cased name, value) pairs; `None` when the bytes are not that.
pub fn reference_head(head: &[u8]) -> Option<(String, HeaderLines)> {
    // Every line (the empty one that ends the head too) ends with CRLF.
    let mut body = head.strip_suffix(b"\r\n")?;
    // Empty lines before the request line are ignored (RFC 9112 §2.2).
    while let Some(rest) = body.strip_prefix(b"\r\n") {
        body = rest;
    }
    let mut lines = body
        .split_inclusive(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r\n"));
    let request_line = lines.next()??;
    let rest = request_line.strip_prefix(b"GET ")?;
    let target = rest.strip_suffix(b" HTTP/1.1")?;
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        let line = line?;
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return None;
        }
        let ows = |b: &u8| *b == b' ' || *b == b'\t';
        let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
        let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
        let value = &value[start..end];
        if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return None;
        }
        headers.push((
            String::from_utf8(name.to_ascii_lowercase()).ok()?,
            value.to_vec(),
        ));
    }
    Some((String::from_utf8(target.to_vec()).ok()?, headers))
}

/// Reference for the `Host` check (RFC 3986 `uri-host [ ":" port ]`, as
/// docs/security.md states it): a bracketed IPv6 address or a non-empty
/// name of unreserved / `%XX` / sub-delimiter characters, then an optional
/// port of 1–5 digits up to 65535.
pub fn reference_host_ok(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, tail)) if addr.parse::<std::net::Ipv6Addr>().is_ok() => match tail {
                "" => (text, None),
                _ => match tail.strip_prefix(':') {
                    Some(port) => (&text[..text.len() - tail.len()], Some(port)),
                    None => return false,
                },
            },
            _ => return false,
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let name_ok = host.starts_with('[') || {
        let bytes = host.as_bytes();
        let mut i = 0;
        let mut ok = !bytes.is_empty();
        while ok && i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                ok = bytes.len() > i + 2
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit();
                i += 3;
            } else {
                ok = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
                i += 1;
            }
        }
        ok
    };
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65535)
    });
    name_ok && port_ok
}

/// The `request_head` target: raw bytes as they arrive on a cleartext
/// public connection, through what a realtime route parses of them — the
/// lean path's head parser (`server::lean::head::decide`), the `Host`
/// check every request passes (`net::host::check`), then the route's
/// query and `Last-Event-ID` ([`check_realtime_request`]).
///
/// A head the lean path takes is exactly its reference reading: a bodiless
/// `GET` over HTTP/1.1 of a poll or SSE endpoint, one valid-framed `Host`,
/// none of the headers that would change framing, the same target and
/// headers; the bytes after it do not change the decision. Anything else
/// is handed over (hyper answers it, `tests/lean_fuzz.rs`) or waits for
/// more, but never past the head limit.
pub fn check_request_head(data: &[u8]) {
    use http::header;
    use pollbridge::server::lean::head::{decide, Decision, MAX_HEADERS};
    use pollbridge::transport::params::{endpoint, Endpoint};

    for max in HEAD_LIMITS {
        let head = match decide(data, HEAD_PREFIX, max) {
            Decision::Lean(head) => head,
            Decision::NeedMore => {
                assert!(data.len() < max, "waits for more past the head limit");
                continue;
            }
            Decision::HandOver => continue,
        };
        let raw = &data[..head.len];
        assert!(head.len <= max, "a head of {} bytes over {max}", head.len);
        let (target, mut lines) = reference_head(raw)
            .unwrap_or_else(|| panic!("took a head the reference refuses: {raw:?}"));
        // A fragment is dropped, as hyper drops it.
        let sent = target.split('#').next().unwrap_or("");
        assert_eq!(head.uri.to_string(), sent, "the target as sent");
        assert!(matches!(
            endpoint(HEAD_PREFIX, head.uri.path()),
            Some(Endpoint::Poll(_) | Endpoint::Sse(_))
        ));
        let mut seen: HeaderLines = head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        lines.sort();
        seen.sort();
        assert_eq!(seen, lines, "the headers as sent");
        assert!(seen.len() <= MAX_HEADERS);
        let count = |name: &header::HeaderName| head.headers.get_all(name).iter().count();
        assert_eq!(count(&header::HOST), 1, "exactly one Host");
        for framing in [
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::EXPECT,
            header::TE,
        ] {
            assert_eq!(count(&framing), 0, "{framing} taken");
        }
        assert!(head
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v == "0"));
        assert!(count(&header::CONTENT_LENGTH) <= 1);
        let close = head
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"));
        assert_eq!(head.close, close, "Connection: close");

        // What follows the head (a pipelined request, or nothing yet)
        // does not change what was read.
        for tail in [&b""[..], b"GET /rt/poll/x HTTP/1.1\r\n", b"\r\n\r\n\0"] {
            let mut more = raw.to_vec();
            more.extend_from_slice(tail);
            match decide(&more, HEAD_PREFIX, max) {
                Decision::Lean(again) => {
                    assert_eq!((again.len, &again.uri), (head.len, &head.uri));
                    assert_eq!(again.headers, head.headers);
                }
                other => panic!("{raw:?} + {tail:?}: {other:?}"),
            }
        }

        // The Host check every request passes, against its reference.
        let host = head.headers.get(header::HOST).expect("one Host");
        match pollbridge::net::host::check(http::Version::HTTP_11, &head.headers) {
            Ok(Some(checked)) => {
                assert_eq!(checked, host);
                assert!(reference_host_ok(host.as_bytes()), "took Host {host:?}");
            }
            Ok(None) => panic!("an HTTP/1.1 Host passed as absent"),
            Err(e) => {
                assert!(!reference_host_ok(host.as_bytes()), "refused Host {host:?}");
                check_refusal(&e, &["bad_request"]);
            }
        }

        // The route's own parsing of the query and Last-Event-ID.
        let mut parts = head.uri.path().to_owned();
        let last_event_id = head
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok());
        if head.uri.query().is_some() || last_event_id.is_some() {
            parts.push('\n');
            parts.push_str(head.uri.query().unwrap_or(""));
        }
        if let Some(id) = last_event_id {
            parts.push('\n');
            parts.push_str(id);
        }
        check_realtime_request(parts.as_bytes());
    }
}
