//! JSON Patch (RFC 6902), the delta format of `state` channels: the diff
//! that makes a patch from one JSON value to the next, and the apply that
//! checks it. Patches use three operations only — `add`, `remove`,
//! `replace` — so a client needs a few lines to apply them.
//!
//! The diff walks both values together: objects member by member, arrays
//! index by index (then appends or removes at the end), anything else is
//! replaced. It does not look for moved or inserted array elements (an
//! insertion at the front of a list becomes a replace of every later
//! element); such a patch is usually not smaller than the value, and the
//! caller then sends the value whole.

use serde_json::{json, Map, Value};

/// The RFC 6902 operations that turn `a` into `b` (empty when equal).
pub fn diff(a: &Value, b: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(a, b, &mut String::new(), &mut ops);
    ops
}

fn diff_at(a: &Value, b: &Value, path: &mut String, ops: &mut Vec<Value>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, new) in b {
                let len = path.len();
                push_token(path, key);
                match a.get(key) {
                    Some(old) => diff_at(old, new, path, ops),
                    None => ops.push(json!({"op": "add", "path": path, "value": new})),
                }
                path.truncate(len);
            }
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                let len = path.len();
                push_token(path, key);
                ops.push(json!({"op": "remove", "path": path}));
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            let common = a.len().min(b.len());
            for (i, (old, new)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                push_index(path, i);
                diff_at(old, new, path, ops);
                path.truncate(len);
            }
            for (i, new) in b.iter().enumerate().skip(common) {
                let len = path.len();
                push_index(path, i);
                ops.push(json!({"op": "add", "path": path, "value": new}));
                path.truncate(len);
            }
            // From the end, so each index is still valid when removed.
            for i in (common..a.len()).rev() {
                let len = path.len();
                push_index(path, i);
                ops.push(json!({"op": "remove", "path": path}));
                path.truncate(len);
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path, "value": b})),
    }
}

/// Appends `/token`, escaped (`~` as `~0`, `/` as `~1`; RFC 6901).
fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

fn push_index(path: &mut String, i: usize) {
    path.push('/');
    path.push_str(itoa::Buffer::new().format(i));
}

/// Why a patch could not be applied.
#[derive(Debug, PartialEq, Eq)]
pub struct PatchError(pub String);

/// Applies RFC 6902 `add`, `remove` and `replace` operations in order.
pub fn apply(doc: &mut Value, ops: &[Value]) -> Result<(), PatchError> {
    for op in ops {
        let kind = op["op"].as_str().unwrap_or_default();
        let path = op["path"]
            .as_str()
            .ok_or_else(|| PatchError(format!("no path in {op}")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError(format!("no value in {op}")))
        };
        if path.is_empty() {
            match kind {
                "add" | "replace" => *doc = value()?,
                _ => return Err(PatchError(format!("cannot {kind} the whole document"))),
            }
            continue;
        }
        let (parent, last) = path
            .rsplit_once('/')
            .expect("a non-empty pointer has a '/'");
        let token = last.replace("~1", "/").replace("~0", "~");
        let target = doc
            .pointer_mut(parent)
            .ok_or_else(|| PatchError(format!("no {parent:?} for {op}")))?;
        match target {
            Value::Object(map) => apply_to_object(map, kind, token, value)?,
            Value::Array(list) => apply_to_array(list, kind, &token, value)?,
            _ => return Err(PatchError(format!("{parent:?} is not a container"))),
        }
    }
    Ok(())
}

fn apply_to_object(
    map: &mut Map<String, Value>,
    kind: &str,
    key: String,
    value: impl FnOnce() -> Result<Value, PatchError>,
) -> Result<(), PatchError> {
    match kind {
        "add" => {
            map.insert(key, value()?);
        }
        "replace" if map.contains_key(&key) => {
            map.insert(key, value()?);
        }
        "remove" if map.remove(&key).is_some() => {}
        _ => return Err(PatchError(format!("cannot {kind} member {key:?}"))),
    }
    Ok(())
}

fn apply_to_array(
    list: &mut Vec<Value>,
    kind: &str,
    token: &str,
    value: impl FnOnce() -> Result<Value, PatchError>,
) -> Result<(), PatchError> {
    let index = if token == "-" {
        list.len()
    } else {
        token
            .parse::<usize>()
            .map_err(|_| PatchError(format!("bad array index {token:?}")))?
    };
    match kind {
        "add" if index <= list.len() => list.insert(index, value()?),
        "replace" if index < list.len() => list[index] = value()?,
        "remove" if index < list.len() => {
            list.remove(index);
        }
        _ => return Err(PatchError(format!("cannot {kind} index {token}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(a: Value, b: Value) -> Vec<Value> {
        let ops = diff(&a, &b);
        let mut doc = a.clone();
        apply(&mut doc, &ops).unwrap_or_else(|e| panic!("{e:?}: {ops:?}"));
        assert_eq!(doc, b, "ops {ops:?}");
        ops
    }

    #[test]
    fn patches_reproduce_many_shapes() {
        let cases = [
            (json!({"a": 1, "b": 2}), json!({"a": 1, "b": 3})),
            (json!({"a": 1}), json!({"a": null})),
            (json!({"a": null}), json!({"a": {"b": null}})),
            (json!({"a": [1, 2, 3]}), json!({"a": [1, 5]})),
            (json!({"a": [1]}), json!({"a": [1, [2], {"x": null}]})),
            (
                json!([{"p": 1}, {"p": 2}]),
                json!([{"p": 1}, {"p": 3, "q": "日本"}]),
            ),
            (json!({"a/b": {"~c": 1}}), json!({"a/b": {"~c": 2}})),
            (
                json!({"s": "\u{1F600} \"q\" \\"}),
                json!({"s": "\u{1F601}"}),
            ),
            (
                json!({"f": 1.5, "i": -3}),
                json!({"f": 2.25e-10, "i": 18446744073709551615u64}),
            ),
            (json!(1), json!([1, 2])),
            (json!(null), json!({"a": 1})),
            (
                json!({"gone": {"deep": [1]}, "kept": 1}),
                json!({"kept": 1}),
            ),
        ];
        for (a, b) in cases {
            roundtrip(a, b);
        }
        assert!(roundtrip(json!({"a": [1, 2]}), json!({"a": [1, 2]})).is_empty());
        assert_eq!(
            roundtrip(json!({"x": {"y": [0, 1]}}), json!({"x": {"y": [0, 2]}})),
            vec![json!({"op": "replace", "path": "/x/y/1", "value": 2})]
        );
    }

    #[test]
    fn bad_patches_are_errors_not_panics() {
        let mut doc = json!({"a": [1]});
        for op in [
            json!({"op": "replace", "path": "/b", "value": 1}),
            json!({"op": "remove", "path": "/a/3"}),
            json!({"op": "add", "path": "/a/x", "value": 1}),
            json!({"op": "add", "path": "/nope/x", "value": 1}),
            json!({"op": "move", "path": "/a"}),
            json!({"op": "add", "path": "/a/0"}),
            json!({"op": "remove", "path": ""}),
        ] {
            assert!(apply(&mut doc, std::slice::from_ref(&op)).is_err(), "{op}");
        }
        assert_eq!(doc, json!({"a": [1]}));
    }
}
