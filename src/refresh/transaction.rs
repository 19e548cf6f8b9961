//! One attempt at one view, in one transaction and three round trips, each
//! one message and one answer where the server allows (on Citus each `SET` is
//! a message of its own: see [`begin`]):
//!
//! 1. `BEGIN` and the view's `SET LOCAL`s, the advisory lock, then the view's
//!    state and its last success: the state is read by a statement that starts
//!    after the lock is held, so a refresh another refresher committed just
//!    before is seen, and `min_interval` skips it.
//! 2. `REFRESH MATERIALIZED VIEW [CONCURRENTLY]`, cancellable.
//! 3. Once the refresher has seen it succeed ([`Commit`]): behind a savepoint
//!    the success row (history and summary in one statement) with the dead
//!    rows the refresh left, then `RELEASE` and `COMMIT`. When the success row
//!    cannot be written, the server runs neither `RELEASE` nor `COMMIT`, so
//!    the refresh is committed without it (a fourth round trip) and the row is
//!    written again afterwards.
//!
//! The state's statement and the success row's are prepared on the server
//! backend ([`crate::prepared`]), planned once per backend, not once per view.
//! A `VACUUM` follows the commit when the refresh left many dead rows.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryRow};

use super::record::Slot;
use super::statement::{Interrupted, cancellable, silence_limit};
use super::{Failure, RunContext};
use crate::catalog::{self, Bloat, Relation, ViewState};
use crate::db::{
    Conn, Ran, bool_column, describe_error, execute_each, run_statements, text_column,
};
use crate::outcome::{LockWait, Method, Outcome, Status};
use crate::plan::{Step, choose_method};
use crate::prepared::{Execution, Prepared, literal};
use crate::progress;
use crate::quote::quote_literal;
use crate::refresh_log::RefreshLog;
use crate::registry::{Vacuum, ViewSettings};
use crate::units::{millis, round_ms};

/// How long a refresh's transaction may sit idle on the server: never, while
/// the refresher works (its statements follow each other at once), but a
/// connection it abandoned must not keep the view locked.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(15);

/// How often a server running a refresh's statement checks that the client is
/// still there (PostgreSQL 14+, direct connections).
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The savepoint the success row is written behind.
const LOG_SAVEPOINT: &str = "mv_refresher_log";

/// How an attempt that did not fail ended.
pub(super) enum Done {
    /// Refreshed and committed; the success row was written with it unless
    /// the outcome's `log_error` says otherwise.
    Refreshed {
        outcome: Outcome,
        /// The success row's id in the history.
        history_id: Option<i64>,
        /// Dead rows the refresh left, when they are worth a look.
        bloat: Option<Bloat>,
    },
    /// Another refresher holds the view's advisory lock.
    Locked,
    /// Refreshed more recently than `min_interval`: the reason.
    Fresh(String),
}

/// What the first round trip reads, under the lock.
struct Opened {
    locked: bool,
    /// `None`: the view was dropped since planning.
    state: Option<ViewState>,
    /// Seconds since the start of the last successful refresh, as the log
    /// tables know it.
    age_s: Option<f64>,
    /// The view's average successful refresh, for the progress display.
    avg_ms: Option<f64>,
}

/// Key of the per-view advisory lock: the refresher's prefix and the OID.
fn lock_key(oid: u32) -> i64 {
    (i64::from(super::LOCK_PREFIX) << 32) | i64::from(oid)
}

