//! `run`: cycles on a schedule or every fixed period until SIGTERM or SIGINT,
//! as a sidecar or a Deployment does (the loop itself is `runner`).

use std::sync::Arc;

use crate::config::RunConfig;
use crate::cycle::Refresher;
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::refresh_log::RefreshLog;
use crate::runner::{self, RunOptions};

pub(super) async fn run(
    target: DbTarget,
    log: RefreshLog,
    options: RunConfig,
) -> Result<Exit, Error> {
    let embedded = options.registry.is_embedded();
    // A sidecar starts before its database may: unreachable is no reason not
    // to start.
    match super::preflight(&target, &options.registry.views, false, embedded).await {
        Err(Error::Connect(_)) | Ok(()) => {}
        Err(err) => return Err(err),
    }
    let (_stop_handle, stop) = super::stop_on_signals()?;
    let refresher = Refresher::new(
        target,
        log,
        options.cycle.jobs,
        options.cycle.history_retention,
    );
    let run_options = RunOptions {
        cadence: options.cadence,
        listen: options.listen,
        shutdown_grace: options.shutdown_grace.to_std(),
    };
    let shutdown = async move { stop.stopped().await };
    runner::run(
        Arc::new(refresher),
        options.registry.views,
        run_options,
        shutdown,
    )
    .await
}
