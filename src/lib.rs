//! mv-refresher keeps PostgreSQL and Citus materialized views fresh.
//!
//! The binary (`main.rs`) parses the command line and calls [`run`]; each command
//! lives in the module named for what it holds: `registry` (the view list),
//! `db` (reaching the server), `catalog` (what the server says about the views),
//! `plan` (order and method), `refresh` (doing it), `refresh_log` (recording it),
//! `status` (reporting it).

#![forbid(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod cycle;
pub mod db;
pub mod error;
pub mod http;
pub mod metrics;
pub mod output;
pub mod plan;
pub mod progress;
pub mod push;
pub mod quote;
pub mod refresh;
pub mod refresh_log;
pub mod registry;
pub mod runner;
pub mod schedule;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod tuner;
pub mod units;

use std::io::IsTerminal;
use std::sync::Arc;

use crate::cli::{Cli, Command, GlobalArgs, LogFormat, OutputFormat, RefreshArgs};
use crate::cycle::{Cycle, Refresher, Stops};
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::output::{millis, print_table, table};
use crate::plan::Plan;
use crate::refresh::Status;
use crate::refresh_log::RefreshLog;
use crate::registry::Registry;
use crate::shutdown::StopReason;

/// Runs one command to completion and says how the process should exit.
pub async fn run(cli: Cli) -> Result<Exit, Error> {
    let global = &cli.global;
    let url = database_url(global)?;
    let target = DbTarget::new(url.as_deref(), |key| std::env::var(key).ok())?;
    let log = RefreshLog::new(&global.log_schema);
    let jobs = |cycle: &cli::CycleArgs| global.jobs.or(cycle.jobs).map_or(1, |n| n.get());
    if global.jobs.is_some() && !matches!(cli.command, Command::Refresh(_) | Command::Run(_)) {
        return Err(Error::Usage(
            "--jobs applies to refresh and run only".into(),
        ));
    }
    match &cli.command {
        Command::Refresh(args) => {
            let registry = Registry::load(global.registry.as_deref())?;
            let specs = registry.select(&args.views).map_err(Error::Usage)?;
            preflight(
                &target,
                &specs,
                !args.views.is_empty(),
                registry.is_embedded(),
            )
            .await?;
            let refresher =
                Refresher::new(target, log, jobs(&args.cycle), args.cycle.history_retention);
            refresh(global, args, refresher, specs, &registry.views).await
        }
        Command::Run(args) => {
            let registry = Registry::load(global.registry.as_deref())?;
            let schedule = schedule::Schedule::new(&args.schedule, &args.timezone)
                .map_err(|e| Error::Usage(format!("--schedule: {e}")))?;
            // A sidecar starts before its database may: unreachable is no
            // reason not to start.
            match preflight(&target, &registry.views, false, registry.is_embedded()).await {
                Err(Error::Connect(_)) | Ok(()) => {}
                Err(err) => return Err(err),
            }
            let (_stop_handle, stop) = stop_on_signals()?;
            let refresher =
                Refresher::new(target, log, jobs(&args.cycle), args.cycle.history_retention);
            let options = runner::RunOptions {
                schedule,
                listen: args.listen,
                shutdown_grace: args.shutdown_grace.to_std(),
            };
            let shutdown = async move { stop.stopped().await };
            runner::run(Arc::new(refresher), registry.views, options, shutdown).await
        }
        Command::Check(args) => {
            let registry = Registry::load(global.registry.as_deref())?;
            let schedule = match &args.schedule {
                Some(expression) => Some(
                    schedule::Schedule::new(expression, &args.timezone)
                        .map_err(|e| Error::Usage(format!("--schedule: {e}")))?,
                ),
                None => None,
            };
            check(&registry, &target, &log, schedule.as_ref()).await
        }
        Command::Init => init(&target, &log).await,
        Command::Forget(args) => forget(&target, &log, &args.views).await,
        Command::Status(args) => {
            let registry = Registry::load(global.registry.as_deref())?;
            status::run(&registry, &target, &log, args).await
        }
    }
}

