//! Logging: `tracing` events to stderr, as text for people or JSON for
//! Kubernetes. Results (tables, JSON documents) go to stdout and never through
//! here. `RUST_LOG` overrides the default level (`info`).
//!
//! In JSON every event is one line with the fields of the span it happened in
//! (a refresh's events carry their `run_id`). While live progress is drawn on
//! the terminal, events go through it, and only warnings and errors are shown:
//! the table at the end reports every view.

use std::io::{IsTerminal, Write};

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::progress;

/// How logs are written: text for people, JSON (one object per line) for
/// machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; call once, first thing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_target(false);
    match format {
        LogFormat::Json => {
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .init();
            // A panic is one more JSON event, not a text block in the log.
            std::panic::set_hook(Box::new(|info| {
                tracing::error!(panic = %info, "mv-refresher panicked");
            }));
        }
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// The log format asked for, read before the command line could be parsed (to
/// report that it could not be in the right one).
pub fn format_from_environment() -> LogFormat {
    let mut args = std::env::args().skip(1);
    let mut chosen = std::env::var("MV_REFRESHER_LOG_FORMAT").ok();
    while let Some(arg) = args.next() {
        if arg == "--log-format" {
            chosen = args.next();
        } else if let Some(value) = arg.strip_prefix("--log-format=") {
            chosen = Some(value.to_owned());
        }
    }
    match chosen.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Standard error, one event per write, around the progress display.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Event;

    fn make_writer(&'a self) -> Self::Writer {
        Event {
            text: Vec::new(),
            shown: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        Event {
            text: Vec::new(),
            shown: *meta.level() <= Level::WARN || !progress::showing(),
        }
    }
}

/// One event's text, written out whole when dropped.
struct Event {
    text: Vec<u8>,
    shown: bool,
}

impl Write for Event {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.shown {
            self.text.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if !self.text.is_empty() {
            progress::suspend(|| {
                let _ = std::io::stderr().lock().write_all(&self.text);
            });
        }
    }
}
