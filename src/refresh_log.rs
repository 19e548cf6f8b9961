//! The log tables: `materialized_views_refresh_log` (one row per view, the shape
//! the seeds' monitoring query reads) and `materialized_views_refresh_history`
//! (one row per attempt), and every SQL statement that touches them.
//!
//! This module writes what happened; it does not decide what happens. The schema
//! name is the only identifier spliced into SQL, always quoted; all values are
//! bind parameters.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::outcome::{Counts, Method, Status};
use crate::prepared::{Prepared, literal};
use crate::quote::quote_ident;
use crate::registry::ViewSettings;
use crate::units::PgDuration;

const DDL: &str = include_str!("sql/log_tables.sql");

/// The version `sql/log_tables.sql` ends with (in the history table's comment).
const SCHEMA_VERSION: i32 = 6;

/// The version that added `skip_count` and `cancel_count` to the summary table.
const OUTCOME_COUNTS_VERSION: i32 = 3;

/// The version that added incremental views: the state table, the counts in
/// the history, method `incremental`.
const INCREMENTAL_VERSION: i32 = 4;

/// The version that keeps with an incremental view's state the cluster and
/// the identities of its table and sources.
const IDENTITY_VERSION: i32 = 5;

/// The version that keeps, on Citus, what each node's snapshot saw.
const NODE_SNAPSHOTS_VERSION: i32 = 6;

/// Rows deleted per statement when pruning the history: short locks, small WAL bursts.
const PRUNE_BATCH: u64 = 1000;

/// Serializes concurrent `CREATE TABLE IF NOT EXISTS` of two refreshers starting
/// together, which can otherwise fail on the catalog's unique index.
const DDL_LOCK_KEY: i64 = 0x6d76_7266_0000_0000;

/// The two tables in one schema.
#[derive(Debug, Clone)]
pub struct RefreshLog {
    schema: String,
    log_table: String,
    history_table: String,
    /// The tables' version, known once [`RefreshLog::ensure`] ran: a role
    /// that may not upgrade older tables keeps writing them as they are.
    /// Shared by the clones.
    version: Arc<AtomicI32>,
}

/// One attempt at one view, as the history table records it.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub run_id: Uuid,
    /// Schema-qualified, as people read it: `public.top_bets_today`.
    pub view_name: &'a str,
    pub duration_ms: f64,
    pub status: Status,
    pub method: Option<Method>,
    pub attempt: u32,
    pub settings: &'a ViewSettings,
    /// The `work_mem` set for the refresh; `None`: the server's (read by the
    /// statement itself).
    pub work_mem: Option<String>,
    /// The lock timeout the refresh waited under (a plain refresh of a
    /// populated view waits `plain_lock_timeout`).
    pub lock_timeout: PgDuration,
    pub sqlstate: Option<&'a str>,
    pub error: Option<&'a str>,
    /// Why: the reason for the method chosen or for a skip.
    pub note: Option<&'a str>,
    pub host: &'a str,
    /// What an incremental cycle touched.
    pub counts: Option<Counts>,
    /// A failed attempt that will be retried: a history row only, the summary
    /// row counts the refresh once it has its final outcome.
    pub retried: bool,
}

/// The parameters [`RefreshLog::record`] binds (`$1` to `$17`); the success
/// row's prepared statement also takes the relation whose dead rows it reads.
const RECORDED: usize = 17;

/// One parameter of the row's statement: its value to bind, its type, and
/// its literal for `EXECUTE`.
struct Parameter {
    value: Box<dyn ToSql + Sync + Send>,
    ty: Type,
    literal: String,
}

fn parameter<T>(value: Option<T>, ty: Type) -> Parameter
where
    T: ToSql + Display + Sync + Send + 'static,
{
    Parameter {
        literal: literal(value.as_ref()),
        value: Box::new(value),
        ty,
    }
}

