//! `check`: the plan and its problems, without refreshing or creating
//! anything: where it would run, in which order, how, with which settings, and
//! what would fail. Exit code 1 when a view cannot be refreshed as configured.

use crate::catalog::{self, Lookup};
use crate::config::CheckConfig;
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::incremental::markers::Ahead;
use crate::outln;
use crate::output::{self, print_table, table};
use crate::plan::{Plan, Step};
use crate::refresh_log::RefreshLog;
use crate::registry::Lag;
use crate::schedule::Schedule;

/// What `check` learns from the server besides the plan.
struct Server {
    /// The host and port of the list the connection reached, the database
    /// and the user.
    reached: String,
    version: String,
    /// `Some(coordinator?)` on Citus.
    citus: Option<bool>,
    log_exists: bool,
}

pub(super) async fn check(
    target: &DbTarget,
    log: &RefreshLog,
    options: &CheckConfig,
) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);
    let version: String = client
        .query_typed_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(db_err("reading the server's settings"))?
        .get(0);
    let (log_exists, plan) = super::plan(&client, target, log, &options.registry.views).await?;
    let citus = match plan.citus {
        true => Some(
            catalog::is_citus_coordinator(&*client)
                .await
                .map_err(db_err("asking citus_is_coordinator()"))?,
        ),
        false => None,
    };
    let server = Server {
        reached: target.at(client.endpoint()).to_string(),
        version,
        citus,
        log_exists,
    };
    let ahead = super::markers_ahead(&*client, &plan)
        .await
        .map_err(db_err("reading the incremental views' markers"))?;
    print_header(options, log, &server);
    print_plan(&plan);
    print_incremental(&plan, &ahead);
    let unproven = prove(&client, &plan)
        .await
        .map_err(db_err("proving the incremental views' templates"))?;
    print_warnings(&plan);
    Ok(print_problems(&plan, &unproven))
}

/// Proves each incremental view's template (SPEC §2.5), read-only, each in
/// a transaction of its own under a statement timeout; prints what it found.
/// Returns the views whose template failed, each with its differences.
async fn prove(
    client: &tokio_postgres::Client,
    plan: &Plan,
) -> Result<Vec<(String, Vec<String>)>, tokio_postgres::Error> {
    use crate::incremental::proof::{self, Proof, Verdict};
    let mut unproven = Vec::new();
    for step in &plan.steps {
        let (Some(spec), Some(target)) = (&step.spec.incremental, &step.incremental) else {
            continue;
        };
        if step.skip.is_some() || step.problem.is_some() {
            continue;
        }
        let timeout = step
            .settings()
            .statement_timeout
            .as_millis()
            .min(proof::TIMEOUT_MS);
        let Proof { template, sources } =
            proof::prove_read_only(client, spec, target, timeout).await?;
        let name = step.view_name();
        match sources {
            Some(unmapped) if !unmapped.is_empty() => unproven.push((
                name.clone(),
                unmapped.iter().map(|u| u.describe()).collect(),
            )),
            Some(_) => {}
            None if matches!(template, Verdict::Unfinished) => {}
            None => outln!(
                "\nwarning: {name}: its sources' keys could not be proven within {} \
                 (statement_timeout): run `mv-refresher verify` after a few cycles",
                crate::units::millis(timeout as f64)
            ),
        }
        match template {
            Verdict::Proven { keys } => outln!(
                "\nproof: {name}: restricted to {keys} keys (of its table, of its sources' newest \
                 rows, and one that exists nowhere), its query returns the full query's rows"
            ),
            Verdict::Unfinished => outln!(
                "\nwarning: {name}: its template could not be proven within {} (statement_timeout): \
                 run `mv-refresher verify` after its first refresh",
                crate::units::millis(timeout as f64)
            ),
            Verdict::Differs {
                differences,
                total,
                keys,
            } => {
                let mut lines = vec![format!(
                    "restricted by its $changed, its query does not return the full query's rows \
                     for {total} of {keys} keys:"
                )];
                lines.extend(differences.iter().map(|d| format!("  {}", d.describe())));
                unproven.push((name, lines));
            }
        }
    }
    Ok(unproven)
}

