//! The one check every published JSON payload passes, whichever way it
//! came in (HTTP publish, batch publish, WebSocket `publish`, a bridged
//! backend answer): well-formed JSON text that every mainstream parser on
//! the subscribers' side can read back.
//!
//! A grammar check alone is not enough: `1e400` is grammatical but no
//! double holds it, `"\ud800"` is grammatical but no UTF-8 (or Python str
//! encoder) can represent it, and 30,000 nested arrays are grammatical but
//! blow the recursion limit of Python's `json` and serde_json. So the text
//! is walked as a real parse would read it (numbers converted, strings
//! unescaped), allocating nothing per value, and nesting is capped at
//! [`MAX_JSON_DEPTH`].

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects a payload may have (a scalar is
/// depth 0, `[]` depth 1). Far below the recursion limits of the usual
/// client parsers (serde_json 128, Python ~1000, browsers thousands).
pub const MAX_JSON_DEPTH: usize = 64;

/// Checks that `raw` is one JSON value that parses into native values:
/// numbers within `f64`, strings without lone surrogate escapes, nesting at
/// most [`MAX_JSON_DEPTH`]. The error says what is wrong and where.
pub fn check_json(raw: &[u8]) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    Checked {
        levels_left: MAX_JSON_DEPTH,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(|e| e.to_string())
}

/// Reads one value, refusing arrays and objects once `levels_left` is 0.
#[derive(Clone, Copy)]
struct Checked {
    levels_left: usize,
}

impl Checked {
    fn deeper<E: serde::de::Error>(self) -> Result<Checked, E> {
        match self.levels_left.checked_sub(1) {
            Some(levels_left) => Ok(Checked { levels_left }),
            None => Err(E::custom(format_args!(
                "nested deeper than {MAX_JSON_DEPTH} levels"
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // serde_json has already converted numbers (refusing ones beyond f64)
    // and unescaped strings (refusing lone surrogates) by the time these
    // are called: reaching them is the check.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        // Keys are strings: the same unescaping check applies.
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn ordinary_json_passes() {
        for ok in [
            "null",
            "1",
            "-0.5e-3",
            "18446744073709551615",
            "\"\\ud83d\\ude00 pair\"",
            r#"{"a":[1,{"b":null}],"\u00e9":true}"#,
            " [ 1 , 2 ] ",
            "1.7976931348623157e308",
        ] {
            assert_eq!(check_json(ok.as_bytes()), Ok(()), "{ok}");
        }
        assert_eq!(check_json(nested(MAX_JSON_DEPTH).as_bytes()), Ok(()));
    }

    #[test]
    fn what_parsers_cannot_read_back_is_refused() {
        for bad in [
            "1e400",
            "-1e400",
            "\"\\ud800\"",
            "\"\\udc00 low\"",
            r#"{"\ud800":1}"#,
            "[1,]",
            "{} {}",
            "",
            "nul",
        ] {
            assert!(check_json(bad.as_bytes()).is_err(), "{bad}");
        }
        let too_deep = check_json(nested(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(too_deep.contains("nested deeper than 64"), "{too_deep}");
        let objects = format!("{}1{}", "{\"a\":".repeat(65), "}".repeat(65));
        assert!(check_json(objects.as_bytes()).is_err());
        // Far deeper than the stack could take recursively: refused at 65.
        assert!(check_json(nested(30_000).as_bytes()).is_err());
    }
}
