//! `reference-server`: parse the command line, set up logging, run until a signal.
//!
//! Exit codes: 0 after a signal, 2 for a bad command line (the message names the
//! flag), 3 when storage or the cluster's Redis cannot be reached or opened, 1
//! for anything else.

use std::process::ExitCode;

use clap::Parser;
use reference_server::config::Opts;
use reference_server::server::ServerError;

fn main() -> ExitCode {
    let opts = Opts::parse();
    let config = match opts.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    reference_server::init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(reference_server::server::run_until_signal(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A service this node needs (storage, the cluster's Redis) is not
            // there: 3, as loadgen says "could not be carried out"; 2 is kept for
            // a bad command line, 1 for everything else.
            let code = match &e {
                ServerError::Storage(_) | ServerError::Cluster(_) => 3,
                _ => 1,
            };
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
