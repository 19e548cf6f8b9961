//! The `mv-refresher` binary: parse the command line, start logging, run the
//! command, map the result to an exit code. Everything else is in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use mv_refresher::cli::{Cli, LogFormat};
use mv_refresher::{run, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.global.log_format;
    telemetry::init(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(err) => {
            // Printed even when RUST_LOG silences the logs; as JSON for machines.
            match log_format {
                LogFormat::Json => tracing::error!("{err:#}"),
                LogFormat::Text => eprintln!("mv-refresher: error: {err:#}"),
            }
            err.exit().into()
        }
    }
}