/// The parameters of the row of `attempt`, in the order of
/// [`RefreshLog::record_sql`]'s `$1`…, then `bloat_of`.
fn parameters(attempt: &Attempt<'_>, bloat_of: Option<u32>) -> Vec<Parameter> {
    let owned = |text: Option<&str>| text.map(str::to_owned);
    let count = |pick: fn(&Counts) -> i64| parameter(attempt.counts.as_ref().map(pick), Type::INT8);
    vec![
        parameter(Some(attempt.run_id), Type::UUID),
        parameter(Some(attempt.view_name.to_owned()), Type::TEXT),
        parameter(Some(attempt.duration_ms), Type::FLOAT8),
        parameter(Some(attempt.status.as_str()), Type::TEXT),
        parameter(attempt.method.map(Method::as_str), Type::TEXT),
        parameter(Some(attempt.attempt as i32), Type::INT4),
        parameter(attempt.work_mem.clone(), Type::TEXT),
        parameter(
            Some(attempt.settings.statement_timeout.to_string()),
            Type::TEXT,
        ),
        parameter(Some(attempt.lock_timeout.to_string()), Type::TEXT),
        parameter(owned(attempt.sqlstate), Type::TEXT),
        parameter(owned(attempt.error), Type::TEXT),
        parameter(owned(attempt.note), Type::TEXT),
        parameter(Some(attempt.host.to_owned()), Type::TEXT),
        count(|c| c.keys),
        count(|c| c.inserted),
        count(|c| c.updated),
        count(|c| c.deleted),
        parameter(bloat_of, Type::OID),
    ]
}

/// The latest successful refreshes of a view, for `work_mem = "auto"`.
#[derive(Debug, Clone, Default)]
pub struct TuningHistory {
    /// `(method, run)`, oldest first.
    pub runs: Vec<(String, crate::tuner::Run)>,
    /// Successful refreshes in all.
    pub total: usize,
}

/// The most successful refreshes of a view the tuner reads.
const TUNING_WINDOW: i64 = 200;

/// One row of `materialized_views_refresh_log`, for `status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LogRow {
    pub view_name: String,
    pub refresh_count: i64,
    pub failure_count: i64,
    pub avg_refresh_time_ms: Option<f64>,
    pub last_refresh_time_ms: Option<f64>,
    /// RFC 3339, UTC.
    pub last_refreshed_at: Option<String>,
    pub age_seconds: Option<f64>,
    pub last_attempt_at: Option<String>,
    pub last_status: Option<String>,
    pub last_method: Option<String>,
    pub last_error: Option<String>,
    pub refreshed_by: Option<String>,
    /// Incremental views: seconds since the snapshot of the last applied
    /// cycle, how old a change not yet applied can be.
    pub watermark_age_seconds: Option<f64>,
}

/// What the metrics read of one view in the summary table: its totals by
/// status and its latest outcome. A view without a row reads as never attempted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewState {
    /// Schema-qualified, as people read it: `public.top_bets_today`.
    pub view_name: String,
    pub successes: u64,
    pub failures: u64,
    pub skips: u64,
    pub cancels: u64,
    /// End of the last successful refresh, Unix seconds.
    pub last_success: Option<f64>,
    /// Duration of the last successful refresh.
    pub last_duration_ms: Option<f64>,
    /// The latest final outcome but a skip: `success`, `failed` or `cancelled`.
    pub last_status: Option<String>,
    /// Incremental views: when the snapshot of the last applied cycle was
    /// taken, Unix seconds (changes after it are not in the table yet).
    pub watermark_at: Option<f64>,
    /// The registry name is nothing that can be refreshed (a typo, a table):
    /// every run fails it, and the log tables never hold it. Not read from the
    /// log tables: whoever looked the name up sets it.
    pub unrefreshable: bool,
    /// How often the view is meant to be refreshed, seconds: `run`'s longest
    /// period, or the view's `min_interval` when longer. Not read from the log
    /// tables: `run` sets it (a single `refresh` knows no period).
    pub interval_s: Option<f64>,
}

impl LogRow {
    /// The row of a view never attempted.
    pub fn never(view_name: String) -> Self {
        Self {
            view_name,
            ..Self::default()
        }
    }
}