/// A stop that SIGTERM and SIGINT fire, from now on; the handle, to add other
/// reasons (the deadline).
fn stop_on_signals() -> Result<(shutdown::StopHandle, shutdown::Stop), Error> {
    let (handle, stop) = shutdown::channel();
    handle
        .on_signals()
        .map_err(|e| Error::Usage(format!("cannot listen for signals: {e}")))?;
    Ok((handle, stop))
}

/// The URL from --database-url, or read from --database-url-file.
fn database_url(global: &GlobalArgs) -> Result<Option<String>, Error> {
    match (&global.database_url, &global.database_url_file) {
        (Some(_), Some(_)) => Err(Error::Usage(
            "give the database URL inline (--database-url, DATABASE_URL) or in a file \
             (--database-url-file, MV_REFRESHER_DATABASE_URL_FILE), not both"
                .into(),
        )),
        (Some(url), None) => Ok(Some(url.0.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim().to_owned()))
            .map_err(|e| {
                Error::Usage(format!(
                    "cannot read --database-url-file {}: {e}",
                    path.display()
                ))
            }),
        (None, None) => Ok(None),
    }
}

/// Before anything is written: names given on the command line (`explicit`)
/// must be materialized views, a typo is a bad invocation; and the embedded
/// default registry must name at least one view here, or it is surely not the
/// registry meant.
async fn preflight(
    target: &DbTarget,
    specs: &[registry::ViewSpec],
    explicit: bool,
    embedded: bool,
) -> Result<(), Error> {
    if !explicit && !embedded {
        return Ok(());
    }
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);
    let mut missing = Vec::new();
    for spec in specs {
        let lookup = catalog::lookup(&*client, &spec.name)
            .await
            .map_err(db_err("looking up the views"))?;
        if !matches!(lookup, catalog::Lookup::MatView(_)) {
            missing.push((spec.name.to_string(), lookup));
        }
    }
    if explicit && !missing.is_empty() {
        let known = catalog::materialized_views(&*client)
            .await
            .map_err(db_err("listing the materialized views"))?;
        let lines: Vec<String> = missing
            .iter()
            .map(|(name, lookup)| {
                let what = match lookup {
                    catalog::Lookup::Other { kind, .. } => {
                        format!("{name} is {kind}, not a materialized view")
                    }
                    _ => format!("there is no materialized view {name}"),
                };
                match catalog::closest(name, &known) {
                    Some(like) => format!("{what}; did you mean {like}?"),
                    None => what,
                }
            })
            .collect();
        return Err(Error::Usage(format!(
            "{} (nothing was refreshed)",
            lines.join("; ")
        )));
    }
    if embedded && missing.len() == specs.len() {
        let names: Vec<String> = specs.iter().map(|s| s.name.to_string()).collect();
        return Err(Error::Usage(format!(
            "none of the embedded default registry's views ({}) exist in {target}: give your \
             registry with --registry FILE or MV_REFRESHER_REGISTRY (nothing was written)",
            names.join(", ")
        )));
    }
    Ok(())
}