/// For each incremental view, how each source's changes are found: the
/// marker, how late commits are caught, and the indexes that serve it; what
/// no marker shows, and the `full_every` that bounds it; the rows ahead of
/// the clock (`ahead`, one list per step).
fn print_incremental(plan: &Plan, ahead: &[Vec<Ahead>]) {
    use crate::incremental::catalog::MarkerKind;
    for (step, ahead) in plan.steps.iter().zip(ahead) {
        let Some(target) = &step.incremental else {
            continue;
        };
        let table = match &target.table {
            Some(_) => "its table",
            None => "its table, created on the first refresh,",
        };
        let full_every = step.settings().full_every;
        let every = full_every.map_or("never".to_owned(), |d| format!("every {d}"));
        // What lag does not catch waits for this.
        let until = full_every.map_or("for good: full_every = \"0\"".to_owned(), |d| {
            format!("until the full reconcile (every {d})")
        });
        outln!(
            "
incremental {}: {table} kept equal to its query by key ({}); full reconcile {every}",
            step.view_name(),
            step.spec
                .incremental
                .as_ref()
                .map_or(String::new(), |i| i.key.join(", "))
        );
        for source in &target.sources {
            let late = match &source.marker_kind {
                MarkerKind::Sequence(seq) => {
                    format!("from sequence {seq}: its writers are waited for")
                }
                MarkerKind::Clock => "from clock_timestamp(): its writers are waited for".into(),
                MarkerKind::Other => {
                    format!("late commits caught within lag = {}", lag(source.spec.lag))
                }
            };
            let index = |name: &Option<String>| name.as_deref().unwrap_or("none").to_owned();
            outln!(
                "  {}: marker {} ({}, {late}; index {}), key ({}; index {})",
                source.relation,
                source.spec.marker,
                source.marker_type,
                index(&source.marker_index),
                source.spec.key.join(", "),
                index(&source.key_index)
            );
            if plan.citus && source.marker_kind != MarkerKind::Other {
                outln!(
                    "    on Citus only the writers connected to the coordinator are waited for: \
                     a write entering through a worker relies on lag ({}) like any late commit, \
                     and what lag does not catch is missed {until}",
                    lag(source.spec.lag)
                );
            }
            if let Some(view) = registry_view(plan, source.relation.oid) {
                outln!(
                    "    {} is refreshed by this registry ({view}): its rows change when it is \
                     refreshed, with the markers they had before, so lag (now {}) must be at \
                     least its refresh period; what comes later is missed {until}",
                    source.relation,
                    lag(source.spec.lag)
                );
            }
        }
        outln!(
            "  not seen by any marker: rows deleted from a source, and the old key of a row \
             whose key changes; they stay in its table {until}"
        );
        for warning in &target.warnings {
            outln!("\nwarning: {}: {warning}", step.view_name());
        }
        for a in ahead {
            outln!(
                "\nwarning: {}: {a}: the watermark stops at the clock instead of following them \
                 (is a writer's clock wrong?)",
                step.view_name()
            );
        }
        if full_every.is_none() {
            outln!(
                "\nwarning: {}: full_every = \"0\": it is never reconciled in full, so rows \
                 deleted from its sources and the old keys of rows whose key changes stay in its \
                 table until `mv-refresher refresh --full`",
                step.view_name()
            );
        }
    }
}

/// The registry view whose relation is `oid`: a source that the registry
/// itself refreshes.
fn registry_view(plan: &Plan, oid: u32) -> Option<String> {
    plan.steps.iter().find_map(|step| match &step.lookup {
        Lookup::MatView(r) | Lookup::Table(r) if r.oid == oid => Some(step.view_name()),
        _ => None,
    })
}

/// A source's `lag` with its unit: a duration says its own; a number is in
/// the marker's units (epoch milliseconds for the reference platform's).
fn lag(lag: Lag) -> String {
    match lag {
        Lag::Units(0) => "0".into(),
        Lag::Units(n) => format!("{n} (marker units)"),
        Lag::Duration(d) => d.to_string(),
    }
}

fn print_header(options: &CheckConfig, log: &RefreshLog, server: &Server) {
    let registry = &options.registry;
    outln!(
        "registry:   {} ({})",
        registry.source,
        output::count(registry.views.len(), "view", "views")
    );
    outln!(
        "database:   {}, PostgreSQL {}{}",
        server.reached,
        server.version,
        match server.citus {
            Some(true) => ", Citus coordinator (per-view settings are propagated to the workers)",
            Some(false) => ", a Citus node that is NOT the coordinator",
            None => "",
        }
    );
    if server.citus == Some(false) {
        outln!(
            "warning:    citus_is_coordinator() is false here: connect to the coordinator, \
             where distributed tables are whole and materialized views live"
        );
    }
    outln!(
        "log tables: {}",
        match server.log_exists {
            true => format!("present in schema {}", log.schema()),
            false => format!(
                "missing in schema {} (refresh or init creates them)",
                log.schema()
            ),
        }
    );
    if let Some(schedule) = &options.schedule {
        outln!("schedule:   {schedule}, next runs {}", next_runs(schedule));
    }
    outln!();
}

/// The next three run times, in the schedule's time zone.
fn next_runs(schedule: &Schedule) -> String {
    let next: Vec<String> = schedule
        .upcoming(chrono::Utc::now(), 3)
        .iter()
        .map(|at| schedule.local(*at))
        .collect();
    next.join(", ")
}

fn print_plan(plan: &Plan) {
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
                _ if let Some(why) = &step.skip => format!("skipped: {why}"),
                (None, Some((method, reason))) => format!("{} ({reason})", method.as_str()),
                _ => "cannot refresh".into(),
            },
            step.work_mem.reason.clone(),
            s.statement_timeout.to_string(),
            s.lock_timeout.to_string(),
            s.retries.to_string(),
            s.min_interval.map_or("-".into(), |d| d.to_string()),
            match after.is_empty() {
                true => "-".into(),
                false => after.join(","),
            },
        ]);
    }
    print_table(&t);
}

fn print_warnings(plan: &Plan) {
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
}

/// Prints the problems, the templates that failed their proof among them;
/// exit code 1 when there are any.
fn print_problems(plan: &Plan, unproven: &[(String, Vec<String>)]) -> Exit {
    let problems: Vec<&Step> = plan.steps.iter().filter(|s| s.problem.is_some()).collect();
    if problems.is_empty() && unproven.is_empty() {
        outln!("\nno problems: every view can be refreshed as configured");
        return Exit::Success;
    }
    outln!("\nproblems:");
    for (view, lines) in unproven {
        outln!("  {view}: {}", lines.join("\n  "));
    }
    for step in problems {
        outln!(
            "  {} {} (registry name {:?})",
            step.view_name(),
            step.problem.as_deref().unwrap_or_default(),
            step.spec.name.to_string()
        );
    }
    Exit::ViewsFailed
}
