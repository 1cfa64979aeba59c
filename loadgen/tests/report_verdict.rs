//! The verdict (passed, failed, generator_limited, incomplete), its exit
//! status and `passed`, and report.junit.xml read back as a CI system reads it:
//! one test case per threshold, one for the audit, one for the generator.

use std::collections::BTreeMap;

use loadgen::outcome::Outcome;
use loadgen::report::{Report, Verdict};
use quick_xml::events::Event;

use crate::report_support::{build_report, synthetic_outcome};

const GATES: &[(&str, &str)] = &[("delivery_latency.p99", "< 50ms"), ("lost", "== 0")];

fn verdict_of(outcome: &Outcome, lines: &[(&str, &str)]) -> Report {
    build_report(outcome, lines)
}

#[test]
fn each_verdict_has_its_exit_status() {
    let r = verdict_of(&synthetic_outcome(), GATES);
    assert_eq!(
        (r.verdict, r.passed, r.verdict.exit_code()),
        (Verdict::Passed, true, 0)
    );

    let r = verdict_of(&synthetic_outcome(), &[("delivery_latency.p99", "< 1ms")]);
    assert_eq!(
        (r.verdict, r.passed, r.verdict.exit_code()),
        (Verdict::Failed, false, 1)
    );
    assert!(
        r.verdict_reason.contains("delivery_latency.p99 < 1ms"),
        "{}",
        r.verdict_reason
    );

    // A generator far behind its schedule: its figures describe itself.
    let mut limited = synthetic_outcome();
    limited.generator.lag.record(900_000).unwrap();
    limited.generator.lag.record_n(800_000, 10).unwrap();
    let r = verdict_of(&limited, GATES);
    assert_eq!(
        (r.verdict, r.passed, r.verdict.exit_code()),
        (Verdict::GeneratorLimited, false, 3)
    );

    // An audit that could not read every inbox: never a pass, whatever held.
    let mut partial = synthetic_outcome();
    partial.audit.incomplete = true;
    let r = verdict_of(&partial, GATES);
    assert_eq!(
        (r.verdict, r.passed, r.verdict.exit_code()),
        (Verdict::Incomplete, false, 3)
    );
    assert!(r.verdict_reason.contains("audit"), "{}", r.verdict_reason);
    // Incomplete outranks a failed threshold too.
    let r = verdict_of(&partial, &[("delivery_latency.p99", "< 1ms")]);
    assert_eq!(r.verdict, Verdict::Incomplete);

    let mut cut = synthetic_outcome();
    cut.interrupted = true;
    let r = verdict_of(&cut, GATES);
    assert_eq!((r.verdict, r.run.interrupted), (Verdict::Incomplete, true));

    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["verdict"], "incomplete");
    assert_eq!(json["passed"], false);
}

/// Merging keeps a shard's incompleteness: one shard's unreadable inbox makes
/// the whole audit incomplete.
#[test]
fn incompleteness_survives_a_merge() {
    let mut a = synthetic_outcome();
    let mut b = synthetic_outcome();
    b.audit.incomplete = true;
    a.merge(&b);
    assert!(a.audit.incomplete);
    let mut c = synthetic_outcome();
    c.interrupted = true;
    a.merge(&c);
    assert!(a.interrupted);
}

/// A testcase's (classname, name), and `failure`/`error` when it has one.
type Cases = BTreeMap<(String, String), Option<String>>;

/// The testsuite's attributes and every testcase of report.junit.xml.
fn junit_cases(xml: &str) -> (BTreeMap<String, String>, Cases) {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut suite = BTreeMap::new();
    let mut cases = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let attrs = |e: &quick_xml::events::BytesStart<'_>| -> BTreeMap<String, String> {
        e.attributes()
            .map(|a| {
                let a = a.expect("well-formed attribute");
                (
                    String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .expect("valid escapes")
                        .into_owned(),
                )
            })
            .collect()
    };
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => {
                let a = attrs(&e);
                match e.name().as_ref() {
                    b"testsuite" => suite = a,
                    b"testcase" => {
                        let key = (a["classname"].clone(), a["name"].clone());
                        cases.insert(key.clone(), None);
                        current = Some(key);
                    }
                    kind @ (b"failure" | b"error") => {
                        let key = current.clone().expect("inside a testcase");
                        cases.insert(key, Some(String::from_utf8(kind.to_vec()).unwrap()));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    (suite, cases)
}

#[test]
fn junit_has_a_case_per_threshold_and_for_the_audit_and_the_generator() {
    let dir = tempfile::tempdir().unwrap();
    let mut outcome = synthetic_outcome();
    outcome.audit.lost = 2;
    let report = build_report(
        &outcome,
        &[
            ("delivery_latency.p99", "< 1ms"),
            ("lost", "== 0"),
            ("ack_latency.p99", "< 1s"),
        ],
    );
    loadgen::report::write_all(&report, &outcome, dir.path()).unwrap();
    let xml = std::fs::read_to_string(dir.path().join("report.junit.xml")).unwrap();
    let (suite, cases) = junit_cases(&xml);
    assert_eq!(suite["name"], "loadgen.synthetic");
    assert_eq!(suite["tests"], "5", "{xml}");
    assert_eq!(suite["failures"], "3", "{xml}");
    assert_eq!(suite["errors"], "0");
    let t =
        |name: &str| cases[&("loadgen.synthetic.thresholds".to_string(), name.to_string())].clone();
    // `<` survives the escaping as the expression reads.
    assert_eq!(t("delivery_latency.p99 < 1ms").as_deref(), Some("failure"));
    assert_eq!(t("lost == 0").as_deref(), Some("failure"));
    assert_eq!(t("ack_latency.p99 < 1s"), None);
    let audit = cases
        .iter()
        .find(|((_, n), _)| n.starts_with("audit"))
        .expect("an audit case");
    assert_eq!(audit.1.as_deref(), Some("failure"));
    let generator = cases
        .iter()
        .find(|((_, n), _)| n.starts_with("generator"))
        .expect("a generator case");
    assert_eq!(*generator.1, None);
    assert!(
        xml.contains("<property name=\"verdict\" value=\"failed\"/>"),
        "{xml}"
    );

    // An incomplete audit is an error, not a failure.
    let mut partial = synthetic_outcome();
    partial.audit.incomplete = true;
    let report = build_report(&partial, &[]);
    let (suite, cases) = junit_cases(&loadgen::report::junit::render(&report));
    assert_eq!(
        (suite["tests"].as_str(), suite["errors"].as_str()),
        ("2", "1")
    );
    assert!(cases.values().any(|k| k.as_deref() == Some("error")));
}
