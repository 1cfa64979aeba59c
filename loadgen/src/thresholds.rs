//! The `[thresholds]` table: the CI gate of a scenario.
//!
//! Each line names a metric and a comparison, `"delivery_latency.p99" = "< 50ms"`.
//! The table is parsed and checked before the run starts (a misspelt metric is
//! exit 2, not a gate that silently never fires), and evaluated once against the
//! merged [`Outcome`], giving one [`ThresholdRow`] per line for the report. The
//! limit's unit follows the metric's kind: durations for latencies (`"50ms"`),
//! sizes for memory (`"8KiB"`), plain numbers for counts and rates. A latency
//! threshold on a metric that recorded nothing fails, with the reason in the row:
//! "p99 < 50ms" over zero samples proves nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::outcome::{AuditCounts, Counters, Outcome, LATENCY_METRICS};
use crate::report::measures;
use crate::units::{parse_duration, parse_rate, parse_size};

/// Counts a threshold may name besides the counters and the audit's counts
/// (those come from their declaration in [`crate::catalog`]).
const OTHER_COUNTS: &[&str] = &["peak_connections", "errors", "generator_limited"];

/// Every plain count a threshold may name.
fn count_names() -> impl Iterator<Item = &'static str> {
    Counters::NAMES
        .iter()
        .chain(AuditCounts::NAMES)
        .chain(OTHER_COUNTS)
        .copied()
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
}

impl Op {
    /// Operators, longest first so `<=` is not read as `<`.
    const ALL: [(&'static str, Op); 6] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Gt => ">",
        }
    }

    pub fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Op::Lt => value < limit,
            Op::Le => value <= limit,
            Op::Eq => value == limit,
            Op::Ne => value != limit,
            Op::Ge => value >= limit,
            Op::Gt => value > limit,
        }
    }
}

/// Which statistic of a latency histogram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stat {
    /// A percentile, 0 < p <= 100.
    Percentile(f64),
    Mean,
    Max,
    Min,
    /// Number of samples (a plain count).
    Count,
}

/// What a threshold measures.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// A histogram of [`LATENCY_METRICS`], or `generator_lag`.
    Latency { name: String, stat: Stat },
    /// A counter, an audit count, `peak_connections`, `errors`,
    /// `generator_limited`, or `errors.CODE`.
    Count(String),
    /// `throughput` (acked messages/s) or `delivery_rate` (deliveries/s).
    Rate(String),
    /// `server_memory_per_connection` or `loadgen_memory_per_connection`, bytes.
    Size(String),
    /// `provisioning_time`, a duration.
    Duration(String),
}

impl Metric {
    /// The unit of the row's `value`.
    pub fn unit(&self) -> &'static str {
        match self {
            Metric::Latency {
                stat: Stat::Count, ..
            }
            | Metric::Count(_) => "count",
            Metric::Latency { .. } | Metric::Duration(_) => "ms",
            Metric::Rate(_) => "per_s",
            Metric::Size(_) => "bytes",
        }
    }
}

/// One parsed line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub key: String,
    pub metric: Metric,
    pub op: Op,
    /// The limit in the row's display unit (ms, bytes, count, per second).
    pub limit: f64,
    /// `"delivery_latency.p99 < 50ms"`, as the file wrote the limit.
    pub expr: String,
}

/// One evaluated threshold, as report.json lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdRow {
    pub expr: String,
    /// The measured value in `unit` (ms for latencies, bytes for memory,
    /// count or per second otherwise); 0 when it could not be measured.
    pub value: f64,
    pub passed: bool,
    pub unit: String,
    /// The limit the value was compared with, in `unit`.
    pub limit: f64,
    /// Why a row failed without a measurement, or what a baseline row compared.
    pub note: Option<String>,
}

/// The parsed `[thresholds]` table. Empty: nothing is gated, every run passes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub rules: Vec<Threshold>,
}

