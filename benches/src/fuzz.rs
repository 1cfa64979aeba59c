//! Generated-input fuzzing on stable Rust: the three parsers that read what
//! strangers write (WebSocket frames, HTTP bodies, scenario files).
//!
//! Each target starts from a corpus of seeds (valid inputs, plus every input
//! that once found a bug, in `benches/fuzz-corpus/TARGET/`) and feeds its parser
//! seeds mutated by a seeded RNG: bytes flipped, inserted, deleted or repeated,
//! seeds spliced together, JSON/TOML values swapped for other types, huge or
//! negative numbers, long digit runs, deep nesting, odd Unicode. A run is
//! reproducible from its seed. The properties, checked on every input:
//! - frames: the parser never panics; a frame it rejects gets an `error` frame
//!   (`bad_request`, the frame's `req` when it had one) that serializes and
//!   parses back; an accepted `send` goes through the text and channel checks;
//! - bodies: every request body type parses or fails without a panic;
//! - scenarios: `Scenario::parse` returns a scenario or an error naming a
//!   field, never panics, and an accepted rate gives event gaps a `Duration`
//!   can hold.
//!
//! `cargo test` runs a few thousand inputs per target; the `fuzz` binary runs
//! millions (`cargo run --release -p chatscale-benches --bin fuzz`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reference_server::protocol::{
    check_text, parse_client_frame, ChannelId, ClientFrame, CreateGroupRequest, ErrorCode,
    LoginRequest, ServerFrame, SignupRequest, UserRef,
};

/// A parser under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Frames,
    Bodies,
    Scenarios,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Frames, Target::Bodies, Target::Scenarios];

    pub fn name(self) -> &'static str {
        match self {
            Target::Frames => "frames",
            Target::Bodies => "bodies",
            Target::Scenarios => "scenarios",
        }
    }

    /// The seeds of this target: `benches/fuzz-corpus/NAME/*`.
    pub fn corpus_dir(self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz-corpus")
            .join(self.name())
    }

    /// Every seed file, sorted by name (so runs are reproducible).
    pub fn corpus(self) -> Vec<String> {
        let list = |dir: PathBuf| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default()
        };
        let mut files = list(self.corpus_dir());
        if self == Target::Scenarios {
            // The project's own scenario files are seeds too.
            files.extend(list(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios"),
            ));
        }
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// Runs the parser on one input and checks the target's properties.
    pub fn check(self, input: &str) -> Result<(), String> {
        match self {
            Target::Frames => check_frame(input),
            Target::Bodies => check_bodies(input),
            Target::Scenarios => check_scenario(input),
        }
    }
}

/// A failure: the input, and the panic or the broken property.
#[derive(Debug)]
pub struct Finding {
    pub input: String,
    pub what: String,
}

/// What a fuzzing run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub inputs: u64,
    /// Inputs the parser accepted (the rest it rejected cleanly).
    pub accepted: u64,
    pub findings: Vec<Finding>,
}

/// Runs `inputs` generated inputs against a target (corpus seeds first, as they
/// are), from RNG seed `seed`.
pub fn run(target: Target, inputs: u64, seed: u64) -> Summary {
    let corpus = target.corpus();
    let seeds: Vec<String> = if corpus.is_empty() {
        vec!["{}".to_string()]
    } else {
        corpus
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut summary = Summary::default();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..inputs {
        let input = match seeds.get(i as usize) {
            Some(s) => s.clone(),
            None => mutate(&seeds, target, &mut rng),
        };
        summary.inputs += 1;
        match catch_unwind(AssertUnwindSafe(|| target.check(&input))) {
            Ok(Ok(())) => summary.accepted += 1,
            Ok(Err(what)) if what.is_empty() => {}
            Ok(Err(what)) => summary.findings.push(Finding { input, what }),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                summary.findings.push(Finding {
                    input,
                    what: format!("panic: {what}"),
                });
            }
        }
        if summary.findings.len() >= 10 {
            break;
        }
    }
    std::panic::set_hook(quiet);
    summary
}

/// `Some(req)` when the server rejects this frame with `bad_request` (the
/// answer's `req`), `None` when it parses.
pub fn parse_rejects(input: &str) -> Option<Option<i64>> {
    parse_client_frame(input).err().map(|bad| bad.req)
}

/// `Ok` if the frame parsed; `Err("")` if it was rejected as it should be;
/// `Err(why)` if a property broke.
fn check_frame(input: &str) -> Result<(), String> {
    match parse_client_frame(input) {
        Ok(frame) => {
            if let ClientFrame::Send { to, text, .. } = &frame {
                let _ = check_text(text);
                if let Some(c) = &to.channel {
                    if let Some(id) = ChannelId::parse(c) {
                        if ChannelId::parse(&id.to_string()) != Some(id) {
                            return Err(format!("channel {c:?} does not round-trip"));
                        }
                    }
                }
            }
            Ok(())
        }
        Err(bad) => {
            let json = bad.to_error_frame().to_json();
            match serde_json::from_str::<ServerFrame>(&json) {
                Ok(ServerFrame::Error {
                    code: ErrorCode::BadRequest,
                    req,
                    message,
                }) if req == bad.req && !message.is_empty() => Err(String::new()),
                other => Err(format!("the error frame {json} reads back as {other:?}")),
            }
        }
    }
}

