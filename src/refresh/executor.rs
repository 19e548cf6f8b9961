//! The plan executed: views start once the views they read are done, up to
//! `--jobs` at once; each is attempted, retried on transient failures with
//! backoff, and its outcome recorded. A view that depends on a failed one is
//! skipped; once the run must stop, no view (and no retry) starts, and the
//! views left are recorded as cancelled before they started.
//!
//! A view holds one connection while it is worked on and none while it waits
//! for its turn or its retry. A view that ends hands its connection to a view
//! that starts at once (a new connection, and a new backend's empty caches,
//! cost more than a small view's refresh); one that no view can take, or
//! opened more than a few seconds ago, is closed, not kept. The first view
//! takes planning's connection, and the last one's goes back to the caller.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::incremental;
use super::record::{Slot, record, report};
use super::transaction::{self, Done};
use super::{Failure, RunContext};
use crate::catalog::{Lookup, Relation};
use crate::db::{self, Conn};
use crate::outcome::{Outcome, Status};
use crate::plan::{Plan, Step};

/// Refreshes every view of `plan`, dependencies first, up to `ctx.jobs` at once,
/// the first on `conn` when one is given (planning's). Returns the outcomes in
/// plan order, and the connection the last view ended with, when it works.
pub async fn execute(
    ctx: Arc<RunContext>,
    plan: Arc<Plan>,
    conn: Option<Conn>,
) -> (Vec<Outcome>, Option<Conn>) {
    let n = plan.steps.len();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut started = vec![false; n];
    let mut running = JoinSet::new();
    // The connections of the views that just ended, for the views that start.
    let mut spare: Vec<Conn> = conn.into_iter().collect();

    loop {
        for (i, step) in plan.steps.iter().enumerate() {
            if running.len() >= ctx.jobs || ctx.drain.reason().is_some() {
                break;
            }
            if started[i] {
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
            let (ctx, plan, conn) = (ctx.clone(), plan.clone(), spare.pop());
            running.spawn(
                async move {
                    let step = &plan.steps[i];
                    let refreshed = async {
                        let mut slot = Slot::handed(conn);
                        let outcome = refresh_step(&ctx, &mut slot, step, blocked_by).await;
                        (outcome, slot.hand_on())
                    };
                    let (outcome, conn) = db::working_on(step.view_name(), refreshed).await;
                    (i, outcome, conn)
                }
                .in_current_span(),
            );
        }
        // What no view could take now is closed while the others run; the
        // last one is kept for the views a stop left, and for the caller.
        if !running.is_empty() {
            spare.clear();
        }
        match running.join_next().await {
            Some(Ok((i, outcome, conn))) => {
                outcomes[i] = Some(outcome);
                spare.extend(conn);
            }
            Some(Err(err)) => std::panic::resume_unwind(err.into_panic()),
            None => break,
        }
    }
    record_unstarted(&ctx, &plan, outcomes, spare.pop()).await
}

/// The outcomes, with the views a stop left unstarted recorded as cancelled,
/// on one connection (`conn` when given): once it cannot be had, no other is
/// tried (a stop with the server gone must not wait a connect timeout per
/// view). Returns the connection too, when it works.
async fn record_unstarted(
    ctx: &RunContext,
    plan: &Plan,
    outcomes: Vec<Option<Outcome>>,
    conn: Option<Conn>,
) -> (Vec<Outcome>, Option<Conn>) {
    let mut slot = Slot::handed(conn);
    let mut unreachable: Option<String> = None;
    let mut done = Vec::with_capacity(outcomes.len());
    for (step, outcome) in plan.steps.iter().zip(outcomes) {
        if let Some(outcome) = outcome {
            done.push(outcome);
            continue;
        }
        if let Some(reason) = &step.skip {
            // Skipped whether or not the run stopped: nothing was cancelled.
            let outcome = Outcome::new(step, Status::Skipped, reason.clone());
            report(ctx, &outcome);
            done.push(outcome);
            continue;
        }
        let reason = ctx
            .drain
            .reason()
            .expect("only a stop leaves views unstarted");
        let mut outcome = Outcome::new(step, Status::Cancelled, format!("not started: {reason}"));
        if let Some(error) = &unreachable {
            outcome.log_error = Some(error.clone());
            report(ctx, &outcome);
            done.push(outcome);
            continue;
        }
        let outcome = record(ctx, &mut slot, step, outcome, false).await;
        if outcome.log_error.is_some() {
            unreachable.clone_from(&outcome.log_error);
        }
        done.push(outcome);
    }
    (done, slot.hand_on())
}

/// One view, with its retries, on the connection of `slot`.
async fn refresh_step(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    blocked_by: Option<String>,
) -> Outcome {
    if let Some(dependency) = blocked_by {
        let reason = format!("depends on {dependency}, which was not refreshed");
        let mut outcome = Outcome::new(step, Status::Skipped, reason);
        outcome.blocks_dependents = true;
        return record(ctx, slot, step, outcome, false).await;
    }
    if let Some(reason) = &step.skip {
        // Not on this database on purpose: reported, never recorded.
        let outcome = Outcome::new(step, Status::Skipped, reason.clone());
        report(ctx, &outcome);
        return outcome;
    }
    let relation = match (&step.lookup, &step.problem, &step.incremental) {
        (Lookup::MatView(relation), None, None) => Some(relation),
        (_, None, Some(_)) => None,
        _ => return unrefreshable(ctx, slot, step).await,
    };
    let retries = step.settings().retries;
    let mut attempt = 1;
    loop {
        let done = match (relation, &step.incremental) {
            (Some(relation), _) => transaction::attempt(ctx, slot, step, relation, attempt).await,
            (None, Some(target)) => incremental::attempt(ctx, slot, step, target, attempt).await,
            (None, None) => unreachable!("matched above"),
        };
        let failure = match done {
            Ok(done) => return finish(ctx, slot, step, relation, done, attempt).await,
            Err(failure) => failure,
        };
        if failure.abandoned || failure.transient {
            // The server never answered, or the connection may have broken (a
            // terminated backend): record on a fresh one.
            slot.close();
        }
        if !failure.transient || attempt > retries || failure.stopped.is_some() {
            let outcome = failure.into_outcome(step, attempt);
            return record(ctx, slot, step, outcome, false).await;
        }
        if let Some(stopped) = wait_to_retry(ctx, slot, step, failure, attempt).await {
            return stopped;
        }
        attempt += 1;
    }
}

/// Records a failed attempt and waits for the next, holding no connection;
/// returns the outcome when the run stopped meanwhile.
async fn wait_to_retry(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    failure: Failure,
    attempt: u32,
) -> Option<Outcome> {
    let delay = backoff(attempt);
    tracing::warn!(
        view = %step.view_name(),
        attempt,
        error = %failure.message,
        retry_in_ms = delay.as_millis() as u64,
        "refresh failed, retrying"
    );
    record(ctx, slot, step, failure.into_outcome(step, attempt), true).await;
    slot.close();
    tokio::select! {
        _ = tokio::time::sleep(delay) => None,
        reason = ctx.drain.stopped() => {
            let failure = Failure {
                stopped: Some(reason),
                ..Failure::permanent(format!("not retried: {reason}"))
            };
            let outcome = failure.into_outcome(step, attempt);
            Some(record(ctx, slot, step, outcome, false).await)
        }
    }
}

/// The failure of a step that cannot be refreshed. A name that is no
/// materialized view (most likely a typo) gets no row in the log tables.
async fn unrefreshable(ctx: &RunContext, slot: &mut Slot, step: &Step) -> Outcome {
    let why = step
        .problem
        .as_deref()
        .unwrap_or("is not a materialized view");
    let name = step.view_name();
    if !step.is_recorded() {
        let outcome = Outcome::new(step, Status::Failed, format!("{name} {why}"));
        report(ctx, &outcome);
        return outcome;
    }
    let outcome = Failure::permanent(format!("view {name} {why}")).into_outcome(step, 1);
    record(ctx, slot, step, outcome, false).await
}

/// The outcome of an attempt that did not fail, recorded.
async fn finish(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    relation: Option<&Relation>,
    done: Done,
    attempt: u32,
) -> Outcome {
    let (mut outcome, history_id, bloat) = match done {
        Done::Locked => {
            let reason = "another refresher is refreshing this view".to_owned();
            let mut outcome = Outcome::new(step, Status::Skipped, reason);
            outcome.attempts = attempt;
            outcome.lock_skipped = true;
            // The views that read it go on, from what it holds now, as they
            // would after the other refresher's run: a manual `refresh A`
            // refreshes A only.
            return record(ctx, slot, step, outcome, false).await;
        }
        Done::Fresh(reason) => {
            let outcome = Outcome::new(step, Status::Skipped, reason);
            return record(ctx, slot, step, outcome, false).await;
        }
        Done::Refreshed {
            outcome,
            history_id,
            bloat,
        } => (outcome, history_id, bloat),
    };
    if let Some(bloat) = bloat.filter(|b| b.needs_vacuum())
        && let Some(relation) = relation
        && let Some(note) = transaction::vacuum(ctx, slot, step, relation, bloat, history_id).await
    {
        let reason = outcome.message.take().unwrap_or_default();
        outcome.message = Some(format!("{reason}; {note}"));
    }
    match outcome.log_error.take() {
        Some(error) => {
            // Committed without its row: written again on a fresh connection,
            // so `min_interval` and `status` see the view as fresh.
            tracing::warn!(view = %outcome.view_name, %error, "the success row could not be written with the refresh; writing it again");
            record(ctx, &mut Slot::default(), step, outcome, false).await
        }
        None => {
            report(ctx, &outcome);
            outcome
        }
    }
}

/// Exponential backoff from 200 ms, capped at 10 s, with full jitter.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
    Duration::from_millis(ceiling / 2 + fastrand::u64(0..=ceiling / 2))
}
