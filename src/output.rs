//! How results look on stdout: aligned tables for people and the small
//! formatting helpers they share (durations, ages). JSON output is built with
//! `serde_json` where it is produced; nothing here writes to stderr.

use comfy_table::{Table, TableStyle};
use serde_json::{Value, json};

use crate::outcome::{Cycle, Status};
use crate::units::round_ms;

/// `println!` for results: a reader that went away (`mv-refresher check | head`)
/// is no reason to panic, so what it would not take is dropped.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` for results, as [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `refresh --format`: the results on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultsFormat {
    /// A line per view, for people.
    Table,
    /// One JSON object, for scripts.
    Json,
}

/// `status --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
    /// The per-view metrics, for a textfile collector or a Pushgateway.
    Prometheus,
}

/// A borderless, left-aligned table with `header`, like `kubectl get`.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    // Two spaces between columns, no borders, no header rule.
    let style = TableStyle::new();
    table.load_style(style).set_header(header);
    table
}

/// Prints `table` without the padding it keeps at line ends.
pub fn print_table(table: &Table) {
    for line in table.lines() {
        crate::outln!("{}", line.trim_end());
    }
}

/// `1 view`, `3 views`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A cycle's results as one JSON object on one line, for scripts: the run,
/// how many views ended with each status (`counts`), whether the run is a
/// success (`ok`: exit code 0), and one entry per view in plan order, with an
/// incremental cycle's counts under the names of the history's columns (null
/// for a materialized view, and for an incremental cycle that did not succeed).
pub fn cycle_json(cycle: &Cycle) -> String {
    let views: Vec<Value> = cycle
        .outcomes
        .iter()
        .map(|o| {
            let counts = o.counts.as_ref();
            json!({
                "view": o.view_name,
                "status": o.status.as_str(),
                "method": o.method.map(|m| m.as_str()),
                "duration_ms": o.method.map(|_| round_ms(o.duration_ms)),
                "attempts": o.attempts,
                "message": o.message,
                "log_error": o.log_error,
                "keys_scanned": counts.map(|c| c.keys),
                "rows_inserted": counts.map(|c| c.inserted),
                "rows_updated": counts.map(|c| c.updated),
                "rows_deleted": counts.map(|c| c.deleted),
            })
        })
        .collect();
    let counts: serde_json::Map<String, Value> = Status::ALL
        .iter()
        .map(|&status| (status.as_str().to_owned(), cycle.count(status).into()))
        .collect();
    json!({
        "run_id": cycle.run_id.to_string(),
        "started_at": chrono::DateTime::<chrono::Utc>::from(cycle.started_at)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "duration_ms": round_ms(cycle.duration.as_secs_f64() * 1000.0),
        "counts": counts,
        // Not "failed", which would read like counts.failed: true when every
        // view refreshed or was skipped on purpose, and every outcome was
        // recorded.
        "ok": !cycle.failed(),
        "views": views,
    })
    .to_string()
}
