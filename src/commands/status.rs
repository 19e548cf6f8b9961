//! `status`: how fresh each registry view is, from the log tables alone.
//!
//! Reads `materialized_views_refresh_log` and the recent history, and shows
//! the `work_mem` the next refresh would use and why; never refreshes and
//! never creates anything. A view the log has no row for is
//! reported as never refreshed; a registry name that is no view that can be
//! refreshed (a typo, a table), which the log never holds, is reported failing
//! with the reason and the closest name, as `refresh` reports it. With
//! `--max-age` it is also a check: exit code 1 when any view is older (or was
//! never refreshed), for an alert or a probe.

use std::collections::HashMap;

use serde::Serialize;

use crate::config::StatusConfig;
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::incremental::markers::Ahead;
use crate::metrics;
use crate::output::{StatusFormat, print_table, table};
use crate::refresh_log::{LogRow, RefreshLog};
use crate::units::{PgDuration, age, millis};
use crate::{out, outln};

/// Successful refreshes shown in the sparkline.
const SPARK_POINTS: i64 = 20;

#[derive(Debug, Serialize)]
struct Report<'a> {
    log_schema: &'a str,
    log_tables_exist: bool,
    views: Vec<ViewReport>,
}

/// One view: its log row and what `status` derives from it.
#[derive(Debug, Serialize)]
struct ViewReport {
    #[serde(flatten)]
    log: LogRow,
    /// The registry's `min_interval`, if any.
    min_interval: Option<String>,
    /// When the view is next due, RFC 3339 in UTC; `null` when it is due now.
    next_due_at: Option<String>,
    /// Durations of the latest successful refreshes, oldest first.
    recent_durations_ms: Vec<f64>,
    /// The `work_mem` the next refresh would use, and why.
    work_mem: String,
    /// The latest refresh failed or was cancelled, or the name cannot be
    /// refreshed at all (`problem`): what `mv_refresher_view_failing` says.
    failing: bool,
    /// Why the registry name cannot be refreshed at all, as `refresh` says it
    /// (with the closest materialized view); the log tables never hold such a
    /// name, so its counts stay 0.
    problem: Option<String>,
    /// Why every run skips the view on purpose (an incremental view whose
    /// table is not in this database): it is not stale, and has no metrics.
    skipped: Option<String>,
    /// An incremental view's sources with rows whose marker is ahead of the
    /// server's clock: its watermark stops at the clock instead.
    markers_ahead: Vec<Ahead>,
}

/// Prints the freshness of every registry view.
pub(super) async fn status(
    target: &DbTarget,
    log: &RefreshLog,
    options: &StatusConfig,
) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);
    // The plan names each view as the log tables do, and knows its work_mem.
    let (exists, plan) = super::plan(&client, target, log, &options.registry.views).await?;
    let ahead = super::markers_ahead(&*client, &plan)
        .await
        .map_err(db_err("reading the incremental views' markers"))?;
    let views = options.registry.views.iter().map(|spec| {
        let i = plan.steps.iter().position(|s| s.spec.name == spec.name);
        let i = i.expect("the plan holds every registry view");
        let step = &plan.steps[i];
        // What refresh fails without a log row; a view skipped on purpose
        // (an incremental view without its table) is no problem.
        let problem = (!step.is_recorded() && step.skip.is_none()).then(|| {
            step.problem
                .clone()
                .unwrap_or_else(|| "is not a materialized view".into())
        });
        (
            step.view_name(),
            spec.settings.min_interval,
            step.work_mem.reason.clone(),
            problem,
            step.skip.clone(),
            ahead[i].clone(),
        )
    });
    let names: Vec<String> = views.clone().map(|(name, ..)| name).collect();
    let (mut rows, mut recent) = match exists {
        true => read_log(&client, log, &names)
            .await
            .map_err(db_err("reading the refresh log"))?,
        false => {
            tracing::warn!(
                schema = log.schema(),
                "the log tables do not exist yet: run `mv-refresher init` or a refresh"
            );
            Default::default()
        }
    };
    let reports: Vec<ViewReport> = views
        .map(
            |(name, min_interval, work_mem, problem, skipped, markers_ahead)| {
                let log = match rows.iter().position(|r| r.view_name == name) {
                    Some(i) => rows.swap_remove(i),
                    None => LogRow::never(name),
                };
                ViewReport {
                    recent_durations_ms: recent.remove(&log.view_name).unwrap_or_default(),
                    next_due_at: next_due_at(&log, min_interval),
                    // A view not here is not failing, whatever an older run
                    // recorded for it.
                    failing: problem.is_some()
                        || (skipped.is_none()
                            && matches!(log.last_status.as_deref(), Some("failed" | "cancelled"))),
                    log,
                    min_interval: min_interval.map(|d| d.to_string()),
                    work_mem,
                    problem,
                    skipped,
                    markers_ahead,
                }
            },
        )
        .collect();
    for report in &reports {
        if let Some(problem) = &report.problem {
            tracing::warn!(view = %report.log.view_name, %problem, "registry view cannot be refreshed");
        }
    }
    let exit = max_age_exit(&reports, options.max_age);
    match options.format {
        StatusFormat::Json => print_json(log, exists, reports),
        StatusFormat::Prometheus => {
            let here: Vec<&ViewReport> = reports.iter().filter(|r| r.skipped.is_none()).collect();
            let names: Vec<String> = here.iter().map(|r| r.log.view_name.clone()).collect();
            let mut states = log
                .view_states(&*client, &names)
                .await
                .map_err(db_err("reading the refresh log"))?;
            for (state, report) in states.iter_mut().zip(here) {
                state.unrefreshable = report.problem.is_some();
            }
            out!("{}", metrics::encode_views(&states));
        }
        StatusFormat::Table => print_status_table(&reports),
    }
    Ok(exit)
}

