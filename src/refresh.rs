//! Refreshing: one view in one transaction, and a whole plan in dependency order
//! with up to `--jobs` views at a time.
//!
//! Per view: take the view's advisory lock without waiting (another refresher
//! holding it means `skipped`), `SET LOCAL` its settings (propagated to the
//! workers on Citus), re-read its state, run `REFRESH MATERIALIZED VIEW
//! [CONCURRENTLY]` on the catalog's quoted name, and record the success in the
//! same transaction. A failure is recorded after the rollback. Transient failures
//! are retried with backoff. A failing view never stops the others; a view that
//! depends on a failed one is skipped.
//!
//! A view holds one connection while it is worked on and none while it waits
//! for its turn. A statement that must stop is cancelled on the server; when the
//! server cannot be reached to cancel it, the connection is abandoned.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::task::JoinSet;
use tokio_postgres::CancelToken;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tracing::Instrument;
use uuid::Uuid;

use crate::catalog::{self, Lookup, Relation};
use crate::db::{Conn, DbTarget, describe_error, describe_pool_error, is_connection_error};
use crate::output::{millis, round_ms};
use crate::plan::{Plan, Step, choose_method};
use crate::progress;
use crate::quote::quote_literal;
use crate::refresh_log::{Attempt, RefreshLog};
use crate::registry::{Vacuum, ViewSettings};
use crate::shutdown::{Stop, StopReason};

/// How an attempt ended, as the `status` column spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Failed,
    Skipped,
    Cancelled,
}

/// Which `REFRESH` ran, as the `method` column spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Concurrently,
    Full,
}

impl Status {
    pub const ALL: [Self; 4] = [Self::Success, Self::Failed, Self::Skipped, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concurrently => "concurrently",
            Self::Full => "full",
        }
    }
}

/// Everything the refresh of one run shares.
#[derive(Debug)]
pub struct RunContext {
    pub pool: Pool,
    /// `None` when the log tables are missing and could not be created.
    pub log: Option<RefreshLog>,
    pub run_id: Uuid,
    /// Host (pod) name, recorded with every attempt.
    pub host: String,
    pub jobs: usize,
    /// Once this fires no view (and no retry) starts.
    pub drain: Stop,
    /// Once this fires running statements are cancelled on the server.
    pub cancel: Stop,
    /// The database, for cancel requests, which connect anew.
    pub target: DbTarget,
    /// Where live progress goes, when someone watches (`refresh` on a terminal).
    pub progress: Option<progress::Sender>,
    /// The database has the `citus` extension: settings are sent as `SET LOCAL`
    /// with `citus.propagate_set_commands`, so they reach the workers.
    pub citus: bool,
    /// `REFRESH` statements running now, for the metrics.
    pub in_progress: Arc<AtomicUsize>,
}

/// Counts one running statement in `RunContext::in_progress` while it lives.
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one view's refresh ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub view_name: String,
    pub status: Status,
    pub method: Option<Method>,
    /// Time spent in `REFRESH` on the last attempt, in milliseconds.
    pub duration_ms: f64,
    pub attempts: u32,
    /// The error of a failure, or the reason for a skip or a method.
    pub message: Option<String>,
    /// Set when the outcome could not be written to the log tables.
    pub log_error: Option<String>,
    /// Whether views depending on this one must be skipped.
    pub blocks_dependents: bool,
    /// Skipped because another refresher held the view's advisory lock.
    pub lock_skipped: bool,
}

impl Outcome {
    /// An outcome for `step` with nothing run yet; only a success lets
    /// dependents run.
    fn new(step: &Step, status: Status, message: String) -> Self {
        Self {
            view_name: step.view_name(),
            status,
            method: None,
            duration_ms: 0.0,
            attempts: 0,
            message: Some(message),
            log_error: None,
            blocks_dependents: matches!(status, Status::Failed | Status::Cancelled),
            lock_skipped: false,
        }
    }
}

/// How often a cancel request is repeated until the statement ends.
const CANCEL_REPEAT: Duration = Duration::from_secs(1);

/// How long a statement may go on after the first cancel request before its
/// connection is given up on (the server, or the network to it, is gone).
const CANCEL_GIVE_UP: Duration = Duration::from_secs(10);

