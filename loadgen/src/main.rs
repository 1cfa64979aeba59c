//! `loadgen`: parse the command line, set up logging, dispatch, map the outcome
//! to an exit status (0 passed, 1 threshold failed, 2 invalid, 3 not runnable).

use std::process::ExitCode;

use clap::Parser;
use loadgen::cli::{Command, Opts};

fn main() -> ExitCode {
    let opts = Opts::parse();
    reference_server::init_tracing();
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
                loadgen::report::merge::merge(&dirs, &out, baseline.as_deref()).map(|report| {
                    println!("{}", loadgen::report::summary(&report));
                    println!("report: {}", out.display());
                    if report.passed {
                        loadgen::error::exit::PASSED
                    } else {
                        loadgen::error::exit::FAILED
                    }
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
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