/// The summary rows of `names` and their latest durations.
async fn read_log(
    client: &tokio_postgres::Client,
    log: &RefreshLog,
    names: &[String],
) -> Result<(Vec<LogRow>, HashMap<String, Vec<f64>>), tokio_postgres::Error> {
    let rows = log.rows(client, names).await?;
    let recent = log.recent_durations(client, names, SPARK_POINTS).await?;
    Ok((rows, recent))
}

fn print_json(log: &RefreshLog, exists: bool, views: Vec<ViewReport>) {
    let report = Report {
        log_schema: log.schema(),
        log_tables_exist: exists,
        views,
    };
    outln!(
        "{}",
        serde_json::to_string_pretty(&report).expect("plain data serializes")
    );
}

/// When `log`'s view is next due, RFC 3339 in UTC; `None` when it is due now.
fn next_due_at(log: &LogRow, min_interval: Option<PgDuration>) -> Option<String> {
    next_due(log, min_interval).map(|due_in| {
        (chrono::Utc::now() + chrono::Duration::milliseconds((due_in * 1000.0) as i64))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    })
}

/// Seconds until `log`'s view is due again under `min_interval`, counted from
/// the start of its last successful refresh as a refresh counts it; `None` when
/// it is due now (or has no interval: every run refreshes it).
fn next_due(log: &LogRow, min_interval: Option<PgDuration>) -> Option<f64> {
    let interval = min_interval?.as_millis() as f64 / 1000.0;
    let since_start = log.age_seconds? + log.last_refresh_time_ms.unwrap_or(0.0) / 1000.0;
    let due_in = interval - since_start;
    (due_in > 0.0).then_some(due_in)
}

/// Exit code 1, with each offender on stderr, when a view is older than `max_age`.
fn max_age_exit(views: &[ViewReport], max_age: Option<PgDuration>) -> Exit {
    let Some(max_age) = max_age else {
        return Exit::Success;
    };
    let limit = max_age.as_millis() as f64 / 1000.0;
    let mut stale = false;
    for view in views.iter().filter(|v| v.skipped.is_none()) {
        match view.log.age_seconds {
            Some(age_s) if age_s <= limit => {}
            Some(age_s) => {
                stale = true;
                tracing::error!(view = %view.log.view_name, age = %age(age_s), max_age = %max_age, "view is older than --max-age");
            }
            None => {
                stale = true;
                tracing::error!(view = %view.log.view_name, max_age = %max_age, "view was never refreshed");
            }
        }
    }
    if stale {
        Exit::ViewsFailed
    } else {
        Exit::Success
    }
}

/// `▁▂▃▄▅▆▇█` scaled between the smallest and largest of `values`.
fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (low, high) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    values
        .iter()
        .map(|&v| {
            let scaled = if high > low {
                (v - low) / (high - low)
            } else {
                0.0
            };
            BARS[((scaled * 7.0).round() as usize).min(7)]
        })
        .collect()
}

fn print_status_table(views: &[ViewReport]) {
    let mut t = table([
        "VIEW",
        "LAST REFRESH (UTC)",
        "AGE",
        "NEXT DUE",
        "AVG",
        "LAST",
        "RECENT",
        "OK",
        "FAILED",
        "STATUS",
        "METHOD",
        "WORK_MEM",
        "WATERMARK AGE",
        "ERROR",
    ]);
    for view in views {
        let row = &view.log;
        let dash = || "-".to_owned();
        t.add_row([
            row.view_name.clone(),
            row.last_refreshed_at
                .clone()
                .unwrap_or_else(|| "never".into()),
            row.age_seconds.map_or_else(dash, age),
            match (&view.min_interval, &view.next_due_at) {
                (None, _) => "every run".into(),
                (Some(_), None) => "now".into(),
                (Some(_), Some(at)) => at.clone(),
            },
            row.avg_refresh_time_ms.map_or_else(dash, millis),
            row.last_refresh_time_ms.map_or_else(dash, millis),
            sparkline(&view.recent_durations_ms),
            // Not counted: such a name never reaches the log tables.
            match view.problem {
                Some(_) => dash(),
                None => row.refresh_count.to_string(),
            },
            match view.problem {
                Some(_) => dash(),
                None => row.failure_count.to_string(),
            },
            match (&view.problem, &view.skipped) {
                (Some(_), _) => "failed".into(),
                (None, Some(_)) => "not here".into(),
                (None, None) => row.last_status.clone().unwrap_or_else(dash),
            },
            row.last_method.clone().unwrap_or_else(dash),
            // The value and its short why; JSON has the whole reason.
            view.work_mem
                .split(';')
                .next()
                .unwrap_or_default()
                .to_owned(),
            row.watermark_age_seconds.map_or_else(dash, age),
            match (&view.problem, &view.skipped) {
                (Some(why), _) | (None, Some(why)) => why.clone(),
                (None, None) => row.last_error.clone().unwrap_or_default(),
            },
        ]);
    }
    print_table(&t);
    for view in views {
        for ahead in &view.markers_ahead {
            outln!(
                "\n{}: {ahead}; its watermark stops at the clock",
                view.log.view_name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_spans_the_range() {
        assert_eq!(sparkline(&[1.0, 8.0, 4.5]), "▁█▅");
        assert_eq!(sparkline(&[3.0, 3.0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }
}
