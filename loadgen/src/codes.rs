//! The error codes a run counts (`report.json` `errors`, thresholds
//! `errors.CODE`): the server's protocol codes, as it answers them, and
//! loadgen's own failure codes, as the simulation records them.
//!
//! They are listed here so that a threshold on a misspelt code
//! (`"errors.rate_limted" = "== 0"`) is refused before the run (exit 2) rather
//! than passing forever on a count that can never rise. The test
//! `codes_cover_the_source` reads every `error("...")` literal in `src/` and
//! checks it is here, so a new failure code cannot be forgotten.

use reference_server::protocol::ErrorCode;

/// Codes loadgen itself records, with what they mean (docs/reports.md lists them).
pub const LOADGEN_CODES: &[(&str, &str)] = &[
    ("connect", "a WebSocket connect failed"),
    (
        "connect_timeout",
        "a connect took longer than connect_timeout",
    ),
    (
        "connection_lost",
        "the socket failed or closed without a close frame",
    ),
    ("write", "writing a frame to the socket failed"),
    ("bad_frame", "the server sent a frame that does not parse"),
    ("no_recipient", "a scheduled send found no one to send to"),
    (
        "history_no_reader_online",
        "a scheduled history read found no connected reader",
    ),
    (
        "history_no_channel",
        "a scheduled history read found no channel",
    ),
    (
        "device_stop_timeout",
        "devices did not stop within 15 s at the end",
    ),
    (
        "discovery",
        "a device found no server to connect to (discovery failed or listed none)",
    ),
    (
        "login_again",
        "discovery refused a device's token and logging in again failed",
    ),
];

/// Codes earlier versions recorded, and where what they counted is now: a
/// threshold naming one is refused with the pointer (it would never fire).
pub const RETIRED: &[(&str, &str)] = &[
    ("send_queue_full", "the audit's `refused` count"),
    ("audit_read", "the audit's `incomplete` flag"),
    (
        "no_sender_online",
        "nothing: sends wait for a connected sender (the audit's `unsent` counts those never written)",
    ),
];

/// Families of codes with a variable part.
pub const FAMILIES: &[(&str, &str)] = &[
    (
        "closed_NNNN",
        "the server closed the connection with this WebSocket close code (1008, 1001, ...)",
    ),
    (
        "history_CODE",
        "a history read failed: a protocol code, timeout, http, bad_page or status_NNN",
    ),
];

/// What a history read's failure is called after `history_`, besides the
/// protocol codes.
const HISTORY_TRANSPORT: &[&str] = &["timeout", "http", "bad_page", "unfinished"];

fn protocol_code(code: &str) -> bool {
    ErrorCode::ALL.iter().any(|c| c.as_str() == code)
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// Where a retired code's count went, if `code` is one.
pub fn retired(code: &str) -> Option<&'static str> {
    RETIRED
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, now)| *now)
}

/// True when a run can record `code`.
pub fn is_known(code: &str) -> bool {
    if protocol_code(code) || LOADGEN_CODES.iter().any(|(c, _)| *c == code) {
        return true;
    }
    if let Some(close) = code.strip_prefix("closed_") {
        return digits(close, 4);
    }
    if let Some(h) = code.strip_prefix("history_") {
        return protocol_code(h)
            || HISTORY_TRANSPORT.contains(&h)
            || h.strip_prefix("status_").is_some_and(|s| digits(s, 3));
    }
    false
}

/// Every code and family, for an error message.
pub fn known_list() -> String {
    let mut all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    all.extend(LOADGEN_CODES.iter().map(|(c, _)| *c));
    all.extend(FAMILIES.iter().map(|(c, _)| *c));
    all.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_loadgen_and_family_codes_are_known() {
        for code in [
            "rate_limited",
            "overloaded",
            "no_recipient",
            "closed_1008",
            "history_timeout",
            "history_not_found",
            "history_status_502",
        ] {
            assert!(is_known(code), "{code}");
        }
        for code in [
            "TYPO",
            "rate_limted",
            "closed_",
            "closed_10x8",
            "history_",
            "send_queue_full",
        ] {
            assert!(!is_known(code), "{code}");
        }
        assert!(known_list().contains("rate_limited, "));
    }

    /// Every code the simulation records with a literal is listed above, and
    /// every code listed above is still recorded somewhere.
    #[test]
    fn codes_cover_the_source() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src];
        let mut found = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                for e in std::fs::read_dir(&path).unwrap() {
                    files.push(e.unwrap().path());
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("codes.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // The recorder's `error("...")`, and the device's `lost(sim, "...")`.
            for pattern in [".error(\"", "lost(sim, \""] {
                for piece in text.split(pattern).skip(1) {
                    let code = piece.split('"').next().unwrap();
                    found.push((code.to_string(), path.display().to_string()));
                }
            }
        }
        assert!(found.len() >= 5, "the scan found the recording calls");
        for (code, file) in &found {
            assert!(
                is_known(code),
                "{file} records {code:?}: add it to codes.rs"
            );
        }
        for (code, _) in LOADGEN_CODES {
            assert!(
                found.iter().any(|(c, _)| c == code),
                "{code} is listed but nothing records it: retire it"
            );
        }
    }
}
