//! Property tests of the parsers, with the same invariants as the fuzz
//! targets: `fuzz/src/lib.rs` is included here, so `cargo test` checks
//! what `cargo fuzz run` checks, on generated inputs (proptest, 256 cases
//! per property) and on every file of the fuzzers' seed corpora
//! (`fuzz/corpus/<target>/`) and crash regressions
//! (`fuzz/regressions/<target>/`).
//!
//! Pure functions only, no sockets: the whole file runs in a few seconds.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod invariants;

use std::path::Path;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use pollbridge::auth::Credentials;
use proptest::prelude::*;
use serde_json::Value;

// ---------------------------------------------------------------- strategies

/// Any JSON value (finite floats, any Unicode strings), up to 4 levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// JSON text of a value: compact, pretty, or pretty with CR, tab and
/// space around the tokens (serde_json writes a raw newline only between
/// tokens, never inside a string).
fn json_text(value: &Value, style: u8) -> String {
    match style % 3 {
        0 => value.to_string(),
        1 => serde_json::to_string_pretty(value).expect("a Value serialises"),
        _ => {
            let pretty = serde_json::to_string_pretty(value).expect("a Value serialises");
            format!(" \t{}\r\n", pretty.replace('\n', "\r\n\t "))
        }
    }
}

/// A valid channel name.
fn channel_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:@-]{1,128}"
}

/// A command member value: absent (`None`) or some JSON.
fn member(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![1 => Just(None), 4 => value.prop_map(Some)]
}

/// Command objects near the documented shape: right and wrong types,
/// names, cursors and data, in any member order.
fn command_text() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        3 => Just(Value::from("subscribe")),
        3 => Just(Value::from("unsubscribe")),
        3 => Just(Value::from("publish")),
        1 => Just(Value::Null),
        1 => Just(Value::from(1)),
        1 => "[a-z]{0,12}".prop_map(Value::from),
    ];
    let channel = prop_oneof![
        4 => channel_name().prop_map(Value::from),
        1 => ".{0,140}".prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
    ];
    let since = prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[0-9]{1,22}".prop_map(Value::from),
        "[-+ 0-9a-z]{0,6}".prop_map(Value::from),
        Just(Value::Null),
        Just(Value::Bool(true)),
    ];
    (
        member(kind),
        member(channel),
        member(since),
        member(json_value()),
        prop::collection::vec(("[a-z]{1,6}", json_value()), 0..2),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(kind, channel, since, data, extra, style, reverse)| {
            let mut members: Vec<(String, Value)> = extra;
            for (key, value) in [
                ("type", kind),
                ("channel", channel),
                ("since", since),
                ("data", data),
            ] {
                if let Some(value) = value {
                    members.retain(|(k, _)| k != key);
                    members.push((key.to_owned(), value));
                }
            }
            if reverse {
                members.reverse();
            }
            json_text(&Value::Object(members.into_iter().collect()), style)
        })
}