/// One attempt at `step` on the slot's connection. On an error the slot may be
/// left in an open (failed) transaction, which the next use rolls back.
pub(super) async fn attempt(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    relation: &Relation,
    attempt: u32,
) -> Result<Done, Failure> {
    // A stop that came while this view waited for its turn or its retry.
    if let Some(reason) = ctx.cancel.reason() {
        return Err(Failure::not_started(reason));
    }
    let session = slot
        .session(&ctx.pool)
        .await
        .map_err(|err| Failure::no_connection(&err))?;
    let client = session.client;
    let opened = open(ctx, client, step, relation).await;
    *session.in_transaction = true;
    let opened = opened?;
    if !opened.locked {
        return Ok(Done::Locked);
    }
    let state = opened
        .state
        .ok_or_else(|| Failure::permanent(format!("view {relation} was dropped")))?;
    if let Some(reason) = fresh(step.settings(), opened.age_s, ctx.period) {
        return Ok(Done::Fresh(reason));
    }
    // The state may have changed since planning (another refresher populated
    // it, an index was dropped): decide on what is true now, inside the lock.
    let (method, reason) = choose_method(step.settings().concurrently, state)
        .map_err(|why| Failure::permanent(format!("view {relation} {why}")))?;
    let lock_wait = step.lock_wait(method, state.populated);
    if let Some(progress) = &ctx.progress {
        let _ = progress.send(progress::Event::Started {
            view: step.view_name(),
            expected_ms: opened.avg_ms,
        });
    }
    let mut outcome = Outcome::new(step, Status::Success, reason.to_owned());
    outcome.blocks_dependents = false;
    outcome.method = Some(method);
    outcome.attempts = attempt;
    outcome.lock_wait = Some(lock_wait);
    let want_bloat = method == Method::Concurrently && step.settings().vacuum == Vacuum::Auto;
    let bloat_of = want_bloat.then_some(relation.oid);
    outcome.duration_ms = refresh(ctx, client, step, relation, method, lock_wait).await?;
    let pg = |err: tokio_postgres::Error| Failure::from_pg(&err, step, Some(method), 0.0, None);
    let (history_id, bloat) = commit(ctx, client, step, bloat_of, &mut outcome)
        .await
        .map_err(pg)?;
    *session.in_transaction = false;
    Ok(Done::Refreshed {
        outcome,
        history_id,
        bloat,
    })
}

/// The second round trip: the `REFRESH`, cancellable; returns how long it
/// took. Nothing is committed with it: a refresh is committed only once the
/// refresher has seen it succeed.
async fn refresh(
    ctx: &RunContext,
    client: &Conn,
    step: &Step,
    relation: &Relation,
    method: Method,
    lock_wait: LockWait,
) -> Result<f64, Failure> {
    // A stop that came while the transaction was being set up: no REFRESH is
    // sent only to be cancelled at once.
    if let Some(reason) = ctx.cancel.reason() {
        return Err(Failure::not_started(reason));
    }
    let started = Instant::now();
    let refreshed = {
        let _running = ctx.running();
        let (wait, sql) = refresh_sql(relation, method, &lock_wait);
        let silence = silence_limit(step.settings());
        let key = client.cancel_key();
        // The lock wait's SET, when there is one, in the same write.
        let refreshed = async {
            let (waited, refreshed) = tokio::join!(
                biased;
                async {
                    match &wait {
                        Some(wait) => client.batch_execute(wait).await,
                        None => Ok(()),
                    }
                },
                client.batch_execute(&sql),
            );
            waited.and(refreshed)
        };
        cancellable(ctx, &relation.to_string(), &key, silence, refreshed).await
    };
    let duration_ms = round_ms(started.elapsed().as_secs_f64() * 1000.0);
    refreshed.map_err(|interrupted| {
        interrupted.into_failure(step, Some(method), duration_ms, Some(lock_wait))
    })?;
    Ok(duration_ms)
}