fn check_bodies(input: &str) -> Result<(), String> {
    let bytes = input.as_bytes();
    let ok = [
        serde_json::from_slice::<SignupRequest>(bytes)
            .map(|r| reference_server::protocol::valid_username(&r.username))
            .is_ok(),
        serde_json::from_slice::<LoginRequest>(bytes).is_ok(),
        serde_json::from_slice::<CreateGroupRequest>(bytes).is_ok(),
        serde_json::from_slice::<UserRef>(bytes).is_ok(),
    ];
    if ok.iter().any(|&b| b) {
        Ok(())
    } else {
        Err(String::new())
    }
}

fn check_scenario(input: &str) -> Result<(), String> {
    match loadgen::scenario::Scenario::parse(input, "fuzz") {
        Ok(s) => {
            // What a run derives from an accepted file must hold too: the
            // longest exponential gap between events (-ln(EPSILON) / rate).
            for p in &s.phases {
                for rate in [p.message_rate, p.disconnect_rate, p.history_rate] {
                    if rate > 0.0 && std::time::Duration::try_from_secs_f64(37.0 / rate).is_err() {
                        return Err(format!("phase {:?}: rate {rate} gives no gap", p.name));
                    }
                }
            }
            Ok(())
        }
        Err(e) if e.exit_code() == 2 && !e.to_string().is_empty() => Err(String::new()),
        Err(e) => Err(format!("rejected without exit 2: {e}")),
    }
}

/// Pieces that parsers trip over, spliced in at random.
const TOKENS: &[&str] = &[
    "null",
    "true",
    "false",
    "-1",
    "0",
    "1e999",
    "-0",
    "1.5",
    "18446744073709551616",
    "9223372036854775808",
    "-9223372036854775809",
    "\"\"",
    "[]",
    "{}",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\uDFFF\"",
    "\"é😀\"",
    "\u{2028}",
    "\u{feff}",
    "\"g:1\"",
    "\"dm:1:2\"",
    "\"dm:2:1\"",
    "\"g:01\"",
    "\"send\"",
    "\"sync\"",
    "\"heartbeat\"",
    "\"logout\"",
    "\"teleport\"",
    "\"req\"",
    "\"type\"",
    "\"to\"",
    "\"text\"",
    "\"since\"",
    "\"limit\"",
    "\"user\"",
    "\"channel\"",
    "\"client_msg_id\"",
    "\"username\"",
    "\"password\"",
    "\"members\"",
    "\"user_id\"",
    "\"name\"",
    "\"device\"",
    "\"5s\"",
    "\"0s\"",
    "\"-1s\"",
    "\"1.5.5s\"",
    "\"99999999999999999999999h\"",
    "\"1e308s\"",
    "\"NaN/s\"",
    "\"inf/s\"",
    "\"1/x\"",
    "\"99999999999999999999999/s\"",
    "\"1e-300/s\"",
    "\"0.0000001/s\"",
    "\"8KiB\"",
    "\"< 5ms\"",
    "\"== 0\"",
    "[[phase]]",
    "[population]",
    "[behavior]",
    "[target]",
    "[thresholds]",
    "[generator]",
    "[projection]",
    "users = ",
    "online = ",
    "duration = ",
    "message_rate = ",
    "disconnect_rate = ",
    "devices = { 1 = 0.5, 2 = 0.5 }",
    "group_size = { min = 3, max = 1 }",
    "= ",
    "\n",
    ",",
    ":",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    "'''",
    "#",
];

/// One generated input: a seed, mutated one to eight times.
pub fn mutate(seeds: &[String], target: Target, rng: &mut StdRng) -> String {
    let mut s: Vec<u8> = seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec();
    for _ in 0..rng.random_range(1..=8) {
        let at = rng.random_range(0..=s.len());
        match rng.random_range(0..10) {
            0 if !s.is_empty() => {
                let i = rng.random_range(0..s.len());
                s[i] ^= 1 << rng.random_range(0..8);
            }
            1 => s.insert(at, rng.random()),
            2 if !s.is_empty() => {
                let end = (at + rng.random_range(1..16)).min(s.len());
                s.drain(at.min(end)..end);
            }
            3 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                s.splice(at..at, t.bytes());
            }
            4 => {
                // Another seed's tail after this one's head.
                let other = seeds[rng.random_range(0..seeds.len())].as_bytes();
                let from = rng.random_range(0..=other.len());
                s.truncate(at);
                s.extend_from_slice(&other[from..]);
            }
            5 => {
                let digits = "9".repeat(rng.random_range(1..40));
                s.splice(at..at, digits.bytes());
            }
            6 if target != Target::Scenarios => {
                // Deep nesting: parsers must refuse it, not overflow the stack.
                let depth = rng.random_range(1..300);
                let open = "[".repeat(depth);
                s.splice(at..at, open.bytes());
            }
            7 if !s.is_empty() => {
                let end = (at + rng.random_range(1..32)).min(s.len());
                let piece = s[at.min(end)..end].to_vec();
                s.splice(at..at, piece);
            }
            8 => s.truncate(at),
            _ => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                let end = (at + rng.random_range(1..12)).min(s.len());
                s.splice(at.min(end)..end, t.bytes());
            }
        }
        if s.len() > 64 * 1024 {
            s.truncate(64 * 1024);
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}
