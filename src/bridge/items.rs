//! The shape of an incremental backend answer: an array of items at the
//! route's `items` JSON pointer, each with its id at `item_id`, inside a
//! wrapper (`{"messages":[…], "room": 42}`). Legacy clients are answered in
//! that same shape: the wrapper of the gateway's latest poll is kept as a
//! [`Template`] and only the array is filled with each client's items.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

/// Stands in for the items array while the wrapper is serialised; the
/// template is cut around it. Control characters keep it out of any
/// sensible backend's data, and a body holding it anyway is refused.
const MARKER: &str = "\u{1}pollbridge-items\u{1}";

/// One item of a backend answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The item's id as text: a JSON number as written (`124`), a JSON
    /// string as its value (`"a7"` → `a7`) — what a client sends back as
    /// its cursor.
    pub id: String,
    pub value: Value,
}

/// The wrapper of an answer with a hole where the items go.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Up to and including the array's `[`.
    head: Bytes,
    /// From the array's `]` on.
    tail: Bytes,
}

impl Template {
    /// The answer holding `items` (each already JSON text), in order.
    pub fn render<'a>(&self, items: impl Iterator<Item = &'a [u8]>) -> Bytes {
        let mut out = BytesMut::with_capacity(self.head.len() + self.tail.len() + 64);
        out.put_slice(&self.head);
        for (i, item) in items.enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(item);
        }
        out.put_slice(&self.tail);
        out.freeze()
    }
}

/// A backend answer taken apart.
#[derive(Debug)]
pub struct Parsed {
    pub template: Template,
    pub items: Vec<Item>,
}

/// Takes a backend answer apart. Errors say what is wrong with the body,
/// for the log.
pub fn parse(body: &[u8], items_pointer: &str, id_pointer: &str) -> Result<Parsed, String> {
    let mut doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let slot = doc
        .pointer_mut(items_pointer)
        .ok_or_else(|| format!("answer has nothing at items = {items_pointer:?}"))?;
    let Value::Array(values) = std::mem::replace(slot, Value::String(MARKER.into())) else {
        return Err(format!("items = {items_pointer:?} is not an array"));
    };
    let items = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let id = item_id(&value, id_pointer)
                .ok_or_else(|| format!("item {i} has no number or string at {id_pointer:?}"))?;
            Ok(Item { id, value })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let text = serde_json::to_string(&doc).expect("a Value always serialises");
    let quoted = serde_json::to_string(MARKER).expect("a string always serialises");
    let mut cuts = text.match_indices(&quoted);
    let (Some((at, _)), None) = (cuts.next(), cuts.next()) else {
        return Err("answer contains the gateway's items marker".into());
    };
    let mut head = BytesMut::from(&text.as_bytes()[..at]);
    head.put_u8(b'[');
    let mut tail = BytesMut::from(&b"]"[..]);
    tail.put_slice(&text.as_bytes()[at + quoted.len()..]);
    Ok(Parsed {
        template: Template {
            head: head.freeze(),
            tail: tail.freeze(),
        },
        items,
    })
}

/// An item's id as text, if it has a number or string one.
pub fn item_id(item: &Value, id_pointer: &str) -> Option<String> {
    match item.pointer(id_pointer)? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_is_kept_and_items_refilled() {
        let body = br#"{"room":42, "messages":[{"id":124,"text":"hi"},{"id":125,"text":"yo"}], "more":false}"#;
        let parsed = parse(body, "/messages", "/id").unwrap();
        let ids: Vec<_> = parsed.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["124", "125"]);
        let one = serde_json::to_vec(&parsed.items[1].value).unwrap();
        let answer = parsed.template.render([one.as_slice()].into_iter());
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"room":42,"messages":[{"id":125,"text":"yo"}],"more":false})
        );
        // Key order is the backend's.
        let empty = parsed.template.render(std::iter::empty());
        assert_eq!(&empty[..], br#"{"room":42,"messages":[],"more":false}"#);
    }

    #[test]
    fn bare_arrays_string_ids_and_nested_pointers() {
        let parsed = parse(br#"[{"k":{"id":"a7"}}]"#, "", "/k/id").unwrap();
        assert_eq!(parsed.items[0].id, "a7");
        assert_eq!(&parsed.template.render(std::iter::empty())[..], b"[]");
        let parsed = parse(br#"{"data":{"events":[]}}"#, "/data/events", "/id").unwrap();
        assert!(parsed.items.is_empty());
    }

    #[test]
    fn bad_answers_are_explained() {
        let cases: [(&[u8], &str); 5] = [
            (b"nope", "not JSON"),
            (br#"{"other":[]}"#, "nothing at"),
            (br#"{"messages":{}}"#, "not an array"),
            (br#"{"messages":[{"id":null}]}"#, "item 0"),
            (
                br#"{"x":"\u0001pollbridge-items\u0001","messages":[]}"#,
                "marker",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body, "/messages", "/id").unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