/// The first round trip: `BEGIN` with the settings, the lock, the state (by a
/// statement prepared on the backend: sent again, once, when the guess that
/// the backend has it or has not was wrong, which aborted the transaction).
async fn open(
    ctx: &RunContext,
    client: &Conn,
    step: &Step,
    relation: &Relation,
) -> Result<Opened, Failure> {
    let pg = |err: tokio_postgres::Error| Failure::from_pg(&err, step, None, 0.0, None);
    let arguments = vec![
        literal(Some(relation.oid)),
        literal(Some(relation.to_string())),
    ];
    let statement = Prepared::new("state", &["oid", "text"], &state_sql(ctx.log.as_ref()));
    let mut state = Execution::new(client, statement, arguments);
    let mut rollback_first = false;
    let ran = loop {
        let mut messages = open_messages(step, ctx.citus, rollback_first, lock_key(relation.oid));
        messages.last.extend(state.statements());
        let (began, ran) = tokio::join!(
            biased;
            execute_each(&**client, &messages.first),
            run_statements(client, &messages.last),
        );
        began.map_err(pg)?;
        if state.again(&ran, messages.state) {
            // The wrong guess aborted the transaction.
            rollback_first = true;
            continue;
        }
        match ran.error {
            None => break (ran, messages),
            Some(err) => return Err(pg(err)),
        }
    };
    let (ran, messages) = ran;
    let answer = |why: String| Failure::permanent(format!("view {relation}: {why}"));
    let row = |i: usize| ran.rows.get(i).and_then(|rows| rows.first());
    let locked = row(messages.lock)
        .map(|row| bool_column(row, 0))
        .transpose()
        .map_err(answer)?
        .flatten()
        .ok_or_else(|| answer("the lock was not answered".to_owned()))?;
    let state = row(state.answer_at(messages.state));
    let column = |i| state.map(|row| text_column::<f64>(row, i)).transpose();
    Ok(Opened {
        locked,
        state: match state {
            Some(row) => Some(ViewState {
                populated: bool_column(row, 0).map_err(answer)? == Some(true),
                has_usable_unique_index: bool_column(row, 1).map_err(answer)? == Some(true),
            }),
            None => None,
        },
        age_s: column(2).map_err(answer)?.flatten(),
        avg_ms: column(3).map_err(answer)?.flatten(),
    })
}

/// The first round trip's messages: those sent alone, then one of several
/// statements ([`run_statements`]): the lock at `lock`, the state's (to be
/// added) from `state` on.
struct OpenMessages {
    first: Vec<String>,
    last: Vec<String>,
    lock: usize,
    state: usize,
}

/// `BEGIN`, the settings ([`settings_statements`]) and the lock: on Citus each
/// `SET` a message of its own (a message holding a propagated `SET` is sent
/// whole to the workers), elsewhere all in one. A `ROLLBACK` first, when
/// `rollback_first`.
fn open_messages(step: &Step, citus: bool, rollback_first: bool, key: i64) -> OpenMessages {
    let rollback = rollback_first.then(|| "ROLLBACK".to_owned());
    let settings = rollback.into_iter().chain(settings_statements(step, citus));
    let (first, mut last): (Vec<String>, Vec<String>) = match citus {
        true => (settings.collect(), Vec::new()),
        false => (Vec::new(), settings.collect()),
    };
    let lock = last.len();
    last.push(format!("SELECT pg_try_advisory_xact_lock({key})"));
    OpenMessages {
        first,
        last,
        lock,
        state: lock + 1,
    }
}

/// The statement that reads a view's state (`$1`, its OID) and, from the log
/// tables when there are any, its last success (`$2`, its name).
fn state_sql(log: Option<&RefreshLog>) -> String {
    let (columns, join) = match log {
        // The casts read a summary table made by hand in the seeds' shape.
        Some(log) => (
            format!("{SINCE_LAST_START}, l.avg_refresh_time_ms::float8"),
            format!("LEFT JOIN {} AS l ON l.view_name = $2", log.summary_table()),
        ),
        None => ("NULL::float8, NULL::float8".to_owned(), String::new()),
    };
    // `$2` is bound either way; without the log tables only this reads it.
    format!(
        "SELECT c.relispopulated, EXISTS ( \
             SELECT FROM pg_catalog.pg_index i \
             WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid \
               AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL), {columns} \
         FROM pg_catalog.pg_class c {join} \
         WHERE c.oid = $1 AND c.relkind = 'm' AND $2::text IS NOT NULL"
    )
}

/// The period assumed when the caller has none (`refresh`): a CronJob's
/// shortest, a minute.
const CRONJOB_PERIOD: Duration = Duration::from_secs(60);

