//! The commands, one module each, every one a thin function over the library:
//! `refresh` and `run` refresh (once, or on a schedule), `check` shows the
//! plan, `status` the freshness, `init` creates the log tables, `forget`
//! removes views from them, `verify` compares incremental views with their
//! queries, `twin` derives one from a materialized view.

mod check;
mod forget;
mod init;
mod refresh;
mod run;
mod status;
mod twin;
mod verify;

use crate::catalog;
use crate::config::{CommandConfig, Config};
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::incremental::markers::{self, Ahead};
use crate::plan::{Plan, Tuning};
use crate::refresh_log::RefreshLog;
use crate::registry::ViewSpec;
use crate::shutdown::{self, Stop, StopHandle};

/// Runs the command `config` holds and says how the process should exit.
pub async fn run(config: Config) -> Result<Exit, Error> {
    let Config {
        target,
        default_target,
        log,
        command,
        ..
    } = config;
    let ran = match command {
        CommandConfig::Refresh(options) => refresh::refresh(target, log, options).await,
        CommandConfig::Run(options) => run::run(target, log, options).await,
        CommandConfig::Check(options) => check::check(&target, &log, &options).await,
        CommandConfig::Status(options) => status::status(&target, &log, &options).await,
        CommandConfig::Init => init::init(&target, &log).await,
        CommandConfig::Forget { views } => forget::forget(&target, &log, &views).await,
        CommandConfig::Verify { views } => verify::verify(&target, &log, &views).await,
        CommandConfig::Twin(options) => twin::twin(&target, &log, &options).await,
    };
    match default_target {
        true => ran.map_err(Error::with_where_hint),
        false => ran,
    }
}

/// A stop that SIGTERM and SIGINT fire, from now on; the handle, to add other
/// reasons (the deadline).
fn stop_on_signals() -> Result<(StopHandle, Stop), Error> {
    let (handle, stop) = shutdown::channel();
    handle
        .on_signals()
        .map_err(|e| Error::Usage(format!("cannot listen for signals: {e}")))?;
    Ok((handle, stop))
}

/// The plan of `views` that `check` and `status` show (`work_mem = "auto"`
/// tuned for one job at a time), and whether the log tables exist.
async fn plan(
    client: &tokio_postgres::Client,
    target: &DbTarget,
    log: &RefreshLog,
    views: &[ViewSpec],
) -> Result<(bool, Plan), Error> {
    let db_err = |context| Error::in_context(context, target);
    let exists = log
        .exists(client)
        .await
        .map_err(db_err("looking for the log tables"))?;
    let tuning = Tuning {
        log: exists.then_some(log),
        jobs: 1,
    };
    // In a housekeeping transaction (as a cycle plans), rolled back:
    // incremental views are described through temporary views of their queries.
    crate::db::begin_housekeeping(client, false)
        .await
        .map_err(db_err("planning the refresh"))?;
    let plan = Plan::build(client, views.to_vec(), tuning).await;
    let ended = client.batch_execute("ROLLBACK").await;
    let plan = plan.map_err(db_err("planning the refresh"))?;
    ended.map_err(db_err("planning the refresh"))?;
    Ok((exists, plan))
}

/// For each step of `plan`, the rows of its sources whose marker is ahead
/// of the server's clock (empty for what is not an incremental view here),
/// which `check` and `status` report.
async fn markers_ahead(
    client: &impl tokio_postgres::GenericClient,
    plan: &Plan,
) -> Result<Vec<Vec<Ahead>>, tokio_postgres::Error> {
    let mut ahead = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        ahead.push(match &step.incremental {
            Some(target) => markers::ahead(client, &target.sources).await?,
            None => Vec::new(),
        });
    }
    Ok(ahead)
}

/// Before anything is written: names given on the command line (`named`)
/// must be materialized views, a typo is a bad invocation; and the embedded
/// default registry must name at least one view here, or it is surely not the
/// registry meant. One catalog query for all names.
async fn preflight(
    target: &DbTarget,
    specs: &[ViewSpec],
    named: bool,
    embedded: bool,
) -> Result<(), Error> {
    if !named && !embedded {
        return Ok(());
    }
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);
    let names: Vec<_> = specs.iter().map(|spec| spec.name.clone()).collect();
    let found = catalog::find(&*client, &names)
        .await
        .map_err(db_err("looking up the views"))?;
    // A registry view is here when its name is a materialized view, or, for
    // an incremental view, a table.
    let here = specs
        .iter()
        .zip(&found.views)
        .any(|(spec, f)| match spec.incremental {
            None => matches!(f.lookup, catalog::Lookup::MatView(_)),
            Some(_) => matches!(f.lookup, catalog::Lookup::Table(_)),
        });
    let missing: Vec<_> = specs
        .iter()
        .zip(found.views)
        .filter(|(spec, _)| spec.incremental.is_none())
        .filter(|(_, f)| !matches!(f.lookup, catalog::Lookup::MatView(_)))
        .map(|(spec, f)| (spec.name.to_string(), f.lookup))
        .collect();
    if named && !missing.is_empty() {
        let known = catalog::materialized_views(&*client)
            .await
            .map_err(db_err("listing the materialized views"))?;
        let lines: Vec<String> = missing
            .iter()
            .map(|(name, lookup)| not_a_view(name, lookup, &known))
            .collect();
        return Err(Error::Usage(format!(
            "{} (nothing was refreshed)",
            lines.join("; ")
        )));
    }
    if embedded && !here {
        let names: Vec<String> = specs.iter().map(|s| s.name.to_string()).collect();
        return Err(Error::Usage(format!(
            "none of the embedded default registry's views ({}) exist in {target}: give your \
             registry with --registry FILE or MV_REFRESHER_REGISTRY (nothing was written)",
            names.join(", ")
        )));
    }
    Ok(())
}

/// What a name given on the command line is instead of a materialized view,
/// and the closest of `known` it may have meant.
fn not_a_view(name: &str, lookup: &catalog::Lookup, known: &[String]) -> String {
    let what = match lookup {
        catalog::Lookup::Table(_) => format!("{name} is a table, not a materialized view"),
        catalog::Lookup::Other { kind, .. } => format!("{name} is {kind}, not a materialized view"),
        _ => format!("there is no materialized view {name}"),
    };
    match catalog::closest(name, known) {
        Some(like) => format!("{what}; did you mean {like}?"),
        None => what,
    }
}
