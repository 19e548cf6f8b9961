//! `status`: how fresh each registry view is, from the log tables alone.
//!
//! Reads `materialized_views_refresh_log` and the recent history; never
//! refreshes and never creates anything. A view the log has no row for is
//! reported as never refreshed. With `--max-age` it is also a check: exit code 1
//! when any view is older (or was never refreshed), for an alert or a probe.

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::catalog;
use crate::cli::{StatusArgs, StatusFormat};
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::metrics;
use crate::output::{age, millis, print_table, table};
use crate::refresh_log::{LogRow, RefreshLog};
use crate::registry::{Registry, ViewSpec};
use crate::units::PgDuration;
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
}

/// Prints the freshness of every registry view.
pub async fn run(
    registry: &Registry,
    target: &DbTarget,
    log: &RefreshLog,
    args: &StatusArgs,
) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);

    let names = registry_names(&*client, &registry.views)
        .await
        .map_err(db_err("looking up the registry views"))?;
    let exists = log
        .exists(&*client)
        .await
        .map_err(db_err("looking for the log tables"))?;
    let (mut rows, mut recent) = if exists {
        let rows = log
            .rows(&*client, &names)
            .await
            .map_err(db_err("reading the refresh log"))?;
        let recent = log
            .recent_durations(&*client, &names, SPARK_POINTS)
            .await
            .map_err(db_err("reading the refresh history"))?;
        (rows, recent)
    } else {
        tracing::warn!(
            schema = log.schema(),
            "the log tables do not exist yet: run `mv-refresher init` or a refresh"
        );
        Default::default()
    };

    let now = chrono::Utc::now();
    let views: Vec<ViewReport> = names
        .into_iter()
        .zip(&registry.views)
        .map(|(name, spec)| {
            let log = match rows.iter().position(|r| r.view_name == name) {
                Some(i) => rows.swap_remove(i),
                None => LogRow::never(name),
            };
            let min_interval = spec.settings.min_interval;
            let next_due_at = next_due(&log, min_interval).map(|due_in| {
                (now + chrono::Duration::milliseconds((due_in * 1000.0) as i64))
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string()
            });
            ViewReport {
                recent_durations_ms: recent.remove(&log.view_name).unwrap_or_default(),
                log,
                min_interval: min_interval.map(|d| d.to_string()),
                next_due_at,
            }
        })
        .collect();

    let exit = max_age_exit(&views, args.max_age);
    match args.format {
        StatusFormat::Json => {
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
        StatusFormat::Prometheus => {
            let names: Vec<String> = views.into_iter().map(|v| v.log.view_name).collect();
            let states = log
                .view_states(&*client, &names)
                .await
                .map_err(db_err("reading the refresh log"))?;
            out!("{}", metrics::encode_views(&states));
        }
        StatusFormat::Table => print_status_table(&views),
    }
    Ok(exit)
}

/// The schema-qualified names of `views`, as the log tables and the metrics
/// know them: each looked up the way PostgreSQL would find it.
pub async fn registry_names(
    client: &impl GenericClient,
    views: &[ViewSpec],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut names = Vec::with_capacity(views.len());
    for view in views {
        names.push(catalog::lookup(client, &view.name).await?.qualified_name());
    }
    Ok(names)
}

/// Seconds until `log`'s view is due again under `min_interval`; `None` when it
/// is due now (or has no interval: every run refreshes it).
fn next_due(log: &LogRow, min_interval: Option<PgDuration>) -> Option<f64> {
    let interval = min_interval?.as_millis() as f64 / 1000.0;
    let due_in = interval - log.age_seconds?;
    (due_in > 0.0).then_some(due_in)
}

/// Exit code 1, with each offender on stderr, when a view is older than `max_age`.
fn max_age_exit(views: &[ViewReport], max_age: Option<PgDuration>) -> Exit {
    let Some(max_age) = max_age else {
        return Exit::Success;
    };
    let limit = max_age.as_millis() as f64 / 1000.0;
    let mut stale = false;
    for view in views {
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
            row.refresh_count.to_string(),
            row.failure_count.to_string(),
            row.last_status.clone().unwrap_or_else(dash),
            row.last_error.clone().unwrap_or_default(),
        ]);
    }
    print_table(&t);
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
