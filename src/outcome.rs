//! The words of a refresh, shared by everything that plans, runs, records or
//! reports one: how an attempt ended ([`Status`]), which statement ran
//! ([`Method`]), what an incremental cycle touched ([`Counts`]), how long a
//! `REFRESH` may wait for its lock ([`LockWait`]), one view's [`Outcome`] and
//! one run's [`Cycle`]. Nothing here talks to a database or writes results
//! (a cycle's summary is one log event): the modules that do import these
//! words, and this module imports none of them.

use std::time::{Duration, SystemTime};

use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::units::PgDuration;

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

/// How long a `REFRESH` may wait for its lock, and whether readers queue behind
/// it meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockWait {
    pub timeout: PgDuration,
    /// A plain refresh of a populated view: waits `plain_lock_timeout`.
    pub blocks_readers: bool,
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

/// What one cycle did.
#[derive(Debug)]
pub struct Cycle {
    pub run_id: Uuid,
    /// One per view, in plan order.
    pub outcomes: Vec<Outcome>,
    pub started_at: SystemTime,
    /// From the first connection to the last outcome (and the pruning).
    pub duration: Duration,
}

impl Cycle {
    /// How many views ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }

    /// Outcomes that could not be written to the log tables.
    pub fn unrecorded(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.log_error.is_some())
            .count()
    }

    /// The run's last event: counts per status and how long it took.
    pub fn summarize(&self) {
        let (success, skipped, failed, cancelled) = (
            self.count(Status::Success),
            self.count(Status::Skipped),
            self.count(Status::Failed),
            self.count(Status::Cancelled),
        );
        let duration_ms = self.duration.as_millis() as u64;
        let unrecorded = self.unrecorded();
        // Info whatever happened: each failure was an error event of its own.
        tracing::info!(
            success,
            skipped,
            failed,
            cancelled,
            unrecorded,
            duration_ms,
            "run finished"
        );
    }

    /// Whether anything failed, was cancelled, or went unrecorded (exit code 1).
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| {
            matches!(o.status, Status::Failed | Status::Cancelled) || o.log_error.is_some()
        })
    }
}