/// How long a refresh's transaction may sit idle on the server: never, while
/// the refresher works (its statements follow each other at once), but a
/// connection it abandoned must not keep the view locked.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(15);

/// How often a server running a refresh's statement checks that the client is
/// still there (PostgreSQL 14+, direct connections).
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How long past its `statement_timeout` a statement may stay unanswered
/// before the server is taken for gone: the server would have ended it by then.
const SILENCE_GRACE: Duration = Duration::from_secs(30);

/// Key of the per-view advisory lock: a constant prefix ("mvrf") and the OID.
fn lock_key(oid: u32) -> i64 {
    (0x6d76_7266_i64 << 32) | i64::from(oid)
}

/// A failed attempt, with what is needed to log it and decide on a retry.
#[derive(Debug)]
struct Failure {
    message: String,
    sqlstate: Option<String>,
    method: Option<Method>,
    duration_ms: f64,
    transient: bool,
    /// Set when the attempt was cancelled because the run is stopping.
    stopped: Option<StopReason>,
    /// Set when the connection was given up on.
    abandoned: bool,
}

impl Failure {
    fn from_pg(
        err: &tokio_postgres::Error,
        step: &Step,
        method: Option<Method>,
        duration_ms: f64,
    ) -> Self {
        let settings = step.settings();
        let mut message = describe_error(err);
        // Name the setting that fired: the server's message does not.
        match err.code() {
            Some(code) if *code == SqlState::QUERY_CANCELED => {
                message.push_str(&format!(
                    " (statement_timeout = {})",
                    settings.statement_timeout
                ));
            }
            Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => {
                message.push_str(&format!(" (lock_timeout = {})", settings.lock_timeout));
            }
            _ => {}
        }
        Self {
            message,
            sqlstate: err.code().map(|c| c.code().to_owned()),
            method,
            duration_ms,
            transient: is_transient(err),
            stopped: None,
            abandoned: false,
        }
    }

    fn permanent(message: String) -> Self {
        Self {
            message,
            sqlstate: None,
            method: None,
            duration_ms: 0.0,
            transient: false,
            stopped: None,
            abandoned: false,
        }
    }

    fn into_outcome(self, step: &Step, attempt: u32) -> Outcome {
        let status = match self.stopped {
            Some(_) => Status::Cancelled,
            None => Status::Failed,
        };
        let mut outcome = Outcome::new(step, status, self.message);
        outcome.method = self.method;
        outcome.duration_ms = self.duration_ms;
        outcome.attempts = attempt;
        outcome
    }
}

/// Errors worth another attempt: the connection, deadlocks, serialization
/// failures, lock timeouts and server shutdowns.
fn is_transient(err: &tokio_postgres::Error) -> bool {
    let Some(code) = err.code() else {
        return true;
    };
    is_connection_error(err)
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::LOCK_NOT_AVAILABLE
}

/// How a successful attempt ended: refreshed, or skipped because another
/// refresher holds the view.
enum Done {
    Refreshed {
        method: Method,
        /// Why this method, and what followed (a VACUUM).
        note: String,
        duration_ms: f64,
        log_error: Option<String>,
    },
    Locked,
}

/// Refreshes every view of `plan`, dependencies first, up to `ctx.jobs` at once.
/// Returns the outcomes in plan order. Once `ctx.drain` fires no view starts; the
/// views left are recorded as cancelled before they started.
pub async fn execute(ctx: Arc<RunContext>, plan: Arc<Plan>) -> Vec<Outcome> {
    let n = plan.steps.len();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut started = vec![false; n];
    let mut running = JoinSet::new();

    loop {
        for (i, step) in plan.steps.iter().enumerate() {
            if started[i] || running.len() >= ctx.jobs || ctx.drain.reason().is_some() {
                continue;
            }
            let deps = &step.depends_on;
            if deps.iter().any(|&d| outcomes[d].is_none()) {
                continue;
            }
            let blocked_by = deps
                .iter()
                .find(|&&d| outcomes[d].as_ref().is_some_and(|o| o.blocks_dependents))
                .map(|&d| plan.steps[d].view_name());
            started[i] = true;
            let (ctx, plan) = (ctx.clone(), plan.clone());
            running.spawn(
                async move { (i, refresh_step(&ctx, &plan.steps[i], blocked_by).await) }
                    .in_current_span(),
            );
        }
        match running.join_next().await {
            Some(Ok((i, outcome))) => outcomes[i] = Some(outcome),
            Some(Err(err)) => std::panic::resume_unwind(err.into_panic()),
            None => break,
        }
    }

    // The views never started are recorded on one connection; once it cannot
    // be had, no other is tried (a stop with the server gone must not wait a
    // connect timeout per view).
    let mut slot = None;
    let mut unreachable: Option<String> = None;
    let mut done = Vec::with_capacity(n);
    for (step, outcome) in plan.steps.iter().zip(outcomes) {
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                let reason = ctx
                    .drain
                    .reason()
                    .expect("only a stop leaves views unstarted");
                let mut outcome =
                    Outcome::new(step, Status::Cancelled, format!("not started: {reason}"));
                outcome.blocks_dependents = true;
                match &unreachable {
                    Some(error) => {
                        outcome.log_error = Some(error.clone());
                        report(&ctx, &outcome);
                        outcome
                    }
                    None => {
                        let outcome = finish(&ctx, &mut slot, step, outcome).await;
                        if slot.is_none() {
                            unreachable.clone_from(&outcome.log_error);
                        }
                        outcome
                    }
                }
            }
        };
        done.push(outcome);
    }
    done
}