/// The seconds since the start of the view's last successful refresh (its
/// end, `last_refreshed_at`, less its duration), from the summary row `l`:
/// the refresh read its data then, and a cycle's ticks are starts too.
pub(super) const SINCE_LAST_START: &str = "extract(epoch FROM clock_timestamp() -      l.last_refreshed_at::timestamptz)::float8 + coalesce(l.last_refresh_time_ms::float8, 0) / 1000";

/// The reason to skip a view whose last successful refresh started `age_s`
/// seconds ago, when that is more recent than its `min_interval` less a
/// tolerance: half of `period`, the time to the caller's next cycle (a
/// minute, a CronJob's shortest, when there is none), and at most a tenth of
/// `min_interval`. Ticks that lie `min_interval` apart then refresh the view
/// on every such tick however late in its cycle it started last time, never
/// a tick later (which would make a 5-minute view every 5m10s under a 10 s
/// loop), and never a tick, or more than a tenth, earlier.
pub(super) fn fresh(
    settings: &ViewSettings,
    age_s: Option<f64>,
    period: Option<Duration>,
) -> Option<String> {
    let interval = settings.min_interval?;
    let age = age_s?;
    let tolerance = (period.unwrap_or(CRONJOB_PERIOD) / 2).min(interval.to_std() / 10);
    (age < (interval.to_std() - tolerance).as_secs_f64())
        .then(|| format!("fresh: refreshed {age:.0}s ago, min_interval is {interval}"))
}

/// The `REFRESH`, after the `SET LOCAL lock_timeout` of a refresh that
/// blocks readers (a message of its own, as every `SET` is: see [`begin`]).
fn refresh_sql(
    relation: &Relation,
    method: Method,
    lock_wait: &LockWait,
) -> (Option<String>, String) {
    let wait = lock_wait.blocks_readers.then(|| {
        format!(
            "SET LOCAL lock_timeout = {}",
            quote_literal(&lock_wait.timeout.setting())
        )
    });
    let refresh = match method {
        Method::Concurrently => format!(
            "REFRESH MATERIALIZED VIEW CONCURRENTLY {}",
            relation.quoted()
        ),
        Method::Full => format!("REFRESH MATERIALIZED VIEW {}", relation.quoted()),
        Method::Incremental => unreachable!("an incremental view is no materialized view"),
    };
    (wait, refresh)
}

/// The third round trip ([`Commit`]): the success row, `RELEASE` and `COMMIT`
/// in one message, after the refresh (or an incremental view's cycle)
/// succeeded. Returns the success row's id and the dead rows of `bloat_of`;
/// an error means nothing was committed.
pub(super) async fn commit(
    ctx: &RunContext,
    client: &Conn,
    step: &Step,
    bloat_of: Option<u32>,
    outcome: &mut Outcome,
) -> Result<(Option<i64>, Option<Bloat>), tokio_postgres::Error> {
    let commit = Commit::new(ctx, client, step, outcome, bloat_of);
    let ran = run_statements(client, &commit.statements(false)).await;
    commit.finish(ran, outcome).await
}

/// The end of a successful refresh: behind a savepoint the success row, with
/// the dead rows of the relation `bloat_of` when given, then `RELEASE` and
/// `COMMIT`. A success row that cannot be written never undoes the refresh:
/// the server runs neither `RELEASE` nor `COMMIT` after it, the savepoint is
/// rolled back and the refresh committed without it (noted in the outcome's
/// `log_error`). The row's statement is prepared on the backend
/// ([`RefreshLog::success_statement`]); when the guess that the backend has
/// it, or has not, was wrong, it is sent again behind the same savepoint.
/// Without the log tables: the dead rows, and `COMMIT`.
struct Commit<'a> {
    client: &'a Conn,
    /// The success row's statement.
    row: Option<Execution<'a>>,
    bloat_of: Option<u32>,
}

