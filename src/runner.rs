//! `run`: refresh on a schedule until told to stop, as a sidecar does.
//!
//! One `select!` loop waits for the next tick or the shutdown. Each tick starts a
//! cycle in its own task, unless the previous one still runs (the tick is then
//! skipped and counted) or the database was unreachable recently (the loop backs
//! off, doubling up to a minute, and recovers by itself). Refresh failures never
//! stop the loop. On shutdown no cycle or view starts; running refreshes get the
//! grace period and are then cancelled on the server.
//!
//! With `--listen`, the views' state in the metrics is read from the log tables
//! at the start and after every cycle, so it is what every replica and every
//! refresher wrote, and survives restarts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::catalog;
use crate::cycle::{Refresher, Stops};
use crate::db::{describe_error, describe_pool_error};
use crate::error::{Error, Exit};
use crate::http::{self, Shared};
use crate::metrics::{CycleOutcome, Metrics};
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
        metrics: Metrics::with_scheduler(refresher.in_progress.clone()),
        // Until a cycle says otherwise; the live ping of /readyz decides meanwhile,
        // so a pod is not kept out of service until the first scheduled tick.
        reached_database: true.into(),
        // Probes get a connection of their own: refreshes may hold the others.
        pool: refresher.target.pool(1),
    });
    let (drain_handle, drain) = shutdown::channel();
    let (cancel_handle, cancel) = shutdown::channel();
    let stops = Stops { drain, cancel };

    let listener = match options.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Usage(format!("cannot listen on {addr} (--listen): {e}")))?,
        ),
        None => None,
    };

    shut_down_on(
        shutdown,
        options.shutdown_grace,
        drain_handle,
        cancel_handle,
    );
    let serving = listener.is_some();
    let server = match listener {
        Some(listener) => Some(serve(listener, &refresher, &views, &stops, &shared).await),
        None => None,
    };
    log_schedule(&options.schedule, views.len());
    let ticks = Ticks {
        refresher,
        views,
        stops,
        shared,
        serving,
    };
    let cycle = ticks.run(&options.schedule).await;
    if let Some(task) = cycle {
        let _ = task.await;
    }
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!("stopped");
    Ok(Exit::Success)
}

/// What the ticks of `run` share.
struct Ticks {
    refresher: Arc<Refresher>,
    views: Vec<ViewSpec>,
    stops: Stops,
    shared: Arc<Shared>,
    /// The metrics are served: the views' state is read after each cycle.
    serving: bool,
}

impl Ticks {
    /// A cycle per tick of `schedule` until the drain; returns the last one,
    /// which may still run.
    async fn run(&self, schedule: &Schedule) -> Option<JoinHandle<()>> {
        let backoff = Arc::new(Mutex::new(Backoff::default()));
        let mut cycle: Option<JoinHandle<()>> = None;
        loop {
            let Some(next) = schedule.next_after(Utc::now()) else {
                tracing::warn!("the schedule has no future run: stopping");
                break;
            };
            self.shared
                .metrics
                .next_run(next.timestamp_millis() as f64 / 1000.0);
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stops.drain.stopped() => break,
            }
            if cycle.as_ref().is_some_and(|task| !task.is_finished()) {
                tracing::warn!("the previous cycle is still running: this tick is skipped");
                self.shared.metrics.cycle(CycleOutcome::Overlapped);
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
                self.refresher.clone(),
                self.views.clone(),
                self.stops.clone(),
                self.shared.clone(),
                backoff.clone(),
            );
            let serving = self.serving;
            cycle = Some(tokio::spawn(async move {
                run_cycle(&refresher, views, &stops, &shared, &backoff, serving).await;
            }));
        }
        cycle
    }
}

/// On `shutdown`: no cycle or view starts (the drain); after `grace`, running
/// statements are cancelled on the server.
fn shut_down_on(
    shutdown: impl Future<Output = StopReason> + Send + 'static,
    grace: Duration,
    drain: shutdown::StopHandle,
    cancel: shutdown::StopHandle,
) {
    tokio::spawn(async move {
        let reason = shutdown.await;
        tracing::info!(%reason, grace_s = grace.as_secs_f64(), "shutting down: no new refresh starts");
        drain.stop(reason);
        tokio::time::sleep(grace).await;
        cancel.stop(reason);
    });
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the drain, once the views'
/// state was read, so it is right from the first scrape: a database that does
/// not answer delays the endpoints by its connect timeout at most (the
/// listener queues the requests meanwhile).
async fn serve(
    listener: tokio::net::TcpListener,
    refresher: &Refresher,
    views: &[ViewSpec],
    stops: &Stops,
    shared: &Arc<Shared>,
) -> JoinHandle<std::io::Result<()>> {
    tokio::select! {
        () = load_views(refresher, views, shared) => {}
        _ = stops.drain.stopped() => {}
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let drain = stops.drain.clone();
    let until_drained = async move {
        drain.stopped().await;
    };
    tokio::spawn(http::serve(listener, shared.clone(), until_drained))
}

/// The schedule and its next three runs, at start.
fn log_schedule(schedule: &Schedule, views: usize) {
    let next: Vec<String> = schedule
        .upcoming(Utc::now(), 3)
        .into_iter()
        .map(|at| schedule.local(at))
        .collect();
    tracing::info!(
        schedule = %schedule,
        next = next.join(", "),
        views,
        "refreshing on schedule"
    );
}

/// One scheduled cycle, its metrics and its effect on readiness and backoff;
/// `serving`: the metrics are served, and the views' state is read after it.
async fn run_cycle(
    refresher: &Refresher,
    views: Vec<ViewSpec>,
    stops: &Stops,
    shared: &Shared,
    backoff: &Mutex<Backoff>,
    serving: bool,
) {
    match refresher.cycle(views.clone(), stops, None).await {
        Ok(cycle) => {
            *backoff.lock().await = Backoff::default();
            shared.reached_database.store(true, Ordering::Relaxed);
            // The log tables' state first: a scrape never sees this process's
            // counts of the cycle without the views' state after it.
            if serving {
                load_views(refresher, &views, shared).await;
            }
            shared.metrics.observe_run(&cycle);
            let failed = cycle.failed();
            shared.metrics.cycle(if failed {
                CycleOutcome::Failed
            } else {
                CycleOutcome::Ok
            });
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

/// Reads the state of the registry's views from the log tables into the
/// metrics, on the probes' connection, with each name looked up (one that is
/// no view that can be refreshed is failing, with no log row). A failure is a
/// warning; the metrics keep what they had.
async fn load_views(refresher: &Refresher, views: &[ViewSpec], shared: &Shared) {
    let read = async {
        let client = shared
            .pool
            .get()
            .await
            .map_err(|e| describe_pool_error(&e))?;
        let mut registry = catalog::registry_names(&**client, views)
            .await
            .map_err(|e| describe_error(&e))?;
        registry.retain(|name| !name.not_here);
        let names: Vec<String> = registry.iter().map(|r| r.qualified.clone()).collect();
        let mut states = refresher
            .log
            .view_states(&**client, &names)
            .await
            .map_err(|e| describe_error(&e))?;
        for (state, name) in states.iter_mut().zip(&registry) {
            state.unrefreshable = name.unrefreshable;
        }
        Ok::<_, String>(states)
    };
    match read.await {
        Ok(states) => shared.metrics.set_views(&states),
        Err(error) => {
            tracing::warn!(%error, "could not read the views' state from the log tables for the metrics");
        }
    }
}
