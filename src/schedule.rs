//! When `run` refreshes: a cron expression read exactly as a Kubernetes CronJob
//! reads it, in a time zone, or a fixed period (`--every 10s`): a [`Cadence`].
//!
//! Kubernetes validates `spec.schedule` with robfig/cron v3's standard parser,
//! so that parser is the reference: five fields (minute, hour, day of month,
//! month, day of week 0-6 with Sunday 0), `*` or `?`, numbers, ranges `a-b`,
//! steps `*/n`, `a-b/n` and `a/n` (from a to the field's end), lists, month and
//! day names (`jan`, `mon`, any case), and the descriptors `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`.
//! When both day fields are restricted, a day matches either (Vixie cron's rule,
//! and robfig's); when one is `*` or `?`, both must match. What Kubernetes
//! refuses is refused here too, with the field named in the user's own terms.
//! Six fields, seconds first, are read as robfig's optional seconds field
//! (`*/10 * * * * *`, every ten seconds on the wall clock): a CronJob cannot run
//! more often than once a minute, a loop can.
//!
//! Run times are the instants whose wall-clock time in the zone matches: in the
//! hour a spring-forward skips nothing fires, and in the hour a fall-back repeats
//! a time fires twice, as robfig does. The loop that waits on this schedule is in
//! `runner`.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use chrono_tz::Tz;

use crate::units::PgDuration;

/// How often `run` starts a cycle.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// At the times of a cron schedule.
    Cron(Schedule),
    /// At once, then every period from the previous start (`--every`).
    Every(PgDuration),
}

/// How many of a schedule's next runs are looked at for its longest gap.
const GAPS_LOOKED_AT: usize = 100;

impl Cadence {
    /// When the first cycle starts: at once for a period, at the schedule's
    /// next time for a schedule.
    pub fn first(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(schedule) => schedule.next_after(now),
            Self::Every(_) => Some(now),
        }
    }

    /// The first tick after `last` that is still ahead of `now`: a period's
    /// ticks stay on the grid of the first one, and the ones a stopped clock or
    /// a jump of the wall clock passed are not made up for.
    pub fn after(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(schedule) => schedule.next_after(last.max(now)),
            Self::Every(period) => {
                let period = Duration::from_std(period.to_std()).ok()?;
                let mut next = last + period;
                if next <= now {
                    let behind = (now - next).num_milliseconds() / period.num_milliseconds();
                    next += period * (i32::try_from(behind).ok()? + 1);
                }
                Some(next)
            }
        }
    }

    /// The time from `tick` to the tick after it: how late a view left out at
    /// `tick` is refreshed.
    pub fn period_at(&self, tick: DateTime<Utc>) -> Option<std::time::Duration> {
        match self {
            Self::Cron(schedule) => (schedule.next_after(tick)? - tick).to_std().ok(),
            Self::Every(period) => Some(period.to_std()),
        }
    }

    /// The longest time between two cycles from `now` on: the period itself,
    /// or the longest gap among a schedule's next hundred runs (`0 9 * * 1-5`:
    /// Friday to Monday).
    pub fn longest_period(&self, now: DateTime<Utc>) -> std::time::Duration {
        match self {
            Self::Cron(schedule) => schedule
                .upcoming(now, GAPS_LOOKED_AT + 1)
                .windows(2)
                .filter_map(|pair| (pair[1] - pair[0]).to_std().ok())
                .max()
                .unwrap_or_default(),
            Self::Every(period) => period.to_std(),
        }
    }

    /// The next `n` cycles' times after a start at `now`.
    pub fn upcoming(&self, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.first(now), |at| self.after(*at, *at))
            .take(n)
            .collect()
    }

    /// `at` as people read it: on the schedule's wall clock, or in UTC.
    pub fn local(&self, at: DateTime<Utc>) -> String {
        match self {
            Self::Cron(schedule) => schedule.local(at),
            Self::Every(_) => at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
        }
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cron(schedule) => write!(f, "{schedule}"),
            Self::Every(period) => write!(f, "every {period}"),
        }
    }
}

/// A parsed schedule and the zone its times are read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    spec: Spec,
    timezone: Tz,
}

/// The times a schedule matches: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    second: u64,
    minute: u64,
    hour: u64,
    day_of_month: u64,
    month: u64,
    day_of_week: u64,
    /// Either day field is `*` or `?`: days must match both fields, not either.
    any_day_field_open: bool,
}

/// How far ahead a schedule is searched for its next time (robfig's limit).
const SEARCH_YEARS: i32 = 5;