/// The connection a view is worked on: taken when first needed, closed when
/// the view is done (or when it broke), never held while the view waits.
type Slot = Option<Conn>;

/// The slot's connection, connecting when it has none.
async fn connection<'a>(
    ctx: &RunContext,
    slot: &'a mut Slot,
) -> Result<&'a mut Conn, deadpool_postgres::PoolError> {
    if slot.as_ref().is_some_and(|conn| conn.is_closed()) {
        *slot = None;
    }
    match slot {
        Some(conn) => Ok(conn),
        None => Ok(slot.insert(Conn::get(&ctx.pool).await?)),
    }
}

/// One view, with its retries.
async fn refresh_step(ctx: &RunContext, step: &Step, blocked_by: Option<String>) -> Outcome {
    let mut slot = None;
    if let Some(dependency) = blocked_by {
        let reason = format!("depends on {dependency}, which was not refreshed");
        let mut outcome = Outcome::new(step, Status::Skipped, reason);
        outcome.blocks_dependents = true;
        return finish(ctx, &mut slot, step, outcome).await;
    }
    let relation = match (&step.lookup, &step.problem) {
        (Lookup::MatView(relation), None) => relation,
        // Not a materialized view: no row in the log tables for a name that is
        // most likely a typo.
        (Lookup::Missing { .. } | Lookup::Other { .. }, problem) => {
            let why = problem.as_deref().unwrap_or("is not a materialized view");
            let outcome = Outcome::new(step, Status::Failed, format!("{} {why}", step.view_name()));
            report(ctx, &outcome);
            return outcome;
        }
        (_, problem) => {
            let why = problem.as_deref().unwrap_or("is not a materialized view");
            let failure = Failure::permanent(format!("view {} {why}", step.view_name()));
            return fail(ctx, &mut slot, step, failure, 1).await;
        }
    };
    if let Some(reason) = fresh_enough(ctx, &mut slot, step).await {
        return finish(
            ctx,
            &mut slot,
            step,
            Outcome::new(step, Status::Skipped, reason),
        )
        .await;
    }
    if let Some(progress) = &ctx.progress {
        let expected_ms = expected_duration(ctx, &mut slot, step).await;
        let _ = progress.send(progress::Event::Started {
            view: step.view_name(),
            expected_ms,
        });
    }

    let retries = step.settings().retries;
    let mut attempt = 1;
    loop {
        let failure = match attempt_refresh(ctx, &mut slot, step, relation, attempt).await {
            Ok(Done::Refreshed {
                method,
                note,
                duration_ms,
                log_error,
            }) => {
                let mut outcome = Outcome::new(step, Status::Success, note);
                outcome.blocks_dependents = false;
                outcome.method = Some(method);
                outcome.duration_ms = duration_ms;
                outcome.attempts = attempt;
                outcome.log_error = log_error;
                report(ctx, &outcome);
                return outcome;
            }
            Ok(Done::Locked) => {
                let reason = "another refresher is refreshing this view".to_owned();
                let mut outcome = Outcome::new(step, Status::Skipped, reason);
                outcome.attempts = attempt;
                outcome.lock_skipped = true;
                // That refresher refreshes the dependents after it, too.
                outcome.blocks_dependents = true;
                return finish(ctx, &mut slot, step, outcome).await;
            }
            Err(failure) => failure,
        };
        if failure.abandoned || failure.transient {
            // The server never answered, or the connection may have broken (a
            // terminated backend): record on a fresh one.
            slot = None;
        }
        if !failure.transient || attempt > retries || failure.stopped.is_some() {
            return fail(ctx, &mut slot, step, failure, attempt).await;
        }
        let delay = backoff(attempt);
        tracing::warn!(
            view = %step.view_name(),
            attempt,
            error = %failure.message,
            retry_in_ms = delay.as_millis() as u64,
            "refresh failed, retrying"
        );
        record_failure(ctx, &mut slot, step, failure, attempt, true).await;
        // Nothing is held while waiting for the next attempt.
        slot = None;
        tokio::select! {
            _ = tokio::time::sleep(delay) => attempt += 1,
            reason = ctx.drain.stopped() => {
                let failure = Failure {
                    stopped: Some(reason),
                    ..Failure::permanent(format!("not retried: {reason}"))
                };
                return fail(ctx, &mut slot, step, failure, attempt).await;
            }
        }
    }
}

