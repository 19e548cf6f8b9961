//! `run`: refresh on a schedule until told to stop, as a sidecar does.
//!
//! One `select!` loop waits for the next tick or the shutdown. Each tick starts a
//! cycle in its own task, unless the previous one still runs (the tick is then
//! skipped and counted) or the database was unreachable recently (the loop backs
//! off, doubling up to a minute, and recovers by itself). Refresh failures never
//! stop the loop. On shutdown no cycle or view starts; running refreshes get the
//! grace period and are then cancelled on the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::cycle::{Refresher, Stops};
use crate::error::{Error, Exit};
use crate::http::{self, Shared};
use crate::metrics::{CycleOutcome, Metrics};
use crate::refresh_log::Status;
use crate::registry::ViewSpec;
use crate::schedule::Schedule;
use crate::shutdown::{self, StopReason};

/// The longest wait after the database was unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How `run` behaves, beyond what every cycle shares.
#[derive(Debug)]
pub struct RunOptions {
    pub schedule: Schedule,
    pub listen: Option<SocketAddr>,
    /// How long running refreshes may go on after the shutdown began.
    pub shutdown_grace: Duration,
}

/// After the database was unreachable: when to try again.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

/// Runs cycles of `views` on the schedule until `shutdown` completes.
pub async fn run(
    refresher: Arc<Refresher>,
    views: Vec<ViewSpec>,
    options: RunOptions,
    shutdown: impl Future<Output = StopReason> + Send + 'static,
) -> Result<Exit, Error> {
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        // Until a cycle says otherwise; the live ping of /readyz decides meanwhile,
        // so a pod is not kept out of service until the first scheduled tick.
        reached_database: true.into(),
        // Probes get a connection of their own: refreshes may hold the others.
        pool: refresher.target.pool(1),
    });
    let (drain_handle, drain) = shutdown::channel();
    let (cancel_handle, cancel) = shutdown::channel();
    let stops = Stops { drain, cancel };

    let server = match options.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Usage(format!("cannot listen on {addr} (--listen): {e}")))?;
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            let until_drained = {
                let drain = stops.drain.clone();
                async move {
                    drain.stopped().await;
                }
            };
            Some(tokio::spawn(http::serve(
                listener,
                shared.clone(),
                until_drained,
            )))
        }
        None => None,
    };

    let grace = options.shutdown_grace;
    tokio::spawn(async move {
        let reason = shutdown.await;
        tracing::info!(%reason, grace_s = grace.as_secs_f64(), "shutting down: no new refresh starts");
        drain_handle.stop(reason);
        tokio::time::sleep(grace).await;
        cancel_handle.stop(reason);
    });

    tracing::info!(schedule = %options.schedule, views = views.len(), "refreshing on schedule");
    let backoff = Arc::new(Mutex::new(Backoff::default()));
    let mut cycle: Option<JoinHandle<()>> = None;
    loop {
        let Some(next) = options.schedule.next_after(Utc::now()) else {
            tracing::warn!("the schedule has no future run: stopping");
            break;
        };
        shared
            .metrics
            .next_run(next.timestamp_millis() as f64 / 1000.0);
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stops.drain.stopped() => break,
        }
        if cycle.as_ref().is_some_and(|task| !task.is_finished()) {
            tracing::warn!("the previous cycle is still running: this tick is skipped");
            shared.metrics.cycle(CycleOutcome::Overlapped);
            continue;
        }
        if backoff
            .lock()
            .await
            .until
            .is_some_and(|until| Instant::now() < until)
        {
            tracing::debug!("backing off after the database was unreachable");
            continue;
        }
        let (refresher, views, stops, shared, backoff) = (
            refresher.clone(),
            views.clone(),
            stops.clone(),
            shared.clone(),
            backoff.clone(),
        );
        cycle = Some(tokio::spawn(async move {
            run_cycle(&refresher, views, &stops, &shared, &backoff).await;
        }));
    }

    if let Some(task) = cycle {
        let _ = task.await;
    }
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!("stopped");
    Ok(Exit::Success)
}

/// One scheduled cycle, its metrics and its effect on readiness and backoff.
async fn run_cycle(
    refresher: &Refresher,
    views: Vec<ViewSpec>,
    stops: &Stops,
    shared: &Shared,
    backoff: &Mutex<Backoff>,
) {
    let started = Instant::now();
    match refresher.cycle(views, stops, None).await {
        Ok(cycle) => {
            *backoff.lock().await = Backoff::default();
            shared.reached_database.store(true, Ordering::Relaxed);
            for outcome in &cycle.outcomes {
                shared.metrics.register_view(&outcome.view_name);
                shared.metrics.observe(outcome);
            }
            let failed = cycle.failed();
            shared.metrics.cycle(if failed {
                CycleOutcome::Failed
            } else {
                CycleOutcome::Ok
            });
            tracing::info!(
                run_id = %cycle.run_id,
                refreshed = cycle.count(Status::Success),
                skipped = cycle.count(Status::Skipped),
                failed = cycle.count(Status::Failed) + cycle.count(Status::Cancelled),
                duration_ms = started.elapsed().as_millis() as u64,
                "cycle finished"
            );
        }
        Err(err @ Error::Connect(_)) => {
            shared.reached_database.store(false, Ordering::Relaxed);
            shared.metrics.cycle(CycleOutcome::Unreachable);
            let mut backoff = backoff.lock().await;
            backoff.failures += 1;
            let delay = Duration::from_secs(1 << backoff.failures.min(6)).min(MAX_BACKOFF);
            backoff.until = Some(Instant::now() + delay);
            tracing::warn!(error = %err, retry_after_s = delay.as_secs(), "database unreachable; backing off");
        }
        Err(err) => {
            shared.metrics.cycle(CycleOutcome::Failed);
            tracing::error!(error = %err, "cycle failed");
        }
    }
}
