//! Stopping a run early: SIGTERM or SIGINT, or the `--deadline` passing.
//!
//! A [`Stop`] is a cheap clone every part of a run can ask ("should I start
//! another view?") or wait on ("cancel the statement I am running"). The process
//! only listens for signals while a refresh runs: other commands keep the default
//! behaviour, which ends them at once.

use std::fmt;
use std::time::Duration;

use tokio::sync::watch;

/// Why a run was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A signal, by number (SIGTERM is 15, SIGINT 2).
    Signal(i32),
    /// The run's `--deadline` passed.
    Deadline(Duration),
}

/// The receiving side: asks whether, or waits until, the run must stop.
#[derive(Debug, Clone)]
pub struct Stop {
    rx: watch::Receiver<Option<StopReason>>,
}

/// The sending side: tells every [`Stop`] that the run must stop.
#[derive(Debug, Clone)]
pub struct StopHandle {
    tx: watch::Sender<Option<StopReason>>,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signal(SIGTERM) => write!(f, "SIGTERM"),
            Self::Signal(SIGINT) => write!(f, "SIGINT"),
            Self::Signal(n) => write!(f, "signal {n}"),
            Self::Deadline(after) => write!(f, "the deadline of {}s passed", after.as_secs_f64()),
        }
    }
}

const SIGTERM: i32 = 15;
const SIGINT: i32 = 2;

/// A connected pair; nothing stops until the handle says so.
pub fn channel() -> (StopHandle, Stop) {
    let (tx, rx) = watch::channel(None);
    (StopHandle { tx }, Stop { rx })
}

impl StopHandle {
    /// Stops the run; the first reason given is the one kept.
    pub fn stop(&self, reason: StopReason) {
        self.tx.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(reason);
            }
            first
        });
    }

    /// Stops the run on SIGTERM or SIGINT, from now on.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, number) in [
            (SignalKind::terminate(), SIGTERM),
            (SignalKind::interrupt(), SIGINT),
        ] {
            let mut stream = signal(kind)?;
            let handle = self.clone();
            tokio::spawn(async move {
                if stream.recv().await.is_some() {
                    tracing::warn!(signal = number, "signal received: stopping");
                    handle.stop(StopReason::Signal(number));
                }
                // A second one means "now": the handler stays installed, so
                // without this it would be swallowed.
                if stream.recv().await.is_some() {
                    tracing::warn!(signal = number, "second signal: exiting at once");
                    std::process::exit(128 + number);
                }
            });
        }
        Ok(())
    }

    /// Stops the run once `after` has passed.
    pub fn after(&self, after: Duration) {
        let handle = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::warn!(
                deadline_s = after.as_secs_f64(),
                "deadline passed: cancelling running refreshes"
            );
            handle.stop(StopReason::Deadline(after));
        });
    }
}

impl Stop {
    /// Why the run must stop, if it must.
    pub fn reason(&self) -> Option<StopReason> {
        *self.rx.borrow()
    }

    /// Waits until the run must stop.
    pub async fn stopped(&self) -> StopReason {
        let mut rx = self.rx.clone();
        // Copy the reason out at once: the guard must not live across an await.
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.expect("waited for Some"));
        match reason {
            Ok(reason) => reason,
            // Every handle is gone: nothing can stop the run any more.
            Err(_) => std::future::pending().await,
        }
    }
}