/// Exponential backoff from 200 ms, capped at 10 s, with full jitter.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
    Duration::from_millis(ceiling / 2 + fastrand::u64(0..=ceiling / 2))
}

/// The reason to skip a view refreshed more recently than its `min_interval`.
async fn fresh_enough(ctx: &RunContext, slot: &mut Slot, step: &Step) -> Option<String> {
    let interval = step.settings().min_interval?;
    let log = ctx.log.as_ref()?;
    let client = connection(ctx, slot).await.ok()?;
    let age = log
        .seconds_since_success(&**client, &step.view_name())
        .await
        .ok()??;
    (age * 1000.0 < interval.as_millis() as f64)
        .then(|| format!("fresh: refreshed {age:.0}s ago, min_interval is {interval}"))
}

/// The view's average successful refresh, from the log; `None` without history.
async fn expected_duration(ctx: &RunContext, slot: &mut Slot, step: &Step) -> Option<f64> {
    let log = ctx.log.as_ref()?;
    let client = connection(ctx, slot).await.ok()?;
    let rows = log.rows(&**client, &[step.view_name()]).await.ok()?;
    rows.first()?.avg_refresh_time_ms
}

/// The `SET LOCAL` statements for a view's settings. On Citus they are
/// propagated to the workers, where a distributed view's aggregation runs
/// (`set_config` would change the coordinator only). The values come from
/// validated settings (`65536kB`, `600000ms`) and are quoted all the same.
fn settings_sql(settings: &ViewSettings, citus: bool) -> String {
    // First, for this coordinator session only (before Citus propagation, as
    // a worker's connection may idle while the coordinator works): a
    // transaction whose client went away (an abandoned connection behind a
    // pooler or a silent network) must not sit idle holding the view's locks,
    // and a direct connection whose client closed ends its statement.
    let mut sql = format!(
        "SET LOCAL idle_in_transaction_session_timeout = '{}ms'; \
         SET LOCAL client_connection_check_interval = '{}ms'; ",
        IDLE_IN_TRANSACTION.as_millis(),
        CLIENT_CHECK_INTERVAL.as_millis(),
    );
    if citus {
        sql.push_str("SET LOCAL citus.propagate_set_commands = 'local'; ");
    }
    // Without a work_mem of its own the view keeps the server's.
    if let Some(work_mem) = settings.work_mem {
        sql.push_str(&format!(
            "SET LOCAL work_mem = {}; ",
            quote_literal(&work_mem.setting())
        ));
    }
    sql.push_str(&format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
        quote_literal(&settings.statement_timeout.setting()),
        quote_literal(&settings.lock_timeout.setting()),
    ));
    sql
}

