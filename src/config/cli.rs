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

use super::{Config, ConfigProblem};

/// How a flag's text becomes a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    /// Kept as a string (addresses, durations, URLs, names).
    Text,
    /// An unsigned integer.
    Integer,
    /// `true` / `false`.
    Bool,
    /// A comma-separated list of strings (or the flag repeated).
    List,
}

/// Every configuration key that has a flag.
const SETTINGS: &[(&str, &str, Kind, &str)] = &[
    ("listen", "listen", Kind::Text, "Public listener address [default: 127.0.0.1:8080]"),
    ("admin-listen", "admin_listen", Kind::Text, "Admin listener address (metrics, health, publish) [default: 127.0.0.1:9090]"),
    ("admin-token", "admin.token", Kind::Text, "Bearer token the admin listener requires (all but /healthz, /readyz and /); prefer --admin-token-file or POLLBRIDGE_ADMIN_TOKEN [default: none]"),
    ("admin-token-file", "admin.token_file", Kind::Text, "File holding the admin bearer token [default: none]"),
    ("admin-allowed-origin", "admin.allowed_origins", Kind::List, "Origin whose pages may call the admin listener; repeat or comma-separate [default: none, same origin only]"),
    ("admin-allowed-host", "admin.allowed_hosts", Kind::List, "Host name the admin listener answers to besides IPs and localhost; repeat or comma-separate [default: none]"),
    ("upstream", "upstream", Kind::Text, "Backend URL that every non-gateway path is proxied to, e.g. http://127.0.0.1:3000 [default: none]"),
    ("prefix", "prefix", Kind::Text, "Path prefix of the client transports [default: /rt]"),
    ("bus", "bus", Kind::Text, "Message bus: memory, or a Redis URL redis://[[user]:password@]host[:port][/db] / rediss://… (TLS) shared by every node [default: memory]"),
    ("redis-cluster", "redis.cluster", Kind::Bool, "The --bus Redis is one node of a Redis Cluster [default: false]"),
    ("redis-cluster-node", "redis.cluster_nodes", Kind::List, "More Redis Cluster nodes to start from (redis://host:port); repeat or comma-separate [default: none]"),
    ("redis-pool-size", "redis.pool_size", Kind::Integer, "Redis command connections (multiplexed) [default: 1]"),
    ("redis-connect-timeout", "redis.connect_timeout", Kind::Text, "Connecting to Redis must finish within this [default: 2s]"),
    ("redis-command-timeout", "redis.command_timeout", Kind::Text, "Every Redis command must be answered within this, else 503 [default: 2s]"),
    ("redis-reconnect-min-delay", "redis.reconnect_min_delay", Kind::Text, "First Redis reconnect delay, doubling with jitter [default: 100ms]"),
    ("redis-reconnect-max-delay", "redis.reconnect_max_delay", Kind::Text, "Longest Redis reconnect delay [default: 5s]"),
    ("redis-health-interval", "redis.health_interval", Kind::Text, "Ping the Redis subscription connection this often [default: 1s]"),
    ("redis-unsubscribe-delay", "redis.unsubscribe_delay", Kind::Text, "Unsubscribe a channel on Redis this long after its last local subscriber left [default: 10s]"),
    ("redis-pubsub", "redis.pubsub", Kind::Text, "Redis pub/sub commands: auto, sharded (SPUBLISH, Redis 7+) or classic [default: auto]"),
    ("redis-key-prefix", "redis.key_prefix", Kind::Text, "Prefix of every Redis key and pub/sub channel [default: pollbridge]"),
    ("redis-tls-ca-file", "redis.tls_ca_file", Kind::Text, "PEM CA certificate(s) trusted for rediss:// instead of the system store [default: none]"),
    ("log-level", "log_level", Kind::Text, "Log filter when RUST_LOG is unset [default: info]"),
    ("workers", "workers", Kind::Integer, "Runtime worker threads, each a fan-out shard writing its share of every channel's subscribers [default: the number of cores]"),
    ("history-size", "history.size", Kind::Integer, "Messages kept per channel for resuming clients [default: 1000]"),
    ("history-max-age", "history.max_age", Kind::Text, "Drop history older than this [default: 1h]"),
    ("history-idle-channel-ttl", "history.idle_channel_ttl", Kind::Text, "Forget an empty, unwatched channel after this [default: 5m]"),
    ("history-max-bytes", "history.max_bytes", Kind::Integer, "Bytes of history kept per channel, oldest dropped first [default: 4194304]"),
    ("history-max-total-bytes", "history.max_total_bytes", Kind::Integer, "Bytes of history kept in memory over all channels, oldest dropped first [default: 268435456]"),
    ("max-connections", "limits.max_connections", Kind::Integer, "Open client connections on the public listener [default: 19000]"),
    ("max-message-bytes", "limits.max_message_bytes", Kind::Integer, "Largest published payload / client WebSocket message [default: 65536]"),
    ("queue-length", "limits.queue_length", Kind::Integer, "Messages queued per subscriber before a slow one is dropped [default: 1024]"),
    ("max-subscriptions", "limits.max_subscriptions_per_connection", Kind::Integer, "Channels per WebSocket connection [default: 64]"),
    ("max-header-bytes", "limits.max_header_bytes", Kind::Integer, "Largest HTTP request head [default: 16384]"),
    ("header-read-timeout", "limits.header_read_timeout", Kind::Text, "A request head must arrive within this time [default: 10s]"),
    ("body-read-timeout", "limits.body_read_timeout", Kind::Text, "A publish body must arrive within this time [default: 10s]"),
    ("max-connections-per-ip", "limits.max_connections_per_ip", Kind::Integer, "Open connections from one client address; 0 = unlimited [default: 1000]"),
    ("longpoll-rate-per-ip", "limits.longpoll_rate_per_ip", Kind::Integer, "Long-polls per second from one client address; 0 = unlimited [default: 100]"),
    ("trusted-proxy", "limits.trusted_proxies", Kind::List, "Proxy address/CIDR whose X-Forwarded-For names the client; repeat or comma-separate [default: none]"),
    ("new-sessions-per-second", "limits.new_sessions_per_second", Kind::Integer, "New WebSocket/SSE sessions admitted per second; 0 = unlimited [default: 2000]"),
    ("write-timeout", "limits.write_timeout", Kind::Text, "Close an HTTP answer or SSE stream whose socket accepts nothing for this long [default: 30s]"),
    ("max-pending-output-bytes", "limits.max_pending_output_bytes", Kind::Integer, "Unsent output all clients together may hold; past it the largest are dropped [default: 268435456]"),
    ("client-output-hard-bytes", "limits.client_output_hard_bytes", Kind::Integer, "Drop a client whose unsent output passes this [default: 33554432]"),
    ("client-output-soft-bytes", "limits.client_output_soft_bytes", Kind::Integer, "Drop a client whose unsent output stays past this for --client-output-soft-time [default: 8388608]"),
    ("client-output-soft-time", "limits.client_output_soft_time", Kind::Text, "How long a client may stay past --client-output-soft-bytes [default: 60s]"),
    ("ws-command-rate", "limits.ws.command_rate", Kind::Integer, "WebSocket commands per second per connection; 0 = unlimited [default: 50]"),
    ("ws-command-burst", "limits.ws.command_burst", Kind::Integer, "WebSocket commands at once before the rate applies [default: 100]"),
    ("ws-publish-rate", "limits.ws.publish_rate", Kind::Integer, "Client publishes per second per WebSocket; 0 = unlimited [default: 10]"),
    ("ws-publish-burst", "limits.ws.publish_burst", Kind::Integer, "Client publishes at once before the rate applies [default: 20]"),
    ("ws-publish-bytes-rate", "limits.ws.publish_bytes_rate", Kind::Integer, "Payload bytes per second a WebSocket may publish; 0 = unlimited [default: 65536]"),
    ("ws-publish-bytes-burst", "limits.ws.publish_bytes_burst", Kind::Integer, "Payload bytes a WebSocket may publish at once [default: 262144]"),
    ("ws-refusals-before-close", "limits.ws.refusals_before_close", Kind::Integer, "Rate refusals (forgiven at 1/s) before a WebSocket is closed with 1008 [default: 20]"),
    ("max-client-channels", "limits.ws.max_client_channels", Kind::Integer, "Channels client publishes may create on this node [default: 1000]"),
    ("ws-enabled", "websocket.enabled", Kind::Bool, "Accept WebSocket upgrades [default: true]"),
    ("ws-ping-interval", "websocket.ping_interval", Kind::Text, "Ping a WebSocket client silent for this long [default: 30s]"),
    ("ws-idle-timeout", "websocket.idle_timeout", Kind::Text, "Drop a WebSocket client silent for this long [default: 75s]"),
    ("ws-write-timeout", "websocket.write_timeout", Kind::Text, "Drop a WebSocket client whose socket accepts nothing for this long [default: 30s]"),
    ("longpoll-timeout", "longpoll.default_timeout", Kind::Text, "Hold time of a long-poll without ?timeout= [default: 25s]"),
    ("longpoll-max-timeout", "longpoll.max_timeout", Kind::Text, "Upper bound on a long-poll's ?timeout= [default: 120s]"),
    ("longpoll-max-messages", "longpoll.max_messages", Kind::Integer, "Most messages in one long-poll answer [default: 1000]"),
    ("longpoll-max-answer-bytes", "longpoll.max_answer_bytes", Kind::Integer, "Most bytes of messages in one long-poll answer (at least one message); the client pages on [default: 1048576]"),
    ("cors-origin", "longpoll.cors_origins", Kind::List, "Origin allowed to poll cross-site; repeat or comma-separate [default: none]"),
    ("sse-keepalive", "sse.keepalive_interval", Kind::Text, "SSE comment keep-alive interval [default: 15s]"),
    ("sse-retry", "sse.retry", Kind::Text, "Reconnect delay suggested to SSE clients [default: 2s]"),
    ("proxy-connect-timeout", "proxy.connect_timeout", Kind::Text, "Upstream connect timeout, then 502 [default: 2s]"),
    ("proxy-timeout", "proxy.timeout", Kind::Text, "Upstream response-head timeout, then 504 [default: 30s]"),
    ("proxy-pool-idle-timeout", "proxy.pool_idle_timeout", Kind::Text, "Close idle upstream connections after this [default: 30s]"),
    ("proxy-pool-max-idle", "proxy.pool_max_idle", Kind::Integer, "Idle upstream connections kept [default: 256]"),
    ("proxy-body-timeout", "proxy.body_timeout", Kind::Text, "A proxied request body must be complete within this, plus 1s per --proxy-body-min-rate bytes, else 408 [default: 10s]"),
    ("proxy-body-min-rate", "proxy.body_min_rate", Kind::Integer, "Bytes per second that extend --proxy-body-timeout by 1s; 0 = whole body within it [default: 1024]"),
    ("publish-key", "publish.keys", Kind::List, "Key allowing POST {prefix}/publish on the public listener; repeat or comma-separate [default: none]"),
    ("drain-timeout", "shutdown.drain_timeout", Kind::Text, "Time connections get to finish after SIGTERM [default: 10s]"),
    ("jwt-secret", "auth.jwt_secret", Kind::Text, "HS256 secret for subscriber tokens [default: none]"),
    ("jwt-public-key-file", "auth.jwt_public_key_file", Kind::Text, "PEM public key for RS256/ES256 subscriber tokens [default: none]"),
    ("token-cookie", "auth.token_cookie", Kind::Text, "Cookie that may carry the subscriber token [default: pollbridge_token]"),
    ("auth-url", "auth.auth_url", Kind::Text, "Backend URL asked whether a client may subscribe [default: none]"),
    ("auth-cache-ttl", "auth.auth_cache_ttl", Kind::Text, "How long a backend auth answer is reused [default: 30s]"),
    ("auth-timeout", "auth.auth_timeout", Kind::Text, "Backend auth answer deadline [default: 2s]"),
    ("auth-max-concurrent", "auth.auth_max_concurrent", Kind::Integer, "Backend auth requests in flight, gateway-wide; 0 = unlimited [default: 32]"),
    ("auth-max-concurrent-per-ip", "auth.auth_max_concurrent_per_ip", Kind::Integer, "Backend auth requests in flight per client address; 0 = unlimited [default: 2]"),
    ("auth-rate", "auth.auth_rate", Kind::Integer, "Backend auth requests per second, gateway-wide; 0 = unlimited [default: 100]"),
    ("auth-rate-per-ip", "auth.auth_rate_per_ip", Kind::Integer, "Backend auth requests per second per client address; 0 = unlimited [default: 5]"),
    ("auth-cache-max-entries", "auth.auth_cache_max_entries", Kind::Integer, "Backend auth answers cached at most [default: 100000]"),
    ("token-leeway", "auth.leeway", Kind::Text, "Clock skew allowed on subscriber token exp/nbf; sessions close at exp + leeway [default: 5s]"),
    ("allowed-origin", "auth.allowed_origins", Kind::List, "Origin allowed to connect (WebSocket, SSE, long-poll); repeat or comma-separate [default: any]"),
    ("require-origin", "auth.require_origin", Kind::Bool, "Refuse requests without Origin when origins are restricted [default: false]"),
    ("tls-cert-file", "tls.cert_file", Kind::Text, "PEM certificate chain for TLS on the public listener [default: none]"),
    ("tls-key-file", "tls.key_file", Kind::Text, "PEM private key for TLS on the public listener [default: none]"),
    ("legacy-window", "migration.legacy_window", Kind::Text, "Window over which distinct legacy pollers are counted [default: 5m]"),
    ("reconnect-window", "shutdown.reconnect_window", Kind::Text, "Reconnect hints to clients are spread over this window [default: 10s]"),
    ("demo", "demo.enabled", Kind::Bool, "Serve the live demo at {prefix}/demo [default: false]"),
    ("demo-channel", "demo.channel", Kind::Text, "Channel of the demo page [default: demo]"),
    ("public-stats", "demo.public_stats", Kind::Bool, "Serve {prefix}/stats on the public listener [default: same as --demo]"),
    ("conformance-echo", "conformance_echo", Kind::Bool, "Serve a WebSocket echo at {prefix}/echo for conformance tests [default: false]"),
];

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
/// layers. `Err` carries every problem found; the caller prints them and
/// exits with code 2. Clap's own usage errors exit from inside (also code 2).
pub fn parse<I, T>(args: I) -> Result<Invocation, Vec<ConfigProblem>>
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
    let config = merge(table, &matches)?;
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
        crate::bus::redis::redact(&config.bus),
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