/// `refresh`: refreshes the views once, prints one line per view.
async fn refresh(
    global: &GlobalArgs,
    args: &RefreshArgs,
    refresher: Refresher,
    specs: Vec<registry::ViewSpec>,
    registry_views: &[registry::ViewSpec],
) -> Result<Exit, Error> {
    // Checked before anything runs: a bad URL or label is exit code 2.
    let pushgateway = args
        .pushgateway
        .as_deref()
        .map(|url| push::Pushgateway::new(url, &args.pushgateway_labels))
        .transpose()
        .map_err(|e| Error::Usage(format!("--pushgateway: {e}")))?;
    let (stop_handle, stop) = stop_on_signals()?;
    if let Some(deadline) = args.deadline {
        stop_handle.after(deadline.to_std());
    }
    // Once: stopping means cancelling at once, no grace.
    let stops = Stops {
        drain: stop.clone(),
        cancel: stop.clone(),
    };
    // Without --format, the results follow the logs: a table beside text logs,
    // nothing beside JSON logs, whose events (one per view, then the summary)
    // are the results.
    let format = args.format.or(match global.log_format {
        LogFormat::Text => Some(OutputFormat::Table),
        LogFormat::Json => None,
    });
    let (watcher, drawing) =
        match format == Some(OutputFormat::Table) && std::io::stdout().is_terminal() {
            true => {
                let (sender, task) = progress::start();
                (Some(sender), Some(task))
            }
            false => (None, None),
        };
    let cycle = refresher.cycle(specs, &stops, watcher).await?;
    if let Some(task) = drawing {
        // The cycle dropped its sender: the drawing ends with the last line.
        let _ = task.await;
    }
    match format {
        Some(OutputFormat::Table) => print_outcomes(&cycle),
        Some(OutputFormat::Json) => outln!("{}", output::cycle_json(&cycle)),
        None => {}
    }
    if let Some(gateway) = &pushgateway {
        push_metrics(gateway, &refresher, registry_views, &cycle).await;
    }

    Ok(match stop.reason() {
        Some(StopReason::Signal(signal)) => Exit::Signal(signal),
        _ if cycle.failed() => Exit::ViewsFailed,
        _ => Exit::Success,
    })
}

/// PUTs the run's metrics; a failure is a warning, the exit code is the run's.
async fn push_metrics(
    gateway: &push::Pushgateway,
    refresher: &Refresher,
    registry_views: &[registry::ViewSpec],
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

/// `check`: the plan and its problems, without refreshing or creating anything.
async fn check(
    registry: &Registry,
    target: &DbTarget,
    log: &RefreshLog,
    schedule: Option<&schedule::Schedule>,
) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);

    let settings = client
        .query_typed_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(db_err("reading the server's settings"))?;
    let version: String = settings.get(0);
    let log_exists = log
        .exists(&*client)
        .await
        .map_err(db_err("looking for the log tables"))?;
    let tuning = plan::Tuning {
        log: log_exists.then_some(log),
        jobs: 1,
    };
    let plan = Plan::build(&*client, registry.views.clone(), tuning)
        .await
        .map_err(db_err("planning the refresh"))?;
    // Some(coordinator?) on Citus, None without it.
    let citus = if plan.citus {
        let coordinator = catalog::is_citus_coordinator(&*client)
            .await
            .map_err(db_err("asking citus_is_coordinator()"))?;
        Some(coordinator)
    } else {
        None
    };

    outln!(
        "registry:   {} ({})",
        registry.source,
        output::count(registry.views.len(), "view", "views")
    );
    outln!(
        "database:   {target}, PostgreSQL {version}{}",
        match citus {
            Some(true) => ", Citus coordinator (per-view settings are propagated to the workers)",
            Some(false) => ", a Citus node that is NOT the coordinator",
            None => "",
        }
    );
    if citus == Some(false) {
        outln!(
            "warning:    citus_is_coordinator() is false here: connect to the coordinator, \
             where distributed tables are whole and materialized views live"
        );
    }
    outln!(
        "log tables: {}",
        if log_exists {
            format!("present in schema {}", log.schema())
        } else {
            format!(
                "missing in schema {} (refresh or init creates them)",
                log.schema()
            )
        }
    );
    if let Some(schedule) = schedule {
        let next: Vec<String> = schedule
            .upcoming(chrono::Utc::now(), 3)
            .iter()
            .map(|at| schedule.local(*at))
            .collect();
        outln!("schedule:   {schedule}, next runs {}", next.join(", "));
    }
    outln!();

    let mut t = table([
        "#",
        "VIEW",
        "METHOD",
        "WORK_MEM",
        "STATEMENT_TIMEOUT",
        "LOCK_TIMEOUT",
        "RETRIES",
        "MIN_INTERVAL",
        "AFTER",
    ]);
    for (i, step) in plan.steps.iter().enumerate() {
        let s = step.settings();
        let after: Vec<String> = step
            .depends_on
            .iter()
            .map(|&d| (d + 1).to_string())
            .collect();
        t.add_row([
            (i + 1).to_string(),
            step.view_name(),
            match (&step.problem, step.method) {
                (None, Some((method, reason))) => format!("{} ({reason})", method.as_str()),
                _ => "cannot refresh".into(),
            },
            step.work_mem.reason.clone(),
            s.statement_timeout.to_string(),
            s.lock_timeout.to_string(),
            s.retries.to_string(),
            s.min_interval.map_or("-".into(), |d| d.to_string()),
            if after.is_empty() {
                "-".into()
            } else {
                after.join(",")
            },
        ]);
    }
    print_table(&t);

    for step in plan.steps.iter().filter(|s| s.auto_blocks_readers()) {
        outln!(
            "\nwarning: {} is refreshed without CONCURRENTLY ({}): its plain refresh takes an \
             ACCESS EXCLUSIVE lock, so its readers wait for the whole refresh, and queue behind it \
             while it waits for the lock (plain_lock_timeout = {}); a unique index on plain \
             columns lets it refresh CONCURRENTLY",
            step.view_name(),
            step.method.map_or("", |(_, reason)| reason),
            step.settings().plain_lock_timeout
        );
    }
    let problems: Vec<_> = plan.steps.iter().filter(|s| s.problem.is_some()).collect();
    if problems.is_empty() {
        outln!("\nno problems: every view can be refreshed as configured");
        return Ok(Exit::Success);
    }
    outln!("\nproblems:");
    for step in problems {
        outln!(
            "  {} {} (registry name {:?})",
            step.view_name(),
            step.problem.as_deref().unwrap_or_default(),
            step.spec.name.to_string()
        );
    }
    Ok(Exit::ViewsFailed)
}

