//! How results look on stdout: aligned tables for people and the small
//! formatting helpers they share (durations, ages). JSON output is built with
//! `serde_json` where it is produced; nothing here writes to stderr.

use comfy_table::{Table, TableStyle};

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
        println!("{}", line.trim_end());
    }
}

/// A refresh duration for people: `850 ms`, `12.4 s`.
pub fn millis(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// An age for people: `42s`, `5m 3s`, `2h 4m`, `3d 2h`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_durations_read_naturally() {
        assert_eq!(age(42.4), "42s");
        assert_eq!(age(303.0), "5m 3s");
        assert_eq!(age(7440.0), "2h 4m");
        assert_eq!(age(266_400.0), "3d 2h");
        assert_eq!(millis(849.6), "850 ms");
        assert_eq!(millis(12_400.0), "12.4 s");
    }
}