/// One `key = value` line of a configuration section, valid or not.
fn config_entry() -> impl Strategy<Value = (&'static str, String)> {
    let duration = prop_oneof![
        Just("\"0s\""),
        Just("\"1ms\""),
        Just("\"30s\""),
        Just("\"5m\""),
        Just("\"1h 30m\""),
        Just("\"5 parsecs\""),
        Just("\"\""),
        Just("\"18446744073709551615s\""),
        Just("30"),
    ]
    .prop_map(str::to_owned);
    let integer = prop_oneof![
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("8192".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-1".to_owned()),
        Just("\"64\"".to_owned()),
        (1u32..100_000).prop_map(|n| n.to_string()),
    ];
    let boolean = prop_oneof![Just("true"), Just("false"), Just("\"yes\"")].prop_map(str::to_owned);
    let address = prop_oneof![
        Just("\"127.0.0.1:0\""),
        Just("\"[::1]:8080\""),
        Just("\"0.0.0.0:65536\""),
        Just("\"nowhere\""),
    ]
    .prop_map(str::to_owned);
    let text = prop_oneof![
        Just("\"http://127.0.0.1:3000\"".to_owned()),
        Just("\"redis://user:pw123456@10.0.0.5:6379/2\"".to_owned()),
        Just("\"rediss://:pw654321@cache:notaport\"".to_owned()),
        Just("\"memory\"".to_owned()),
        Just("\"/rt\"".to_owned()),
        Just("\"*\"".to_owned()),
        Just("[\"https://a.test\", \"*\", \"10.0.0.0/8\"]".to_owned()),
        "[ -~]{0,16}".prop_map(|s| toml::Value::String(s).to_string()),
    ];
    prop_oneof![
        (
            prop::sample::select(vec![
                "history.max_age",
                "history.idle_channel_ttl",
                "limits.header_read_timeout",
                "limits.body_read_timeout",
                "websocket.ping_interval",
                "websocket.idle_timeout",
                "websocket.write_timeout",
                "longpoll.default_timeout",
                "longpoll.max_timeout",
                "sse.keepalive_interval",
                "sse.retry",
                "proxy.connect_timeout",
                "proxy.timeout",
                "redis.command_timeout",
                "redis.reconnect_min_delay",
                "redis.reconnect_max_delay",
                "shutdown.drain_timeout",
                "auth.auth_cache_ttl",
                "migration.legacy_window",
            ]),
            duration
        ),
        (
            prop::sample::select(vec![
                "history.size",
                "limits.max_connections",
                "limits.max_message_bytes",
                "limits.queue_length",
                "limits.max_subscriptions_per_connection",
                "limits.max_header_bytes",
                "limits.max_connections_per_ip",
                "longpoll.max_messages",
                "proxy.pool_max_idle",
                "redis.pool_size",
            ]),
            integer
        ),
        (
            prop::sample::select(vec![
                "websocket.enabled",
                "redis.cluster",
                "auth.require_origin",
                "demo.enabled",
                "demo.public_stats",
                "conformance_echo",
            ]),
            boolean
        ),
        (
            prop::sample::select(vec!["listen", "admin_listen"]),
            address
        ),
        (
            prop::sample::select(vec![
                "upstream",
                "bus",
                "prefix",
                "log_level",
                "redis.pubsub",
                "redis.key_prefix",
                "redis.cluster_nodes",
                "longpoll.cors_origins",
                "limits.trusted_proxies",
                "auth.allowed_origins",
                "auth.auth_url",
                "auth.jwt_secret",
                "publish.keys",
                "demo.channel",
                "no_such_key",
                "limits.no_such_key",
            ]),
            text
        ),
    ]
}

/// `[[channels]]` and `[[bridge]]` entries, valid or not.
fn config_array_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop_oneof![Just("chat.*".to_owned()), "[a-z*. ]{0,10}"],
            prop::sample::select(vec!["stream", "state", "bursty"]),
            any::<bool>(),
            prop::sample::select(vec!["public", "token", "backend"]),
            prop::option::of(prop::sample::select(vec!["100ms", "0s", "soon"])),
        )
            .prop_map(|(pattern, mode, publish, auth, conflate)| {
                let mut entry = format!(
                    "[[channels]]\npattern = {}\nmode = \"{mode}\"\nallow_client_publish = {publish}\nauth = \"{auth}\"\n",
                    toml::Value::String(pattern)
                );
                if let Some(c) = conflate {
                    entry += &format!("conflate_interval = \"{c}\"\n");
                }
                entry
            }),
        (
            prop::sample::select(vec!["/api/scores", "/rt/x", "api", "/a?b"]),
            prop_oneof![channel_name(), Just("bad name".to_owned())],
            prop::sample::select(vec!["1s", "1ms", "nope"]),
            prop::option::of(prop::sample::select(vec!["Cookie", "Bad Header"])),
        )
            .prop_map(|(path, channel, interval, vary_by)| {
                let mut entry = format!(
                    "[[bridge]]\npath = \"{path}\"\nchannel = {}\ninterval = \"{interval}\"\n",
                    toml::Value::String(channel)
                );
                if let Some(v) = vary_by {
                    entry += &format!("vary_by = \"{v}\"\n");
                }
                entry
            }),
    ]
}