/// One field of the expression: its name for people and its bounds.
struct FieldKind {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for values from `min` on (`jan` is 1, `sun` is 0).
    names: &'static [&'static str],
}

const SECOND: FieldKind = FieldKind {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: FieldKind = FieldKind {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldKind = FieldKind {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldKind = FieldKind {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldKind = FieldKind {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAY_OF_WEEK: FieldKind = FieldKind {
    name: "day of week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// The descriptors robfig's standard parser reads, as the five fields they stand for.
const DESCRIPTORS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

impl Schedule {
    /// Parses `expression` (five fields, a descriptor, or six fields with
    /// seconds first) in `timezone` (an IANA name such as `UTC` or
    /// `Europe/Berlin`).
    pub fn new(expression: &str, timezone: &str) -> Result<Self, String> {
        let timezone: Tz = timezone.parse().map_err(|_| {
            format!("unknown time zone {timezone:?} (use an IANA name like \"Europe/Berlin\")")
        })?;
        let spec = parse(expression.trim())
            .map_err(|why| format!("schedule {:?}: {why}", expression.trim()))?;
        let schedule = Self {
            expression: expression.trim().to_owned(),
            spec,
            timezone,
        };
        // Kubernetes would accept `0 0 30 2 *` and never run it; say so now.
        if schedule.next_after(Utc::now()).is_none() {
            return Err(format!(
                "schedule {:?} never fires: no date has that day of month in those months",
                schedule.expression
            ));
        }
        Ok(schedule)
    }

    /// The first time strictly after `now`, if there is one in the next five years.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Whole seconds from the next one on; whole minutes for five fields.
        let mut t = now.with_nanosecond(0)? + Duration::seconds(1);
        let limit = now + Duration::days(366 * i64::from(SEARCH_YEARS));
        while t <= limit {
            let local = t.with_timezone(&self.timezone);
            let into_hour = Duration::seconds(i64::from(local.minute() * 60 + local.second()));
            let into_minute = Duration::seconds(i64::from(local.second()));
            if !self.spec.day_matches(&local) || !bit(self.spec.hour, local.hour()) {
                t = t - into_hour + Duration::hours(1);
            } else if !bit(self.spec.minute, local.minute()) {
                t = t - into_minute + Duration::minutes(1);
            } else if !bit(self.spec.second, local.second()) {
                t += Duration::seconds(1);
            } else {
                return Some(t);
            }
        }
        None
    }

    /// The next `n` times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(after), |at| self.next_after(*at))
            .take(n)
            .collect()
    }

    /// `at` on the schedule's wall clock, as people read it.
    pub fn local(&self, at: DateTime<Utc>) -> String {
        at.with_timezone(&self.timezone)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.timezone)
    }
}

impl Spec {
    fn day_matches(&self, local: &DateTime<Tz>) -> bool {
        if !bit(self.month, local.month()) {
            return false;
        }
        let by_date = bit(self.day_of_month, local.day());
        let by_weekday = bit(self.day_of_week, local.weekday().num_days_from_sunday());
        match self.any_day_field_open {
            true => by_date && by_weekday,
            false => by_date || by_weekday,
        }
    }
}

fn bit(set: u64, value: u32) -> bool {
    set & (1 << value) != 0
}

/// Reads an expression into the times it matches; the error names the field.
fn parse(expression: &str) -> Result<Spec, String> {
    if expression.starts_with("TZ=") || expression.starts_with("CRON_TZ=") {
        return Err(
            "give the time zone with --timezone (in a CronJob: spec.timeZone), \
                    not in the schedule"
                .into(),
        );
    }
    if let Some(word) = expression.strip_prefix('@') {
        // Case matters, as it does to robfig: `@HOURLY` is refused.
        let descriptor = format!("@{word}");
        return match DESCRIPTORS.iter().find(|(name, _)| *name == descriptor) {
            Some((_, fields)) => parse(fields),
            None if descriptor.starts_with("@every") => Err(
                "@every is not a schedule a CronJob runs: write the interval as fields, \
                 like \"*/5 * * * *\""
                    .into(),
            ),
            None => Err(format!(
                "unknown descriptor: use one of {}",
                DESCRIPTORS.map(|(name, _)| name).join(", ")
            )),
        };
    }
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let (second, rest) = match fields.len() {
        5 => ("0", &fields[..]),
        6 => (fields[0], &fields[1..]),
        n => {
            return Err(format!(
                "{n} fields: expected 5 (minute hour day-of-month month day-of-week), \
                 like \"*/5 * * * *\", or a descriptor like @hourly"
            ));
        }
    };
    let (day_of_month, dom_open) = field(rest[2], &DAY_OF_MONTH)?;
    let (day_of_week, dow_open) = field(rest[4], &DAY_OF_WEEK)?;
    Ok(Spec {
        second: field(second, &SECOND)?.0,
        minute: field(rest[0], &MINUTE)?.0,
        hour: field(rest[1], &HOUR)?.0,
        day_of_month,
        month: field(rest[3], &MONTH)?.0,
        day_of_week,
        any_day_field_open: dom_open || dow_open,
    })
}

/// One field: its set of values, and whether it is open (`*` or `?` without a
/// step), which decides how the two day fields combine.
fn field(text: &str, kind: &FieldKind) -> Result<(u64, bool), String> {
    let mut set = 0;
    let mut open = false;
    for item in text.split(',') {
        let (bits, item_open) = item_bits(item, kind).map_err(|why| {
            if text == item {
                format!("{} {why}", kind.name)
            } else {
                format!("{} {text:?}: {why}", kind.name)
            }
        })?;
        set |= bits;
        open |= item_open;
    }
    Ok((set, open))
}

/// One item of a list: `*`, `?`, `n`, `a-b`, each with an optional `/step`.
fn item_bits(item: &str, kind: &FieldKind) -> Result<(u64, bool), String> {
    let (range, step) = match item.split_once('/') {
        None => (item, None),
        Some((_, step)) if step.contains('/') => {
            return Err(format!("{item:?} has more than one '/'"));
        }
        Some((range, step)) => (range, Some(step)),
    };
    let step = match step {
        None => 1,
        Some(step) => match step.parse::<u32>() {
            Ok(0) => return Err(format!("{item:?}: a step must be at least 1")),
            Ok(n) => n,
            Err(_) => return Err(format!("{item:?}: the step {step:?} is not a number")),
        },
    };
    let (start, end, open) = match range {
        "*" | "?" => (kind.min, kind.max, step == 1),
        _ => match range.split_once('-') {
            None => {
                let start = value(range, kind)?;
                // `a/n` runs from a to the end of the field, as in robfig.
                let end = if item.contains('/') { kind.max } else { start };
                (start, end, false)
            }
            Some((from, to)) => {
                if to.contains('-') {
                    return Err(format!("{item:?} has more than one '-'"));
                }
                let in_range = |text| value(text, kind).map_err(|why| format!("{item:?}: {why}"));
                let (from, to) = (in_range(from)?, in_range(to)?);
                if from > to {
                    return Err(format!(
                        "{item:?}: the range runs backwards ({from} is after {to})"
                    ));
                }
                (from, to, false)
            }
        },
    };
    let bits = (start..=end)
        .step_by(step as usize)
        .fold(0, |bits, v| bits | 1 << v);
    Ok((bits, open))
}

/// A number or a name within the field's bounds.
fn value(text: &str, kind: &FieldKind) -> Result<u32, String> {
    let lower = text.to_lowercase();
    if let Some(i) = kind.names.iter().position(|name| *name == lower) {
        return Ok(kind.min + i as u32);
    }
    let range = format!("{}-{}", kind.min, kind.max);
    match text.parse::<u32>() {
        Ok(n) if (kind.min..=kind.max).contains(&n) => Ok(n),
        Ok(7) if kind.name == DAY_OF_WEEK.name => Err(format!(
            "7 is out of range {range}: Sunday is 0 (Kubernetes does not accept 7)"
        )),
        Ok(n) => Err(format!("{n} is out of range {range}")),
        Err(_) => Err(match kind.names {
            [] => format!("{text:?} is not a number ({range})"),
            names => format!(
                "{text:?} is not a number ({range}) or a name ({}-{})",
                names[0],
                names[names.len() - 1]
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Weekday};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn next(expression: &str, after: DateTime<Utc>) -> DateTime<Utc> {
        Schedule::new(expression, "UTC")
            .unwrap()
            .next_after(after)
            .unwrap()
    }

    fn error(expression: &str) -> String {
        Schedule::new(expression, "UTC").unwrap_err()
    }

    #[test]
    fn five_fields_read_like_a_kubernetes_cronjob() {
        let now = at(2026, 11, 21, 10, 3, 7);
        assert_eq!(next("*/5 * * * *", now), at(2026, 11, 21, 10, 5, 0));
        assert_eq!(next("5/20 * * * *", now), at(2026, 11, 21, 10, 5, 0));
        assert_eq!(
            next("5/20 * * * *", at(2026, 11, 21, 10, 46, 0)),
            at(2026, 11, 21, 11, 5, 0)
        );
        assert_eq!(next("0,30 9-17/4 * * *", now), at(2026, 11, 21, 13, 0, 0));

        // 2026-11-21 is a Saturday: 1-5 (Monday to Friday) next fires on Monday.
        let weekday = next("0 9 * * 1-5", at(2026, 11, 21, 10, 0, 0));
        assert_eq!((weekday.weekday(), weekday.hour()), (Weekday::Mon, 9));
        assert_eq!(next("0 9 * * 0", now).weekday(), Weekday::Sun);
        assert_eq!(next("0 9 ? * SUN", now).weekday(), Weekday::Sun);
        assert_eq!(next("0 0 1 Jan-Mar *", now), at(2027, 1, 1, 0, 0, 0));
    }

    #[test]
    fn both_day_fields_restricted_means_either_day() {
        // The 13th, or any Friday: 2026-11-27 is a Friday, before 2026-12-13.
        let after = at(2026, 11, 21, 0, 0, 0);
        assert_eq!(next("0 0 13 * 5", after), at(2026, 11, 27, 0, 0, 0));
        assert_eq!(
            next("0 0 13 * 5", at(2026, 11, 27, 0, 0, 0)),
            at(2026, 12, 4, 0, 0, 0)
        );
        // With one of them open (`*`, `?`, or robfig's `*/1`), both must match,
        // which leaves the other one.
        assert_eq!(next("0 0 13 * *", after), at(2026, 12, 13, 0, 0, 0));
        assert_eq!(next("0 0 ? * 5", after), at(2026, 11, 27, 0, 0, 0));
        assert_eq!(next("0 0 */1 * 5", after), at(2026, 11, 27, 0, 0, 0));
        // A range over every day is not open: any day matches it, Friday or not.
        assert_eq!(next("0 0 1-31 * 5", after), at(2026, 11, 22, 0, 0, 0));
    }

    #[test]
    fn descriptors_are_the_fields_they_stand_for() {
        let now = at(2026, 11, 21, 10, 3, 7);
        assert_eq!(next("@hourly", now), at(2026, 11, 21, 11, 0, 0));
        assert_eq!(next("@daily", now), at(2026, 11, 22, 0, 0, 0));
        assert_eq!(next("@midnight", now), at(2026, 11, 22, 0, 0, 0));
        assert_eq!(next("@weekly", now), at(2026, 11, 22, 0, 0, 0));
        assert_eq!(next("@monthly", now), at(2026, 12, 1, 0, 0, 0));
        assert_eq!(next("@yearly", now), at(2027, 1, 1, 0, 0, 0));
        assert_eq!(next("@annually", now), at(2027, 1, 1, 0, 0, 0));
    }

    #[test]
    fn six_fields_have_seconds_first() {
        assert_eq!(
            next("*/5 * * * * *", at(2026, 11, 21, 10, 3, 7)),
            at(2026, 11, 21, 10, 3, 10)
        );
        assert_eq!(
            error("60 * * * * *"),
            "schedule \"60 * * * * *\": second 60 is out of range 0-59"
        );
    }

    #[test]
    fn upcoming_lists_increasing_times() {
        let schedule = Schedule::new("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            schedule.upcoming(at(2026, 11, 21, 10, 3, 7), 3),
            [
                at(2026, 11, 21, 10, 5, 0),
                at(2026, 11, 21, 10, 10, 0),
                at(2026, 11, 21, 10, 15, 0)
            ]
        );
    }

    #[test]
    fn the_time_zone_moves_the_hour_and_its_changes_are_robfigs() {
        let berlin = Schedule::new("0 9 * * *", "Europe/Berlin").unwrap();
        // 09:00 in Berlin in November (CET) is 08:00 UTC.
        assert_eq!(
            berlin.next_after(at(2026, 11, 21, 0, 0, 0)),
            Some(at(2026, 11, 21, 8, 0, 0))
        );
        assert_eq!(
            berlin.local(at(2026, 11, 21, 8, 0, 0)),
            "2026-11-21 09:00:00 CET"
        );
        // 02:30 does not exist on 2027-03-28 in Berlin: that day has no run.
        let gap = Schedule::new("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            gap.next_after(at(2027, 3, 27, 12, 0, 0)),
            Some(at(2027, 3, 29, 0, 30, 0))
        );
        // 02:30 happens twice on 2027-10-31: two runs, an hour apart.
        let twice = gap.upcoming(at(2027, 10, 30, 12, 0, 0), 2);
        assert_eq!(
            twice,
            [at(2027, 10, 31, 0, 30, 0), at(2027, 10, 31, 1, 30, 0)]
        );
    }

    #[test]
    fn what_kubernetes_refuses_is_refused_in_the_users_own_fields() {
        for (expression, message) in [
            ("*5 * * * *", "minute \"*5\" is not a number (0-59)"),
            (
                "*/5 * * ** *",
                "month \"**\" is not a number (1-12) or a name (jan-dec)",
            ),
            (
                "5/* * * * *",
                "minute \"5/*\": the step \"*\" is not a number",
            ),
            ("0 0 32 * *", "day of month 32 is out of range 1-31"),
            ("60 * * * *", "minute 60 is out of range 0-59"),
            ("0 24 * * *", "hour 24 is out of range 0-23"),
            ("0 0 * 13 *", "month 13 is out of range 1-12"),
            ("0 0 0 * *", "day of month 0 is out of range 1-31"),
            (
                "0 9 * * 7",
                "day of week 7 is out of range 0-6: Sunday is 0",
            ),
            ("0 9 * * 1-7", "day of week \"1-7\": 7 is out of range 0-6"),
            ("*/0 * * * *", "minute \"*/0\": a step must be at least 1"),
            (
                "0 5-1 * * *",
                "hour \"5-1\": the range runs backwards (5 is after 1)",
            ),
            (
                "0 0 * foo *",
                "month \"foo\" is not a number (1-12) or a name (jan-dec)",
            ),
            ("0 0 * * mon-fri-sat", "has more than one '-'"),
            ("0,61 * * * *", "minute \"0,61\": 61 is out of range 0-59"),
            ("* * *", "3 fields: expected 5"),
            ("@minutely", "unknown descriptor"),
            ("@HOURLY", "unknown descriptor"),
            ("@every 5m", "@every is not a schedule a CronJob runs"),
            ("TZ=UTC 0 9 * * *", "--timezone"),
            ("0 0 30 2 *", "never fires"),
        ] {
            let got = error(expression);
            assert!(got.contains(message), "{expression:?}: {got}");
            // The user's own expression, never an internal form.
            assert!(got.contains(&format!("{expression:?}")), "{got}");
        }
        assert!(
            Schedule::new("* * * * *", "Mars/Olympus")
                .unwrap_err()
                .contains("time zone")
        );
    }

    #[test]
    fn every_starts_at_once_then_keeps_to_the_grid_of_its_first_tick() {
        let every = Cadence::Every("10s".parse().unwrap());
        let start = at(2026, 11, 21, 10, 3, 7);
        assert_eq!(every.first(start), Some(start));
        let ms = |n| Duration::milliseconds(n);
        // Woken a little late, or early: the next tick is on the grid.
        assert_eq!(every.after(start, start + ms(20)), Some(start + ms(10_000)));
        assert_eq!(every.after(start, start - ms(5)), Some(start + ms(10_000)));
        // A clock that jumped 35 s: the ticks it passed are not made up for.
        assert_eq!(
            every.after(start, start + ms(35_000)),
            Some(start + ms(40_000))
        );
        assert_eq!(
            every.upcoming(start, 3),
            [start, start + ms(10_000), start + ms(20_000)]
        );
        assert_eq!(
            every.period_at(start),
            Some(std::time::Duration::from_secs(10))
        );
        assert_eq!(
            every.longest_period(start),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(every.to_string(), "every 10s");
    }

    #[test]
    fn a_schedules_period_is_the_gap_to_its_next_tick_and_its_longest_gap() {
        let now = at(2026, 11, 21, 10, 3, 7);
        let cron = |e| Cadence::Cron(Schedule::new(e, "UTC").unwrap());
        let seconds = std::time::Duration::from_secs;
        let ten_s = cron("*/10 * * * * *");
        assert_eq!(ten_s.first(now), Some(at(2026, 11, 21, 10, 3, 10)));
        assert_eq!(
            ten_s.period_at(at(2026, 11, 21, 10, 3, 10)),
            Some(seconds(10))
        );
        assert_eq!(ten_s.longest_period(now), seconds(10));
        // Minutes 0 and 1 of every hour: a minute, then 59.
        let twice = cron("0,1 * * * *");
        assert_eq!(
            twice.period_at(at(2026, 11, 21, 11, 0, 0)),
            Some(seconds(60))
        );
        assert_eq!(twice.longest_period(now), seconds(59 * 60));
        // 2026-11-21 is a Saturday: weekdays at nine, Friday to Monday.
        assert_eq!(cron("0 9 * * 1-5").longest_period(now), seconds(3 * 86_400));
    }
}