/// Loads a configuration file on its own, without flags or environment.
pub fn load_file(path: &std::path::Path) -> Result<Config, Vec<ConfigProblem>> {
    from_table(read_table(path)?)
}

/// Parses configuration text, as from a file.
pub fn from_toml_str(text: &str) -> Result<Config, Vec<ConfigProblem>> {
    from_table(parse_toml(text)?)
}

fn read_table(path: &std::path::Path) -> Result<toml::Table, Vec<ConfigProblem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigProblem {
            key: "--config".into(),
            message: format!("cannot read {}: {e}", path.display()),
        }]
    })?;
    parse_toml(&text)
}

fn parse_toml(text: &str) -> Result<toml::Table, Vec<ConfigProblem>> {
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

fn merge(mut table: toml::Table, matches: &ArgMatches) -> Result<Config, Vec<ConfigProblem>> {
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
    from_table(table)
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

fn from_table(table: toml::Table) -> Result<Config, Vec<ConfigProblem>> {
    let config: Config =
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
        })?;
    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(args: &[&str], file: Option<&str>) -> Result<Config, Vec<ConfigProblem>> {
        let table = match file {
            Some(text) => parse_toml(text)?,
            None => toml::Table::new(),
        };
        let mut argv = vec!["pollbridge"];
        argv.extend_from_slice(args);
        let matches = command().try_get_matches_from(argv).expect("valid flags");
        merge(table, &matches)
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