/// `forget`: deletes views' summary rows and history, all or none.
async fn forget(target: &DbTarget, log: &RefreshLog, names: &[String]) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let mut client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);
    let exists = log
        .exists(&*client)
        .await
        .map_err(db_err("looking for the log tables"))?;
    if !exists {
        return Err(Error::Usage(format!(
            "there are no log tables in schema {} to forget views in",
            quote::display_ident(log.schema())
        )));
    }
    let known = log
        .known_views(&*client)
        .await
        .map_err(db_err("reading the log tables"))?;
    let views = names
        .iter()
        .map(|name| logged_name(name, &known))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Usage)?;
    let (summary, history) = log
        .forget(&mut client, &views)
        .await
        .map_err(db_err("deleting from the log tables"))?;
    outln!(
        "forgot {}: {} and {}",
        views.join(", "),
        output::count(summary as usize, "summary row", "summary rows"),
        output::count(history as usize, "history row", "history rows"),
    );
    Ok(Exit::Success)
}

/// The name the log tables know `name` by: itself, or the one schema-qualified
/// name ending in it.
fn logged_name(name: &str, known: &[String]) -> Result<String, String> {
    if known.iter().any(|k| k == name) {
        return Ok(name.to_owned());
    }
    let suffix = format!(".{name}");
    let matching: Vec<&String> = match name.contains('.') {
        true => Vec::new(),
        false => known.iter().filter(|k| k.ends_with(&suffix)).collect(),
    };
    match matching[..] {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "the log tables have no rows for {name}{} (nothing was deleted)",
            catalog::closest(name, known)
                .map_or(String::new(), |like| format!("; did you mean {like}?"))
        )),
        _ => Err(format!(
            "{name} is ambiguous in the log tables ({}): give the schema (nothing was deleted)",
            matching
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `init`: creates or upgrades the log tables.
async fn init(target: &DbTarget, log: &RefreshLog) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let mut client = target.connect(&pool).await?;
    log.create(&mut client).await.map_err(|e| {
        Error::database(
            &format!("creating the log tables in schema {:?}", log.schema()),
            target,
            e,
        )
    })?;
    outln!(
        "log tables ready: {0}.materialized_views_refresh_log, {0}.materialized_views_refresh_history",
        quote::display_ident(log.schema())
    );
    Ok(Exit::Success)
}
