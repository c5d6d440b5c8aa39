//! Property tests of the delta format (JSON Patch, RFC 6902, as the
//! gateway makes it for `state` channels): for any two JSON values the diff
//! applied to the first gives the second, through the serialised text too,
//! and a message's shared delta rebuilds its value from its base. Pure
//! functions only, no sockets.

use std::time::Instant;

use pollbridge::protocol::delta::patch_for;
use pollbridge::protocol::json_patch::{apply, diff};
use pollbridge::protocol::{ChannelName, Epoch, Message};
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value (finite floats, any Unicode strings, keys with `/` and
/// `~` included), up to 4 levels.
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
        "[~/a]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[~/a-c]{0,3}|.{0,8}", inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// `a` with one member or element (chosen by `at`, recursively) set to
/// `b`: a value close to `a`, as consecutive states are.
fn edit(a: &Value, b: &Value, at: &mut impl Iterator<Item = usize>) -> Value {
    let mut out = a.clone();
    let pick = at.next().unwrap_or(0);
    match &mut out {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(pick % map.len()).cloned().expect("in range");
            let inner = edit(&map[&key], b, at);
            map.insert(key, inner);
        }
        Value::Array(list) if !list.is_empty() => {
            let i = pick % list.len();
            list[i] = edit(&list[i], b, at);
        }
        _ => return b.clone(),
    }
    out
}

proptest! {
    #[test]
    fn diff_then_apply_gives_the_target(a in json_value(), b in json_value()) {
        let ops = diff(&a, &b);
        let mut doc = a.clone();
        prop_assert_eq!(apply(&mut doc, &ops), Ok(()));
        prop_assert_eq!(&doc, &b);
        if a == b {
            prop_assert!(ops.is_empty());
        }
    }

    #[test]
    fn serialised_patches_rebuild_close_values(
        a in json_value(),
        b in json_value(),
        path in prop::collection::vec(any::<usize>(), 0..5),
    ) {
        let next = edit(&a, &b, &mut path.into_iter());
        let (a_text, next_text) = (a.to_string(), next.to_string());
        let patch = patch_for(a_text.as_bytes(), next_text.as_bytes()).expect("a patch");
        let ops: Vec<Value> = serde_json::from_slice(&patch).expect("JSON");
        let mut doc: Value = serde_json::from_str(&a_text).unwrap();
        apply(&mut doc, &ops).expect("applies");
        prop_assert_eq!(doc, serde_json::from_str::<Value>(&next_text).unwrap());
    }

    #[test]
    fn a_message_delta_rebuilds_its_value_or_there_is_none(
        a in json_value(),
        b in json_value(),
        path in prop::collection::vec(any::<usize>(), 0..5),
    ) {
        let next = edit(&a, &b, &mut path.into_iter());
        let channel = ChannelName::new("p").unwrap();
        let epoch = Epoch::parse(b"e").unwrap();
        let first = Message::new(channel.clone(), epoch, 1, a.to_string().as_bytes(), Instant::now());
        let second = Message::new(channel, epoch, 2, next.to_string().as_bytes(), Instant::now());
        second.link_base(&first);
        if let Some(delta) = second.delta_after(1, epoch) {
            prop_assert!(delta.envelope.len() < second.envelope.len());
            let env: Value = serde_json::from_slice(&delta.envelope).unwrap();
            prop_assert_eq!(&env["base"], 1);
            prop_assert!(env.get("data").is_none());
            let mut doc = a.clone();
            apply(&mut doc, env["delta"].as_array().unwrap()).expect("applies");
            prop_assert_eq!(doc, next);
        }
    }
}
