//! One refresh cycle, the unit both `refresh` (once) and `run` (on a schedule)
//! are made of: take a connection, make sure the log tables exist, plan the
//! views, refresh them, prune the history.
//!
//! A cycle prints nothing; its caller reports the outcomes.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;
use uuid::Uuid;

use crate::db::{self, Conn, DbTarget, Pool, describe_error, describe_pool_error};
use crate::error::Error;
use crate::outcome::{Cycle, Outcome};
use crate::plan::{Plan, Tuning};
use crate::refresh::{self, RunContext};
use crate::refresh_log::RefreshLog;
use crate::registry::ViewSpec;
use crate::shutdown::Stop;
use crate::units::PgDuration;

/// What every cycle of a process shares: where, how many at once, what to keep.
#[derive(Debug)]
pub struct Refresher {
    pub target: DbTarget,
    pub pool: Pool,
    pub log: RefreshLog,
    pub jobs: usize,
    /// Host (pod) name recorded with every attempt.
    pub host: String,
    /// History older than this is pruned after each cycle; zero keeps it all.
    pub history_retention: PgDuration,
    /// `REFRESH` statements running now, across cycles (for the metrics).
    pub in_progress: Arc<AtomicUsize>,
    /// Incremental views are fully reconciled (`refresh --full`).
    pub full: bool,
}

/// When a cycle must wind down.
#[derive(Debug, Clone)]
pub struct Stops {
    /// No view starts once this fires.
    pub drain: Stop,
    /// Running statements are cancelled on the server once this fires.
    pub cancel: Stop,
}

/// Who watches a cycle as it goes.
pub type Watcher = Option<crate::progress::Sender>;

impl Refresher {
    /// A refresher with one pooled connection per job plus one for the log.
    pub fn new(
        target: DbTarget,
        log: RefreshLog,
        jobs: usize,
        history_retention: PgDuration,
    ) -> Self {
        Self {
            pool: target.pool(jobs + 1),
            target,
            log,
            jobs,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            history_retention,
            in_progress: Arc::default(),
            full: false,
        }
    }

    /// Refreshes `specs` once, every event of it in a `run` span that carries
    /// its `run_id`, and ends with one summary event. `period`: the time to
    /// the caller's next cycle (`run`'s), when it has one, which `min_interval`
    /// is met by (see `RunContext::period`).
    pub async fn cycle(
        &self,
        specs: Vec<ViewSpec>,
        stops: &Stops,
        watcher: Watcher,
        period: Option<Duration>,
    ) -> Result<Cycle, Error> {
        let run_id = Uuid::new_v4();
        let started = Instant::now();
        let started_at = SystemTime::now();
        let span = tracing::info_span!("run", %run_id);
        let outcomes = self
            .refresh(run_id, specs, stops, watcher, period)
            .instrument(span.clone())
            .await?;
        let cycle = Cycle {
            run_id,
            outcomes,
            started_at,
            duration: started.elapsed(),
        };
        span.in_scope(|| cycle.summarize());
        Ok(cycle)
    }

    async fn refresh(
        &self,
        run_id: Uuid,
        specs: Vec<ViewSpec>,
        stops: &Stops,
        watcher: Watcher,
        period: Option<Duration>,
    ) -> Result<Vec<Outcome>, Error> {
        let mut client = self.target.connect(&self.pool).await?;
        // Planning's connection goes on to refresh the first view, and the
        // last view's to prune: a run opens one connection per job.
        let db_err = |context| Error::in_context(context, &self.target);
        let logging = self
            .log
            .ensure(&mut client)
            .await
            .map_err(db_err("preparing the log tables"))?;
        let tuning = Tuning {
            log: logging.then_some(&self.log),
            jobs: self.jobs,
        };
        let plan = plan(&client, specs, tuning)
            .await
            .map_err(db_err("planning the refresh"))?;

        let ctx = Arc::new(RunContext {
            pool: self.pool.clone(),
            log: logging.then(|| self.log.clone()),
            run_id,
            host: self.host.clone(),
            jobs: self.jobs,
            drain: stops.drain.clone(),
            cancel: stops.cancel.clone(),
            target: self.target.clone(),
            progress: watcher,
            citus: plan.citus,
            in_progress: self.in_progress.clone(),
            full: self.full,
            period,
        });
        tracing::info!(
            views = plan.steps.len(),
            jobs = self.jobs,
            "refresh started"
        );
        let (outcomes, client) = refresh::execute(ctx, Arc::new(plan), Some(client)).await;

        if logging && stops.drain.reason().is_none() && self.history_retention.as_millis() > 0 {
            self.prune_history(client).await;
        }
        Ok(outcomes)
    }

    /// Prunes the history, on `client` when given; a failure is worth a
    /// warning, not a failed cycle.
    async fn prune_history(&self, client: Option<Conn>) {
        let retention = self.history_retention;
        let client = match client {
            Some(client) => Ok(client),
            None => Conn::get(&self.pool).await,
        };
        let pruned = match client {
            Ok(client) => self
                .log
                .prune(&client, retention)
                .await
                .map_err(|e| describe_error(&e)),
            Err(err) => Err(describe_pool_error(&err)),
        };
        match pruned {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, retention = %retention, "pruned the refresh history"),
            Err(error) => tracing::warn!(%error, "could not prune the refresh history"),
        }
    }
}

/// Plans `specs` in a transaction of its own, under the housekeeping timeouts.
async fn plan(
    client: &Conn,
    specs: Vec<ViewSpec>,
    tuning: Tuning<'_>,
) -> Result<Plan, tokio_postgres::Error> {
    db::begin_housekeeping(&**client, false).await?;
    let plan = Plan::build(&**client, specs, tuning).await;
    // A read-only transaction: its end is the same either way.
    let committed = client.batch_execute("COMMIT").await;
    let plan = plan?;
    committed?;
    Ok(plan)
}
