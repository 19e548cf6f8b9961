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
//! This module owns the words of a refresh ([`Status`], [`Method`],
//! [`Outcome`]); `refresh_log` only writes them down.

mod executor;
mod incremental;
mod record;
mod statement;
mod transaction;

use tokio_postgres::error::SqlState;

pub use executor::{RunContext, execute};

use crate::db::{describe_error, describe_pool_error, is_connection_error};
use crate::plan::{LockWait, Step};
use crate::shutdown::StopReason;

/// The first half of every advisory lock key a refresh takes ("mvrf"): with
/// a materialized view's OID (one `bigint` key), or with the hash of an
/// incremental view's name (two `int4` keys, a lock space of their own).
const LOCK_PREFIX: i32 = 0x6d76_7266;

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
    /// An incremental view's cycle: the changed keys recomputed, or all of
    /// them in a full reconcile.
    Incremental,
}

/// What an incremental cycle touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Keys recomputed: the changed ones, or every key of a full reconcile.
    pub keys: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
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
            Self::Incremental => "incremental",
        }
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
    /// The server's error code of a failure, when the server gave one.
    pub sqlstate: Option<SqlState>,
    /// Set when the outcome could not be written to the log tables.
    pub log_error: Option<String>,
    /// Whether views depending on this one must be skipped.
    pub blocks_dependents: bool,
    /// Skipped because another refresher held the view's advisory lock.
    pub lock_skipped: bool,
    /// How long the `REFRESH` could wait for its lock, when it was sent.
    pub lock_wait: Option<LockWait>,
    /// What an incremental cycle touched.
    pub counts: Option<Counts>,
}

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