/// One attempt in one transaction: lock, settings, `REFRESH`, success log row.
async fn attempt_refresh(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    relation: &Relation,
    attempt: u32,
) -> Result<Done, Failure> {
    let pg = |method| move |err: tokio_postgres::Error| Failure::from_pg(&err, step, method, 0.0);
    // A stop that came while this view waited for its turn or its retry.
    if let Some(reason) = ctx.cancel.reason() {
        return Err(Failure {
            stopped: Some(reason),
            ..Failure::permanent(format!("not started: {reason}"))
        });
    }
    let client = connection(ctx, slot).await.map_err(|err| Failure {
        transient: true,
        ..Failure::permanent(format!("could not connect: {}", describe_pool_error(&err)))
    })?;
    let cancel = client.cancel_token();
    let mut tx = client.transaction().await.map_err(pg(None))?;
    let locked: bool = tx
        .query_typed_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[(&lock_key(relation.oid), Type::INT8)],
        )
        .await
        .map_err(pg(None))?
        .get(0);
    if !locked {
        return Ok(Done::Locked);
    }
    let settings = step.settings();
    tx.batch_execute(&settings_sql(settings, ctx.citus))
        .await
        .map_err(pg(None))?;

    // The state may have changed since planning (another refresher populated it,
    // an index was dropped): decide on what is true now, inside the lock.
    let state = catalog::view_state(&tx, relation.oid)
        .await
        .map_err(pg(None))?
        .ok_or_else(|| Failure::permanent(format!("view {relation} was dropped")))?;
    let (method, reason) = choose_method(settings.concurrently, state)
        .map_err(|why| Failure::permanent(format!("view {relation} {why}")))?;

    let sql = match method {
        Method::Concurrently => format!(
            "REFRESH MATERIALIZED VIEW CONCURRENTLY {}",
            relation.quoted()
        ),
        Method::Full => format!("REFRESH MATERIALIZED VIEW {}", relation.quoted()),
    };
    // A stop that came while the transaction was being set up: no REFRESH is
    // sent only to be cancelled at once.
    if let Some(reason) = ctx.cancel.reason() {
        return Err(Failure {
            stopped: Some(reason),
            ..Failure::permanent(format!("not started: {reason}"))
        });
    }
    let started = Instant::now();
    let running = Running::start(&ctx.in_progress);
    let refreshed = cancellable(
        ctx,
        relation,
        &cancel,
        silence_limit(settings),
        tx.batch_execute(&sql),
    )
    .await;
    let duration_ms = round_ms(started.elapsed().as_secs_f64() * 1000.0);
    drop(running);
    refreshed.map_err(|interrupted| interrupted.into_failure(step, Some(method), duration_ms))?;

    // Dead rows this refresh left, read inside its transaction: statistics of
    // committed transactions arrive later.
    let bloat = match (method, settings.vacuum) {
        (Method::Concurrently, Vacuum::Auto) => Some(
            catalog::bloat(&tx, relation.oid)
                .await
                .map_err(pg(Some(method)))?,
        ),
        _ => None,
    };

    // The success row goes in the refresh's own transaction, behind a savepoint:
    // a log that cannot be written must not undo the refresh.
    let mut log_error = None;
    let mut history_id = None;
    if let Some(log) = &ctx.log {
        let savepoint = tx
            .savepoint("mv_refresher_log")
            .await
            .map_err(pg(Some(method)))?;
        let view_name = relation.to_string();
        let record = Attempt {
            run_id: ctx.run_id,
            view_name: &view_name,
            duration_ms,
            status: Status::Success,
            method: Some(method),
            attempt,
            settings,
            sqlstate: None,
            error: None,
            note: Some(reason),
            host: &ctx.host,
            retried: false,
        };
        match log.record(&savepoint, &record).await {
            Ok(id) => {
                savepoint.commit().await.map_err(pg(Some(method)))?;
                history_id = Some(id);
            }
            Err(err) => {
                log_error = Some(describe_error(&err));
                savepoint.rollback().await.map_err(pg(Some(method)))?;
            }
        }
    }
    tx.commit().await.map_err(pg(Some(method)))?;

    let mut note = reason.to_owned();
    if let Some(bloat) = bloat.filter(|b| b.needs_vacuum()) {
        // VACUUM cannot run in a transaction: it follows the committed refresh,
        // and its failure is a warning, not a failed refresh.
        let started = Instant::now();
        let sql = format!("VACUUM (ANALYZE) {}", relation.quoted());
        match cancellable(ctx, relation, &cancel, None, client.batch_execute(&sql)).await {
            Ok(()) => {
                let vacuum_ms = round_ms(started.elapsed().as_secs_f64() * 1000.0);
                note = format!(
                    "{note}; vacuumed {:.0} dead rows in {}",
                    bloat.dead,
                    millis(vacuum_ms)
                );
                tracing::info!(view = %relation, dead_rows = bloat.dead, live_rows = bloat.live, vacuum_ms, "vacuumed after the refresh");
                if let (Some(log), Some(id)) = (&ctx.log, history_id)
                    && let Err(err) = log.record_vacuum(&**client, id, vacuum_ms).await
                {
                    log_error = Some(describe_error(&err));
                }
            }
            Err(interrupted) => {
                if matches!(interrupted, Interrupted::Abandoned(..)) {
                    *slot = None;
                }
                let failure = interrupted.into_failure(step, None, 0.0);
                tracing::warn!(view = %relation, error = %failure.message, "VACUUM after the refresh failed");
            }
        }
    }
    Ok(Done::Refreshed {
        method,
        note,
        duration_ms,
        log_error,
    })
}

