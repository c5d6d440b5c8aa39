//! docs/configuration.md, the configuration reference, never drifts from the
//! configuration structs:
//!
//! - every key of the structs has a row in one of its tables, including the
//!   keys of optional values and of `[[channels]]` / `[[bridge]]` entries;
//! - every key a row names exists;
//! - each row's default is the built-in default (`none` for an unset
//!   optional value or an empty list, `required` for a field an entry can't
//!   do without; durations compare by length, so `120s` matches `2m`);
//! - each row's flag is the one `pollbridge --help` gives that key (`—`
//!   where the key has none);
//! - every `section.key` the README and docs/ mention in backticks exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/config_keys.rs"]
mod config_keys;
use config_keys::{code_keys, default_values, required_keys};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One row of a key table: `| `key` | flag | default | meaning |`.
#[derive(Debug)]
struct Row {
    /// Dotted, as the code names it (`bridge[].path` → `bridge.path`).
    key: String,
    flag: String,
    default: String,
    line: usize,
}

/// The rows of every table whose header starts `| key | flag | default |`.
fn documented_rows(text: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for (i, line) in text.lines().enumerate() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if !line.trim_start().starts_with('|') {
            in_table = false;
            continue;
        }
        if cells.len() >= 3 && cells[..3] == ["key", "flag", "default"] {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].starts_with("---") {
            continue;
        }
        assert!(
            cells.len() >= 4,
            "docs/configuration.md:{}: a key row needs key | flag | default | meaning",
            i + 1
        );
        let key = cells[0]
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .unwrap_or_else(|| {
                panic!(
                    "docs/configuration.md:{}: the key cell must be one `key` (got {:?})",
                    i + 1,
                    cells[0]
                )
            });
        rows.push(Row {
            key: key.replace("[]", ""),
            flag: cells[1].trim_matches('`').to_string(),
            default: cells[2].to_string(),
            line: i + 1,
        });
    }
    rows
}

fn reference() -> Vec<Row> {
    let rows = documented_rows(&read(&repo().join("docs/configuration.md")));
    assert!(rows.len() > 50, "found only {} key rows", rows.len());
    rows
}

/// `30s`, `2m`, `1h 30m`, `100ms` as milliseconds; None if it isn't one.
fn duration_ms(text: &str) -> Option<u128> {
    let mut total = 0u128;
    for part in text.split_whitespace() {
        let split = part.find(|c: char| !c.is_ascii_digit())?;
        let (number, unit) = part.split_at(split);
        let number: u128 = number.parse().ok()?;
        total += number
            * match unit {
                "ms" => 1,
                "s" => 1000,
                "m" | "min" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return None,
            };
    }
    (!text.trim().is_empty()).then_some(total)
}

/// Whether `stated` is `value` written as JSON (a list, a quoted string).
fn written_as_json(stated: &str, value: &serde_json::Value) -> bool {
    serde_json::from_str::<serde_json::Value>(stated).is_ok_and(|v| v == *value)
}

/// Whether a documented default states `value`. The cell's first word(s)
/// before a parenthesis are the value; the parenthesis may explain it.
fn default_matches(cell: &str, value: &serde_json::Value) -> bool {
    let stated = cell
        .split(" (")
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('`');
    match value {
        serde_json::Value::Null => stated == "none",
        serde_json::Value::Array(items) if items.is_empty() => stated == "none",
        // A non-empty list is written as JSON/TOML: `["_"]`.
        serde_json::Value::Array(_) => written_as_json(stated, value),
        serde_json::Value::Bool(b) => stated == b.to_string(),
        serde_json::Value::Number(n) => stated.replace(',', "") == n.to_string(),
        serde_json::Value::String(s) => {
            s == stated
                || written_as_json(stated, value) // quoted, e.g. `""`
                || matches!((duration_ms(s), duration_ms(stated)), (Some(a), Some(b)) if a == b)
        }
        _ => false,
    }
}

#[test]
fn every_config_key_is_documented() {
    let documented: BTreeSet<String> = reference().into_iter().map(|r| r.key).collect();
    let missing: Vec<_> = code_keys().difference(&documented).cloned().collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks these keys (add a row: key, flag, default, meaning): {missing:?}"
    );
}

#[test]
fn every_documented_key_exists() {
    let known = code_keys();
    let stale: Vec<_> = reference()
        .into_iter()
        .filter(|r| !known.contains(&r.key))
        .map(|r| format!("{} (line {})", r.key, r.line))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys the configuration does not have: {stale:?}"
    );
}

#[test]
fn every_key_is_documented_once() {
    let mut seen = BTreeMap::new();
    for row in reference() {
        if let Some(first) = seen.insert(row.key.clone(), row.line) {
            panic!(
                "docs/configuration.md documents {} twice (lines {first} and {})",
                row.key, row.line
            );
        }
    }
}

