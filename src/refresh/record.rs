//! The one way an outcome is recorded: a row in the log tables (in the
//! refresh's own transaction for a success, see `transaction`; on the view's
//! connection, or a new one, for everything else), then one log event and the
//! end of its progress line.

use std::time::Duration;

use super::RunContext;
use crate::db::{self, Conn, Pool, PoolError, describe_error, describe_pool_error};
use crate::outcome::{Outcome, Status};
use crate::plan::Step;
use crate::refresh_log::Attempt;

/// How long after it was opened a connection is still handed on from one view
/// to the next. Behind a session-pooling PgBouncer with fewer server
/// connections than the refreshers' jobs, the others get their turn this
/// often at least; reconnecting this seldom costs well under 1%.
const HAND_ON_WITHIN: Duration = Duration::from_secs(5);

/// The connection a view is worked on: handed over by a view that just
/// ended, or taken when first needed; closed when it broke, never held while
/// the view waits for a retry; handed on when the view is done (within
/// [`HAND_ON_WITHIN`] of its opening).
#[derive(Default)]
pub(super) struct Slot {
    conn: Option<Conn>,
    /// A transaction was begun and not ended: the next use rolls it back.
    pub in_transaction: bool,
}

/// The slot's connection, and whether a transaction is open on it.
pub(super) struct Session<'a> {
    pub client: &'a Conn,
    pub in_transaction: &'a mut bool,
}

impl Slot {
    /// A slot holding `conn`, handed over by a view that ended: the server's
    /// notices on it are about the current task's view from now on.
    pub fn handed(conn: Option<Conn>) -> Self {
        if let Some(conn) = &conn {
            conn.adopt();
        }
        Self {
            conn,
            in_transaction: false,
        }
    }

    /// The connection, for the next view, when it works, no transaction is
    /// open on it, and it is younger than [`HAND_ON_WITHIN`].
    pub fn hand_on(self) -> Option<Conn> {
        self.conn
            .filter(|conn| !self.in_transaction && !conn.is_closed() && conn.age() < HAND_ON_WITHIN)
    }

    /// The slot's connection, connecting when it has none or it broke.
    pub async fn session(&mut self, pool: &Pool) -> Result<Session<'_>, PoolError> {
        if self.conn.as_ref().is_none_or(|conn| conn.is_closed()) {
            self.close();
            self.conn = Some(Conn::get(pool).await?);
        }
        let Self {
            conn,
            in_transaction,
        } = self;
        Ok(Session {
            client: conn.as_ref().expect("connected above"),
            in_transaction,
        })
    }

    /// Closes the connection: it broke, or its server is not answering.
    pub fn close(&mut self) {
        self.conn = None;
        self.in_transaction = false;
    }
}

/// The history row of `outcome`. `retried`: a failed attempt that another
/// attempt follows (a history row only; the summary row counts the refresh
/// once it has its final outcome).
pub(super) fn attempt_row<'a>(
    ctx: &'a RunContext,
    step: &'a Step,
    outcome: &'a Outcome,
    retried: bool,
) -> Attempt<'a> {
    let settings = step.settings();
    let (error, note) = match outcome.status {
        Status::Failed | Status::Cancelled => (outcome.message.as_deref(), None),
        _ => (None, outcome.message.as_deref()),
    };
    Attempt {
        run_id: ctx.run_id,
        view_name: &outcome.view_name,
        duration_ms: outcome.duration_ms,
        status: outcome.status,
        method: outcome.method,
        attempt: outcome.attempts.max(1),
        settings,
        work_mem: step.work_mem.value.map(|m| m.to_string()),
        lock_timeout: outcome
            .lock_wait
            .map_or(settings.lock_timeout, |wait| wait.timeout),
        sqlstate: outcome.sqlstate.as_ref().map(|code| code.code()),
        error,
        note,
        host: &ctx.host,
        counts: outcome.counts,
        retried,
    }
}

/// Writes `outcome` to the log tables on the slot's connection (connecting
/// when it has none or it broke; rolling back what the attempt left open), in
/// a short transaction of its own, then reports it unless `retried`.
pub(super) async fn record(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    mut outcome: Outcome,
    retried: bool,
) -> Outcome {
    if let Some(log) = &ctx.log {
        let row = attempt_row(ctx, step, &outcome, retried);
        let written = match slot.session(&ctx.pool).await {
            Ok(session) => {
                let rollback = std::mem::take(session.in_transaction);
                let client = session.client;
                db::housekeeping(client, rollback, log.record(&**client, &row))
                    .await
                    .map_err(|e| describe_error(&e))
            }
            Err(err) => Err(describe_pool_error(&err)),
        };
        if written.is_err() {
            slot.close();
        }
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
pub(super) fn report(ctx: &RunContext, outcome: &Outcome) {
    if let Some(progress) = &ctx.progress {
        let _ = progress.send(crate::progress::Event::Finished(outcome.clone()));
    }
    let view = outcome.view_name.as_str();
    let status = outcome.status.as_str();
    let method = outcome.method.map_or("", super::Method::as_str);
    let duration_ms = outcome.duration_ms;
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
