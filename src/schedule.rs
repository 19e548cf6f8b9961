//! When `run` refreshes: a cron expression as Kubernetes writes it, in a time
//! zone.
//!
//! Kubernetes (and crontab) write five fields with Sunday as 0 (or 7); the `cron`
//! crate reads six or seven fields, with seconds first and Sunday as 1. This
//! module translates, so `0 9 * * 1-5` means weekdays at 09:00 as in a CronJob.
//! A six-field expression (seconds first, like `*/5 * * * * *`) is accepted for
//! development and tests. The loop that waits on this schedule is in `runner`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A parsed schedule and the zone its times are read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    inner: cron::Schedule,
    timezone: Tz,
}

/// Day-of-week names, Sunday first, as crontab numbers them (0..=6, 7 = Sunday).
const WEEKDAYS: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

impl Schedule {
    /// Parses `expression` (5 fields, or 6 with seconds first) in `timezone`
    /// (an IANA name such as `UTC` or `Europe/Berlin`).
    pub fn new(expression: &str, timezone: &str) -> Result<Self, String> {
        let timezone: Tz = timezone.parse().map_err(|_| {
            format!("unknown time zone {timezone:?} (use an IANA name like \"Europe/Berlin\")")
        })?;
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "schedule {expression:?} has {n} fields: expected 5 (minute hour day month weekday) \
                     or 6 (second first)"
                ));
            }
        };
        let weekday = translate_weekdays(rest[4])
            .map_err(|why| format!("schedule {expression:?}: day of week {:?}: {why}", rest[4]))?;
        let translated = format!(
            "{seconds} {} {} {} {} {weekday}",
            rest[0], rest[1], rest[2], rest[3]
        );
        let inner = cron::Schedule::from_str(&translated)
            .map_err(|err| format!("invalid schedule {expression:?}: {err}"))?;
        Ok(Self {
            expression: expression.to_owned(),
            inner,
            timezone,
        })
    }

    /// The first time strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.inner
            .after(&now.with_timezone(&self.timezone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

impl Schedule {
    /// The next `n` times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(after), |at| self.next_after(*at))
            .take(n)
            .collect()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.timezone)
    }
}

/// Rewrites crontab's numeric days of week (0-7, Sunday 0 or 7) as names, which
/// the `cron` crate reads without its own numbering (Sunday 1). Names, `*` and
/// steps pass through.
fn translate_weekdays(field: &str) -> Result<String, String> {
    let items: Result<Vec<String>, String> = field.split(',').map(translate_weekday_item).collect();
    Ok(items?.join(","))
}

fn translate_weekday_item(item: &str) -> Result<String, String> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (item, None),
    };
    let translated = match range.split_once('-') {
        None => match day_number(range)? {
            Some(n) => WEEKDAYS[n].to_owned(),
            None => range.to_owned(),
        },
        Some((from, to)) => match (day_number(from)?, day_number(to)?) {
            (Some(from), Some(7)) if from % 7 == 0 => "Sun-Sat".to_owned(),
            // "5-7" is Friday to Sunday: the crate's week ends on Saturday.
            (Some(from), Some(7)) if step.is_none() => format!("{}-Sat,Sun", WEEKDAYS[from]),
            (Some(_), Some(7)) => return Err("a step over a range ending on 7: use 0-6".into()),
            (Some(from), Some(to)) if from > to => {
                return Err(format!("range {from}-{to} wraps around the week: split it"));
            }
            (Some(from), Some(to)) => format!("{}-{}", WEEKDAYS[from], WEEKDAYS[to]),
            _ => range.to_owned(),
        },
    };
    Ok(match step {
        Some(step) => format!("{translated}/{step}"),
        None => translated,
    })
}

/// A crontab day number (0-7), `None` for anything not a number (`*`, `Mon`).
fn day_number(text: &str) -> Result<Option<usize>, String> {
    match text.parse::<usize>() {
        Ok(n) if n < WEEKDAYS.len() => Ok(Some(n)),
        Ok(n) => Err(format!("{n} is not a day (0-7, Sunday is 0 or 7)")),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn five_fields_read_like_a_kubernetes_cronjob() {
        let every_five = Schedule::new("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            every_five.next_after(at(2026, 11, 21, 10, 3, 7)),
            Some(at(2026, 11, 21, 10, 5, 0))
        );

        // 2026-11-21 is a Saturday: 1-5 (Monday to Friday) next fires on Monday.
        let weekdays = Schedule::new("0 9 * * 1-5", "UTC").unwrap();
        let next = weekdays.next_after(at(2026, 11, 21, 10, 0, 0)).unwrap();
        assert_eq!((next.weekday(), next.hour()), (Weekday::Mon, 9));

        let sunday = Schedule::new("0 9 * * 0", "UTC").unwrap();
        assert_eq!(
            sunday
                .next_after(at(2026, 11, 21, 10, 0, 0))
                .unwrap()
                .weekday(),
            Weekday::Sun
        );
        let sunday = Schedule::new("0 9 * * 7", "UTC").unwrap();
        assert_eq!(
            sunday
                .next_after(at(2026, 11, 21, 10, 0, 0))
                .unwrap()
                .weekday(),
            Weekday::Sun
        );
        let weekend = Schedule::new("0 9 * * 5-7", "UTC").unwrap();
        assert_eq!(
            weekend
                .next_after(at(2026, 11, 21, 10, 0, 0))
                .unwrap()
                .weekday(),
            Weekday::Sun
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let every_five_seconds = Schedule::new("*/5 * * * * *", "UTC").unwrap();
        assert_eq!(
            every_five_seconds.next_after(at(2026, 11, 21, 10, 3, 7)),
            Some(at(2026, 11, 21, 10, 3, 10))
        );
    }

    #[test]
    fn the_time_zone_moves_the_hour() {
        let berlin = Schedule::new("0 9 * * *", "Europe/Berlin").unwrap();
        // 09:00 in Berlin in November (CET) is 08:00 UTC.
        assert_eq!(
            berlin.next_after(at(2026, 11, 21, 0, 0, 0)),
            Some(at(2026, 11, 21, 8, 0, 0))
        );
    }

    #[test]
    fn bad_schedules_are_explained() {
        assert!(
            Schedule::new("* * *", "UTC")
                .unwrap_err()
                .contains("3 fields")
        );
        assert!(
            Schedule::new("0 9 * * 8", "UTC")
                .unwrap_err()
                .contains("8 is not a day")
        );
        assert!(
            Schedule::new("0 9 * * 5-1", "UTC")
                .unwrap_err()
                .contains("wraps")
        );
        assert!(Schedule::new("61 * * * *", "UTC").is_err());
        assert!(
            Schedule::new("* * * * *", "Mars/Olympus")
                .unwrap_err()
                .contains("time zone")
        );
    }
}