/// How long a statement under `settings` may go unanswered before the server
/// is taken for gone; `None` without a statement_timeout.
fn silence_limit(settings: &ViewSettings) -> Option<Duration> {
    let timeout = settings.statement_timeout.as_millis();
    (timeout > 0).then(|| Duration::from_millis(timeout) + SILENCE_GRACE)
}

/// How a statement run by [`cancellable`] did not succeed.
enum Interrupted {
    Failed(tokio_postgres::Error),
    Stopped(StopReason, Result<(), tokio_postgres::Error>),
    /// Cancelled, but the statement did not end: the server or the network to it
    /// is gone, and the connection must be dropped. `None`: the server went
    /// silent past the statement's own timeout, no stop was asked for.
    Abandoned(Option<StopReason>),
}

impl Interrupted {
    fn into_failure(self, step: &Step, method: Option<Method>, duration_ms: f64) -> Failure {
        match self {
            Self::Failed(err) => Failure::from_pg(&err, step, method, duration_ms),
            Self::Stopped(reason, result) => Failure {
                stopped: Some(reason),
                method,
                duration_ms,
                ..Failure::permanent(match result {
                    Ok(()) => format!("cancelled ({reason}) as it finished; rolled back"),
                    Err(err) => format!("cancelled ({reason}): {}", describe_error(&err)),
                })
            },
            Self::Abandoned(reason) => {
                let given_up = format!(
                    "the server did not answer a cancel within {}s: connection abandoned",
                    CANCEL_GIVE_UP.as_secs()
                );
                Failure {
                    stopped: reason,
                    method,
                    duration_ms,
                    // Not retried: the abandoned transaction may hold the view's
                    // advisory lock until the server gives up on it.
                    transient: false,
                    abandoned: true,
                    ..Failure::permanent(match reason {
                        Some(reason) => format!("cancelled ({reason}); {given_up}"),
                        None => format!(
                            "no answer from the server within statement_timeout = {} + {}s; {given_up}",
                            step.settings().statement_timeout,
                            SILENCE_GRACE.as_secs()
                        ),
                    })
                }
            }
        }
    }
}

