//! The parts of a `[[bridge]]` route's configuration that are about which
//! feeds it polls and how their answers are shaped: the mode, query-string
//! identity, the variant cap and the incremental keys, with their defaults
//! and checks.

use serde::{Deserialize, Serialize};

use super::BridgeRoute;

/// Highest `max_variants` accepted: each variant is a poller of the backend.
const MAX_VARIANTS_LIMIT: usize = 100_000;

/// How a `[[bridge]]` route's answers relate to each other.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BridgeMode {
    /// Every answer is the whole current state; published on a `state` channel.
    #[default]
    Snapshot,
    /// Answers are the items after the client's cursor; every item is
    /// published as one message on a `stream` channel.
    Incremental,
}

pub(super) fn default_ignore_params() -> Vec<String> {
    vec!["_".into()]
}

pub(super) fn default_max_variants() -> usize {
    100
}

pub(super) fn default_cursor_param() -> String {
    "after".into()
}

pub(super) fn default_item_id() -> String {
    "/id".into()
}

/// The problems of one route's feed settings, as (field, reason).
pub(super) fn bridge_route_problems(route: &BridgeRoute) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if route.max_variants == 0 || route.max_variants > MAX_VARIANTS_LIMIT {
        problems.push((
            "max_variants",
            format!("must be between 1 and {MAX_VARIANTS_LIMIT}"),
        ));
    }
    if route.ignore_params.iter().any(|p| p.is_empty()) {
        problems.push(("ignore_params", "names must not be empty".into()));
    }
    if route.mode == BridgeMode::Incremental {
        if route.cursor_param.is_empty() {
            problems.push(("cursor_param", "must not be empty".into()));
        } else if route.ignore_params.contains(&route.cursor_param) {
            problems.push((
                "cursor_param",
                format!("{:?} is also in ignore_params", route.cursor_param),
            ));
        }
        for (field, pointer) in [("items", &route.items), ("item_id", &route.item_id)] {
            if !is_json_pointer(pointer) {
                problems.push((
                    field,
                    format!("{pointer:?} is not a JSON pointer (\"\" or \"/name/...\")"),
                ));
            }
        }
    }
    problems
}

/// RFC 6901: empty (the whole document) or `/`-separated reference tokens,
/// `~` only as `~0` or `~1`.
fn is_json_pointer(pointer: &str) -> bool {
    if pointer.is_empty() {
        return true;
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return false;
    };
    let bytes = rest.as_bytes();
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(extra: &str) -> Vec<&'static str> {
        let route: BridgeRoute =
            toml::from_str(&format!("path = \"/m\"\nchannel = \"m\"\n{extra}")).unwrap();
        bridge_route_problems(&route)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn feed_settings_are_checked() {
        assert!(problems("").is_empty());
        assert!(problems("mode = \"incremental\"").is_empty());
        assert_eq!(problems("max_variants = 0"), ["max_variants"]);
        assert_eq!(problems("ignore_params = [\"\"]"), ["ignore_params"]);
        // Incremental keys are checked on incremental routes only.
        assert!(problems("items = \"messages\"").is_empty());
        assert_eq!(
            problems("mode = \"incremental\"\nitems = \"messages\"\nitem_id = \"/a~2\""),
            ["items", "item_id"]
        );
        assert_eq!(
            problems("mode = \"incremental\"\ncursor_param = \"_\""),
            ["cursor_param"]
        );
    }

    #[test]
    fn json_pointers() {
        for ok in ["", "/", "/messages", "/a/0/id", "/a~1b", "/m~0"] {
            assert!(is_json_pointer(ok), "{ok:?}");
        }
        for bad in ["messages", "/a~", "/a~2", "#/a"] {
            assert!(!is_json_pointer(bad), "{bad:?}");
        }
    }
}