impl Thresholds {
    /// Parses the table; any bad line is `Invalid { path: "thresholds.\"KEY\"" }`.
    pub fn parse(table: &BTreeMap<String, String>) -> Result<Thresholds, LoadgenError> {
        let rules = table
            .iter()
            .map(|(key, value)| {
                parse_line(key, value).map_err(|reason| {
                    LoadgenError::invalid(format!("thresholds.\"{key}\""), reason)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Thresholds { rules })
    }

    /// Judges a merged outcome: one row per line, in key order.
    pub fn evaluate(&self, outcome: &Outcome) -> Vec<ThresholdRow> {
        let observed = Observed::of(outcome);
        self.rules
            .iter()
            .map(|rule| match observed.value(outcome, &rule.metric) {
                Ok(value) => ThresholdRow {
                    expr: rule.expr.clone(),
                    value,
                    passed: rule.op.holds(value, rule.limit),
                    unit: rule.metric.unit().into(),
                    limit: rule.limit,
                    note: None,
                },
                Err(reason) => ThresholdRow {
                    expr: rule.expr.clone(),
                    value: 0.0,
                    passed: false,
                    unit: rule.metric.unit().into(),
                    limit: rule.limit,
                    note: Some(reason),
                },
            })
            .collect()
    }
}

fn parse_line(key: &str, value: &str) -> Result<Threshold, String> {
    let metric = parse_metric(key.trim())?;
    let text = value.trim();
    let (op, rest) = Op::ALL
        .iter()
        .find_map(|(sym, op)| text.strip_prefix(sym).map(|rest| (*op, rest.trim())))
        .ok_or_else(|| {
            format!("{value:?} has no comparison: start it with one of < <= == != >= > (e.g. \"< 50ms\")")
        })?;
    if rest.is_empty() {
        return Err(format!("{value:?} has no limit after {:?}", op.symbol()));
    }
    let limit = match &metric {
        Metric::Latency {
            stat: Stat::Count, ..
        }
        | Metric::Count(_) => parse_number(rest)?,
        Metric::Latency { .. } | Metric::Duration(_) => {
            parse_duration(rest)
                .map_err(|e| format!("{e}; {key} is a duration"))?
                .as_secs_f64()
                * 1000.0
        }
        Metric::Rate(_) if rest.contains('/') => parse_rate(rest)?,
        Metric::Rate(_) => parse_number(rest)?,
        Metric::Size(_) => {
            parse_size(rest).map_err(|e| format!("{e}; {key} is a size in bytes"))?
        }
    };
    Ok(Threshold {
        key: key.to_string(),
        metric,
        op,
        limit,
        expr: format!("{} {} {rest}", key.trim(), op.symbol()),
    })
}

fn parse_number(s: &str) -> Result<f64, String> {
    s.replace('_', "")
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("{s:?} is not a number (counts take no unit)"))
}

fn parse_metric(key: &str) -> Result<Metric, String> {
    if let Some(code) = key.strip_prefix("errors.") {
        if code.is_empty() {
            return Err("\"errors.\" names no error code (e.g. errors.rate_limited)".into());
        }
        if let Some(now) = crate::codes::retired(code) {
            return Err(format!(
                "error code {code:?} is no longer counted; what it counted is now {now}"
            ));
        }
        if !crate::codes::is_known(code) {
            return Err(format!(
                "unknown error code {code:?}: a run counts only {}",
                crate::codes::known_list()
            ));
        }
        return Ok(Metric::Count(key.to_string()));
    }
    if count_names().any(|n| n == key) {
        return Ok(Metric::Count(key.to_string()));
    }
    match key {
        "throughput" | "delivery_rate" => return Ok(Metric::Rate(key.into())),
        "server_memory_per_connection" | "loadgen_memory_per_connection" => {
            return Ok(Metric::Size(key.into()))
        }
        "provisioning_time" => return Ok(Metric::Duration(key.into())),
        _ => {}
    }
    let (name, stat) = key.split_once('.').unwrap_or((key, ""));
    let is_latency = name == "generator_lag"
        || name == "send_delay"
        || LATENCY_METRICS.iter().any(|(n, _)| *n == name);
    if !is_latency {
        return Err(format!(
            "unknown metric {name:?}; known: {}, generator_lag, send_delay (each with .p50/.p99/.p999/.max/.mean/.count), \
             {}, errors.CODE, throughput, delivery_rate, server_memory_per_connection, \
             loadgen_memory_per_connection, provisioning_time",
            LATENCY_METRICS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            count_names().collect::<Vec<_>>().join(", ")
        ));
    }
    if stat.is_empty() {
        return Err(format!(
            "a latency threshold names a statistic: {name}.p99, {name}.max, {name}.mean, ..."
        ));
    }
    Ok(Metric::Latency {
        name: name.to_string(),
        stat: parse_stat(stat)?,
    })
}

/// `p50` = 50%, `p99` = 99%, `p999` = 99.9%, `p9999` = 99.99%, `p99.5` = 99.5%:
/// the first two digits are the whole percent, further digits its decimals.
fn parse_stat(stat: &str) -> Result<Stat, String> {
    match stat {
        "mean" => return Ok(Stat::Mean),
        "max" | "p100" => return Ok(Stat::Max),
        "min" => return Ok(Stat::Min),
        "count" => return Ok(Stat::Count),
        _ => {}
    }
    let digits = stat
        .strip_prefix('p')
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit() || c == '.'));
    let Some(digits) = digits else {
        return Err(format!("unknown statistic {stat:?}: use p50, p90, p99, p999, p9999, p99.5, max, min, mean or count"));
    };
    let percent: f64 = if digits.contains('.') || digits.len() <= 2 {
        digits
            .parse()
            .map_err(|_| format!("unknown percentile {stat:?}"))?
    } else {
        format!("{}.{}", &digits[..2], &digits[2..])
            .parse()
            .map_err(|_| format!("unknown percentile {stat:?}"))?
    };
    if !(percent > 0.0 && percent <= 100.0) {
        return Err(format!("percentile {stat:?} is out of range (0, 100]"));
    }
    Ok(Stat::Percentile(percent))
}