/// Formats a timestamptz column as RFC 3339 in UTC, whatever the session's TimeZone.
macro_rules! utc {
    ($column:literal) => {
        concat!(
            "to_char(",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

impl RefreshLog {
    /// The log tables in `schema` (unquoted, as the catalog spells it).
    pub fn new(schema: &str) -> Self {
        let quoted = quote_ident(schema);
        Self {
            schema: schema.to_owned(),
            log_table: format!("{quoted}.materialized_views_refresh_log"),
            history_table: format!("{quoted}.materialized_views_refresh_history"),
            version: Arc::default(),
        }
    }

    /// The summary table, schema-qualified and quoted for SQL.
    pub fn summary_table(&self) -> &str {
        &self.log_table
    }

    /// The history table, schema-qualified and quoted for SQL.
    pub fn history_table(&self) -> &str {
        &self.history_table
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Whether the tables have what incremental views need (the state table).
    pub fn has_incremental(&self) -> bool {
        self.version.load(Ordering::Relaxed) >= INCREMENTAL_VERSION
    }

    /// Whether the state table keeps the cluster and the identities of the
    /// table and sources a state belongs to (a role that may not upgrade
    /// older tables keeps their state without them).
    pub fn keeps_identities(&self) -> bool {
        self.version.load(Ordering::Relaxed) >= IDENTITY_VERSION
    }

    /// Whether the state table keeps each Citus node's snapshot.
    pub fn keeps_node_snapshots(&self) -> bool {
        self.version.load(Ordering::Relaxed) >= NODE_SNAPSHOTS_VERSION
    }

    /// The state table of incremental views, schema-qualified and quoted.
    pub fn state_table(&self) -> String {
        format!(
            "{}.materialized_views_refresh_state",
            quote_ident(&self.schema)
        )
    }

    /// Whether both tables exist.
    pub async fn exists(&self, client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
        Ok(self.version(client).await? > 0)
    }

    /// The version of the tables: 0 when missing, 1 before versions were noted.
    /// A plain query over the catalogs, read with the statement's snapshot:
    /// `to_regclass` reads through the catalog cache, which in a transaction
    /// that waited for the DDL lock may not show tables another refresher
    /// created meanwhile.
    async fn version(&self, client: &impl GenericClient) -> Result<i32, tokio_postgres::Error> {
        let row = client
            .query_typed_one(
                "SELECT CASE WHEN count(*) < 2 THEN 0 \
                     ELSE coalesce(max(substring(d.description FROM 'schema version (\\d+)')::int), 1) END \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_catalog.pg_description d ON d.objoid = c.oid \
                  AND d.classoid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0 \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') \
                   AND c.relname IN ('materialized_views_refresh_log', 'materialized_views_refresh_history')",
                &[(&self.schema, Type::TEXT)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Creates or upgrades the tables; safe to run any number of times, by several
    /// refreshers at once.
    pub async fn create(
        &self,
        client: &mut tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        // READ COMMITTED whatever the default: the version is read after the
        // lock, and must see what another refresher committed while it waited.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await?;
        tx.execute_typed(
            "SELECT pg_advisory_xact_lock($1)",
            &[(&DDL_LOCK_KEY, Type::INT8)],
        )
        .await?;
        // Another refresher may have created or upgraded them while this one
        // waited for the lock: then there is nothing to do, and the DDL (whose
        // ALTER TABLEs lock the tables even when they change nothing) must not
        // run under refreshes that already use the tables.
        if self.version(&tx).await? >= SCHEMA_VERSION {
            tx.commit().await?;
            self.version.store(SCHEMA_VERSION, Ordering::Relaxed);
            return Ok(());
        }
        // IF NOT EXISTS on existing tables says so in NOTICEs: not news.
        let [statement_timeout, lock_timeout] = crate::db::housekeeping_timeouts();
        let settings = [
            "SET LOCAL client_min_messages = warning".to_owned(),
            statement_timeout,
            lock_timeout,
        ];
        crate::db::execute_each(&tx, &settings).await?;
        tx.batch_execute(&DDL.replace("{schema}", &quote_ident(&self.schema)))
            .await?;
        tx.commit().await?;
        self.version.store(SCHEMA_VERSION, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sure the tables exist, creating them when missing. Returns `false`
    /// (and logs why) when this role may not create them: refreshes still run.
    pub async fn ensure(
        &self,
        client: &mut tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        let version = self.version(&*client).await?;
        self.version.store(version, Ordering::Relaxed);
        if version >= SCHEMA_VERSION {
            return Ok(true);
        }
        match self.create(client).await {
            Ok(()) if version == 0 => {
                tracing::info!(schema = %self.schema, "created the log tables");
                Ok(true)
            }
            Ok(()) => {
                tracing::info!(schema = %self.schema, from = version, to = SCHEMA_VERSION, "upgraded the log tables");
                Ok(true)
            }
            Err(err) if is_privilege_error(&err) && version > 0 => {
                tracing::warn!(
                    schema = %self.schema,
                    error = %crate::db::describe_error(&err),
                    "the log tables are from an older version and this role may not upgrade \
                     them (run `mv-refresher init` as their owner)"
                );
                Ok(true)
            }
            Err(err) if is_privilege_error(&err) => {
                tracing::warn!(
                    schema = %self.schema,
                    error = %crate::db::describe_error(&err),
                    "the log tables do not exist and this role may not create them; \
                     views are refreshed but nothing is recorded (run `mv-refresher init` \
                     as a role that may create tables in this schema)"
                );
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Records one attempt in one statement: a history row, and the view's
    /// summary row (of a skip, only its `skip_count`: a skip is no outcome of
    /// the view's refresh, `last_status` and `last_attempt_at` stay those of the
    /// latest refresh; of a retried attempt, nothing). Runs on `client`, so a
    /// success is recorded in the refresh's own transaction. Returns the
    /// history row's id.
    pub async fn record(
        &self,
        client: &impl GenericClient,
        attempt: &Attempt<'_>,
    ) -> Result<i64, tokio_postgres::Error> {
        let parameters = parameters(attempt, None);
        let bound: Vec<(&(dyn ToSql + Sync), Type)> = parameters[..RECORDED]
            .iter()
            .map(|p| (p.value.as_ref() as &(dyn ToSql + Sync), p.ty.clone()))
            .collect();
        let row = client
            .query_typed_one(&self.record_sql(attempt, "id FROM history"), &bound)
            .await?;
        Ok(row.get(0))
    }

    /// A success's row, as [`RefreshLog::record`] writes it, by a statement
    /// prepared on the server (`prepared`: a refresh writes one for every
    /// view, and this statement took longer to parse and plan than a small
    /// view's `REFRESH` to run), and its arguments. It returns the row's id
    /// (`NULL` when a trigger kept it from coming back), and the dead rows and
    /// the rows of the relation `bloat_of` ([`crate::catalog::bloat_columns`]),
    /// read in the same transaction, when it is given.
    pub fn success_statement(
        &self,
        attempt: &Attempt<'_>,
        bloat_of: Option<u32>,
    ) -> (Prepared, Vec<String>) {
        let parameters = parameters(attempt, bloat_of);
        let outputs = format!(
            "(SELECT id FROM history), {}",
            crate::catalog::bloat_columns(&format!("${}", RECORDED + 1))
        );
        let types: Vec<&str> = parameters.iter().map(|p| p.ty.name()).collect();
        let statement = Prepared::new("success", &types, &self.record_sql(attempt, &outputs));
        let arguments = parameters.into_iter().map(|p| p.literal).collect();
        (statement, arguments)
    }

    /// The statement of [`RefreshLog::record`]: the history row, and in the same
    /// statement (a data-modifying `WITH`) the summary row's change, if any;
    /// it returns the select list `outputs`, which may read the history row
    /// `FROM history`.
    fn record_sql(&self, attempt: &Attempt<'_>, outputs: &str) -> String {
        // The counts' columns from version 4 on; the parameters are bound either way.
        let (count_columns, count_values) = match self.has_incremental() {
            true => (
                ", keys_scanned, rows_inserted, rows_updated, rows_deleted",
                ", $14, $15, $16, $17",
            ),
            false => ("", ""),
        };
        let history = format!(
            "INSERT INTO {} (run_id, view_name, started_at, finished_at, duration_ms, status, \
                 method, attempt, work_mem, statement_timeout, lock_timeout, sqlstate, error, note, \
                 host{count_columns}) \
             SELECT $1, $2, now - make_interval(secs => $3::float8 / 1000), now, $3::float8, $4, $5, $6, \
                 coalesce($7, current_setting('work_mem')), $8, $9, $10, $11, $12, $13{count_values} \
             FROM t RETURNING id",
            self.history_table
        );
        let outcome_counts = self.version.load(Ordering::Relaxed) >= OUTCOME_COUNTS_VERSION;
        let summary = match attempt.status {
            _ if attempt.retried => None,
            Status::Skipped if !outcome_counts => None,
            Status::Skipped => Some(format!(
                "INSERT INTO {} AS l (view_name, skip_count) VALUES ($2, 1) \
                 ON CONFLICT (view_name) DO UPDATE SET skip_count = l.skip_count + 1",
                self.log_table
            )),
            _ => Some(self.outcome_sql(outcome_counts)),
        };
        match summary {
            Some(summary) => format!(
                "WITH t AS (SELECT clock_timestamp() AS now), history AS ({history}), \
                      summary AS ({summary}) \
                 SELECT {outputs}"
            ),
            None => format!(
                "WITH t AS (SELECT clock_timestamp() AS now), history AS ({history}) \
                 SELECT {outputs}"
            ),
        }
    }

    /// The summary row's change for a final outcome other than a skip; `$4` is
    /// the status, `$3` the duration.
    fn outcome_sql(&self, outcome_counts: bool) -> String {
        // cancel_count from version 3 on.
        let (cancel_column, cancel_value, cancel_update) = if outcome_counts {
            (
                ", cancel_count",
                ", ($4 = 'cancelled')::int",
                "cancel_count = l.cancel_count + EXCLUDED.cancel_count, ",
            )
        } else {
            ("", "", "")
        };
        format!(
            "INSERT INTO {table} AS l (view_name, refresh_count, failure_count, avg_refresh_time_ms, \
                 last_refresh_time_ms, last_refreshed_at, last_attempt_at, last_status, last_method, \
                 last_error, refreshed_by{cancel_column}) \
             SELECT $2, ($4 = 'success')::int, ($4 = 'failed')::int, \
                 CASE WHEN $4 = 'success' THEN $3::float8 END, CASE WHEN $4 = 'success' THEN $3::float8 END, \
                 CASE WHEN $4 = 'success' THEN now END, now, $4, $5, $11, $13{cancel_value} \
             FROM t \
             ON CONFLICT (view_name) DO UPDATE SET \
                 refresh_count = l.refresh_count + EXCLUDED.refresh_count, \
                 failure_count = l.failure_count + EXCLUDED.failure_count, {cancel_update}\
                 avg_refresh_time_ms = CASE WHEN $4 = 'success' \
                     THEN round(((coalesce(l.avg_refresh_time_ms, 0) * l.refresh_count + $3) \
                         / (l.refresh_count + 1))::numeric, 1)::float8 \
                     ELSE l.avg_refresh_time_ms END, \
                 last_refresh_time_ms = coalesce(EXCLUDED.last_refresh_time_ms, l.last_refresh_time_ms), \
                 last_refreshed_at = coalesce(EXCLUDED.last_refreshed_at, l.last_refreshed_at), \
                 last_attempt_at = EXCLUDED.last_attempt_at, \
                 last_status = EXCLUDED.last_status, \
                 last_method = EXCLUDED.last_method, \
                 last_error = EXCLUDED.last_error, \
                 refreshed_by = EXCLUDED.refreshed_by",
            table = self.log_table
        )
    }

    /// Notes on history row `id` that a `VACUUM (ANALYZE)` followed, and how long
    /// it took.
    pub async fn record_vacuum(
        &self,
        client: &impl GenericClient,
        id: i64,
        vacuum_ms: f64,
    ) -> Result<(), tokio_postgres::Error> {
        let sql = format!(
            "UPDATE {} SET vacuum_ms = $2 WHERE id = $1",
            self.history_table
        );
        client
            .execute_typed(&sql, &[(&id, Type::INT8), (&vacuum_ms, Type::FLOAT8)])
            .await
            .map(drop)
    }

    /// Deletes history rows that started more than `retention` ago, in batches;
    /// returns how many.
    pub async fn prune(
        &self,
        client: &tokio_postgres::Client,
        retention: PgDuration,
    ) -> Result<u64, tokio_postgres::Error> {
        let sql = format!(
            "DELETE FROM {table} WHERE id IN ( \
                 SELECT id FROM {table} \
                 WHERE started_at < clock_timestamp() - make_interval(secs => $1::float8) \
                 ORDER BY started_at LIMIT {PRUNE_BATCH})",
            table = self.history_table
        );
        let seconds = retention.as_millis() as f64 / 1000.0;
        let mut total = 0;
        loop {
            let params: [(&(dyn ToSql + Sync), Type); 1] = [(&seconds, Type::FLOAT8)];
            let batch = client.execute_typed(&sql, &params);
            let deleted = crate::db::housekeeping(client, false, batch).await?;
            total += deleted;
            if deleted < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// The last `count` successful durations of each of `view_names`, oldest first.
    pub async fn recent_durations(
        &self,
        client: &impl GenericClient,
        view_names: &[String],
        count: i64,
    ) -> Result<HashMap<String, Vec<f64>>, tokio_postgres::Error> {
        let sql = format!(
            "SELECT view_name, array_agg(round(duration_ms::numeric, 1)::float8 ORDER BY started_at) FROM ( \
                 SELECT view_name, duration_ms, started_at, \
                        row_number() OVER (PARTITION BY view_name ORDER BY started_at DESC) AS n \
                 FROM {} WHERE view_name = ANY ($1) AND status = 'success') AS latest \
             WHERE n <= $2 GROUP BY view_name",
            self.history_table
        );
        let rows = client
            .query_typed(
                &sql,
                &[(&view_names, Type::TEXT_ARRAY), (&count, Type::INT8)],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The latest successful refreshes of each of `view_names` with the
    /// `work_mem` they ran with, oldest first, and how many there were in
    /// all: what `work_mem = "auto"` is tuned from. One statement; no history
    /// table reads as no history.
    pub async fn tuning_history(
        &self,
        client: &impl GenericClient,
        view_names: &[String],
    ) -> Result<HashMap<String, TuningHistory>, tokio_postgres::Error> {
        let sql = format!(
            "SELECT view_name, method, work_mem, duration_ms, total FROM ( \
                 SELECT view_name, method, work_mem, duration_ms, started_at, \
                        row_number() OVER w AS n, count(*) OVER (PARTITION BY view_name) AS total \
                 FROM {} WHERE view_name = ANY ($1) AND status = 'success' \
                   AND work_mem IS NOT NULL AND method IS NOT NULL \
                 WINDOW w AS (PARTITION BY view_name ORDER BY started_at DESC)) AS latest \
             WHERE n <= {TUNING_WINDOW} ORDER BY view_name, started_at",
            self.history_table
        );
        let rows = match client
            .query_typed(&sql, &[(&view_names, Type::TEXT_ARRAY)])
            .await
        {
            Ok(rows) => rows,
            Err(err) if err.code() == Some(&SqlState::UNDEFINED_TABLE) => Vec::new(),
            Err(err) => return Err(err),
        };
        let mut history: HashMap<String, TuningHistory> = HashMap::new();
        for row in rows {
            let entry = history.entry(row.get(0)).or_default();
            entry.total = usize::try_from(row.get::<_, i64>(4)).unwrap_or(0);
            let work_mem: String = row.get(2);
            // A value the refresher did not write is not a candidate.
            if let Ok(work_mem) = work_mem.parse() {
                entry.runs.push((
                    row.get(1),
                    crate::tuner::Run {
                        work_mem,
                        duration_ms: row.get(3),
                    },
                ));
            }
        }
        Ok(history)
    }

    /// The state of each of `view_names` in the summary table, in the same
    /// order; one query. Views without a row, and all of them when the table
    /// does not exist yet, read as never attempted. Reads a summary table of any
    /// version, and one made by hand in the seeds' shape.
    pub async fn view_states(
        &self,
        client: &impl GenericClient,
        view_names: &[String],
    ) -> Result<Vec<ViewState>, tokio_postgres::Error> {
        let sql = format!(
            // The counts of version 3 through the row as JSON: a table without
            // those columns reads as zero, where naming them would fail. The
            // casts read the seeds' types (integer counts, numeric times,
            // timestamp without time zone) as `rows` does.
            "SELECT n.name, coalesce(l.refresh_count, 0)::bigint, coalesce(l.failure_count, 0)::bigint, \
                 coalesce((to_jsonb(l) ->> 'skip_count')::bigint, 0), \
                 coalesce((to_jsonb(l) ->> 'cancel_count')::bigint, 0), \
                 extract(epoch FROM l.last_refreshed_at::timestamptz)::float8, \
                 l.last_refresh_time_ms::float8, l.last_status::text \
             FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i) \
             LEFT JOIN {} AS l ON l.view_name = n.name \
             ORDER BY n.i",
            self.log_table
        );
        let rows = match client
            .query_typed(&sql, &[(&view_names, Type::TEXT_ARRAY)])
            .await
        {
            Ok(rows) => rows,
            Err(err) if err.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                return Ok(view_names
                    .iter()
                    .map(|name| ViewState {
                        view_name: name.clone(),
                        ..ViewState::default()
                    })
                    .collect());
            }
            Err(err) => return Err(err),
        };
        let count = |row: &tokio_postgres::Row, i| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        let watermarks = self.watermarks(client, view_names).await?;
        Ok(rows
            .iter()
            .map(|r| ViewState {
                view_name: r.get(0),
                successes: count(r, 1),
                failures: count(r, 2),
                skips: count(r, 3),
                cancels: count(r, 4),
                last_success: r.get(5),
                last_duration_ms: r.get(6),
                last_status: r.get(7),
                watermark_at: watermarks.get(&r.get::<_, String>(0)).map(|w| w.0),
                unrefreshable: false,
                interval_s: None,
            })
            .collect())
    }

    /// For each incremental view among `view_names`: when the snapshot of its
    /// last applied cycle was taken (Unix seconds), and how long ago. Empty
    /// when the state table does not exist.
    pub async fn watermarks(
        &self,
        client: &impl GenericClient,
        view_names: &[String],
    ) -> Result<HashMap<String, (f64, f64)>, tokio_postgres::Error> {
        if !self.has_incremental() && self.version(client).await? < INCREMENTAL_VERSION {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT view_name, extract(epoch FROM min(applied_at))::float8, \
                 round(extract(epoch FROM clock_timestamp() - min(applied_at))::numeric, 3)::float8 \
             FROM {} WHERE view_name = ANY ($1) GROUP BY view_name",
            self.state_table()
        );
        let rows = client
            .query_typed(&sql, &[(&view_names, Type::TEXT_ARRAY)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    /// The summary rows of `view_names`, in no particular order; views never
    /// attempted have no row.
    pub async fn rows(
        &self,
        client: &impl GenericClient,
        view_names: &[String],
    ) -> Result<Vec<LogRow>, tokio_postgres::Error> {
        let sql = format!(
            concat!(
                // Casts: a log table made by hand (the seeds' shape, integer
                // counts) reads as well as one made by `init`.
                "SELECT view_name::text, refresh_count::bigint, failure_count::bigint, ",
                // Rounded as people read them (and JSON prints them): a tenth of
                // a millisecond, a millisecond of age.
                "round(avg_refresh_time_ms::numeric, 1)::float8, ",
                "round(last_refresh_time_ms::numeric, 1)::float8, ",
                utc!("last_refreshed_at"),
                ", round(extract(epoch FROM clock_timestamp() - last_refreshed_at)::numeric, 3)::float8, ",
                utc!("last_attempt_at"),
                ", last_status::text, last_method::text, last_error::text, refreshed_by::text ",
                "FROM {} WHERE view_name = ANY($1)"
            ),
            self.log_table
        );
        let rows = client
            .query_typed(&sql, &[(&view_names, Type::TEXT_ARRAY)])
            .await?;
        let watermarks = self.watermarks(client, view_names).await?;
        Ok(rows
            .iter()
            .map(|r| LogRow {
                watermark_age_seconds: watermarks.get(&r.get::<_, String>(0)).map(|w| w.1),
                view_name: r.get(0),
                refresh_count: r.get(1),
                failure_count: r.get(2),
                avg_refresh_time_ms: r.get(3),
                last_refresh_time_ms: r.get(4),
                last_refreshed_at: r.get(5),
                age_seconds: r.get(6),
                last_attempt_at: r.get(7),
                last_status: r.get(8),
                last_method: r.get(9),
                last_error: r.get(10),
                refreshed_by: r.get(11),
            })
            .collect())
    }

    /// Every view name the log tables hold a row for, sorted.
    pub async fn known_views(
        &self,
        client: &impl GenericClient,
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let sql = format!(
            "SELECT view_name::text FROM {} UNION SELECT view_name FROM {} ORDER BY 1",
            self.log_table, self.history_table
        );
        let rows = client.query_typed(&sql, &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Deletes the summary rows and the history of `view_names` in one
    /// transaction; returns how many rows of each went.
    pub async fn forget(
        &self,
        client: &mut tokio_postgres::Client,
        view_names: &[String],
    ) -> Result<(u64, u64), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let delete = |table: &str| format!("DELETE FROM {table} WHERE view_name = ANY($1)");
        let names: [(&(dyn ToSql + Sync), Type); 1] = [(&view_names, Type::TEXT_ARRAY)];
        let summary = tx.execute_typed(&delete(&self.log_table), &names).await?;
        let history = tx
            .execute_typed(&delete(&self.history_table), &names)
            .await?;
        // An incremental view's watermarks: it starts over with a full load.
        if self.version(&tx).await? >= INCREMENTAL_VERSION {
            tx.execute_typed(&delete(&self.state_table()), &names)
                .await?;
        }
        tx.commit().await?;
        Ok((summary, history))
    }
}

/// Permission denied on the schema or the tables.
pub fn is_privilege_error(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
}