#[test]
fn documented_defaults_are_the_real_ones() {
    let defaults = default_values();
    let required = required_keys();
    let mut wrong = Vec::new();
    for row in reference() {
        let ok = if required.contains(&row.key) {
            row.default == "required"
        } else if let Some(value) = defaults.get(&row.key) {
            row.default != "required" && default_matches(&row.default, value)
        } else {
            continue; // every_documented_key_exists reports it
        };
        if !ok {
            let real = if required.contains(&row.key) {
                "required".to_string()
            } else {
                defaults[&row.key].to_string()
            };
            wrong.push(format!(
                "{} (line {}): documented {:?}, real {real}",
                row.key, row.line, row.default
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/configuration.md states wrong defaults:\n{}",
        wrong.join("\n")
    );
}

/// (config key → flag) from `pollbridge --help`, whose entries read
/// `--flag <VALUE>` followed by a help line ending `(config key: key) …`.
fn flags_from_help() -> BTreeMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_pollbridge"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("run pollbridge --help");
    assert!(out.status.success(), "pollbridge --help failed");
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");
    let mut flags = BTreeMap::new();
    let mut last_flag = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let trimmed = trimmed.strip_prefix("-c, ").unwrap_or(trimmed);
        if let Some(rest) = trimmed.strip_prefix("--") {
            last_flag = rest.split_whitespace().next().map(|f| format!("--{f}"));
        }
        if let Some((_, rest)) = line.split_once("(config key: ") {
            let key = rest.split(')').next().expect("a closing parenthesis");
            let flag = last_flag.clone().expect("a flag before its help line");
            flags.insert(key.to_string(), flag);
        }
    }
    assert!(
        flags.len() > 50,
        "found only {} flags in --help",
        flags.len()
    );
    flags
}

#[test]
fn documented_flags_are_the_real_ones() {
    let flags = flags_from_help();
    let mut wrong = Vec::new();
    for row in reference() {
        let real = flags.get(&row.key).map(String::as_str).unwrap_or("—");
        if row.flag != real {
            wrong.push(format!(
                "{} (line {}): documented {:?}, real {real:?}",
                row.key, row.line, row.flag
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/configuration.md names wrong flags:\n{}",
        wrong.join("\n")
    );
}

/// README.md and every page of docs/.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/ exists") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `section.key` names in backticks, where `section` is a table of the
/// configuration (`limits`, `redis`, …).
fn mentioned_keys(text: &str, sections: &BTreeSet<String>) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|span| {
            let (section, rest) = span.split_once('.')?;
            let simple =
                |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            (sections.contains(section) && rest.split('.').all(simple)).then(|| span.to_string())
        })
        .collect()
}

#[test]
fn every_key_the_docs_mention_exists() {
    let known = code_keys();
    let sections: BTreeSet<String> = known
        .iter()
        .filter_map(|k| k.split_once('.').map(|(s, _)| s.to_string()))
        .collect();
    let mut stale = Vec::new();
    for file in doc_files() {
        for key in mentioned_keys(&read(&file), &sections) {
            if !known.contains(&key) && !known.iter().any(|k| k.starts_with(&format!("{key}."))) {
                stale.push(format!("{}: `{key}`", file.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "the docs mention keys that do not exist: {stale:?}"
    );
}

#[test]
fn the_table_parser_reads_rows_and_defaults() {
    let text = "| key | flag | default | meaning |\n| --- | --- | --- | --- |\n\
                | `limits.queue_length` | `--queue-length` | 1024 | x |\n\
                | `bridge[].path` | — | required | y |\n\nprose | not a row\n";
    let rows = documented_rows(text);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].key.as_str(), rows[0].flag.as_str()),
        ("limits.queue_length", "--queue-length")
    );
    assert_eq!(rows[1].key, "bridge.path");
    assert!(default_matches("`120s`", &serde_json::json!("2m")));
    assert!(!default_matches("`30s`", &serde_json::json!("2m")));
    assert!(default_matches("none (any origin)", &serde_json::json!([])));
    assert!(!default_matches("none", &serde_json::json!(false)));
    assert!(default_matches("19000", &serde_json::json!(19000)));
    assert!(default_matches("`[\"_\"]`", &serde_json::json!(["_"])));
    assert!(!default_matches("none", &serde_json::json!(["_"])));
    assert!(default_matches(
        "`\"\"` (the answer is the array)",
        &serde_json::json!("")
    ));
    let sections = ["limits".to_string()].into_iter().collect();
    assert_eq!(
        mentioned_keys(
            "`limits.queue_length` and `example.com` and `limits.x.y`",
            &sections
        ),
        ["limits.queue_length", "limits.x.y"]
    );
}
