//! The long fuzzing run: millions of generated inputs through the frame parser,
//! the HTTP body parsers and the scenario parser (see `chatscale_benches::fuzz`).
//!
//! ```text
//! cargo run --release -p chatscale-benches --bin fuzz -- [INPUTS] [--seed N] [--target frames|bodies|scenarios]
//! ```
//!
//! INPUTS is per target (default 1,000,000). Prints inputs, accepted and inputs
//! per second for each target. An input that breaks a property is written to
//! `benches/fuzz-corpus/TARGET/found-*` (so `cargo test` replays it from then on)
//! and the run exits 1.

use std::time::Instant;

use chatscale_benches::fuzz::{run, Target};

fn main() -> anyhow::Result<()> {
    let mut inputs: u64 = 1_000_000;
    let mut seed: u64 = 1;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => seed = args.next().unwrap_or_default().parse()?,
            "--target" => only = args.next(),
            n => inputs = n.replace('_', "").parse()?,
        }
    }
    let mut found = 0;
    let (mut total, started) = (0u64, Instant::now());
    for target in Target::ALL {
        if only.as_deref().is_some_and(|o| o != target.name()) {
            continue;
        }
        let t0 = Instant::now();
        let summary = run(target, inputs, seed);
        let secs = t0.elapsed().as_secs_f64();
        total += summary.inputs;
        println!(
            "{:<10} {:>10} inputs, {:>9} accepted, {:>10.0} inputs/s, {} findings",
            target.name(),
            summary.inputs,
            summary.accepted,
            summary.inputs as f64 / secs,
            summary.findings.len()
        );
        for f in &summary.findings {
            found += 1;
            let path = target
                .corpus_dir()
                .join(format!("found-{seed}-{:016x}", hash(&f.input)));
            std::fs::write(&path, &f.input)?;
            println!("  {}: {}", path.display(), f.what);
        }
    }
    println!(
        "total: {total} inputs in {:.1} s ({:.0} inputs/s)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
    if found > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
