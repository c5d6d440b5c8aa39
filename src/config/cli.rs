//! Command line and environment: one flag per scalar configuration key.
//!
//! The flags are generated from [`SETTINGS`], a table of (flag, config key,
//! kind, help). Each flag also reads `POLLBRIDGE_<FLAG>` from the
//! environment (clap's own precedence: flag beats environment). The values
//! are written into the TOML table loaded from `--config` before it is
//! deserialised, so flags, environment and file share one parser and one
//! error format.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::flags::{Kind, SETTINGS};
use super::load::{deserialize, read_table, validated};
pub use super::load::{from_toml_str, load_file};
use super::{Config, ConfigProblem};

/// What the command line asked for.
#[derive(Debug)]
pub struct Invocation {
    /// The configuration, fully merged and validated.
    pub config: Config,
    /// `--check-config`: validate and exit.
    pub check_only: bool,
}

fn command() -> Command {
    let mut cmd = Command::new("pollbridge")
        .version(env!("CARGO_PKG_VERSION"))
        .about(
            "Gateway that lets Ajax-polling web apps and WebSocket clients share one live feed.\n\
             Every flag can also be set as POLLBRIDGE_<FLAG> (e.g. POLLBRIDGE_ADMIN_LISTEN) \
             or in the TOML file; flag beats environment beats file beats default.",
        )
        .arg(
            Arg::new("config")
                .long("config")
                .short('c')
                .env("POLLBRIDGE_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML configuration file"),
        )
        .arg(
            // `--check-config FILE` and `--check-config --config FILE` both
            // work: the first is what people type, the second what the
            // systemd unit and the docs have always said.
            Arg::new("check-config")
                .long("check-config")
                .value_name("FILE")
                .num_args(0..=1)
                // Present without a value: "" (a path parser refuses empty ones).
                .default_missing_value("")
                .value_parser(clap::builder::ValueParser::os_string())
                .help("Load and validate the configuration (FILE, or --config FILE), print a summary and exit (0 valid, 2 invalid)"),
        );
    for &(flag, key, kind, help) in SETTINGS {
        let env = format!("POLLBRIDGE_{}", flag.to_uppercase().replace('-', "_"));
        let mut arg = Arg::new(flag)
            .long(flag)
            .env(env)
            .help(format!("{help}  (config key: {key})"));
        arg = match kind {
            Kind::List => arg
                .value_name("VALUE")
                .action(ArgAction::Append)
                .value_delimiter(','),
            Kind::Bool => arg
                .value_name("BOOL")
                .num_args(0..=1)
                .default_missing_value("true")
                .value_parser(clap::value_parser!(bool)),
            Kind::Integer => arg.value_name("N").value_parser(clap::value_parser!(u64)),
            Kind::Text => arg.value_name("VALUE"),
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

/// Parses the command line and environment, loads the file and merges all
/// layers. `Err` carries every problem found, those of `load_checks` too;
/// the caller prints them and exits with code 2. Clap's own usage errors
/// exit from inside (also code 2).
///
/// `load_checks` is given the configuration once it deserialised: the
/// caller's checks of what it names outside itself (files to load), which
/// config, being pure, does not make.
pub fn parse<I, T>(
    args: I,
    load_checks: impl FnOnce(&Config) -> Vec<ConfigProblem>,
) -> Result<Invocation, Vec<ConfigProblem>>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().get_matches_from(args);
    let check_file = matches
        .get_one::<OsString>("check-config")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let check_file = check_file.as_ref();
    let file = match (check_file, matches.get_one::<PathBuf>("config")) {
        (Some(a), Some(b)) if a != b => {
            return Err(vec![ConfigProblem {
                key: "--check-config".into(),
                message: format!(
                    "names {} but --config names {}; give the file once",
                    a.display(),
                    b.display()
                ),
            }])
        }
        (Some(path), _) | (None, Some(path)) => Some(path),
        (None, None) => None,
    };
    let table = match file {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    let config = validated(deserialize(merge(table, &matches))?, load_checks)?;
    Ok(Invocation {
        config,
        check_only: matches.contains_id("check-config"),
    })
}

/// What `--check-config` prints for a valid configuration: one line for
/// the gateway, then one per bridge route.
pub fn check_summary(config: &Config) -> String {
    let mut out = format!(
        "pollbridge: configuration OK (public {}, admin {}, bus {}, upstream {}, {} channel rule(s), {} bridge route(s))",
        config.listen,
        config.admin_listen,
        super::redis_url::redact(&config.bus),
        config.upstream.as_deref().unwrap_or("none"),
        config.channels.len(),
        config.bridges.len(),
    );
    for route in &config.bridges {
        out.push_str(&format!(
            "\n  bridge {} -> channel {}, every {}",
            route.path,
            route.channel,
            humantime::format_duration(route.interval)
        ));
        if route.mode == super::BridgeMode::Incremental {
            // Which cursor and items the gateway reads: a wrong pointer shows
            // here rather than as an empty feed.
            let items = if route.items.is_empty() {
                "the answer"
            } else {
                &route.items
            };
            out.push_str(&format!(
                ", incremental (cursor {}, items {items}, id {})",
                route.cursor_param, route.item_id
            ));
        }
        if let Some(hold) = route.hold {
            out.push_str(&format!(", hold {}", humantime::format_duration(hold)));
        }
        if let Some(vary_by) = &route.vary_by {
            out.push_str(&format!(", vary_by {vary_by}"));
        }
        if route.auth != super::BridgeAuthMode::None {
            out.push_str(&format!(", auth {}", route.auth.as_str()));
        }
    }
    out
}

/// The file's table with every flag and environment value written into it.
fn merge(mut table: toml::Table, matches: &ArgMatches) -> toml::Table {
    for &(flag, key, kind, _) in SETTINGS {
        let value = match kind {
            Kind::Text => matches
                .get_one::<String>(flag)
                .map(|s| toml::Value::String(s.clone())),
            Kind::Integer => matches
                .get_one::<u64>(flag)
                .map(|n| toml::Value::Integer(i64::try_from(*n).unwrap_or(i64::MAX))),
            Kind::Bool => matches
                .get_one::<bool>(flag)
                .map(|b| toml::Value::Boolean(*b)),
            Kind::List => matches.get_many::<String>(flag).map(|items| {
                toml::Value::Array(
                    items
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.clone()))
                        .collect(),
                )
            }),
        };
        if let Some(value) = value {
            set_path(&mut table, key, value);
        }
    }
    table
}

/// Writes `value` at a dotted key path, creating tables on the way.
fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            // The file had a scalar where a section belongs; the flag wins and
            // deserialisation reports nothing odd about a value we replaced.
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::super::load::{from_table, parse_toml};
    use super::*;

    fn parse_with(args: &[&str], file: Option<&str>) -> Result<Config, Vec<ConfigProblem>> {
        let table = match file {
            Some(text) => parse_toml(text)?,
            None => toml::Table::new(),
        };
        let mut argv = vec!["pollbridge"];
        argv.extend_from_slice(args);
        let matches = command().try_get_matches_from(argv).expect("valid flags");
        from_table(merge(table, &matches))
    }

    #[test]
    fn no_configuration_gives_the_contract_defaults() {
        let cfg = parse_with(&[], None).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(cfg.prefix, "/rt");
    }

    #[test]
    fn flag_beats_file() {
        let file = "listen = \"127.0.0.1:1000\"\n[longpoll]\ndefault_timeout = \"5s\"\n";
        let cfg = parse_with(&["--listen", "127.0.0.1:2000"], Some(file)).unwrap();
        assert_eq!(cfg.listen.port(), 2000);
        assert_eq!(cfg.longpoll.default_timeout.as_secs(), 5);
        let cfg = parse_with(&["--longpoll-timeout", "7s"], Some(file)).unwrap();
        assert_eq!(cfg.longpoll.default_timeout.as_secs(), 7);
    }

    #[test]
    fn list_flags_split_on_commas() {
        let cfg = parse_with(
            &[
                "--cors-origin",
                "http://a.test,http://b.test",
                "--cors-origin",
                "*",
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            cfg.longpoll.cors_origins,
            ["http://a.test", "http://b.test", "*"]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse_with(&[], Some("[longpoll]\ntimeuot = \"5s\"\n")).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].to_string().contains("longpoll"), "{}", err[0]);
        assert!(err[0].to_string().contains("timeuot"), "{}", err[0]);
    }

    #[test]
    fn bad_duration_and_address_name_their_keys() {
        let err =
            parse_with(&[], Some("[websocket]\nping_interval = \"5 parsecs\"\n")).unwrap_err();
        assert_eq!(err[0].key, "websocket.ping_interval");
        let err = parse_with(&["--admin-listen", "nowhere"], None).unwrap_err();
        assert_eq!(err[0].key, "admin_listen");
        assert!(!err[0].to_string().contains('\n'));
    }

    #[test]
    fn a_key_with_a_newline_is_named_on_one_line() {
        // Found while fuzzing the loader (fuzz/regressions/config_loader/).
        let err = parse_with(&[], Some("\"a\\nb\" = 1\n")).unwrap_err();
        assert_eq!(err[0].key, "a\\nb");
        assert!(!err[0].to_string().contains('\n'), "{}", err[0]);
    }

    #[test]
    fn broken_toml_is_one_line() {
        let err = parse_with(&[], Some("listen = \n")).unwrap_err();
        assert!(!err[0].to_string().contains('\n'), "{}", err[0]);
        assert!(err[0].to_string().contains("line 1"), "{}", err[0]);
    }
}
