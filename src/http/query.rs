//! Reading a request's query (`application/x-www-form-urlencoded` pairs)
//! and percent-encoded path segments, on every poll's path.
//!
//! The answers are exactly `form_urlencoded::parse`'s and
//! `percent_decode_str(..).decode_utf8_lossy()`'s (the unit tests compare
//! them on arbitrary input), but a name, value or segment with nothing to
//! decode — no `%`, and in a query no `+` — is taken as it is: it is
//! already UTF-8 (it is a `&str`), so decoding it could only hand it back,
//! after a byte-by-byte walk and a UTF-8 validation. Only a pair that
//! needs decoding goes through `form_urlencoded`.

use std::borrow::Cow;

/// Query parameters as (name, value) pairs, percent-decoded, in order;
/// names and values that need no decoding are borrowed from the query.
/// Empty `&`-separated pieces are skipped, a piece without `=` is a name
/// with an empty value, as `form_urlencoded::parse` reads them.
pub fn query_pairs(query: Option<&str>) -> QueryPairs<'_> {
    QueryPairs {
        rest: query.unwrap_or(""),
    }
}

/// The iterator of [`query_pairs`].
#[derive(Debug, Clone)]
pub struct QueryPairs<'q> {
    /// What is left of the query after the pairs already read.
    rest: &'q str,
}

impl<'q> Iterator for QueryPairs<'q> {
    type Item = (Cow<'q, str>, Cow<'q, str>);

    fn next(&mut self) -> Option<Self::Item> {
        // One walk over the bytes finds the piece's end, its first `=` and
        // whether it has anything to decode (the pieces are short, so a
        // plain loop beats searching for each in turn).
        let bytes = self.rest.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let (mut end, mut equals, mut encoded) = (start, None, false);
            while let Some(&b) = bytes.get(end) {
                match b {
                    b'&' => break,
                    b'=' if equals.is_none() => equals = Some(end),
                    b'%' | b'+' => encoded = true,
                    _ => {}
                }
                end += 1;
            }
            if end == start {
                start += 1; // an empty piece
                continue;
            }
            let rest = self.rest;
            // Past the `&` (if any): every index here is an ASCII byte's,
            // so a char boundary.
            self.rest = rest.get(end + 1..).unwrap_or("");
            if encoded {
                // Something to decode: the reference decoder reads this
                // piece as the one pair it is.
                return form_urlencoded::parse(&bytes[start..end]).next();
            }
            return Some(match equals {
                Some(eq) => (
                    Cow::Borrowed(&rest[start..eq]),
                    Cow::Borrowed(&rest[eq + 1..end]),
                ),
                None => (Cow::Borrowed(&rest[start..end]), Cow::Borrowed("")),
            });
        }
        self.rest = "";
        None
    }
}

/// False when no pair of `query` can be named `name` once decoded: the
/// query has no `%` and `name` nowhere in it. One scan, to skip reading
/// the pairs of a query that cannot hold the parameter.
/// `name` is non-empty ASCII without `%`, `+`, `&`, `=` or space, so it only
/// decodes from itself or from something percent-encoded.
pub fn may_name(query: &str, name: &str) -> bool {
    debug_assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"%+&=".contains(&b)),
        "{name:?}"
    );
    let (query, name) = (query.as_bytes(), name.as_bytes());
    query
        .iter()
        .enumerate()
        .any(|(at, &b)| b == b'%' || (b == name[0] && query[at..].starts_with(name)))
}

/// Decodes one percent-encoded path segment (channel names travel in
/// paths); invalid UTF-8 after decoding becomes U+FFFD.
pub fn decode_segment(segment: &str) -> String {
    if !segment.bytes().any(|b| b == b'%') {
        return segment.to_owned();
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The decoders this module's fast paths stand in for.
    fn reference_pairs(query: Option<&str>) -> Vec<(String, String)> {
        form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn reference_segment(segment: &str) -> String {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8_lossy()
            .into_owned()
    }

    fn pairs(query: Option<&str>) -> Vec<(String, String)> {
        query_pairs(query)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn reads_pairs_like_form_urlencoded() {
        for query in [
            "",
            "&",
            "&&a=1&&",
            "since=4&timeout=30",
            "a",
            "a=",
            "=b",
            "=",
            "a=b=c",
            "a+b=c+d",
            "a%20b=%41%42",
            "a=%zz&b=%",
            "a=%FF%FE",
            "x=%E2%82%AC&y=€",
            "delta=1&delta=0",
        ] {
            assert_eq!(
                pairs(Some(query)),
                reference_pairs(Some(query)),
                "{query:?}"
            );
        }
        assert!(pairs(None).is_empty());
    }

    #[test]
    fn borrows_what_needs_no_decoding() {
        let mut it = query_pairs(Some("since=4&a%20b=c"));
        assert!(matches!(
            it.next(),
            Some((Cow::Borrowed("since"), Cow::Borrowed("4")))
        ));
        assert_eq!(
            it.next(),
            Some((Cow::Owned("a b".into()), Cow::Borrowed("c")))
        );
        assert_eq!(it.next(), None);
    }

    #[test]
    fn decodes_segments_like_percent_encoding() {
        for segment in [
            "news",
            "a%20b",
            "a+b",
            "%",
            "%2",
            "%zz",
            "%FF",
            "€%E2%82%AC",
        ] {
            assert_eq!(
                decode_segment(segment),
                reference_segment(segment),
                "{segment:?}"
            );
        }
    }

    /// Query-like text: mostly the characters that matter to the parser.
    fn query_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("&".to_string()),
            Just("=".to_string()),
            Just("+".to_string()),
            Just("%".to_string()),
            "%[0-9a-fA-F]{2}",
            "[a-z0-9]{1,6}",
            Just("delta".to_string()),
            Just("since".to_string()),
            "[^&=+%]{1,3}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_form_urlencoded(query in query_text()) {
            prop_assert_eq!(pairs(Some(&query)), reference_pairs(Some(&query)));
        }

        #[test]
        fn fast_path_agrees_on_any_text(query in any::<String>()) {
            prop_assert_eq!(pairs(Some(&query)), reference_pairs(Some(&query)));
        }

        #[test]
        fn may_name_is_false_only_without_such_a_pair(
            query in query_text(),
            name in prop_oneof![Just("delta"), Just("since"), Just("a")],
        ) {
            if !may_name(&query, name) {
                prop_assert!(reference_pairs(Some(&query)).iter().all(|(k, _)| k != name));
            }
        }

        #[test]
        fn segments_agree_with_percent_encoding(segment in query_text()) {
            prop_assert_eq!(decode_segment(&segment), reference_segment(&segment));
        }
    }
}