/// Figures derived once per evaluation.
struct Observed {
    server_memory: Result<f64, String>,
    loadgen_memory: Result<f64, String>,
}

impl Observed {
    fn of(outcome: &Outcome) -> Self {
        let timeline = measures::memory_timeline(&outcome.memory);
        let server_memory = measures::server_memory_fit(&timeline)
            .map(|f| f.slope.round())
            .ok_or_else(|| format!("not measured: {}", measures::server_memory_gap(&timeline)));
        let loadgen_memory = measures::loadgen_memory_fit(&timeline)
            .map(|f| f.slope.round())
            .ok_or_else(|| {
                "not measured: too few memory samples or too little change in connections"
                    .to_string()
            });
        Observed {
            server_memory,
            loadgen_memory,
        }
    }

    fn value(&self, outcome: &Outcome, metric: &Metric) -> Result<f64, String> {
        match metric {
            Metric::Latency { name, stat } => {
                let h = match name.as_str() {
                    "generator_lag" => Some(&outcome.generator.lag),
                    "send_delay" => Some(&outcome.generator.send_delay),
                    _ => outcome.histograms.get(name),
                };
                let Some(h) = h.filter(|h| !h.is_empty()) else {
                    return match stat {
                        Stat::Count => Ok(0.0),
                        _ => Err(format!(
                            "no {name} samples were recorded, so the limit was not tested"
                        )),
                    };
                };
                Ok(match stat {
                    Stat::Percentile(p) => measures::quantile_ms(h, p / 100.0),
                    Stat::Mean => measures::round3(h.mean() / 1000.0),
                    Stat::Max => measures::round3(h.max() as f64 / 1000.0),
                    Stat::Min => measures::round3(h.min() as f64 / 1000.0),
                    Stat::Count => h.len() as f64,
                })
            }
            Metric::Count(name) => Ok(count(outcome, name) as f64),
            Metric::Rate(name) if name == "throughput" => Ok(measures::throughput(outcome)),
            Metric::Rate(_) => Ok(measures::delivery_rate(outcome)),
            Metric::Size(name) if name == "server_memory_per_connection" => {
                self.server_memory.clone()
            }
            Metric::Size(_) => self.loadgen_memory.clone(),
            Metric::Duration(_) => Ok(measures::round3(outcome.provisioning.seconds * 1000.0)),
        }
    }
}

fn count(o: &Outcome, name: &str) -> u64 {
    if let Some(n) = o.counters.get(name).or_else(|| o.audit.get(name)) {
        return n;
    }
    match name {
        "peak_connections" => o.peak_connections,
        "errors" => o.errors.values().sum(),
        "generator_limited" => u64::from(o.generator.limited()),
        code => code
            .strip_prefix("errors.")
            .and_then(|code| o.errors.get(code))
            .copied()
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_read_as_written() {
        assert_eq!(parse_stat("p50").unwrap(), Stat::Percentile(50.0));
        assert_eq!(parse_stat("p999").unwrap(), Stat::Percentile(99.9));
        assert_eq!(parse_stat("p9999").unwrap(), Stat::Percentile(99.99));
        assert_eq!(parse_stat("p99.5").unwrap(), Stat::Percentile(99.5));
        assert_eq!(parse_stat("p5").unwrap(), Stat::Percentile(5.0));
        assert!(parse_stat("p0").is_err());
        assert!(parse_stat("pxx").is_err());
    }
}
