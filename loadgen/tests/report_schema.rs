//! report.json against loadgen/report.schema.json: a built report validates,
//! and a report missing a required field does not (so the check can fail).

use serde_json::Value;

use crate::report_support::{build_report, synthetic_outcome};

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/report.schema.json"))
        .unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).expect("the schema itself is valid")
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn a_built_report_matches_the_schema() {
    let outcome = synthetic_outcome();
    let report = build_report(
        &outcome,
        &[("delivery_latency.p99", "< 50ms"), ("lost", "== 0")],
    );
    let json: Value =
        serde_json::from_str(&loadgen::report::json::render(&report).unwrap()).unwrap();
    let v = validator();
    assert_eq!(errors(&v, &json), Vec::<String>::new());
    // The contract fields of scenarios.md, where a gate reads them.
    assert_eq!(json["scenario"], "synthetic");
    assert_eq!(json["passed"], true);
    assert_eq!(json["verdict"], "passed");
    assert_eq!(json["audit"]["incomplete"], false);
    assert_eq!(json["run"]["interrupted"], false);
    assert!(json["server"]["cpu_seconds"].is_null());
    assert_eq!(json["phases"][0]["deliveries"], 9);
    assert_eq!(json["projection"]["capacity_run"], false);
    assert_eq!(json["metrics"]["delivery_latency"]["count"], 9);
    assert!(json["metrics"]["ack_latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(json["metrics"]["history_latency"]["count"], 10);
    assert_eq!(json["counters"]["history_reads"], 10);
    assert_eq!(json["counters"]["history_skipped"], 1);
    // Per-phase figures come from the intervals the phase covers.
    assert_eq!(json["phases"][0]["acked"], 300);
    assert_eq!(json["phases"][0]["history_reads"], 10);
    assert!(json["phases"][0]["history_p99_ms"].as_f64().unwrap() > 19.0);
    assert_eq!(json["thresholds"][0]["expr"], "delivery_latency.p99 < 50ms");
    // 100 msg/s carried against 46,296 msg/s at peak: 463 servers by messages.
    assert_eq!(json["projection"]["limited_by"], "messages");
    // And it reads back as the same report.
    let back: loadgen::report::Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}

#[test]
fn an_empty_outcome_still_matches_the_schema() {
    let outcome = loadgen::outcome::Outcome::new("empty", 50.0);
    let report = build_report(&outcome, &[]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(errors(&validator(), &json), Vec::<String>::new());
    assert!(json["metrics"]["server_memory_per_connection"].is_null());
}

#[test]
fn a_report_missing_a_required_field_fails_validation() {
    let report = build_report(&synthetic_outcome(), &[]);
    let v = validator();
    let mut json = serde_json::to_value(&report).unwrap();
    json["metrics"]["delivery_latency"]
        .as_object_mut()
        .unwrap()
        .remove("p99_ms");
    assert!(
        !v.is_valid(&json),
        "a latency without p99_ms must not validate"
    );

    let mut json = serde_json::to_value(&report).unwrap();
    json["metrics"]
        .as_object_mut()
        .unwrap()
        .remove("history_latency");
    assert!(
        !v.is_valid(&json),
        "a report without history_latency must not validate"
    );

    let mut json = serde_json::to_value(&report).unwrap();
    json.as_object_mut().unwrap().remove("passed");
    assert!(
        !v.is_valid(&json),
        "a report without passed must not validate"
    );

    let mut json = serde_json::to_value(&report).unwrap();
    json["verdict"] = Value::from("mostly_passed");
    assert!(
        !v.is_valid(&json),
        "a verdict outside the four must not validate"
    );

    let mut json = serde_json::to_value(&report).unwrap();
    json["metrics"]["lost"] = Value::from(-1);
    assert!(!v.is_valid(&json), "a negative count must not validate");
}
