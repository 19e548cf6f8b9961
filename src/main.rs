//! The `mv-refresher` binary: parse the command line, start logging, run the
//! command, map the result to an exit code. Everything else is in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use mv_refresher::cli::Cli;
use mv_refresher::{run, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(err) => {
            tracing::error!("{err:#}");
            err.exit().into()
        }
    }
}
