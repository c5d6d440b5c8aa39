//! Configuration text to a checked [`Config`]: reading the file, parsing
//! TOML, deserialising (the first bad value named by its key) and
//! validating (every problem at once). Every problem stays one line.

use super::{Config, ConfigProblem};

/// Loads a configuration file on its own, without flags or environment.
pub fn load_file(path: &std::path::Path) -> Result<Config, Vec<ConfigProblem>> {
    from_table(read_table(path)?)
}

/// Parses configuration text, as from a file.
pub fn from_toml_str(text: &str) -> Result<Config, Vec<ConfigProblem>> {
    from_table(parse_toml(text)?)
}

pub(super) fn read_table(path: &std::path::Path) -> Result<toml::Table, Vec<ConfigProblem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigProblem {
            key: "--config".into(),
            message: format!("cannot read {}: {e}", path.display()),
        }]
    })?;
    parse_toml(&text)
}

pub(super) fn parse_toml(text: &str) -> Result<toml::Table, Vec<ConfigProblem>> {
    text.parse::<toml::Table>().map_err(|e| {
        // toml's message spans several lines (a source excerpt); keep its
        // first line and the position so the error stays one line.
        let line = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        let at = e
            .span()
            .map(|s| {
                let line_no = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line_no})")
            })
            .unwrap_or_default();
        vec![ConfigProblem {
            key: "(file)".into(),
            message: format!("{line}{at}"),
        }]
    })
}

pub(super) fn from_table(table: toml::Table) -> Result<Config, Vec<ConfigProblem>> {
    validated(deserialize(table)?, |_| Vec::new())
}

/// The configuration if it has no problem, its own or `load_checks`'s.
pub(super) fn validated(
    config: Config,
    load_checks: impl FnOnce(&Config) -> Vec<ConfigProblem>,
) -> Result<Config, Vec<ConfigProblem>> {
    let mut problems = config.validate();
    problems.extend(load_checks(&config));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// Deserialises the merged table; the first problem names its key.
pub(super) fn deserialize(table: toml::Table) -> Result<Config, Vec<ConfigProblem>> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = inner
            .lines()
            .next()
            .unwrap_or("invalid value")
            .trim()
            .to_string();
        vec![ConfigProblem {
            key: if path == "." {
                "(top level)".into()
            } else {
                // A quoted TOML key may hold a newline; the problem
                // must stay one line.
                path.chars().flat_map(char::escape_debug).collect()
            },
            message,
        }]
    })
}
