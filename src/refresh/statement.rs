//! A statement that may have to stop: when the run is cancelled, or when the
//! server stays silent past the statement's own timeout, it is cancelled on the
//! server (dropping the future would leave the backend running) and, when the
//! server does not act on the cancel, its connection is given up on.

use std::future::Future;
use std::time::Duration;

use tracing::Instrument;

use super::{Failure, RunContext};
use crate::db::{CancelKey, describe_error};
use crate::outcome::{LockWait, Method};
use crate::plan::Step;
use crate::registry::ViewSettings;
use crate::shutdown::StopReason;

/// How often a cancel request is repeated until the statement ends.
const CANCEL_REPEAT: Duration = Duration::from_secs(1);

/// How long a statement may go on after the first cancel request before its
/// connection is given up on (the server, or the network to it, is gone).
const CANCEL_GIVE_UP: Duration = Duration::from_secs(10);

/// How long past its `statement_timeout` a statement may stay unanswered
/// before the server is taken for gone: the server would have ended it by then.
const SILENCE_GRACE: Duration = Duration::from_secs(30);

/// How long a statement under `settings` may go unanswered before the server
/// is taken for gone; `None` without a statement_timeout.
pub(super) fn silence_limit(settings: &ViewSettings) -> Option<Duration> {
    let timeout = settings.statement_timeout.as_millis();
    (timeout > 0).then(|| Duration::from_millis(timeout) + SILENCE_GRACE)
}

/// How a statement run by [`cancellable`] did not succeed.
pub(super) enum Interrupted {
    Failed(tokio_postgres::Error),
    Stopped(StopReason, Result<(), tokio_postgres::Error>),
    /// Cancelled, but the statement did not end: the server or the network to it
    /// is gone, and the connection must be dropped. `None`: the server went
    /// silent past the statement's own timeout, no stop was asked for.
    Abandoned(Option<StopReason>),
}

impl Interrupted {
    pub(super) fn into_failure(
        self,
        step: &Step,
        method: Option<Method>,
        duration_ms: f64,
        lock_wait: Option<LockWait>,
    ) -> Failure {
        match self {
            Self::Failed(err) => Failure::from_pg(&err, step, method, duration_ms, lock_wait),
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
pub(super) async fn cancellable<T>(
    ctx: &RunContext,
    view: &str,
    key: &CancelKey,
    silence: Option<Duration>,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Interrupted> {
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
            view,
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
        let (target, key, view) = (ctx.target.clone(), key.clone(), view.to_owned());
        async move {
            loop {
                if let Err(error) = target.cancel(&key).await {
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
            Some(reason) => Err(Interrupted::Stopped(reason, result.map(drop))),
            // The silence ended on its own.
            None => result.map_err(Interrupted::Failed),
        },
        () = tokio::time::sleep(CANCEL_GIVE_UP) => Err(Interrupted::Abandoned(reason)),
    };
    drop(done);
    let _ = repeater.await;
    interrupted
}