/// A configuration file from a few entries, grouped into their sections.
fn config_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(config_entry(), 0..8),
        prop::collection::vec(config_array_entry(), 0..3),
    )
        .prop_map(|(entries, arrays)| {
            let mut top = String::new();
            let mut sections: Vec<(&str, String)> = Vec::new();
            for (key, value) in entries {
                match key.split_once('.') {
                    None => top += &format!("{key} = {value}\n"),
                    Some((section, key)) => {
                        let line = format!("{key} = {value}\n");
                        match sections.iter_mut().find(|(s, _)| *s == section) {
                            Some((_, body)) => *body += &line,
                            None => sections.push((section, line)),
                        }
                    }
                }
            }
            for (section, body) in sections {
                top += &format!("[{section}]\n{body}");
            }
            for entry in arrays {
                top += &entry;
            }
            top
        })
}

// ---------------------------------------------------------------- properties

proptest! {
    #[test]
    fn command_parser_on_commands(text in command_text()) {
        invariants::check_command(&text);
    }

    #[test]
    fn command_parser_on_any_text(text in ".{0,64}") {
        invariants::check_command(&text);
    }

    #[test]
    fn valid_channel_names_are_accepted(name in channel_name()) {
        prop_assert!(pollbridge::protocol::channel::ChannelName::new(&name).is_ok());
        invariants::check_channel_name(&name);
    }

    #[test]
    fn any_text_as_channel_name_and_cursor(text in prop_oneof![
        ".{0,140}",
        "[A-Za-z0-9_.:@ /%é-]{0,130}",
        "[0-9]{0,24}",
        "[-+ 0-9]{0,6}",
    ]) {
        invariants::check_channel_name(&text);
        invariants::check_cursor(&text);
    }

    #[test]
    fn printed_ids_are_cursors(id in any::<u64>()) {
        let plain = pollbridge::protocol::channel::Since::plain(id);
        prop_assert_eq!(pollbridge::protocol::channel::parse_cursor(&id.to_string()), Some(plain));
        let epoch = pollbridge::protocol::Epoch::random();
        let with_epoch = pollbridge::protocol::channel::Since::at(id, epoch);
        prop_assert_eq!(pollbridge::protocol::channel::parse_cursor(&format!("{id}-{epoch}")), Some(with_epoch));
    }

    #[test]
    fn glob_match_agrees_with_the_reference(
        pattern in "[ab*.]{0,12}",
        name in "[ab.]{0,16}",
    ) {
        invariants::check_glob(pattern.as_bytes(), name.as_bytes());
    }

    #[test]
    fn glob_match_on_channel_names(pattern in "[a-c*]{0,10}", name in channel_name()) {
        invariants::check_glob(pattern.as_bytes(), name.as_bytes());
    }

    #[test]
    fn config_loader_on_generated_files(text in config_text()) {
        invariants::check_config(&text);
    }

    #[test]
    fn config_loader_on_any_text(text in "[ -~\n]{0,80}") {
        invariants::check_config(&text);
    }

    #[test]
    fn publish_json_bodies(value in json_value(), style in any::<u8>()) {
        invariants::check_publish_body(json_text(&value, style).as_bytes());
    }

    #[test]
    fn publish_any_bodies(body in prop::collection::vec(any::<u8>(), 0..64)) {
        invariants::check_publish_body(&body);
    }

    #[test]
    fn publish_text_bodies(text in ".{0,64}") {
        invariants::check_publish_body(text.as_bytes());
    }

    #[test]
    fn realtime_request_heads(text in realtime_request_text()) {
        invariants::check_realtime_request(text.as_bytes());
    }

    #[test]
    fn realtime_request_any_text(text in "[ -~\n]{0,64}") {
        invariants::check_realtime_request(text.as_bytes());
    }

    #[test]
    fn frame_headers_decode_back(
        opcode in 0u8..16,
        len in prop_oneof![0usize..300, 65_400usize..65_700, Just(70_000usize)],
        byte in any::<u8>(),
    ) {
        invariants::check_frame(opcode, &vec![byte; len]);
    }

    #[test]
    fn credentials_never_panic_and_keep_their_order(
        headers in prop::collection::vec(
            (
                prop::sample::select(vec!["authorization", "cookie", "x-other"]),
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            0..4,
        ),
        query in prop::option::of(".{0,40}"),
        cookie_name in "[ -~]{0,12}",
        token in "[A-Za-z0-9._-]{1,20}",
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        let _ = Credentials::from_request(&map, query.as_deref(), &cookie_name);

        // A `?token=` beats `Authorization: Bearer`, which beats the cookie.
        let mut map = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer  {token}x ")).expect("ASCII");
        map.insert(http::header::AUTHORIZATION, bearer);
        let cookie = HeaderValue::from_str(&format!("a=b; tok={token}y")).expect("ASCII");
        map.insert(http::header::COOKIE, cookie);
        let query = format!("token={token}z");
        let from = |q: Option<&str>, m: &HeaderMap| Credentials::from_request(m, q, "tok").token;
        prop_assert_eq!(from(Some(&query), &map), Some(format!("{token}z")));
        prop_assert_eq!(from(None, &map), Some(format!("{token}x")));
        map.remove(http::header::AUTHORIZATION);
        prop_assert_eq!(from(None, &map), Some(format!("{token}y")));
    }
}

/// A realtime request head near the real shapes: a path under `/rt` (or
/// just beside it), a query of the parameters the routes read with right
/// and wrong values, and a Last-Event-ID, joined by newlines.
fn realtime_request_text() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        (
            prop_oneof![
                Just("/rt/poll/"),
                Just("/rt/sse/"),
                Just("/rt/ws/"),
                Just("/rt/publish/"),
                Just("/rt//ws/"),
                Just("/rtx/poll/"),
            ],
            prop_oneof![channel_name(), "[a-z%0-9/ ]{0,12}"]
        )
            .prop_map(|(p, c)| format!("{p}{c}")),
        prop_oneof![
            Just("/rt".to_string()),
            Just("/rt/ws".to_string()),
            Just("/rt/demo/".to_string()),
            "/[ -~]{0,16}",
        ],
    ];
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{0,24}",
        "-?[0-9]{0,3}(\\.[0-9]{0,3})?(e-?[0-9]{1,3})?",
        Just("inf".to_string()),
        Just("NaN".to_string()),
        channel_name(),
        "[ -~]{0,8}",
    ];
    let pair = (
        prop_oneof![
            Just("since"),
            Just("timeout"),
            Just("channel"),
            Just("cid"),
            Just("fallback"),
            Just("x"),
        ],
        value,
    )
        .prop_map(|(k, v)| format!("{k}={}", v.replace('&', "%26")));
    let query = prop::collection::vec(pair, 0..7).prop_map(|pairs| pairs.join("&"));
    let last_event_id = prop_oneof![
        Just(String::new()),
        any::<u64>().prop_map(|n| format!(" {n} ")),
        "[ -~]{0,8}",
    ];
    (path, query, proptest::option::of(last_event_id)).prop_map(|(p, q, id)| match id {
        Some(id) => format!("{p}\n{q}\n{id}"),
        None => format!("{p}\n{q}"),
    })
}

