//! The plain fields of a report section (counters, audit, server stats) as
//! rows, read through serde rather than listed by hand: a counter added where
//! counters are declared shows in report.md and report.html without touching
//! either view.

use serde::Serialize;
use serde_json::Value;

use crate::outcome::PhaseOutcome;

/// The phase table's columns, in order.
pub const PHASE_COLUMNS: [&str; 11] = [
    "phase",
    "duration (s)",
    "online",
    "message rate (/s)",
    "messages sent",
    "acked/s",
    "ack p99 (ms)",
    "deliveries",
    "delivery p99 (ms)",
    "history rate (/s)",
    "history p99 (ms)",
];

/// One phase's cells under [`PHASE_COLUMNS`]; a p99 without samples reads `n/a`.
pub fn phase_cells(ph: &PhaseOutcome) -> [String; 11] {
    let or_na = |n: u64, v: f64| {
        if n == 0 {
            "n/a".to_string()
        } else {
            v.to_string()
        }
    };
    [
        ph.name.clone(),
        ((ph.duration_s * 10.0).round() / 10.0).to_string(),
        ph.online.to_string(),
        ph.message_rate.to_string(),
        ph.messages_sent.to_string(),
        (ph.acked as f64 / ph.duration_s.max(1e-3))
            .round()
            .to_string(),
        or_na(ph.acked, ph.ack_p99_ms),
        ph.deliveries.to_string(),
        ph.delivery_p99_ms
            .map_or_else(|| "n/a".to_string(), |v| v.to_string()),
        ph.history_rate.to_string(),
        or_na(ph.history_reads, ph.history_p99_ms),
    ]
}

/// `(field name, value as text)` for every number, bool or string field at the
/// top level of `section` (nested objects and lists are left to their own
/// tables); `null` reads `n/a`.
pub fn rows<T: Serialize>(section: &T) -> Vec<(String, String)> {
    let Ok(Value::Object(map)) = serde_json::to_value(section) else {
        return Vec::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::Number(n) => match n.as_u64() {
                    Some(u) => crate::projection::thousands(u as f64),
                    None => n.as_f64().map_or_else(
                        || n.to_string(),
                        |f| format!("{}", (f * 1000.0).round() / 1000.0),
                    ),
                },
                Value::Bool(b) => if b { "yes" } else { "no" }.to_string(),
                Value::String(s) => s,
                Value::Null => "n/a".to_string(),
                Value::Array(_) | Value::Object(_) => return None,
            };
            Some((k, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct S {
        sent: u64,
        rate: f64,
        note: Option<String>,
        limited: bool,
        list: Vec<u8>,
    }

    #[test]
    fn every_plain_field_becomes_a_row() {
        let r = rows(&S {
            sent: 12_345,
            rate: 1.23456,
            note: None,
            limited: true,
            list: vec![1],
        });
        assert_eq!(
            r,
            vec![
                ("sent".to_string(), "12,345".to_string()),
                ("rate".to_string(), "1.235".to_string()),
                ("note".to_string(), "n/a".to_string()),
                ("limited".to_string(), "yes".to_string()),
            ]
        );
    }
}
