//! Refreshing: one view in one transaction, and a whole plan in dependency
//! order with up to `--jobs` views at a time.
//!
//! * [`executor`] walks the plan: a view starts once the views it reads are
//!   done, retries transient failures with backoff, and a view that depends on
//!   a failed one is skipped. A failing view never stops the others.
//! * [`transaction`] is one attempt at one view: lock, settings, state, the
//!   `REFRESH`, the success row and the commit, in three round trips.
//! * [`statement`] runs a statement that may have to be cancelled on the server.
//! * [`record`] is the one way an outcome reaches the log tables and the logs.
//!
//! The words they speak ([`Status`], [`Method`], [`Outcome`]) live in
//! `outcome`, below this module and everything that reports a refresh.

mod executor;
mod incremental;
mod record;
mod statement;
mod transaction;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::error::SqlState;
use uuid::Uuid;

pub use executor::execute;

use crate::db::{DbTarget, Pool, describe_error, describe_pool_error, is_connection_error};
use crate::outcome::{LockWait, Method, Outcome, Status};
use crate::plan::Step;
use crate::progress;
use crate::refresh_log::RefreshLog;
use crate::shutdown::{Stop, StopReason};

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
    /// Incremental views are fully reconciled (`refresh --full`).
    pub full: bool,
    /// The time to the caller's next cycle (`run`'s next tick); `None` for a
    /// single `refresh`. Under `min_interval` a view due less than half of it
    /// from now (at most a tenth of `min_interval`) is due now, not a tick
    /// late (`transaction::fresh`).
    pub period: Option<std::time::Duration>,
}

impl RunContext {
    /// Counts one running `REFRESH` in [`RunContext::in_progress`] while the
    /// returned guard lives.
    pub(super) fn running(&self) -> Running<'_> {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        Running(&self.in_progress)
    }
}

/// One running `REFRESH`, counted until dropped.
pub(super) struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The first half of every advisory lock key a refresh takes ("mvrf"): with
/// a materialized view's OID (one `bigint` key), or with the hash of an
/// incremental view's name (two `int4` keys, a lock space of their own).
const LOCK_PREFIX: i32 = 0x6d76_7266;

impl Outcome {
    /// An outcome for `step` with nothing run yet; only a success or a skip
    /// lets dependents run.
    fn new(step: &Step, status: Status, message: String) -> Self {
        Self {
            view_name: step.view_name(),
            status,
            method: None,
            duration_ms: 0.0,
            attempts: 0,
            message: Some(message),
            sqlstate: None,
            log_error: None,
            blocks_dependents: matches!(status, Status::Failed | Status::Cancelled),
            lock_skipped: false,
            lock_wait: None,
            counts: None,
        }
    }
}

/// A failed attempt, with what is needed to log it and decide on a retry.
#[derive(Debug)]
struct Failure {
    message: String,
    sqlstate: Option<SqlState>,
    method: Option<Method>,
    duration_ms: f64,
    transient: bool,
    /// Set when the attempt was cancelled because the run is stopping.
    stopped: Option<StopReason>,
    /// Set when the connection was given up on.
    abandoned: bool,
    /// The `REFRESH`'s lock wait, when it was sent.
    lock_wait: Option<LockWait>,
}

impl Failure {
    /// A failed statement; `lock_wait`: the `REFRESH`'s lock wait, when it
    /// was the `REFRESH` that failed.
    fn from_pg(
        err: &tokio_postgres::Error,
        step: &Step,
        method: Option<Method>,
        duration_ms: f64,
        lock_wait: Option<LockWait>,
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
                message.push_str(&match lock_wait {
                    Some(wait) if wait.blocks_readers => format!(
                        " (plain_lock_timeout = {}: a plain refresh of a populated view makes \
                         readers queue behind it while it waits, so it waits no longer)",
                        wait.timeout
                    ),
                    _ => format!(" (lock_timeout = {})", settings.lock_timeout),
                });
            }
            _ => {}
        }
        Self {
            message,
            sqlstate: err.code().cloned(),
            method,
            duration_ms,
            transient: is_transient(err),
            stopped: None,
            abandoned: false,
            lock_wait,
        }
    }

    /// No connection for the attempt: worth another.
    fn no_connection(err: &crate::db::PoolError) -> Self {
        Self {
            transient: true,
            ..Self::permanent(format!("could not connect: {}", describe_pool_error(err)))
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
            lock_wait: None,
        }
    }

    /// A stop that came before the statement was sent.
    fn not_started(reason: StopReason) -> Self {
        Self {
            stopped: Some(reason),
            ..Self::permanent(format!("not started: {reason}"))
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
        outcome.sqlstate = self.sqlstate;
        outcome.lock_wait = self.lock_wait;
        outcome
    }
}

/// Errors worth another attempt: the connection, deadlocks, serialization
/// failures, lock timeouts and server shutdowns. An error of the client's own
/// without a SQLSTATE (a row count, a conversion) is none of these: it would
/// only happen again.
fn is_transient(err: &tokio_postgres::Error) -> bool {
    is_connection_error(err)
        || err.code().is_some_and(|code| {
            *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::LOCK_NOT_AVAILABLE
        })
}
