//! `report.junit.xml`: the verdict in the JUnit XML format that CI systems
//! (GitLab, Jenkins, GitHub test-report actions, Buildkite, ...) read and show
//! as test results, without knowing anything about loadgen.
//!
//! One test suite per run, one test case per threshold row (baseline rows
//! included), one for the audit and one for the generator's health. A failed
//! threshold is a `<failure>` with the measured value and the limit; an audit
//! that found lost, undelivered, duplicated or reordered messages is a
//! `<failure>`, one that could not finish (or a run cut short) an `<error>`; a
//! generator that could not keep its schedule is a `<failure>`. The summary
//! lines go to the suite's `<system-out>`.

use std::fmt::Write as _;

use serde_json::Value;

use super::Report;

/// Audit counts that are faults of the server when above zero (those that
/// exist in this version's audit; others are shown, not judged).
const AUDIT_FAULTS: &[&str] = &["lost", "undelivered", "duplicated", "reordered"];

/// Escapes text for XML attributes and content.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

struct Case {
    name: String,
    classname: String,
    /// (element, message, details): `failure` or `error`.
    problem: Option<(&'static str, String, String)>,
}

/// The audit's counts as (name, value), in the order report.json has them.
fn audit_counts(report: &Report) -> Vec<(String, u64)> {
    match serde_json::to_value(&report.audit) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|n| (k, n)))
            .collect(),
        _ => Vec::new(),
    }
}

fn cases(r: &Report) -> Vec<Case> {
    let suite = format!("loadgen.{}", r.scenario);
    let mut out = Vec::new();
    for t in &r.thresholds {
        let classname = if t.expr.contains("baseline") {
            format!("{suite}.baseline")
        } else {
            format!("{suite}.thresholds")
        };
        out.push(Case {
            name: t.expr.clone(),
            classname,
            problem: (!t.passed).then(|| {
                (
                    "failure",
                    format!(
                        "{} {} against the limit {} {}",
                        t.value, t.unit, t.limit, t.unit
                    ),
                    t.note.clone().unwrap_or_default(),
                )
            }),
        });
    }

    let counts = audit_counts(r);
    let listing = counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let faults: Vec<String> = counts
        .iter()
        .filter(|(k, v)| AUDIT_FAULTS.contains(&k.as_str()) && *v > 0)
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let problem = if r.run.interrupted {
        Some((
            "error",
            "the run was interrupted: the audit covers only part of it".to_string(),
            listing.clone(),
        ))
    } else if r.audit.incomplete {
        Some((
            "error",
            "the audit could not read every member's inbox".to_string(),
            listing.clone(),
        ))
    } else if !faults.is_empty() {
        Some(("failure", faults.join(", "), listing.clone()))
    } else {
        None
    };
    out.push(Case {
        name: "audit: every acked message reached every member device once, in order".into(),
        classname: suite.clone(),
        problem,
    });

    let g = &r.generator;
    out.push(Case {
        name: "generator kept its schedule".into(),
        classname: suite,
        problem: g.limited.then(|| {
            (
                "failure",
                format!(
                    "schedule lag p99 {} ms is above the bound of {} ms",
                    g.lag_p99_ms, g.bound_ms
                ),
                "the figures describe the generator, not the server: give it fewer devices, a lower rate, or more --workers".to_string(),
            )
        }),
    });
    out
}

/// `2026-11-28T06:31:27` from Unix milliseconds (UTC).
fn iso8601(ms: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::units::utc(ms / 1000);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}")
}

/// Renders the JUnit XML document.
pub fn render(r: &Report) -> String {
    let cases = cases(r);
    let failures = cases
        .iter()
        .filter(|c| matches!(c.problem, Some(("failure", ..))))
        .count();
    let errors = cases
        .iter()
        .filter(|c| matches!(c.problem, Some(("error", ..))))
        .count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let name = xml(&format!("loadgen.{}", r.scenario));
    let _ = writeln!(
        s,
        "<testsuites name=\"{name}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{}\">",
        cases.len(),
        r.run.duration_s
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"0\" time=\"{}\" timestamp=\"{}\">",
        cases.len(),
        r.run.duration_s,
        iso8601(r.run.started_at_ms)
    );
    let _ = writeln!(s, "    <properties>");
    for (k, v) in [
        ("verdict", r.verdict.as_str().to_string()),
        ("verdict_reason", r.verdict_reason.clone()),
        ("seed", r.run.seed.to_string()),
        ("scenario_path", r.run.scenario_path.clone()),
        ("target", r.target.url.clone()),
        ("storage", r.target.storage.clone()),
        ("command", r.run.command.clone()),
    ] {
        let _ = writeln!(s, "      <property name=\"{k}\" value=\"{}\"/>", xml(&v));
    }
    let _ = writeln!(s, "    </properties>");
    for c in &cases {
        let open = format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"0\"",
            xml(&c.classname),
            xml(&c.name)
        );
        match &c.problem {
            None => {
                let _ = writeln!(s, "{open}/>");
            }
            Some((kind, message, details)) => {
                let _ = writeln!(
                    s,
                    "{open}>\n      <{kind} message=\"{}\" type=\"{kind}\">{}</{kind}>\n    </testcase>",
                    xml(message),
                    xml(details)
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "    <system-out>{}</system-out>",
        xml(&super::summary(r))
    );
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}
