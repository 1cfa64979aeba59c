//! Checks before anything starts, through the real binary: each bad input
//! exits 2 with one clear message naming the field (and the form it takes, or
//! the limit it broke) before any server starts or any report is written, and
//! nothing panics.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A valid one-second scenario; each test breaks one thing.
const VALID: &str =
    "[population]\nusers = 4\nfriends = 1\n[[phase]]\nduration = \"1s\"\nonline = 2\n";

struct Out {
    code: Option<i32>,
    stderr: String,
}

fn loadgen(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    Out {
        code: out.status.code(),
        stderr,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `loadgen run` on `text` and expects exit 2 with one `error:` line
/// containing every piece of `expect`; returns that line.
fn rejected(text: &str, extra: &[&str], expect: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", text);
    let out_dir = dir.path().join("out");
    let mut args = vec![
        "run",
        path.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = loadgen(&args);
    assert_eq!(out.code, Some(2), "{text:?} {extra:?}:\n{}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one message, said once:\n{}", out.stderr);
    for piece in expect {
        assert!(
            lines[0].contains(piece),
            "{text:?}: expected {piece:?} in {:?}",
            lines[0]
        );
    }
    assert!(!out_dir.exists(), "nothing was run or written");
    lines[0].to_string()
}

#[test]
fn a_missing_scenario_file_is_exit_2_said_once_with_its_path() {
    let out = loadgen(&["run", "/nonexistent/dir/smoke.toml"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        "error: invalid /nonexistent/dir/smoke.toml: cannot read the scenario file: no such file"
    );
}

#[test]
fn a_toml_syntax_error_names_the_file() {
    let line = rejected(
        "[[phase]\nduration = \"1s\"\n",
        &[],
        &["bad.toml (line 1, column", "not valid TOML"],
    );
    assert!(line.starts_with("error: invalid /"), "{line}");
}

#[test]
fn an_unknown_key_is_named_once() {
    let line = rejected(
        &format!("{VALID}[behavior]\nheartbeat = \"1s\"\n"),
        &[],
        &["invalid behavior.heartbeat: unknown field"],
    );
    assert!(!line.contains("heartbeat.heartbeat"), "{line}");
    let line = rejected(
        "[population]\nuserz = 5\n[[phase]]\nduration = \"1s\"\n",
        &[],
        &["invalid population.userz: unknown field `userz`"],
    );
    assert!(!line.contains("userz.userz"), "{line}");
    let line = rejected(
        &format!("{VALID}[[phase]]\nduration = \"1s\"\nrate = 5\n"),
        &[],
        &["invalid phase[1].rate: unknown field `rate`"],
    );
    assert!(!line.contains("rate.rate"), "{line}");
}

#[test]
fn a_wrong_type_hints_the_form() {
    rejected(
        "[[phase]]\nduration = 6\n",
        &[],
        &[
            "invalid phase[0].duration",
            "expected a string",
            "duration = \"6s\"",
        ],
    );
    rejected(
        &format!("{VALID}message_rate = 100\n"),
        &[],
        &["phase[0].message_rate", "message_rate = \"100/s\""],
    );
    rejected(
        &format!("{VALID}[thresholds]\nlost = 0\n"),
        &[],
        &["thresholds.lost", "\"lost\" = \"== 0\""],
    );
    rejected(
        "[population]\nusers = \"many\"\n[[phase]]\nduration = \"1s\"\n",
        &[],
        &["population.users", "a whole number"],
    );
}

#[test]
fn out_of_range_numbers_state_the_limit_and_never_panic() {
    rejected(
        "[[phase]]\nduration = \"99999999999999999999h\"\n",
        &[],
        &["phase[0].duration", "at most 24h"],
    );
    rejected(
        &format!("{VALID}[generator]\ndrain = \"1e30s\"\n"),
        &[],
        &["generator.drain"],
    );
    rejected(
        &format!("{VALID}message_rate = \"NaN/s\"\n"),
        &[],
        &["phase[0].message_rate", "not a number"],
    );
    rejected(
        &format!("{VALID}message_rate = \"1e400/s\"\n"),
        &[],
        &["phase[0].message_rate", "at most 1,000,000/s"],
    );
    rejected(
        &format!("{VALID}[thresholds]\n\"delivery_latency.p99\" = \"< 99999999999999999999h\"\n"),
        &[],
        &["at most 24h"],
    );
}

#[test]
fn an_unknown_error_code_in_a_threshold_lists_the_known_ones() {
    rejected(
        &format!("{VALID}[thresholds]\n\"errors.TYPO\" = \"== 0\"\n"),
        &[],
        &[
            "thresholds.\"errors.TYPO\"",
            "unknown error code \"TYPO\"",
            "rate_limited",
            "no_recipient",
            "closed_NNNN",
        ],
    );
}

#[test]
fn a_bad_storage_is_refused_before_the_server_starts() {
    rejected(
        VALID,
        &["--storage", "bogus://x"],
        &[
            "invalid --storage",
            "\"bogus://x\" is not a storage backend",
            "memory, embedded:DIR",
        ],
    );
    rejected(
        VALID,
        &["--storage", "embedded:"],
        &["invalid --storage", "needs a directory"],
    );
    rejected(
        &format!("[target]\nstorage = \"mysql://x\"\n{VALID}"),
        &[],
        &["invalid target.storage"],
    );
}

#[test]
fn a_bad_target_is_refused() {
    rejected(
        VALID,
        &["--target", "ftp://127.0.0.1:1"],
        &["invalid --target", "http://HOST:PORT or https://"],
    );
}

#[test]
fn a_missing_or_unparsable_baseline_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    rejected(
        VALID,
        &["--baseline", missing.to_str().unwrap()],
        &["invalid --baseline", "nope.json"],
    );
    let garbage = write(dir.path(), "garbage.json", "{not json");
    rejected(
        VALID,
        &["--baseline", garbage.to_str().unwrap()],
        &["invalid --baseline", "is not JSON"],
    );
    let other = write(dir.path(), "other.json", "{\"metrics\": {}}");
    rejected(
        VALID,
        &["--baseline", other.to_str().unwrap()],
        &[
            "invalid --baseline",
            "has no number at metrics/delivery_latency/p99_ms",
        ],
    );
    // `merge` checks its baseline before reading any run directory.
    let out = loadgen(&[
        "merge",
        dir.path().to_str().unwrap(),
        "--baseline",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("invalid --baseline"), "{}", out.stderr);
}

#[test]
fn a_valid_remote_target_passes_the_checks() {
    for url in [
        "http://127.0.0.1:8080",
        "https://staging.example.com",
        "https://chat.example.com:8443/",
        "http://10.1.2.3:80",
        "http://[::1]:8080",
    ] {
        assert!(loadgen::scenario::check_target_url(url).is_ok(), "{url}");
    }
    for url in [
        "ws://127.0.0.1:1",
        "http://",
        "http://:80",
        "https://host:99999",
        "127.0.0.1:80",
    ] {
        assert!(loadgen::scenario::check_target_url(url).is_err(), "{url}");
    }
}

/// First run, piped (as in CI): no colour codes, and loadgen's own info lines
/// only with `-v`.
#[test]
fn piped_logs_carry_no_colour_and_info_only_with_v() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "quiet.toml",
        // A loose max_lag: this test is about log lines, and a busy machine's
        // timer lag must not turn the run generator-limited.
        &format!("{VALID}[generator]\ndrain = \"100ms\"\nmax_lag = \"10s\"\n"),
    );
    for (verbose, expect_info) in [(false, false), (true, true)] {
        let out_dir = dir.path().join(format!("out-{verbose}"));
        let mut args = vec![
            "run",
            path.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ];
        if verbose {
            args.push("-v");
        }
        let out = loadgen(&args);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(
            !out.stderr.contains('\u{1b}'),
            "colour codes in a piped log:\n{}",
            out.stderr
        );
        assert_eq!(
            out.stderr.contains(" INFO "),
            expect_info,
            "-v {verbose}:\n{}",
            out.stderr
        );
    }
}

/// A code earlier versions counted says where its count went.
#[test]
fn a_retired_error_code_points_to_its_replacement() {
    rejected(
        &format!("{VALID}[thresholds]\n\"errors.send_queue_full\" = \"== 0\"\n"),
        &[],
        &["no longer counted", "refused"],
    );
}

#[test]
fn an_unreachable_storage_is_exit_3_said_once_in_plain_words() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ok.toml", VALID);
    let out_dir = dir.path().join("out");
    let out = loadgen(&[
        "run",
        path.to_str().unwrap(),
        "--storage",
        "redis://127.0.0.1:1",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one message, said once:\n{}", out.stderr);
    assert!(
        lines[0].contains("connection refused to redis://127.0.0.1:1"),
        "{}",
        lines[0]
    );
    assert!(
        !lines[0].contains("ExitStatus") && !lines[0].contains("Os {"),
        "no Rust debug output: {}",
        lines[0]
    );
}
