//! Durations and memory sizes written the way PostgreSQL writes them.
//!
//! The registry and the command line accept `30s`, `5min` (or `5m`), `1h`, `64MB`,
//! `1GB`: the units of `postgresql.conf`, so a value can be copied from a DBA's
//! notes unchanged. This module parses and prints them; it knows nothing of where a
//! value came from (the caller names the file, line and key in its error).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration such as `statement_timeout` or `min_interval`, in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgDuration {
    millis: u64,
}

/// A memory size such as `work_mem`, in whole kilobytes (PostgreSQL's unit for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Memory {
    kilobytes: u64,
}

/// Why a duration or memory size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "invalid duration {0:?}: expected a number and a unit (ms, s, min or m, h, d), like \"30s\", \"5min\" or \"15m\""
    )]
    Duration(String),
    #[error(
        "invalid memory size {0:?}: expected a number and a unit (kB, MB, GB, TB), like \"64MB\""
    )]
    Memory(String),
}

const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("min", 60_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

const MEMORY_UNITS: &[(&str, u64)] =
    &[("kB", 1), ("MB", 1 << 10), ("GB", 1 << 20), ("TB", 1 << 30)];

/// Splits `"64MB"` into `(64, "MB")`, tolerating a space between number and unit.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim_start()))
}

fn scale(text: &str, units: &[(&str, u64)]) -> Option<u64> {
    let (number, unit) = split_number(text)?;
    // A bare zero needs no unit: "0" disables a timeout, as in postgresql.conf.
    if unit.is_empty() {
        return (number == 0).then_some(0);
    }
    let factor = units.iter().find(|(name, _)| *name == unit)?.1;
    number.checked_mul(factor)
}

/// Prints `amount` in the largest unit that divides it exactly.
fn format_scaled(f: &mut fmt::Formatter<'_>, amount: u64, units: &[(&str, u64)]) -> fmt::Result {
    if amount == 0 {
        return write!(f, "0");
    }
    let (unit, factor) = units
        .iter()
        .rev()
        .find(|(_, factor)| amount.is_multiple_of(*factor))
        .expect("the smallest unit divides everything");
    write!(f, "{}{unit}", amount / factor)
}

impl PgDuration {
    /// The duration in milliseconds, PostgreSQL's unit for timeouts.
    pub fn as_millis(self) -> u64 {
        self.millis
    }

    /// The same duration as a [`std::time::Duration`].
    pub fn to_std(self) -> Duration {
        Duration::from_millis(self.millis)
    }

    /// The value for `set_config`: milliseconds, which every server version reads.
    pub fn setting(self) -> String {
        format!("{}ms", self.millis)
    }
}

impl FromStr for PgDuration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        scale(text, DURATION_UNITS)
            .map(|millis| Self { millis })
            .ok_or_else(|| UnitError::Duration(text.to_owned()))
    }
}

impl fmt::Display for PgDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "m" is accepted on input but printed as PostgreSQL prints it: "min".
        let units: Vec<_> = DURATION_UNITS
            .iter()
            .copied()
            .filter(|(u, _)| *u != "m")
            .collect();
        format_scaled(f, self.millis, &units)
    }
}

impl Memory {
    pub fn from_kilobytes(kilobytes: u64) -> Self {
        Self { kilobytes }
    }

    /// The size in kilobytes, PostgreSQL's unit for `work_mem`.
    pub fn as_kilobytes(self) -> u64 {
        self.kilobytes
    }

    /// The value for `set_config`.
    pub fn setting(self) -> String {
        format!("{}kB", self.kilobytes)
    }
}

impl FromStr for Memory {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        scale(text, MEMORY_UNITS)
            .map(|kilobytes| Self { kilobytes })
            .ok_or_else(|| UnitError::Memory(text.to_owned()))
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_scaled(f, self.kilobytes, MEMORY_UNITS)
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

/// Milliseconds for machines and the log tables: to a tenth, which is more
/// than a refresh's timing is worth.
pub fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
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

    #[test]
    fn durations_read_in_postgres_units() {
        let ms = |s: &str| s.parse::<PgDuration>().map(PgDuration::as_millis);
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("5min"), Ok(300_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("0"), Ok(0));
        assert!(ms("10").is_err(), "a bare non-zero number is ambiguous");
        assert!(ms("5 minutes").is_err());
        assert!(ms("-1s").is_err());
        assert!(ms("").is_err());
    }

    #[test]
    fn memory_reads_in_postgres_units_and_is_case_sensitive_like_postgres() {
        let kb = |s: &str| s.parse::<Memory>().map(Memory::as_kilobytes);
        assert_eq!(kb("64MB"), Ok(65_536));
        assert_eq!(kb("1GB"), Ok(1_048_576));
        assert_eq!(kb("512kB"), Ok(512));
        assert!(kb("64mb").is_err());
        assert!(kb("64").is_err());
    }

    #[test]
    fn values_print_in_the_largest_exact_unit() {
        assert_eq!("600s".parse::<PgDuration>().unwrap().to_string(), "10min");
        assert_eq!("90s".parse::<PgDuration>().unwrap().to_string(), "90s");
        assert_eq!("1024MB".parse::<Memory>().unwrap().to_string(), "1GB");
        assert_eq!("64MB".parse::<Memory>().unwrap().setting(), "65536kB");
    }
}