impl<'a> Commit<'a> {
    fn new(
        ctx: &RunContext,
        client: &'a Conn,
        step: &Step,
        outcome: &Outcome,
        bloat_of: Option<u32>,
    ) -> Self {
        let row = ctx.log.as_ref().map(|log| {
            let attempt = super::record::attempt_row(ctx, step, outcome, false);
            let (statement, arguments) = log.success_statement(&attempt, bloat_of);
            Execution::new(client, statement, arguments)
        });
        Self {
            client,
            row,
            bloat_of,
        }
    }

    /// The statements; `again`: the row's sent again, after the rollback of
    /// its savepoint.
    fn statements(&self, again: bool) -> Vec<String> {
        match &self.row {
            Some(row) => behind_savepoint(row, again),
            None => {
                let bloat = self
                    .bloat_of
                    .map(|oid| format!("SELECT {}", catalog::bloat_columns(&oid.to_string())));
                bloat.into_iter().chain(["COMMIT".to_owned()]).collect()
            }
        }
    }

    /// Reads the answer to [`Commit::statements`]: the success row's id and
    /// the dead rows; an error means nothing was committed.
    async fn finish(
        mut self,
        mut ran: Ran,
        outcome: &mut Outcome,
    ) -> Result<(Option<i64>, Option<Bloat>), tokio_postgres::Error> {
        let Some(row) = &mut self.row else {
            if let Some(err) = ran.error {
                return Err(err);
            }
            let row = self.bloat_of.and(ran.rows.first().and_then(|r| r.first()));
            return Ok((None, row.and_then(|row| bloat(row, 0))));
        };
        // The savepoint first, then the row's statements.
        while row.again(&ran, 1) {
            ran = run_statements(self.client, &behind_savepoint(row, true)).await;
        }
        let last = row.answer_at(1);
        let Some(err) = ran.error else {
            return Ok(answer(ran.rows.get(last).and_then(|r| r.first()), outcome));
        };
        // Only the server's own refusal of the row's statement leaves the
        // transaction for the refresh to be committed without its row.
        if !(1..=last).contains(&ran.rows.len()) || err.as_db_error().is_none() {
            return Err(err);
        }
        // Undo the row's statement only, keep the refresh.
        let undo = format!("ROLLBACK TO SAVEPOINT {LOG_SAVEPOINT}; COMMIT");
        self.client.batch_execute(&undo).await?;
        outcome.log_error = Some(describe_error(&err));
        Ok((None, None))
    }
}

/// The success row's statements behind its savepoint, then `RELEASE` and
/// `COMMIT`; `again`: sent again, after the rollback of the savepoint.
fn behind_savepoint(row: &Execution, again: bool) -> Vec<String> {
    let start = match again {
        false => "SAVEPOINT",
        true => "ROLLBACK TO SAVEPOINT",
    };
    let mut statements = vec![format!("{start} {LOG_SAVEPOINT}")];
    statements.extend(row.statements());
    statements.push(format!("RELEASE SAVEPOINT {LOG_SAVEPOINT}"));
    statements.push("COMMIT".to_owned());
    statements
}

/// The success row's id and the dead rows, from its statement's answer.
fn answer(row: Option<&SimpleQueryRow>, outcome: &Outcome) -> (Option<i64>, Option<Bloat>) {
    let Some(row) = row else {
        return (None, None);
    };
    let id = text_column::<i64>(row, 0).unwrap_or_default();
    if id.is_none() {
        // The row's statement ran and committed, but its id did not come
        // back (a trigger that moves history rows elsewhere makes RETURNING
        // return nothing). The row went where the database puts it.
        tracing::warn!(view = %outcome.view_name, "the success row was written, but its id could not be read");
    }
    (id, bloat(row, 1))
}

/// The dead rows and the rows at columns `at` and `at + 1` of a row of text,
/// when both are there.
fn bloat(row: &SimpleQueryRow, at: usize) -> Option<Bloat> {
    match (text_column(row, at), text_column(row, at + 1)) {
        (Ok(Some(dead)), Ok(Some(live))) => Some(Bloat { dead, live }),
        _ => None,
    }
}