/// Runs `statement`; when the run's cancel stop fires first, or the server stays
/// silent past `silence`, cancels it on the server and waits for it to end, for
/// [`CANCEL_GIVE_UP`] at most. Dropping the future instead would leave the
/// backend running.
async fn cancellable(
    ctx: &RunContext,
    relation: &Relation,
    token: &CancelToken,
    silence: Option<Duration>,
    statement: impl Future<Output = Result<(), tokio_postgres::Error>>,
) -> Result<(), Interrupted> {
    tokio::pin!(statement);
    let silent = async {
        match silence {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        // The statement first: it is sent when first polled.
        biased;
        result = &mut statement => return result.map_err(Interrupted::Failed),
        reason = ctx.cancel.stopped() => Some(reason),
        () = silent => None,
    };
    if reason.is_none() {
        tracing::warn!(
            view = %relation,
            silence_s = silence.unwrap_or_default().as_secs(),
            "no answer from the server past the statement timeout; cancelling"
        );
    }
    // A cancel that reaches the backend before the statement does is ignored:
    // it is repeated until the statement ends. A request in flight is never cut
    // short (closing a cancel connection before the server, or PgBouncer, is
    // done with it loses the request, and makes PgBouncer 1.18 exit with "bad
    // client state"): the repeater stops only between requests, and is waited
    // for, at most one request's CANCEL_TIMEOUT.
    let (done, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let repeater = tokio::spawn({
        let (target, token, view) = (ctx.target.clone(), token.clone(), relation.to_string());
        async move {
            loop {
                if let Err(error) = target.cancel(&token).await {
                    tracing::warn!(%view, %error, "could not cancel the statement");
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(CANCEL_REPEAT) => {}
                }
            }
        }
        .in_current_span()
    });
    let interrupted = tokio::select! {
        biased;
        result = &mut statement => match reason {
            Some(reason) => Err(Interrupted::Stopped(reason, result)),
            // The silence ended on its own.
            None => result.map_err(Interrupted::Failed),
        },
        () = tokio::time::sleep(CANCEL_GIVE_UP) => Err(Interrupted::Abandoned(reason)),
    };
    drop(done);
    let _ = repeater.await;
    interrupted
}

/// Records a failed or cancelled attempt (after its transaction rolled back)
/// and returns its outcome.
async fn fail(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    failure: Failure,
    attempt: u32,
) -> Outcome {
    record_failure(ctx, slot, step, failure, attempt, false).await
}

/// Records a failed attempt; `retried`: another attempt follows.
async fn record_failure(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    failure: Failure,
    attempt: u32,
    retried: bool,
) -> Outcome {
    let sqlstate = failure.sqlstate.clone();
    record(
        ctx,
        slot,
        step,
        failure.into_outcome(step, attempt),
        sqlstate.as_deref(),
        retried,
    )
    .await
}

/// Records a skip and returns its outcome.
async fn finish(ctx: &RunContext, slot: &mut Slot, step: &Step, outcome: Outcome) -> Outcome {
    record(ctx, slot, step, outcome, None, false).await
}

/// Writes `outcome` to the log tables (on the view's connection, or a new one
/// when it has none or it broke), then reports it. `retried`: a failed attempt
/// that another attempt follows.
async fn record(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    mut outcome: Outcome,
    sqlstate: Option<&str>,
    retried: bool,
) -> Outcome {
    if let Some(log) = &ctx.log {
        let (error, note) = match outcome.status {
            Status::Failed | Status::Cancelled => (outcome.message.as_deref(), None),
            _ => (None, outcome.message.as_deref()),
        };
        let attempt = Attempt {
            run_id: ctx.run_id,
            view_name: &outcome.view_name,
            duration_ms: outcome.duration_ms,
            status: outcome.status,
            method: outcome.method,
            attempt: outcome.attempts.max(1),
            settings: step.settings(),
            sqlstate,
            error,
            note,
            host: &ctx.host,
            retried,
        };
        let written = match connection(ctx, slot).await {
            Ok(client) => log
                .record(&**client, &attempt)
                .await
                .map_err(|e| describe_error(&e)),
            Err(err) => Err(describe_pool_error(&err)),
        };
        outcome.log_error = written.err();
    }
    if !retried {
        report(ctx, &outcome);
    } else if let Some(error) = &outcome.log_error {
        tracing::error!(view = %outcome.view_name, %error, "could not record a failed attempt in the log tables");
    }
    outcome
}

/// One log event per view outcome, and the end of its progress line.
fn report(ctx: &RunContext, outcome: &Outcome) {
    if let Some(progress) = &ctx.progress {
        let _ = progress.send(progress::Event::Finished(outcome.clone()));
    }
    let view = outcome.view_name.as_str();
    let status = outcome.status.as_str();
    let method = outcome.method.map_or("", Method::as_str);
    let duration_ms = round_ms(outcome.duration_ms);
    let message = outcome.message.as_deref().unwrap_or("");
    match outcome.status {
        Status::Failed | Status::Cancelled => tracing::error!(
            view,
            status,
            method,
            duration_ms,
            attempt = outcome.attempts,
            error = message,
            "view refresh failed"
        ),
        Status::Skipped => tracing::info!(view, status, reason = message, "view skipped"),
        Status::Success => tracing::info!(
            view,
            status,
            method,
            duration_ms,
            attempt = outcome.attempts,
            "view refreshed"
        ),
    }
    if let Some(err) = &outcome.log_error {
        tracing::error!(view, error = %err, "could not record the outcome in the log tables");
    }
}
