//! `status`: how fresh each registry view is, from the log tables alone.
//!
//! Reads `materialized_views_refresh_log`; never refreshes and never creates
//! anything. A view the log has no row for is reported as never refreshed.

use serde::Serialize;

use crate::catalog;
use crate::cli::StatusFormat;
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::output::{age, millis, print_table, table};
use crate::refresh_log::{LogRow, RefreshLog};
use crate::registry::Registry;

#[derive(Debug, Serialize)]
struct Report<'a> {
    log_schema: &'a str,
    log_tables_exist: bool,
    views: Vec<LogRow>,
}

/// Prints the freshness of every registry view in `format`.
pub async fn run(
    registry: &Registry,
    target: &DbTarget,
    log: &RefreshLog,
    format: StatusFormat,
) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);

    let mut names = Vec::with_capacity(registry.views.len());
    for view in &registry.views {
        let lookup = catalog::lookup(&**client, &view.name)
            .await
            .map_err(db_err("looking up the registry views"))?;
        names.push(lookup.qualified_name());
    }
    let exists = log
        .exists(&**client)
        .await
        .map_err(db_err("looking for the log tables"))?;
    let mut found = if exists {
        log.rows(&**client, &names)
            .await
            .map_err(db_err("reading the refresh log"))?
    } else {
        tracing::warn!(
            schema = log.schema(),
            "the log tables do not exist yet: run `mv-refresher init` or a refresh"
        );
        Vec::new()
    };
    let views: Vec<LogRow> = names
        .into_iter()
        .map(
            |name| match found.iter().position(|r| r.view_name == name) {
                Some(i) => found.swap_remove(i),
                None => LogRow::never(name),
            },
        )
        .collect();

    match format {
        StatusFormat::Json => {
            let report = Report {
                log_schema: log.schema(),
                log_tables_exist: exists,
                views,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("plain data serializes")
            );
        }
        StatusFormat::Table => print_status_table(&views),
    }
    Ok(Exit::Success)
}

fn print_status_table(views: &[LogRow]) {
    let mut t = table([
        "VIEW",
        "LAST REFRESH (UTC)",
        "AGE",
        "AVG",
        "LAST",
        "OK",
        "FAILED",
        "STATUS",
        "ERROR",
    ]);
    for row in views {
        let dash = || "-".to_owned();
        t.add_row([
            row.view_name.clone(),
            row.last_refreshed_at
                .clone()
                .unwrap_or_else(|| "never".into()),
            row.age_seconds.map_or_else(dash, age),
            row.avg_refresh_time_ms.map_or_else(dash, millis),
            row.last_refresh_time_ms.map_or_else(dash, millis),
            row.refresh_count.to_string(),
            row.failure_count.to_string(),
            row.last_status.clone().unwrap_or_else(dash),
            row.last_error.clone().unwrap_or_default(),
        ]);
    }
    print_table(&t);
}
