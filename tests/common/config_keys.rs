//! The configuration's keys as the code defines them, for the tests that keep
//! documentation in step with the structs (`deploy_config.rs` for the example
//! file, `docs_config.rs` for docs/configuration.md). Included with
//! `#[path]`, so it does not weigh on the tests that use `common`.
#![allow(dead_code)] // each including test uses a part

use std::collections::{BTreeMap, BTreeSet};

use pollbridge::config::{BridgeRoute, ChannelRule};
use pollbridge::Config;

/// The fields a `[[channels]]` entry and a `[[bridge]]` entry can't do
/// without; the rest take their defaults.
pub fn minimal_channel_rule() -> serde_json::Value {
    serde_json::json!({"pattern": "chat.*"})
}

pub fn minimal_bridge_route() -> serde_json::Value {
    serde_json::json!({"path": "/api/scores", "channel": "scores"})
}

/// Walks a serialised config and collects the dotted path of every leaf with
/// its value. Arrays of tables (`channels`, `bridge`) contribute their
/// entries' keys under the array's own name (`bridge.path`); arrays of
/// scalars are leaves.
pub fn leaf_values(
    value: &serde_json::Value,
    prefix: &str,
    out: &mut BTreeMap<String, serde_json::Value>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_values(child, &path, out);
            }
        }
        serde_json::Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for item in items {
                leaf_values(item, prefix, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

/// The default configuration, with one `[[channels]]` and one `[[bridge]]`
/// entry built from their required fields only (empty arrays of tables have
/// no entries to walk).
fn default_with_entries() -> Config {
    let mut cfg = Config::default();
    cfg.channels.push(
        serde_json::from_value::<ChannelRule>(minimal_channel_rule())
            .expect("a channel rule from its required fields"),
    );
    cfg.bridges.push(
        serde_json::from_value::<BridgeRoute>(minimal_bridge_route())
            .expect("a bridge route from its required fields"),
    );
    cfg
}

/// Every key of the configuration structs with its default value, as
/// dotted paths. `serde_json` writes `None` as `null` (unlike TOML, which
/// leaves it out), so optional keys are present too.
pub fn default_values() -> BTreeMap<String, serde_json::Value> {
    let mut values = BTreeMap::new();
    leaf_values(
        &serde_json::to_value(default_with_entries()).expect("Config serialises"),
        "",
        &mut values,
    );
    values
}

/// Every key of the configuration structs, as dotted paths. As a second
/// source, a TOML serialisation of a config whose optional values are all
/// set is walked too.
pub fn code_keys() -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = default_values().into_keys().collect();

    // The same config with its optional values set, through TOML.
    let mut cfg = default_with_entries();
    cfg.upstream = Some("http://127.0.0.1:3000".into());
    cfg.redis.tls_ca_file = Some("/ca.pem".into());
    cfg.auth.jwt_secret = Some("0123456789abcdef".into());
    cfg.auth.jwt_public_key_file = Some("/key.pem".into());
    cfg.auth.auth_url = Some("http://127.0.0.1:3000/auth".into());
    cfg.tls.cert_file = Some("/cert.pem".into());
    cfg.tls.key_file = Some("/key.pem".into());
    cfg.demo.public_stats = Some(true);
    cfg.bridges[0].hold = Some(std::time::Duration::from_secs(25));
    cfg.bridges[0].vary_by = Some("Cookie".into());
    let text = toml::to_string(&cfg).expect("Config serialises to TOML");
    let table: toml::Value = toml::from_str(&text).expect("TOML round trip");
    let mut toml_values = BTreeMap::new();
    leaf_values(
        &serde_json::to_value(&table).expect("TOML to JSON"),
        "",
        &mut toml_values,
    );
    keys.extend(toml_values.into_keys());
    keys
}

/// Keys of the array entries that have no default: leaving one out of its
/// minimal entry makes the entry fail to deserialise.
pub fn required_keys() -> BTreeSet<String> {
    let mut required = BTreeSet::new();
    /// Whether an entry deserialises.
    type Parses = fn(serde_json::Value) -> bool;
    let entries: [(&str, serde_json::Value, Parses); 2] = [
        ("channels", minimal_channel_rule(), |v| {
            serde_json::from_value::<ChannelRule>(v).is_ok()
        }),
        ("bridge", minimal_bridge_route(), |v| {
            serde_json::from_value::<BridgeRoute>(v).is_ok()
        }),
    ];
    for (array, entry, parses) in entries {
        let fields = entry.as_object().expect("an entry is an object").clone();
        for field in fields.keys() {
            let mut without = fields.clone();
            without.remove(field);
            if !parses(serde_json::Value::Object(without)) {
                required.insert(format!("{array}.{field}"));
            }
        }
    }
    required
}
