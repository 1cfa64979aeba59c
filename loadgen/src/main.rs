//! `loadgen`: parse the command line, set up logging, dispatch, map the outcome
//! to an exit status (0 passed, 1 a threshold failed, 2 invalid, 3 not runnable,
//! generator-limited or incomplete).

use std::process::ExitCode;

use clap::Parser;
use loadgen::cli::{Command, Opts};

fn main() -> ExitCode {
    let opts = Opts::parse();
    match opts.command {
        // The embedded server logs like the reference server (its parent
        // filters what it relays).
        Command::Serve(_) => reference_server::init_tracing(),
        _ => reference_server::init_tracing_with(opts.log_filter()),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(loadgen::error::exit::UNRUNNABLE);
        }
    };
    let result = runtime.block_on(async {
        match opts.command {
            Command::Run(run) => loadgen::run::run(run).await,
            Command::Compare { reports } => loadgen::compare::compare(&reports).map(|table| {
                print!("{table}");
                loadgen::error::exit::PASSED
            }),
            Command::Merge {
                dirs,
                out,
                baseline,
            } => {
                let out = out.unwrap_or_else(|| {
                    let stamp = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    std::path::PathBuf::from(format!("reports/runs/merged-{stamp}"))
                });
                // Exits like `run`: by the merged report's verdict.
                loadgen::report::merge::merge(&dirs, &out, baseline.as_deref()).map(|report| {
                    println!("{}", loadgen::report::summary(&report));
                    println!("report: {}", out.display());
                    report.verdict.exit_code()
                })
            }
            Command::Serve(server_opts) => {
                loadgen::embedded::watch_parent();
                let config = match server_opts.into_config() {
                    Ok(c) => c,
                    Err(e) => {
                        return Err(loadgen::error::LoadgenError::invalid(
                            format!("--{}", e.flag),
                            e.reason,
                        ))
                    }
                };
                reference_server::server::run_until_signal(config)
                    .await
                    .map(|()| loadgen::error::exit::PASSED)
                    .map_err(|e| {
                        loadgen::error::LoadgenError::unrunnable(format!("embedded server: {e}"))
                    })
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.exit_code();
            // Each error's message carries its cause once: the alternate
            // form (`{:#}`) would print an I/O error's source a second time.
            eprintln!("error: {}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
