//! `deploy/pollbridge.toml`, the example configuration, never falls behind
//! the code:
//!
//! - every key of the configuration structs appears in it (commented-out
//!   lines count), including the keys of optional values and of the
//!   `[[channels]]` / `[[bridge]]` array entries;
//! - every key it names exists (no stale or misspelt keys, even commented);
//! - its uncommented values are exactly the built-in defaults;
//! - with every commented-out example line switched on, it is still valid;
//! - the real binary's `--check-config` accepts it (exit 0).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pollbridge::config::cli;
use pollbridge::Config;

#[path = "common/config_keys.rs"]
mod config_keys;
use config_keys::code_keys;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/pollbridge.toml")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).expect("deploy/pollbridge.toml is readable")
}

/// A line of the example, with a leading `# ` (a commented-out setting)
/// removed. Prose comments do not look like settings or section headers.
enum Line<'a> {
    Header(&'a str),
    Key(&'a str),
    Other,
}

fn classify(line: &str) -> (bool, Line<'_>) {
    let (commented, rest) = match line.strip_prefix("# ") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let rest = rest.trim_end();
    let name_chars = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    };
    if let Some(inner) = rest
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .or_else(|| rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
    {
        if name_chars(inner) {
            return (commented, Line::Header(inner));
        }
    }
    if let Some((key, _value)) = rest.split_once(" = ") {
        // A setting is one whole `key = value` line that TOML accepts;
        // prose that happens to contain " = " is not.
        if name_chars(key) && !key.contains('.') && rest.parse::<toml::Table>().is_ok() {
            return (commented, Line::Key(key));
        }
    }
    (commented, Line::Other)
}

/// Dotted keys the example names, commented out or not.
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        match classify(line).1 {
            Line::Header(name) => section = name.to_string(),
            Line::Key(key) if section.is_empty() => {
                keys.insert(key.to_string());
            }
            Line::Key(key) => {
                keys.insert(format!("{section}.{key}"));
            }
            Line::Other => {}
        }
    }
    keys
}

/// The example with every commented-out setting and section header switched on.
fn uncomment_all(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        match classify(line) {
            (true, Line::Header(_) | Line::Key(_)) => out.push_str(&line[2..]),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[test]
fn every_config_key_is_in_the_example() {
    let documented = example_keys(&example_text());
    let missing: Vec<_> = code_keys().difference(&documented).cloned().collect();
    assert!(
        missing.is_empty(),
        "deploy/pollbridge.toml lacks these keys (add each with its default and one line on what it does): {missing:?}"
    );
}

#[test]
fn every_key_in_the_example_exists() {
    let known = code_keys();
    let stale: Vec<_> = example_keys(&example_text())
        .difference(&known)
        .cloned()
        .collect();
    assert!(
        stale.is_empty(),
        "deploy/pollbridge.toml names keys the configuration does not have: {stale:?}"
    );
}

#[test]
fn the_example_values_are_the_defaults() {
    let loaded = cli::load_file(&example_path()).unwrap_or_else(|problems| {
        panic!(
            "deploy/pollbridge.toml does not load: {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    assert_eq!(
        loaded,
        Config::default(),
        "an uncommented value in deploy/pollbridge.toml is not the built-in default"
    );
}

#[test]
fn the_commented_examples_are_valid_too() {
    // Settings whose validation reads the file they name; their example
    // paths don't exist here, so they are left commented out.
    const READS_FILES: [&str; 4] = [
        "jwt_public_key_file = ",
        "cert_file = ",
        "key_file = ",
        "token_file = ",
    ];
    let text: String = uncomment_all(&example_text())
        .lines()
        .filter(|line| !READS_FILES.iter().any(|key| line.starts_with(key)))
        .map(|line| format!("{line}\n"))
        .collect();
    let cfg = cli::from_toml_str(&text).unwrap_or_else(|problems| {
        panic!(
            "deploy/pollbridge.toml with its commented-out examples switched on is invalid: {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    // Every optional value got an example.
    assert!(cfg.upstream.is_some());
    assert!(cfg.redis.tls_ca_file.is_some());
    assert!(!cfg.redis.cluster_nodes.is_empty());
    assert!(!cfg.limits.trusted_proxies.is_empty());
    assert!(!cfg.longpoll.cors_origins.is_empty());
    assert!(!cfg.publish.keys.is_empty());
    assert!(cfg.auth.jwt_secret.is_some() && cfg.auth.auth_url.is_some());
    assert!(!cfg.auth.allowed_origins.is_empty());
    assert!(cfg.demo.public_stats.is_some());
    assert_eq!(cfg.channels.len(), 1);
    assert_eq!(cfg.bridges.len(), 1);
    assert!(cfg.bridges[0].hold.is_some() && cfg.bridges[0].vary_by.is_some());
    assert!(!cfg.bridges[0].forward_headers.is_empty());
}

#[test]
fn check_config_accepts_the_example() {
    let out = Command::new(env!("CARGO_BIN_EXE_pollbridge"))
        .arg("--check-config")
        .arg("--config")
        .arg(example_path())
        // The variables of the test runner's environment must not change
        // what is checked.
        .env_clear()
        .output()
        .expect("run pollbridge --check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "pollbridge --check-config --config deploy/pollbridge.toml failed:\n{stdout}{stderr}"
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

#[test]
fn the_line_parser_finds_settings_and_skips_prose() {
    let text =
        "listen = \"x\"\n# upstream = \"y\"\n# A prose line: mode = no\n# empty = prose too.\n\
                [limits]\nmax_connections = 1\n# [[bridge]]\n# path = \"/a\"\n";
    let keys: Vec<_> = example_keys(text).into_iter().collect();
    assert_eq!(
        keys,
        [
            "bridge.path",
            "limits.max_connections",
            "listen",
            "upstream"
        ]
    );
    assert!(uncomment_all(text).contains("\n[[bridge]]\npath = \"/a\"\n"));
}