/// `VACUUM (ANALYZE)` after a committed refresh that left many dead rows; it
/// never waits for a lock (`SKIP_LOCKED`), and its failure is a warning, not a
/// failed refresh. Returns the note for the outcome.
pub(super) async fn vacuum(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    relation: &Relation,
    bloat: Bloat,
    history_id: Option<i64>,
) -> Option<String> {
    let client = slot.session(&ctx.pool).await.ok()?.client;
    let cancel = client.cancel_key();
    let started = Instant::now();
    let sql = format!("VACUUM (ANALYZE, SKIP_LOCKED) {}", relation.quoted());
    let silence = silence_limit(step.settings());
    match cancellable(
        ctx,
        &relation.to_string(),
        &cancel,
        silence,
        client.batch_execute(&sql),
    )
    .await
    {
        Ok(()) => {
            let vacuum_ms = round_ms(started.elapsed().as_secs_f64() * 1000.0);
            tracing::info!(view = %relation, dead_rows = bloat.dead, live_rows = bloat.live, vacuum_ms, "vacuumed after the refresh");
            if let (Some(log), Some(id)) = (&ctx.log, history_id)
                && let Err(err) = log.record_vacuum(&**client, id, vacuum_ms).await
            {
                tracing::warn!(view = %relation, error = %describe_error(&err), "could not note the VACUUM in the history");
            }
            Some(format!(
                "vacuumed {:.0} dead rows in {}",
                bloat.dead,
                millis(vacuum_ms)
            ))
        }
        Err(interrupted) => {
            if matches!(interrupted, Interrupted::Abandoned(..)) {
                slot.close();
            }
            let failure = interrupted.into_failure(step, None, 0.0, None);
            tracing::warn!(view = %relation, error = %failure.message, "VACUUM after the refresh failed");
            None
        }
    }
}

/// `BEGIN` and the `SET LOCAL`s of a view's settings, each its own message,
/// all sent at once (the caller's next statements follow in the same write):
/// Citus forwards the whole text of a message that holds a propagated `SET`
/// to every worker connection of the transaction (sent as one string,
/// `BEGIN` and the coordinator's own guards went along, and the workers
/// answered "there is already a transaction in progress").
///
/// On Citus the view's settings (`statement_timeout`, `lock_timeout`,
/// `work_mem`) are propagated, so a distributed view's aggregation and its
/// lock waits on the workers run under them (`set_config` would change the
/// coordinator only); the session guards are not, since a worker connection
/// idles while the coordinator works. Propagation is off around them
/// whatever the database or role sets it to, and off again after, so nothing
/// later in the transaction is forwarded. The values come from validated
/// settings (`65536kB`, `600000ms`) and are quoted all the same.
pub(super) async fn begin(
    client: &Client,
    step: &Step,
    citus: bool,
) -> Result<(), tokio_postgres::Error> {
    crate::db::execute_each(client, &settings_statements(step, citus)).await
}

