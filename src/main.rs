//! The `mv-refresher` binary: parse the command line, start logging, validate
//! the configuration, run the command, map the result to an exit code.
//! Everything else is in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use mv_refresher::cli::Cli;
use mv_refresher::commands;
use mv_refresher::config::Config;
use mv_refresher::error::{Chain, Exit};
use mv_refresher::telemetry::{self, LogFormat};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return bad_command_line(err),
    };
    let log_format = cli.global.log_format;
    telemetry::init(log_format);
    let ran = Config::from_cli(cli).and_then(|config| {
        // One thread: the work is the server's, and statements sent together
        // leave in one write (a connection's task cannot flush the first
        // before the others are queued), so pipelining saves its round trips.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the tokio runtime starts");
        runtime.block_on(commands::run(config))
    });
    match ran {
        Ok(exit) => exit.into(),
        Err(err) => {
            // Printed even when RUST_LOG silences the logs; as JSON for machines.
            match log_format {
                LogFormat::Json => tracing::error!("{}", Chain(&err)),
                LogFormat::Text => eprintln!("mv-refresher: error: {}", Chain(&err)),
            }
            err.exit().into()
        }
    }
}

/// Help and version as clap prints them; a usage error as clap prints it, or
/// as one JSON event when JSON logs were asked for, with exit code 2.
fn bad_command_line(err: clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) || telemetry::format_from_environment() == LogFormat::Text
    {
        let _ = err.print();
        return match err.use_stderr() {
            true => Exit::Usage.into(),
            false => Exit::Success.into(),
        };
    }
    telemetry::init(LogFormat::Json);
    // clap's rendering without its styling, on one line: the usage hint is for
    // people at a terminal.
    let text = err.render().to_string();
    let message = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::error!("{}", message.trim_start_matches("error: "));
    Exit::Usage.into()
}
