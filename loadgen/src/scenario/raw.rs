//! The scenario file as written: serde structs mirroring the TOML, with
//! durations and rates still strings and every default filled in. The
//! validation pass in the parent module turns them into typed values.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Keys whose value is a duration string (`"5s"`), wherever they appear.
const DURATION_KEYS: &[&str] = &[
    "duration",
    "heartbeat_interval",
    "offline_after",
    "max_lag",
    "interval",
    "drain",
    "connect_timeout",
    "slo",
];
/// Keys whose value is a rate string (`"100/s"`).
const RATE_KEYS: &[&str] = &["message_rate", "disconnect_rate", "history_rate"];

/// Turns serde's error at `path` into the key path and reason a person reads:
/// the unknown key named once (`population.userz`), and a wrong type with the
/// form the field takes (`duration = 6` -> write `duration = "6s"`).
pub(super) fn explain(path: String, message: String) -> (String, String) {
    let mut path = if path == "." { String::new() } else { path };
    // serde_path_to_error names an unknown key at the key itself, serde's
    // message names it again: keep one.
    if let Some(key) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        let last = path.rsplit('.').next().unwrap_or("");
        if last != key {
            path = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
        }
    }
    let hint = type_hint(&path, &message);
    if path.is_empty() {
        path = "scenario file".into();
    }
    match hint {
        Some(hint) => (path, format!("{message}: {hint}")),
        None => (path, message),
    }
}

/// What to write instead, for an `invalid type` error.
fn type_hint(path: &str, message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid type: ")?;
    // "integer `6`, expected a string": the value as written, if serde quotes it.
    let written = rest.split('`').nth(1).unwrap_or("N");
    let key = path.rsplit('.').next().unwrap_or(path);
    let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
    if rest.ends_with("expected a string") {
        if DURATION_KEYS.contains(&key) || parent.ends_with("reconnect_delay") {
            return Some(format!(
                "a duration is a string with a unit: write {key} = \"{written}s\" (or \"{written}ms\")"
            ));
        }
        if RATE_KEYS.contains(&key) {
            return Some(format!(
                "a rate is a string: write {key} = \"{written}/s\" (or \"{written}/m\")"
            ));
        }
        if parent == "thresholds" {
            return Some(format!(
                "a threshold is a comparison in a string: write \"{key}\" = \"== {written}\" (or \"< 50ms\", ...)"
            ));
        }
        return Some(format!("write it in quotes: {key} = \"{written}\""));
    }
    if rest.ends_with("expected i64") || rest.ends_with("expected u64") {
        return Some(format!(
            "{key} is a whole number, like {key} = 100 (no quotes)"
        ));
    }
    if rest.ends_with("expected f64") {
        return Some(format!("{key} is a number, like {key} = 0.5 (no quotes)"));
    }
    None
}

use crate::projection::ProjectionConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) description: String,
    #[serde(default = "default_seed")]
    pub(super) seed: u64,
    #[serde(default)]
    pub(super) target: RawTarget,
    #[serde(default)]
    pub(super) population: RawPopulation,
    #[serde(default)]
    pub(super) behavior: RawBehavior,
    #[serde(default)]
    pub(super) generator: RawGenerator,
    #[serde(default)]
    pub(super) phase: Vec<RawPhase>,
    #[serde(default)]
    pub(super) thresholds: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) projection: ProjectionConfig,
}

fn default_seed() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTarget {
    pub(super) url: Option<String>,
    pub(super) storage: String,
    pub(super) servers: i64,
    pub(super) cluster: Option<String>,
    pub(super) provisioning_token: Option<String>,
}

impl Default for RawTarget {
    fn default() -> Self {
        RawTarget {
            url: None,
            storage: "memory".into(),
            servers: 1,
            cluster: None,
            provisioning_token: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPopulation {
    pub(super) users: i64,
    pub(super) devices: BTreeMap<String, f64>,
    pub(super) friends: f64,
    pub(super) groups: i64,
    pub(super) group_size: RawRange,
}

impl Default for RawPopulation {
    fn default() -> Self {
        RawPopulation {
            users: 100,
            devices: BTreeMap::from([("1".to_string(), 1.0)]),
            friends: 5.0,
            groups: 0,
            group_size: RawRange { min: 3, max: 10 },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRange {
    pub(super) min: i64,
    pub(super) max: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBehavior {
    pub(super) heartbeat_interval: String,
    pub(super) offline_after: String,
    pub(super) text_length: RawTextLength,
    pub(super) group_share: f64,
    pub(super) reconnect_delay: RawDelay,
}

impl Default for RawBehavior {
    fn default() -> Self {
        RawBehavior {
            heartbeat_interval: "5s".into(),
            offline_after: "30s".into(),
            text_length: RawTextLength {
                mean: 80.0,
                max: 1000,
            },
            group_share: 0.0,
            reconnect_delay: RawDelay {
                min: "1s".into(),
                max: "5s".into(),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTextLength {
    pub(super) mean: f64,
    pub(super) max: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelay {
    pub(super) min: String,
    pub(super) max: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGenerator {
    pub(super) max_lag: String,
    pub(super) interval: String,
    pub(super) drain: String,
    pub(super) provision_concurrency: i64,
    pub(super) connect_timeout: String,
    pub(super) source_addresses: Vec<String>,
    pub(super) connections_per_source: i64,
    pub(super) clock_resolution: String,
}

impl Default for RawGenerator {
    fn default() -> Self {
        RawGenerator {
            max_lag: "50ms".into(),
            interval: "1s".into(),
            drain: "2s".into(),
            provision_concurrency: 64,
            connect_timeout: "10s".into(),
            source_addresses: Vec::new(),
            connections_per_source: 20_000,
            clock_resolution: "0s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPhase {
    pub(super) name: Option<String>,
    pub(super) duration: String,
    pub(super) online: Option<i64>,
    #[serde(default = "zero_rate")]
    pub(super) message_rate: String,
    #[serde(default = "zero_rate")]
    pub(super) disconnect_rate: String,
    #[serde(default = "zero_rate")]
    pub(super) history_rate: String,
    pub(super) kill_node: Option<i64>,
    pub(super) stop_node: Option<i64>,
    pub(super) start_node: Option<i64>,
}

fn zero_rate() -> String {
    "0/s".into()
}