/// A raw request head near the lean path's edge: a request line of the
/// realtime routes (or just beside them), headers that matter for framing
/// and for the routes (`Host`, `Connection`, `Last-Event-ID`…) with right
/// and wrong values, then a few bytes overwritten or cut off.
fn request_head_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = (
        prop_oneof![
            8 => Just("GET"),
            1 => Just("HEAD"),
            1 => Just("get"),
        ],
        prop_oneof![
            4 => (
                prop_oneof![Just("/rt/poll/"), Just("/rt/sse/")],
                channel_name(),
                "(\\?((since|timeout|x)=[0-9a-z.-]{0,6}&?){0,3})?",
            )
                .prop_map(|(p, c, q)| format!("{p}{c}{q}")),
            2 => realtime_request_text().prop_map(|t| {
                let mut parts = t.splitn(3, '\n');
                let path = parts.next().unwrap_or("").replace(' ', "%20");
                match parts.next().filter(|q| !q.is_empty()) {
                    Some(q) => format!("{path}?{}", q.replace(' ', "+")),
                    None => path,
                }
            }),
            1 => "/rt/(poll|sse)/[ -~]{0,10}",
        ],
        prop_oneof![8 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0"), 1 => Just("HTTP/2.0")],
    )
        .prop_map(|(m, t, v)| format!("{m} {t} {v}"));
    let name = prop_oneof![
        1 => Just("Host"),
        2 => Just("Connection"),
        3 => Just("Last-Event-ID"),
        3 => Just("Accept"),
        2 => Just("cookie"),
        1 => Just("Content-Length"),
        1 => Just("Transfer-Encoding"),
        1 => Just("Upgrade"),
        1 => Just("X y"),
    ];
    let value = prop_oneof![
        Just("app.test".to_string()),
        Just("[::1]:8080".to_string()),
        Just("user@h".to_string()),
        Just("a b".to_string()),
        Just("evil/path?x".to_string()),
        Just("close".to_string()),
        Just("keep-alive, Close".to_string()),
        Just("0".to_string()),
        Just("chunked".to_string()),
        any::<u64>().prop_map(|n| format!(" {n} ")),
        "[ -~\t]{0,12}",
    ];
    let sep = || prop_oneof![4 => Just(": "), 1 => Just(":"), 1 => Just(" : "), 1 => Just(":\t")];
    let header = (name, sep(), value).prop_map(|(n, s, v)| format!("{n}{s}{v}\r\n"));
    let host_value = prop_oneof![
        4 => Just("app.test".to_string()),
        1 => Just("[::1]:8080".to_string()),
        1 => Just("127.0.0.1:65536".to_string()),
        1 => Just("user@h".to_string()),
        1 => Just("a b".to_string()),
        1 => Just("evil/path?x".to_string()),
        1 => Just("h:".to_string()),
        1 => Just("%41%zz".to_string()),
        2 => "[ -~]{0,12}",
    ];
    let host = prop::option::weighted(0.9, (sep(), host_value))
        .prop_map(|h| h.map_or(String::new(), |(s, v)| format!("Host{s}{v}\r\n")));
    let head = (
        prop_oneof![9 => Just(""), 1 => Just("\r\n")],
        line,
        host,
        prop::collection::vec(header, 0..5),
    )
        .prop_map(|(lead, line, host, headers)| {
            format!("{lead}{line}\r\n{host}{}\r\n", headers.concat())
        });
    let edits = prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..3),
    ];
    let cut = prop::option::weighted(0.2, any::<prop::sample::Index>());
    (head, edits, cut).prop_map(|(head, edits, cut)| {
        let mut bytes = head.into_bytes();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn request_heads_of_the_realtime_routes(bytes in request_head_bytes()) {
        invariants::check_request_head(&bytes);
    }

    #[test]
    fn request_head_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        invariants::check_request_head(&bytes);
    }
}

