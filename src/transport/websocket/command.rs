//! Client-to-server JSON commands on a WebSocket.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::channel::{parse_cursor, ChannelName, Since};
use crate::protocol::{Payload, PayloadError};

/// A command a client may send as a text frame.
#[derive(Debug)]
pub enum Command {
    Subscribe {
        channel: ChannelName,
        since: Option<Since>,
        /// `"delta":true`: later values of a `state` channel as merge
        /// patches against the previous one (see `transport::delta`).
        delta: bool,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    /// `data`, already through the check every publish path shares.
    Publish {
        channel: ChannelName,
        payload: Payload,
    },
}

/// A refused command: answered with `{"type":"error",…}`, connection kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub code: &'static str,
    pub message: String,
    pub channel: Option<String>,
    /// For refusals by a rate limit: when the client may try again.
    pub retry_after_ms: Option<u64>,
}

impl CommandError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        CommandError {
            code,
            message: message.into(),
            channel: None,
            retry_after_ms: None,
        }
    }

    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub fn on(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_string());
        self
    }

    /// `{"type":"error","code":…,"message":…[,"channel":…][,"retry_after_ms":…]}`
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::json!({
            "type": "error",
            "code": self.code,
            "message": self.message,
        });
        if let Some(ch) = &self.channel {
            v["channel"] = serde_json::Value::String(ch.clone());
        }
        if let Some(ms) = self.retry_after_ms {
            v["retry_after_ms"] = ms.into();
        }
        serde_json::to_vec(&v).expect("json! values serialise")
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<String>,
    channel: Option<String>,
    since: Option<serde_json::Value>,
    delta: Option<serde_json::Value>,
    /// `Some(Null)` for `"data":null` (a payload like any other, as in an
    /// HTTP publish of `null`); `None` only when the key is absent.
    /// Kept as the client's text, so the payload is checked by the same
    /// function as an HTTP publish body ([`Payload::json`]).
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Parses one text message.
pub fn parse(text: &str) -> Result<Command, CommandError> {
    // serde would also read a struct from a JSON array (`["subscribe","a"]`);
    // the protocol has objects only.
    if !text.trim_start().starts_with('{') {
        return Err(CommandError::new(
            "bad_json",
            "not a JSON command object: a command is an object like {\"type\":\"subscribe\",\"channel\":\"news\"}",
        ));
    }
    let raw: Raw = serde_json::from_str(text)
        .map_err(|e| CommandError::new("bad_json", format!("not a JSON command object: {e}")))?;
    let kind = raw
        .kind
        .ok_or_else(|| CommandError::new("bad_command", "a command needs a \"type\""))?;
    let channel = || -> Result<ChannelName, CommandError> {
        let name = raw.channel.as_deref().ok_or_else(|| {
            CommandError::new("bad_command", format!("\"{kind}\" needs a \"channel\""))
        })?;
        ChannelName::new(name).map_err(|e| CommandError::new("bad_channel", e.to_string()).on(name))
    };
    match kind.as_str() {
        "subscribe" => {
            let channel = channel()?;
            let bad_cursor = || {
                CommandError::new(
                    "bad_cursor",
                    "\"since\" must be an unsigned integer id or an \"N-E\" cursor",
                )
                .on(channel.as_str())
            };
            let since = match &raw.since {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Number(n)) => {
                    Some(Since::plain(n.as_u64().ok_or_else(bad_cursor)?))
                }
                Some(serde_json::Value::String(s)) => Some(parse_cursor(s).ok_or_else(bad_cursor)?),
                Some(_) => return Err(bad_cursor()),
            };
            let delta = match raw.delta {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => b,
                Some(_) => {
                    return Err(
                        CommandError::new("bad_command", "\"delta\" must be true or false")
                            .on(channel.as_str()),
                    )
                }
            };
            Ok(Command::Subscribe {
                channel,
                since,
                delta,
            })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            channel: channel()?,
        }),
        "publish" => {
            let channel = channel()?;
            let data = raw.data.ok_or_else(|| {
                CommandError::new("bad_command", "\"publish\" needs \"data\"").on(channel.as_str())
            })?;
            let payload = Payload::json(data.get().as_bytes()).map_err(|e| {
                let why = match e {
                    PayloadError::BadJson(why) => why,
                    PayloadError::NotUtf8 => "is not UTF-8".into(),
                };
                CommandError::new("bad_json", format!("\"data\" is refused: {why}"))
                    .on(channel.as_str())
            })?;
            Ok(Command::Publish { channel, payload })
        }
        other => Err(CommandError::new(
            "unknown_command",
            format!("unknown command type {other:?}; expected subscribe, unsubscribe or publish"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert!(matches!(
            parse(r#"{"type":"subscribe","channel":"a","since":7}"#),
            Ok(Command::Subscribe {
                since: Some(Since { id: 7, epoch: None }),
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"type":"subscribe","channel":"a","since":"7"}"#),
            Ok(Command::Subscribe {
                since: Some(Since { id: 7, epoch: None }),
                ..
            })
        ));
        match parse(r#"{"type":"subscribe","channel":"a","since":"7-1f"}"#) {
            Ok(Command::Subscribe { since: Some(s), .. }) => {
                assert_eq!(s.id, 7);
                assert_eq!(s.epoch, crate::protocol::Epoch::parse(b"1f"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"unsubscribe","channel":"a"}"#),
            Ok(Command::Unsubscribe { .. })
        ));
        assert!(matches!(
            parse(r#"{"type":"publish","channel":"a","data":{"x":1}}"#),
            Ok(Command::Publish { .. })
        ));
    }

    #[test]
    fn subscribe_may_ask_for_deltas() {
        assert!(matches!(
            parse(r#"{"type":"subscribe","channel":"a","delta":true}"#),
            Ok(Command::Subscribe { delta: true, .. })
        ));
        assert!(matches!(
            parse(r#"{"type":"subscribe","channel":"a"}"#),
            Ok(Command::Subscribe { delta: false, .. })
        ));
    }

    #[test]
    fn refuses_bad_commands_with_codes() {
        let code = |s: &str| parse(s).unwrap_err().code;
        assert_eq!(code("{not json"), "bad_json");
        assert_eq!(code("[]"), "bad_json");
        assert_eq!(code(r#"{"channel":"a"}"#), "bad_command");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_command");
        assert_eq!(code(r#"{"type":"subscribe"}"#), "bad_command");
        assert_eq!(
            code(r#"{"type":"subscribe","channel":"a b"}"#),
            "bad_channel"
        );
        assert_eq!(
            code(r#"{"type":"subscribe","channel":"a","since":-1}"#),
            "bad_cursor"
        );
        assert_eq!(code(r#"{"type":"publish","channel":"a"}"#), "bad_command");
        assert_eq!(
            code(r#"{"type":"subscribe","channel":"a","delta":1}"#),
            "bad_command"
        );
        // Arrays are not commands, even when serde could read them as one.
        assert_eq!(code(r#"["subscribe","a"]"#), "bad_json");
        assert_eq!(code(r#"  ["publish","a",1]"#), "bad_json");
    }

    #[test]
    fn null_is_a_payload_like_any_other() {
        match parse(r#"{"type":"publish","channel":"a","data":null}"#) {
            Ok(Command::Publish { payload, .. }) => {
                assert_eq!(&payload.to_json_bytes()[..], b"null")
            }
            Ok(_) => panic!("parsed as another command"),
            Err(e) => panic!("refused: {} {}", e.code, e.message),
        }
    }

    #[test]
    fn publish_data_gets_the_shared_json_check() {
        let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        for data in ["1e400", "\"\\ud800\"", deep.as_str()] {
            let text = format!(r#"{{"type":"publish","channel":"a","data":{data}}}"#);
            let err = parse(&text).unwrap_err();
            assert_eq!(err.code, "bad_json", "{data:.20}: {}", err.message);
            assert_eq!(err.channel.as_deref(), Some("a"));
        }
        match parse(r#"{"type":"publish","channel":"a","data": { "x" : 1.50 } }"#) {
            Ok(Command::Publish { payload, .. }) => {
                assert_eq!(&payload.to_json_bytes()[..], br#"{"x":1.50}"#)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_json_names_the_channel() {
        let e = CommandError::new("forbidden", "no").on("c");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["channel"], "c");
    }
}