/// The statements [`begin`] sends, in order.
fn settings_statements(step: &Step, citus: bool) -> Vec<String> {
    let settings = step.settings();
    let set = |name: &str, value: &str| format!("SET LOCAL {name} = {}", quote_literal(value));
    let propagate = |on: bool| {
        set(
            "citus.propagate_set_commands",
            if on { "local" } else { "none" },
        )
    };
    let mut statements = vec![crate::db::BEGIN.to_owned()];
    if citus {
        statements.push(propagate(false));
    }
    // For this coordinator session only: a transaction whose client went away
    // (an abandoned connection behind a pooler or a silent network) must not
    // sit idle holding the view's locks, and a direct connection whose client
    // closed ends its statement.
    statements.extend([
        set(
            "idle_in_transaction_session_timeout",
            &format!("{}ms", IDLE_IN_TRANSACTION.as_millis()),
        ),
        set(
            "client_connection_check_interval",
            &format!("{}ms", CLIENT_CHECK_INTERVAL.as_millis()),
        ),
    ]);
    if citus {
        statements.push(propagate(true));
    }
    statements.extend([
        set("statement_timeout", &settings.statement_timeout.setting()),
        set("lock_timeout", &settings.lock_timeout.setting()),
    ]);
    // Without a work_mem of its own the view keeps the server's.
    if let Some(work_mem) = step.work_mem.value {
        statements.push(set("work_mem", &work_mem.setting()));
    }
    if citus {
        statements.push(propagate(false));
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Lookup;
    use crate::plan::WorkMemChoice;
    use crate::registry::ViewSpec;
    use crate::units::Memory;

    fn step(work_mem: Option<Memory>) -> Step {
        Step {
            spec: ViewSpec {
                name: "v".parse().unwrap(),
                settings: ViewSettings::default(),
                incremental: None,
            },
            lookup: Lookup::Missing {
                qualified: "public.v".into(),
                schema: "public".into(),
                name: "v".into(),
            },
            depends_on: Vec::new(),
            problem: None,
            method: None,
            work_mem: WorkMemChoice {
                value: work_mem,
                reason: String::new(),
            },
            populated: true,
            incremental: None,
            skip: None,
        }
    }

    /// Which of `statements` a Citus coordinator forwards to its workers: a
    /// `SET LOCAL` sent while `citus.propagate_set_commands` is `local`
    /// (Citus decides before the `SET` takes effect, and never forwards its
    /// own setting). A database or role may make `local` the default.
    fn forwarded(statements: &[String], default_local: bool) -> Vec<String> {
        let mut local = default_local;
        let mut sent = Vec::new();
        for statement in statements {
            assert!(
                !statement.contains(';'),
                "one statement a message: {statement}"
            );
            match statement.strip_prefix("SET LOCAL citus.propagate_set_commands = ") {
                Some(value) => local = value == "'local'",
                None if local && statement.starts_with("SET LOCAL ") => {
                    sent.push(
                        statement["SET LOCAL ".len()..]
                            .split(' ')
                            .next()
                            .unwrap()
                            .to_owned(),
                    );
                }
                None => {}
            }
        }
        assert!(!local, "propagation is off at the end: {statements:#?}");
        sent
    }

    #[test]
    fn on_citus_the_views_settings_reach_the_workers_and_the_session_guards_do_not() {
        let work_mem = Some(Memory::from_kilobytes(12 * 1024));
        for default_local in [false, true] {
            let statements = settings_statements(&step(work_mem), true);
            assert_eq!(statements[0], "BEGIN ISOLATION LEVEL READ COMMITTED");
            assert_eq!(
                forwarded(&statements, default_local),
                ["statement_timeout", "lock_timeout", "work_mem"],
                "{statements:#?}"
            );
            let statements = settings_statements(&step(None), true);
            assert_eq!(
                forwarded(&statements, default_local),
                ["statement_timeout", "lock_timeout"],
                "the server's work_mem: {statements:#?}"
            );
        }
        // Without Citus, no Citus setting at all.
        let plain = settings_statements(&step(work_mem), false);
        assert!(plain.iter().all(|s| !s.contains("citus")), "{plain:#?}");
        assert_eq!(plain.len(), 6, "{plain:#?}");
    }

    #[test]
    fn the_first_round_trip_is_one_message_except_each_set_on_citus() {
        let step = step(Some(Memory::from_kilobytes(12 * 1024)));
        let plain = open_messages(&step, false, false, 7);
        assert!(plain.first.is_empty(), "{:#?}", plain.first);
        assert_eq!(plain.last[0], "BEGIN ISOLATION LEVEL READ COMMITTED");
        assert!(plain.last.iter().any(|s| s.contains("work_mem")));
        assert_eq!(
            plain.last[plain.lock],
            "SELECT pg_try_advisory_xact_lock(7)"
        );
        assert_eq!(plain.state, plain.last.len());
        // Sent again after a wrong guess: the aborted transaction ends first.
        let again = open_messages(&step, false, true, 7);
        assert_eq!(again.last[0], "ROLLBACK");
        assert_eq!(again.last[1..], plain.last[..]);
        assert_eq!(again.lock, plain.lock + 1);

        // On Citus the SETs are the messages sent alone, none with the lock.
        let citus = open_messages(&step, true, true, 7);
        assert_eq!(citus.first[0], "ROLLBACK");
        assert_eq!(citus.first[1..], settings_statements(&step, true)[..]);
        assert_eq!(citus.last, ["SELECT pg_try_advisory_xact_lock(7)"]);
        assert_eq!((citus.lock, citus.state), (0, 1));
    }

    fn min_interval(text: &str) -> ViewSettings {
        ViewSettings {
            min_interval: Some(text.parse().unwrap()),
            ..ViewSettings::default()
        }
    }

    /// The ticks (seconds from the first) at which a view is refreshed under
    /// `settings` by a loop every `period_s`, when each of its refreshes
    /// starts `delay(n)` seconds into its tick's cycle.
    fn refreshed_at(
        settings: &ViewSettings,
        period_s: u64,
        ticks: u64,
        delay: impl Fn(u64) -> f64,
    ) -> Vec<u64> {
        let period = Some(Duration::from_secs(period_s));
        let mut last_start: Option<f64> = None;
        let mut refreshed = Vec::new();
        for n in 0..ticks {
            let tick = (n * period_s) as f64;
            // The view is looked at when its turn comes in the cycle.
            let now = tick + delay(n);
            if fresh(settings, last_start.map(|at| now - at), period).is_none() {
                last_start = Some(now);
                refreshed.push(n * period_s);
            }
        }
        refreshed
    }

    #[test]
    fn min_interval_is_met_at_the_tick_it_falls_due_not_one_later() {
        // Every 10 s, min_interval 5 minutes: at 0, 300, 600 s, however late
        // the view started in its cycle last time (up to 4 s here), never a
        // tick (10 s) late.
        let five = min_interval("5m");
        for delay in [0.0, 0.5, 4.0] {
            let late_every_other_time = |n: u64| match (n / 30) % 2 {
                0 => delay,
                _ => 0.0,
            };
            assert_eq!(
                refreshed_at(&five, 10, 61, late_every_other_time),
                [0, 300, 600],
                "delay {delay}"
            );
        }
        // A CronJob every minute (`refresh`: no period given, a minute
        // assumed), started by the kubelet up to 20 s late.
        let settings = min_interval("5m");
        let mut last: Option<f64> = None;
        let mut refreshed = Vec::new();
        for minute in 0..11u64 {
            let now = (minute * 60) as f64 + [7.0, 20.0, 0.0][minute as usize % 3];
            if fresh(&settings, last.map(|at| now - at), None).is_none() {
                last = Some(now);
                refreshed.push(minute);
            }
        }
        assert_eq!(refreshed, [0, 5, 10]);
    }

    #[test]
    fn min_interval_is_never_met_a_tick_or_a_tenth_early() {
        // 12 minutes on 5-minute ticks: 15, not 10 (the nearer tick, but
        // earlier than min_interval by a sixth).
        assert_eq!(
            refreshed_at(&min_interval("12min"), 300, 7, |_| 0.0),
            [0, 900, 1800]
        );
        // A min_interval below the period: every tick.
        assert_eq!(
            refreshed_at(&min_interval("5s"), 10, 4, |_| 0.0),
            [0, 10, 20, 30]
        );
        // A 5-minute view is due from 4m55s on for a loop every 10 s
        // (tolerance 5 s), from 4m30s on for a refresh (30 s: a CronJob's
        // shortest period is a minute).
        let five = min_interval("5m");
        let ten_s = Some(Duration::from_secs(10));
        assert!(fresh(&five, Some(294.0), ten_s).is_some());
        assert!(fresh(&five, Some(296.0), ten_s).is_none());
        assert!(fresh(&five, Some(269.0), None).is_some());
        assert!(fresh(&five, Some(271.0), None).is_none());
        // Never refreshed, or no min_interval: due.
        assert!(fresh(&five, None, None).is_none());
        assert!(fresh(&ViewSettings::default(), Some(1.0), None).is_none());
    }
}
