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
pub mod refresh;
pub mod refresh_log;
pub mod registry;
pub mod runner;
pub mod schedule;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod units;

use std::io::IsTerminal;
use std::sync::Arc;

use crate::cli::{Cli, Command, GlobalArgs, RefreshArgs};
use crate::cycle::{Cycle, Refresher, Stops};
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::output::{millis, print_table, table};
use crate::plan::Plan;
use crate::refresh_log::{RefreshLog, Status};
use crate::registry::Registry;
use crate::shutdown::StopReason;

/// Runs one command to completion and says how the process should exit.
pub async fn run(cli: Cli) -> Result<Exit, Error> {
    let global = &cli.global;
    let url = database_url(global)?;
    let target = DbTarget::new(url.as_deref(), |key| std::env::var(key).ok())?;
    let log = RefreshLog::new(&global.log_schema);
    match &cli.command {
        Command::Refresh(args) => {
            let registry = Registry::load(global.registry.as_deref())?;
            let specs = registry.select(&args.views).map_err(Error::Usage)?;
            refresh(global, args, target, log, specs).await
        }
        Command::Run(args) => {
            let registry = Registry::load(global.registry.as_deref())?;
            let schedule = schedule::Schedule::new(&args.schedule, &args.timezone)
                .map_err(|e| Error::Usage(format!("--schedule: {e}")))?;
            let (_stop_handle, stop) = stop_on_signals()?;
            let refresher =
                Refresher::new(target, log, global.jobs.get(), args.cycle.history_retention);
            let options = runner::RunOptions {
                schedule,
                listen: args.listen,
                shutdown_grace: args.shutdown_grace.to_std(),
            };
            let shutdown = async move { stop.stopped().await };
            runner::run(Arc::new(refresher), registry.views, options, shutdown).await
        }
        Command::Check => {
            let registry = Registry::load(global.registry.as_deref())?;
            check(&registry, &target, &log).await
        }
        Command::Init => init(&target, &log).await,
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

/// `refresh`: refreshes the views once, prints one line per view.
async fn refresh(
    global: &GlobalArgs,
    args: &RefreshArgs,
    target: DbTarget,
    log: RefreshLog,
    specs: Vec<registry::ViewSpec>,
) -> Result<Exit, Error> {
    let (stop_handle, stop) = stop_on_signals()?;
    if let Some(deadline) = args.deadline {
        stop_handle.after(deadline.to_std());
    }
    let refresher = Refresher::new(target, log, global.jobs.get(), args.cycle.history_retention);
    // Once: stopping means cancelling at once, no grace.
    let stops = Stops {
        drain: stop.clone(),
        cancel: stop.clone(),
    };
    let (watcher, drawing) = match std::io::stdout().is_terminal() {
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
        println!();
    }
    print_outcomes(&cycle);

    Ok(match stop.reason() {
        Some(StopReason::Signal(signal)) => Exit::Signal(signal),
        _ if cycle.failed() => Exit::ViewsFailed,
        _ => Exit::Success,
    })
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
    println!(
        "\nrun {}: {} refreshed, {} skipped, {} failed",
        cycle.run_id,
        cycle.count(Status::Success),
        cycle.count(Status::Skipped),
        cycle.count(Status::Failed) + cycle.count(Status::Cancelled),
    );
}

/// `check`: the plan and its problems, without refreshing or creating anything.
async fn check(registry: &Registry, target: &DbTarget, log: &RefreshLog) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);

    let settings = client
        .query_typed_one(
            "SELECT current_setting('server_version'), current_setting('work_mem')",
            &[],
        )
        .await
        .map_err(db_err("reading the server's settings"))?;
    let (version, server_work_mem): (String, String) = (settings.get(0), settings.get(1));
    let log_exists = log
        .exists(&*client)
        .await
        .map_err(db_err("looking for the log tables"))?;
    let plan = Plan::build(&*client, registry.views.clone())
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

    println!(
        "registry:   {} ({} views)",
        registry.source,
        registry.views.len()
    );
    println!(
        "database:   {target}, PostgreSQL {version}{}",
        match citus {
            Some(true) => ", Citus coordinator (per-view settings are propagated to the workers)",
            Some(false) => ", a Citus node that is NOT the coordinator",
            None => "",
        }
    );
    if citus == Some(false) {
        println!(
            "warning:    citus_is_coordinator() is false here: connect to the coordinator, \
             where distributed tables are whole and materialized views live"
        );
    }
    println!(
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
    println!();

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
            s.work_mem
                .map_or_else(|| format!("{server_work_mem} (server)"), |m| m.to_string()),
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

    let problems: Vec<_> = plan.steps.iter().filter(|s| s.problem.is_some()).collect();
    if problems.is_empty() {
        println!("\nno problems: every view can be refreshed as configured");
        return Ok(Exit::Success);
    }
    println!("\nproblems:");
    for step in problems {
        println!(
            "  {} {} (registry name {:?})",
            step.view_name(),
            step.problem.as_deref().unwrap_or_default(),
            step.spec.name.to_string()
        );
    }
    Ok(Exit::ViewsFailed)
}

/// `init`: creates or upgrades the log tables.
async fn init(target: &DbTarget, log: &RefreshLog) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let mut client = target.connect(&pool).await?;
    log.create(&mut client).await.map_err(|e| {
        Error::database(
            &format!("creating the log tables in schema {:?}", log.schema()),
            target,
            &e,
        )
    })?;
    println!(
        "log tables ready: {0}.materialized_views_refresh_log, {0}.materialized_views_refresh_history",
        registry::display_ident(log.schema())
    );
    Ok(Exit::Success)
}