// ---------------------------------------------------------------- corpora and regressions

/// Runs `check` on every file under `fuzz/{corpus,regressions}/<target>/`;
/// returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("readable dir").path()).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.is_file()) {
            let data = std::fs::read(path).expect("readable input");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its invariants", path.display());
            count += 1;
        }
    }
    count
}

/// The text targets skip inputs that are not UTF-8, as the fuzzers do.
fn command_bytes(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        invariants::check_command(text);
    }
}

fn config_bytes(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        invariants::check_config(text);
    }
}

#[test]
fn fuzz_inputs_replay() {
    let seen = [
        replay("command_parser", command_bytes),
        replay("channel_cursor", invariants::check_channel_cursor),
        replay("config_loader", config_bytes),
        replay("publish_body", invariants::check_publish_body),
        replay("realtime_request", invariants::check_realtime_request),
        replay("request_head", invariants::check_request_head),
    ];
    assert!(
        seen.iter().all(|&n| n > 0),
        "every target has seeds: {seen:?}"
    );
}

/// Floats published by a client (WebSocket `publish`, the batch
/// `POST /publish`) come back with the digits they were sent with: every
/// publish path keeps the payload's text (checked, minified), never a
/// re-encoded `f64` (`0.9856906946328695` once came back as
/// `0.9856906946328696`).
#[test]
fn client_published_floats_round_trip_exactly() {
    use pollbridge::transport::websocket::command::{parse, Command};
    for sent in ["0.9856906946328695", "1.50", "1E2", "-0.0"] {
        let text = format!(r#"{{"type":"publish","channel":"a","data":{sent}}}"#);
        match parse(&text) {
            Ok(Command::Publish { payload, .. }) => {
                assert_eq!(&payload.to_json_bytes()[..], sent.as_bytes())
            }
            other => panic!("{sent}: {other:?}"),
        }
    }
}
