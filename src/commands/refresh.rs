//! `refresh`: the views once, then one line per view (or one JSON object), and
//! the metrics pushed when a Pushgateway is given.

use std::io::IsTerminal;

use crate::config::RefreshConfig;
use crate::cycle::{Refresher, Stops};
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::outcome::{Cycle, Status};
use crate::outln;
use crate::output::{self, ResultsFormat, print_table, table};
use crate::progress;
use crate::push::{self, Pushgateway};
use crate::refresh_log::RefreshLog;
use crate::registry::ViewSpec;
use crate::shutdown::StopReason;
use crate::units::millis;

pub(super) async fn refresh(
    target: DbTarget,
    log: RefreshLog,
    options: RefreshConfig,
) -> Result<Exit, Error> {
    let embedded = options.registry.is_embedded();
    super::preflight(&target, &options.views, options.named, embedded).await?;
    let mut refresher = Refresher::new(
        target,
        log,
        options.cycle.jobs,
        options.cycle.history_retention,
    );
    refresher.full = options.full;
    let (stop_handle, stop) = super::stop_on_signals()?;
    if let Some(deadline) = options.deadline {
        stop_handle.after(deadline.to_std());
    }
    // Once: stopping means cancelling at once, no grace.
    let stops = Stops {
        drain: stop.clone(),
        cancel: stop.clone(),
    };
    let (watcher, drawing) =
        match options.format == Some(ResultsFormat::Table) && std::io::stdout().is_terminal() {
            true => {
                let (sender, task) = progress::start();
                (Some(sender), Some(task))
            }
            false => (None, None),
        };
    let cycle = refresher
        .cycle(options.views, &stops, watcher, None)
        .await?;
    if let Some(task) = drawing {
        // The cycle dropped its sender: the drawing ends with the last line.
        let _ = task.await;
    }
    match options.format {
        Some(ResultsFormat::Table) => print_outcomes(&cycle),
        Some(ResultsFormat::Json) => outln!("{}", output::cycle_json(&cycle)),
        None => {}
    }
    if let Some(gateway) = &options.pushgateway {
        push_metrics(gateway, &refresher, &options.registry.views, &cycle).await;
    }
    Ok(match stop.reason() {
        Some(StopReason::Signal(signal)) => Exit::Signal(signal),
        _ if cycle.failed() => Exit::ViewsFailed,
        _ => Exit::Success,
    })
}

/// PUTs the run's metrics; a failure is a warning, the exit code is the run's.
async fn push_metrics(
    gateway: &Pushgateway,
    refresher: &Refresher,
    registry_views: &[ViewSpec],
    cycle: &Cycle,
) {
    let pushed = match push::body(refresher, registry_views, cycle).await {
        Ok(body) => gateway.push(body).await.map_err(|e| e.to_string()),
        Err(err) => Err(format!(
            "cannot read the metrics to push to {gateway}: {err}"
        )),
    };
    match pushed {
        Ok(()) => tracing::info!(%gateway, "pushed the metrics"),
        Err(error) => tracing::warn!(%error, "the metrics were not pushed"),
    }
}

fn print_outcomes(cycle: &Cycle) {
    let mut t = table(["VIEW", "STATUS", "METHOD", "DURATION", "ATTEMPTS", "NOTE"]);
    for o in &cycle.outcomes {
        // One line per view: server messages may hold line breaks and tabs.
        let mut note = o
            .message
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(err) = &o.log_error {
            note.push_str(&format!(" (not recorded: {err})"));
        }
        t.add_row([
            o.view_name.clone(),
            o.status.as_str().to_owned(),
            o.method.map_or("-", |m| m.as_str()).to_owned(),
            // No method: no REFRESH ran, so there is no duration to show.
            o.method.map_or("-".into(), |_| millis(o.duration_ms)),
            o.attempts.to_string(),
            note,
        ]);
    }
    print_table(&t);
    outln!(
        "\nrun {}: {} refreshed, {} skipped, {} failed in {}",
        cycle.run_id,
        cycle.count(Status::Success),
        cycle.count(Status::Skipped),
        cycle.count(Status::Failed) + cycle.count(Status::Cancelled),
        millis(cycle.duration.as_secs_f64() * 1000.0),
    );
}
