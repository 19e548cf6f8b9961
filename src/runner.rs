//! `run`: refresh on a schedule, or every fixed period, until told to stop, as
//! a sidecar or a Deployment does.
//!
//! One `select!` loop waits for the next tick or the shutdown. Each tick starts a
//! cycle in its own task, unless the previous one still runs (the tick is then
//! skipped and counted) or the database was unreachable recently (the loop backs
//! off, doubling up to a minute, and recovers by itself). Refresh failures never
//! stop the loop. On shutdown no cycle or view starts; running refreshes get the
//! grace period and are then cancelled on the server. Each cycle knows the time
//! to the next tick, so a view's `min_interval` is met at the tick it falls
//! due, not one late.
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
use crate::schedule::Cadence;
use crate::shutdown::{self, StopReason};

/// The longest wait after the database was unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How `run` behaves, beyond what every cycle shares.
#[derive(Debug)]
pub struct RunOptions {
    pub cadence: Cadence,
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
    // How often each view is meant to be refreshed, for the metrics: the
    // loop's longest period, or the view's min_interval when longer.
    let period = options.cadence.longest_period(Utc::now());
    let intervals: Vec<Duration> = views
        .iter()
        .map(|view| {
            let min_interval = view.settings.min_interval.map(|d| d.to_std());
            period.max(min_interval.unwrap_or_default())
        })
        .collect();
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
        Some(listener) => {
            let views = Views {
                specs: &views,
                intervals: &intervals,
            };
            Some(serve(listener, &refresher, views, &stops, &shared).await)
        }
        None => None,
    };
    log_cadence(&options.cadence, views.len());
    let ticks = Ticks {
        refresher,
        views,
        intervals,
        stops,
        shared,
        serving,
    };
    let cycle = ticks.run(&options.cadence).await;
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
    /// How often each of `views` is meant to be refreshed.
    intervals: Vec<Duration>,
    stops: Stops,
    shared: Arc<Shared>,
    /// The metrics are served: the views' state is read after each cycle.
    serving: bool,
}

impl Ticks {
    /// A cycle per tick of `cadence` until the drain; returns the last one,
    /// which may still run.
    async fn run(&self, cadence: &Cadence) -> Option<JoinHandle<()>> {
        let backoff = Arc::new(Mutex::new(Backoff::default()));
        let mut cycle: Option<JoinHandle<()>> = None;
        let mut last = None;
        loop {
            let now = Utc::now();
            let next = match last {
                None => cadence.first(now),
                Some(last) => cadence.after(last, now),
            };
            let Some(next) = next else {
                tracing::warn!("the schedule has no future run: stopping");
                break;
            };
            last = Some(next);
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
            let (refresher, views, intervals, stops, shared, backoff) = (
                self.refresher.clone(),
                self.views.clone(),
                self.intervals.clone(),
                self.stops.clone(),
                self.shared.clone(),
                backoff.clone(),
            );
            let serving = self.serving;
            // How late a view left out now would be refreshed: a view due
            // less than half of it from now is due now (`min_interval`).
            let period = cadence.period_at(next);
            cycle = Some(tokio::spawn(async move {
                let views = Views {
                    specs: &views,
                    intervals: &intervals,
                };
                let cycle = Scheduled {
                    stops: &stops,
                    backoff: &backoff,
                    period,
                    serving,
                };
                run_cycle(&refresher, views, &shared, cycle).await;
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
    views: Views<'_>,
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

/// The cadence and its next three runs, at start.
fn log_cadence(cadence: &Cadence, views: usize) {
    let next: Vec<String> = cadence
        .upcoming(Utc::now(), 3)
        .into_iter()
        .map(|at| cadence.local(at))
        .collect();
    tracing::info!(
        schedule = %cadence,
        next = next.join(", "),
        views,
        "refreshing on schedule"
    );
}

/// The registry's views, and how often each is meant to be refreshed.
#[derive(Clone, Copy)]
struct Views<'a> {
    specs: &'a [ViewSpec],
    intervals: &'a [Duration],
}

/// What one scheduled cycle is given beside its views.
struct Scheduled<'a> {
    stops: &'a Stops,
    backoff: &'a Mutex<Backoff>,
    /// The time to the next tick.
    period: Option<Duration>,
    /// The metrics are served: the views' state is read after the cycle.
    serving: bool,
}

/// One scheduled cycle, its metrics and its effect on readiness and backoff.
async fn run_cycle(refresher: &Refresher, views: Views<'_>, shared: &Shared, cycle: Scheduled<'_>) {
    let Scheduled {
        stops,
        backoff,
        period,
        serving,
    } = cycle;
    match refresher
        .cycle(views.specs.to_vec(), stops, None, period)
        .await
    {
        Ok(cycle) => {
            *backoff.lock().await = Backoff::default();
            shared.reached_database.store(true, Ordering::Relaxed);
            // The log tables' state first: a scrape never sees this process's
            // counts of the cycle without the views' state after it.
            if serving {
                load_views(refresher, views, shared).await;
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
async fn load_views(refresher: &Refresher, views: Views<'_>, shared: &Shared) {
    let read = async {
        let client = shared
            .pool
            .get()
            .await
            .map_err(|e| describe_pool_error(&e))?;
        let registry = catalog::registry_names(&**client, views.specs)
            .await
            .map_err(|e| describe_error(&e))?;
        let (registry, intervals): (Vec<_>, Vec<&Duration>) = registry
            .into_iter()
            .zip(views.intervals)
            .filter(|(name, _)| !name.not_here)
            .unzip();
        let names: Vec<String> = registry.iter().map(|r| r.qualified.clone()).collect();
        let mut states = refresher
            .log
            .view_states(&**client, &names)
            .await
            .map_err(|e| describe_error(&e))?;
        for ((state, name), interval) in states.iter_mut().zip(&registry).zip(intervals) {
            state.unrefreshable = name.unrefreshable;
            state.interval_s = Some(interval.as_secs_f64());
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
