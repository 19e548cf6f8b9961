//! One attempt at an incremental view (SPEC §2.5), in one transaction:
//!
//! 1. `BEGIN` and the view's `SET LOCAL`s, its advisory lock, its state (the
//!    sources' watermarks and the last cycle's snapshot, and what it was kept
//!    for: the cluster, the table, the sources), its last success, and what
//!    the table and the sources are now. A state kept for another table, a
//!    source since rebuilt, or another cluster makes the cycle a full
//!    reconcile.
//! 2. For sources whose marker comes from a sequence or `clock_timestamp()`:
//!    the highest value drawn so far, then a wait for the transactions that
//!    may still commit a value up to it (those holding the sequence, or
//!    writing the table or one of its partitions; prepared ones too), so that
//!    every value up to it is committed (or never will be) before anything is
//!    read. The transaction is `READ COMMITTED` whatever the database's
//!    default: what they commit during the wait is read.
//! 3. The snapshot the cycle reads from, recorded for the next cycle.
//! 4. The changed keys (or, in a full reconcile, none: every key), the
//!    query's rows for them, and the differences applied: delete, update
//!    (rows whose image differs only), insert. Row locks only: readers never
//!    wait.
//! 5. The new watermarks and the success row, then `COMMIT`.
//!
//! A failure anywhere rolls all of it back: table and watermarks stay as
//! they were.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::{Json, ToSql, Type};

use super::record::Slot;
use super::statement::{cancellable, silence_limit};
use super::transaction::{Done, SINCE_LAST_START, begin, commit, fresh};
use super::{Failure, RunContext};
use crate::db::CancelKey;
use crate::incremental::catalog::{MarkerKind, Target};
use crate::incremental::identity::{Change, Identity, identities, identity_of};
use crate::incremental::nodes::{self, Lookup, NodeSnapshot, Taken};
use crate::incremental::proof::{self, Difference, Verdict};
use crate::incremental::sql::{Seen, Statements};
use crate::outcome::{Counts, Method, Outcome, Status};
use crate::plan::Step;
use crate::registry::Incremental;
use crate::units::round_ms;

/// The share of the table's rows from which changed keys are recomputed by
/// a full reconcile instead ([`Cycle::better_in_full`]).
const FULL_SHARE: f64 = 0.5;

/// Up to this many changed keys are read by the client and applied in one
/// statement, with no temporary table: a cycle every few seconds would
/// otherwise create and drop several, and analyze them, each time (catalog
/// rows, and a fixed cost that dominates small changes). Run every 2 s
/// under 1,000 writes a second, a cycle has about 2,000 keys; the planner
/// estimates the bound keys from their number (the arrays are constants
/// in the plan) and reads each source by its key's index at that size.
const FEW_KEYS: usize = 5000;

/// Fewer changed keys than this are never weighed against a full reconcile
/// ([`Cycle::better_in_full`]): they do not pay for reading the table's
/// size, and where they are half of it a full reconcile is small too.
const FULL_MIN_KEYS: i64 = 1000;

/// Up to this many changed keys are read by the client once, and written to
/// the temporary table from there when they are more than [`FEW_KEYS`]:
/// reading the sources' changes again on the server would read each
/// source's `lag` window twice a cycle (at 1,000 writes a second and a lag
/// of a minute, 60,000 rows each time, as much as recomputing 2,000 keys).
/// Past it, the keys are not held by the client: they are read again
/// into the temporary table, a cost small beside recomputing that many.
const CLIENT_KEYS: usize = 100_000;

/// How often the wait for a source's writers looks again.
const WRITER_POLL: Duration = Duration::from_millis(20);

/// What the state table holds of one source.
struct SourceState {
    source: String,
    watermark: Option<String>,
    /// The cluster it was saved in; `None` before that was kept.
    system: Option<i64>,
    /// The table and the source it was kept for; `None` before that was kept.
    table: Option<Identity>,
    identity: Option<Identity>,
}

/// What the first round trip reads.
struct Opened {
    locked: bool,
    states: Vec<SourceState>,
    /// The last cycle's snapshot's xmin, as a full transaction id.
    seen_xmin: Option<i64>,
    /// On Citus, the last cycle's snapshots of the nodes, as each source's
    /// state keeps them.
    node_snapshots: Vec<Option<Vec<NodeSnapshot>>>,
    /// Seconds since the last full reconcile.
    full_age_s: Option<f64>,
    /// The state was kept under the view's present definition.
    same_definition: bool,
    /// Seconds since the start of the last success.
    age_s: Option<f64>,
    /// The last cycle's snapshot is ahead of this server's: the state was
    /// saved where transaction ids had gone further.
    ahead: bool,
    /// This cluster's system identifier; `None` where it may not be read.
    system: Option<i64>,
    /// The table as it is now; `None` until it exists.
    table: Option<Identity>,
    /// Each source as it is now, in the target's order.
    sources: Vec<Option<Identity>>,
}

/// One attempt at the incremental view `step`.
pub(super) async fn attempt(
    ctx: &RunContext,
    slot: &mut Slot,
    step: &Step,
    target: &Target,
    attempt: u32,
) -> Result<Done, Failure> {
    if let Some(reason) = ctx.cancel.reason() {
        return Err(Failure::not_started(reason));
    }
    let spec = step.spec.incremental.as_ref().expect("an incremental step");
    let log = state_keeper(ctx)?;
    let pg = |err: tokio_postgres::Error| {
        Failure::from_pg(&err, step, Some(Method::Incremental), 0.0, None)
    };
    let session = slot
        .session(&ctx.pool)
        .await
        .map_err(|err| Failure::no_connection(&err))?;
    let client = session.client;
    let view_name = step.view_name();
    let definition = spec.definition();
    let opened = open(ctx, client, step, target, (&view_name, &definition), log).await;
    *session.in_transaction = true;
    let opened = opened.map_err(pg)?;
    if !opened.locked {
        return Ok(Done::Locked);
    }
    if let Some(reason) = fresh(step.settings(), opened.age_s, ctx.period) {
        return Ok(Done::Fresh(reason));
    }
    let (full, reason) = mode(ctx, step, spec, target, &opened);
    let cycle = Cycle {
        client,
        statements: &Statements { spec, target },
        target,
        opened: &opened,
        view_name: &view_name,
        full,
        citus: ctx.citus,
        lock_timeout: step.settings().lock_timeout.to_std(),
        state_table: log.state_table(),
        identities: log.keeps_identities(),
        node_snapshots: log.keeps_node_snapshots(),
        taken: None,
        definition: &definition,
    };
    let (counts, switched, duration_ms) = run(ctx, step, &client.cancel_key(), cycle).await?;

    let reason = match (counts.keys, switched) {
        (_, Some(why)) => why,
        (0, None) if !full => "nothing changed".to_owned(),
        _ => reason,
    };
    let mut outcome = success(step, reason, counts, duration_ms, attempt);
    let (history_id, _) = commit(ctx, client, step, None, &mut outcome)
        .await
        .map_err(pg)?;
    *session.in_transaction = false;
    Ok(Done::Refreshed {
        outcome,
        history_id,
        bloat: None,
    })
}

/// The log tables, which keep the watermarks: an incremental view cannot
/// run without them.
fn state_keeper(ctx: &RunContext) -> Result<&crate::refresh_log::RefreshLog, Failure> {
    ctx.log
        .as_ref()
        .filter(|log| log.has_incremental())
        .ok_or_else(|| {
            Failure::permanent(
                "incremental views keep their watermarks in materialized_views_refresh_state, \
             which the log tables do not have: run `mv-refresher init` as their owner"
                    .into(),
            )
        })
}

/// The outcome of a cycle that ran.
fn success(step: &Step, reason: String, counts: Counts, duration_ms: f64, attempt: u32) -> Outcome {
    let mut outcome = Outcome::new(step, Status::Success, reason);
    outcome.blocks_dependents = false;
    outcome.method = Some(Method::Incremental);
    outcome.duration_ms = duration_ms;
    outcome.attempts = attempt;
    outcome.counts = Some(counts);
    outcome
}

/// Runs `cycle`, cancellable; returns what it touched, why it became a full
/// reconcile if it did, and how long it took.
async fn run(
    ctx: &RunContext,
    step: &Step,
    cancel: &CancelKey,
    cycle: Cycle<'_>,
) -> Result<(Counts, Option<String>, f64), Failure> {
    let started = Instant::now();
    let mut counts = Counts::default();
    let run = {
        let _running = ctx.running();
        let view = cycle.view_name;
        let silence = silence_limit(step.settings());
        cancellable(ctx, view, cancel, silence, cycle.run(&mut counts)).await
    };
    let duration_ms = round_ms(started.elapsed().as_secs_f64() * 1000.0);
    let switched = run.map_err(|interrupted| {
        interrupted.into_failure(step, Some(Method::Incremental), duration_ms, None)
    })?;
    Ok((counts, switched, duration_ms))
}

/// Whether this cycle is a full reconcile, and why it is what it is.
fn mode(
    ctx: &RunContext,
    step: &Step,
    spec: &Incremental,
    target: &Target,
    opened: &Opened,
) -> (bool, String) {
    if target.table.is_none() {
        return (true, "created and fully loaded".into());
    }
    if ctx.full {
        return (true, "full reconcile (--full)".into());
    }
    let unknown = target.sources.iter().find(|s| {
        !opened
            .states
            .iter()
            .any(|st| st.source == s.relation.to_string())
    });
    if let Some(reason) = elsewhere(target, opened) {
        return (true, format!("full reconcile: {reason}"));
    }
    if let Some(source) = unknown {
        return (
            true,
            format!(
                "full reconcile: no watermark yet for source {}",
                source.relation
            ),
        );
    }
    if !opened.same_definition {
        return (
            true,
            "full reconcile: the query, the key or a source changed since the last cycle".into(),
        );
    }
    if opened.seen_xmin.is_none() && !ctx.citus {
        return (true, "full reconcile: no snapshot of the last cycle".into());
    }
    match (step.settings().full_every, opened.full_age_s) {
        (Some(every), Some(age)) if age * 1000.0 >= every.as_millis() as f64 => (
            true,
            format!("full reconcile: full_every = {every} has passed"),
        ),
        (Some(_), None) => (true, "full reconcile: none recorded yet".into()),
        _ => (
            false,
            format!("changed keys of {} source(s)", spec.changes.len()),
        ),
    }
}

/// Why the state does not belong to this table in this database, if it does
/// not: saved in another cluster, or where transaction ids had gone further
/// (a copy); kept for a table since emptied or re-created, or for a source
/// since rebuilt, or for either before a partition holding rows was
/// attached to it. A state saved before these were kept is taken as this
/// table's, as it always was.
fn elsewhere(target: &Target, opened: &Opened) -> Option<String> {
    let states = &opened.states;
    if let Some(here) = opened.system
        && let Some(there) = states.iter().find_map(|s| s.system.filter(|&t| t != here))
    {
        return Some(format!(
            "the state was saved in another cluster (system identifier {there}, this one's {here})"
        ));
    }
    if opened.ahead {
        return Some(
            "the saved snapshot is ahead of this server's (a copy of the database?)".into(),
        );
    }
    let change = |now: &Option<Identity>, saved: &Option<Identity>| match (now, saved) {
        (Some(now), Some(saved)) => now.change_since(saved),
        _ => None,
    };
    if let Some(change) = states.iter().find_map(|s| change(&opened.table, &s.table)) {
        return Some(match change {
            Change::Recreated => {
                format!(
                    "the table was re-created since the last cycle ({})",
                    change.evidence()
                )
            }
            Change::Attached => format!(
                "the table gained a partition since the last cycle ({})",
                change.evidence()
            ),
            _ => format!(
                "the table was emptied or rewritten since the last cycle ({})",
                change.evidence()
            ),
        });
    }
    target
        .sources
        .iter()
        .zip(&opened.sources)
        .find_map(|(source, now)| {
            let name = source.relation.to_string();
            let saved = states.iter().find(|s| s.source == name)?;
            let change = change(now, &saved.identity)?;
            let what = match change {
                Change::Attached => "gained a partition",
                _ => "was rebuilt",
            };
            Some(format!(
                "source {name} {what} since the last cycle ({})",
                change.evidence()
            ))
        })
}

/// The first round trip: `BEGIN`, the settings, the lock, the state, what
/// the table and the sources are now and the cluster's identifier.
async fn open(
    ctx: &RunContext,
    client: &Client,
    step: &Step,
    target: &Target,
    (view_name, definition): (&str, &str),
    log: &crate::refresh_log::RefreshLog,
) -> Result<Opened, tokio_postgres::Error> {
    let name: [(&(dyn ToSql + Sync), Type); 1] = [(&view_name, Type::TEXT)];
    // Keyed by the name's hash: the table may not exist yet.
    let lock_sql = format!(
        "SELECT pg_try_advisory_xact_lock({}, hashtext($1))",
        super::LOCK_PREFIX
    );
    // What a state was kept for, where the state table keeps it.
    let kept_for = match log.keeps_identities() {
        true => "system_identifier, table_identity, source_identity",
        false => "NULL::bigint, NULL::jsonb, NULL::jsonb",
    };
    let node_snapshots = match log.keeps_node_snapshots() {
        true => "node_snapshots",
        false => "NULL::jsonb",
    };
    let state_sql = format!(
        "SELECT source, watermark, pg_snapshot_xmin(snapshot)::text::bigint, \
             extract(epoch FROM clock_timestamp() - last_full_at)::float8, \
             definition IS NOT DISTINCT FROM md5($2), \
             pg_snapshot_xmin(snapshot)::text::bigint \
                 > pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             {kept_for}, {node_snapshots} \
         FROM {} WHERE view_name = $1",
        log.state_table()
    );
    let relations: Vec<String> = target
        .table
        .iter()
        .map(|_| target.quoted.clone())
        .chain(target.sources.iter().map(|s| s.relation.quoted()))
        .collect();
    let identities_sql = identities();
    let relations: [(&(dyn ToSql + Sync), Type); 1] = [(&relations, Type::TEXT_ARRAY)];
    let state_params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&view_name, Type::TEXT), (&definition, Type::TEXT)];
    let age_sql = format!(
        "SELECT {SINCE_LAST_START} FROM {} AS l WHERE view_name = $1",
        log.summary_table()
    );
    let (began, locked, states, age, now, system) = tokio::join!(
        biased;
        begin(client, step, ctx.citus),
        client.query_typed_one(&lock_sql, &name),
        client.query_typed(&state_sql, &state_params),
        client.query_typed_opt(&age_sql, &name),
        client.query_typed(&identities_sql, &relations),
        system_identifier(client),
    );
    began?;
    let locked: bool = locked?.get(0);
    let rows = states?;
    let age = age?;
    let mut now = now?.iter().map(|r| identity(r, 0)).collect::<Vec<_>>();
    let table = match target.table {
        Some(_) => now.remove(0),
        None => None,
    };
    Ok(Opened {
        ahead: rows
            .iter()
            .any(|r| r.get::<_, Option<bool>>(5) == Some(true)),
        system: system?,
        table,
        sources: now,
        locked,
        seen_xmin: rows.iter().filter_map(|r| r.get::<_, Option<i64>>(2)).min(),
        node_snapshots: rows
            .iter()
            .map(|r| {
                r.get::<_, Option<Json<Vec<NodeSnapshot>>>>(9)
                    .map(|Json(nodes)| nodes)
            })
            .collect(),
        full_age_s: rows
            .iter()
            .filter_map(|r| r.get::<_, Option<f64>>(3))
            .reduce(f64::max),
        same_definition: rows.iter().all(|r| r.get::<_, bool>(4)),
        states: rows
            .iter()
            .map(|r| SourceState {
                source: r.get(0),
                watermark: r.get(1),
                system: r.get(6),
                table: identity(r, 7),
                identity: identity(r, 8),
            })
            .collect(),
        age_s: age.and_then(|row| row.get(0)),
    })
}

/// The identity in column `i` of `row`; `None` when NULL or not one.
fn identity(row: &tokio_postgres::Row, i: usize) -> Option<Identity> {
    row.try_get::<_, Option<Json<Identity>>>(i)
        .ok()
        .flatten()
        .map(|Json(identity)| identity)
}

/// The cluster's system identifier, or `None` where `pg_control_system()`
/// may not be called (a managed service may refuse it).
async fn system_identifier(client: &Client) -> Result<Option<i64>, tokio_postgres::Error> {
    let sql = "SELECT system_identifier FROM pg_catalog.pg_control_system()";
    let read = crate::db::query_opt_or_refusal(client, sql, &[]).await?;
    Ok(read.ok().flatten().map(|row| row.get(0)))
}

/// What the changed keys are read with: which rows each source's last cycle
/// saw, and how they are told; each source's watermark.
struct KeyReads {
    seen: Vec<Seen>,
    bounds: Bounds,
    watermarks: Vec<Option<String>>,
}

/// What tells the rows the last cycle saw (`$1` and `$2`).
enum Bounds {
    /// This server's: the cycle's snapshot's xmax, the last one's xmin.
    Here { xmax: i64, xmin: Option<i64> },
    /// Each Citus node's last snapshot.
    Nodes(Lookup),
}

impl KeyReads {
    /// As [`Statements::changed_keys`] numbers them.
    fn params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = match &self.bounds {
            Bounds::Here { xmax, xmin } => vec![(xmax, Type::INT8), (xmin, Type::INT8)],
            Bounds::Nodes(lookup) => vec![
                (&lookup.started, Type::TIMESTAMPTZ_ARRAY),
                (&lookup.xmins, Type::INT8_ARRAY),
            ],
        };
        params.extend(
            self.watermarks
                .iter()
                .map(|w| (w as &(dyn ToSql + Sync), Type::TEXT)),
        );
        params
    }
}

/// The work of one cycle after the lock, on the view's transaction.
struct Cycle<'a> {
    client: &'a Client,
    statements: &'a Statements<'a>,
    target: &'a Target,
    opened: &'a Opened,
    view_name: &'a str,
    full: bool,
    citus: bool,
    lock_timeout: Duration,
    state_table: String,
    /// The state table keeps the cluster and the identities (version 5).
    identities: bool,
    /// The state table keeps the Citus nodes' snapshots (version 6).
    node_snapshots: bool,
    /// The Citus nodes' snapshots this cycle took before it read.
    taken: Option<Taken>,
    /// The view's definition, kept (as its md5) with the watermarks.
    definition: &'a str,
}

impl Cycle<'_> {
    /// Runs the cycle; returns why it became a full reconcile when the
    /// changed keys made it one.
    async fn run(mut self, counts: &mut Counts) -> Result<Option<String>, tokio_postgres::Error> {
        let client = self.client;
        let uppers = self.wait_for_writers().await?;
        let snapshot = client
            .query_typed_one(
                "SELECT pg_current_snapshot()::text, \
                     pg_snapshot_xmax(pg_current_snapshot())::text::bigint, clock_timestamp()::text",
                &[],
            )
            .await?;
        let (snap, xmax, taken): (String, i64, String) =
            (snapshot.get(0), snapshot.get(1), snapshot.get(2));
        if self.citus && self.node_snapshots {
            let sources: Vec<u32> = self.target.sources.iter().map(|s| s.relation.oid).collect();
            self.taken = nodes::take(client, &sources).await?;
        }
        if self.target.table.is_none() {
            self.prove().await?;
            client
                .batch_execute(&self.statements.create_table())
                .await?;
        }
        let mut switched = None;
        let mut watermarks = Vec::with_capacity(self.target.sources.len());
        for (source, upper) in self.target.sources.iter().zip(&uppers) {
            // A full reconcile starts the watermark over: one marker from the
            // future (a skewed clock) must not hold it up for good.
            let old = match self.full {
                true => None,
                false => self.watermark_of(&source.relation.to_string()),
            };
            let row = client
                .query_typed_one(
                    &self.statements.watermark(source),
                    &[
                        (&old, Type::TEXT),
                        (upper, Type::TEXT),
                        (&taken, Type::TEXT),
                    ],
                )
                .await?;
            watermarks.push(row.get::<_, Option<String>>(0));
        }
        let read = match self.full || self.citus {
            true => None,
            false => self.read_keys(xmax).await?,
        };
        if !self.full {
            counts.keys = match &read {
                Some(keys) => key_count(keys) as i64,
                // More than the client holds, or on Citus: read on the server.
                None => self.changed_keys(xmax).await?,
            };
            if counts.keys > FULL_MIN_KEYS {
                switched = self.better_in_full(counts.keys).await?;
                self.full = switched.is_some();
            }
        }
        let few = read
            .as_ref()
            .filter(|keys| !self.full && key_count(keys) <= FEW_KEYS);
        if let Some(keys) = few {
            if counts.keys > 0 {
                self.apply_few(keys, counts).await?;
            }
        } else {
            if let Some(keys) = read.as_ref().filter(|_| !self.full) {
                self.load_keys(keys).await?;
            }
            if self.full || counts.keys > 0 {
                self.apply(counts).await?;
            }
        }
        if self.target.table.is_none() {
            // A table just loaded has no statistics until autovacuum comes:
            // its readers' plans, and the share of keys a cycle weighs
            // against its size, need them now.
            let analyze = format!("ANALYZE {}", self.target.quoted);
            client.batch_execute(&analyze).await?;
        }
        self.save_state(&watermarks, &snap, &taken).await?;
        Ok(switched)
    }

    /// Before a first load, the template's proof (SPEC §2.5): a query whose
    /// `$changed` drops or changes rows of some key fails the view before
    /// anything is created.
    async fn prove(&self) -> Result<(), tokio_postgres::Error> {
        let Verdict::Differs {
            differences,
            total,
            keys,
        } = proof::compare(self.client, self.statements).await?
        else {
            return Ok(());
        };
        let lines: Vec<String> = differences.iter().map(Difference::describe).collect();
        let message = format!(
            "not loaded: restricted by its $changed, the query does not return the full \
             query's rows for {total} of {keys} keys: {} (`mv-refresher check` shows the proof)",
            lines.join("; ")
        );
        Err(raise(self.client, "data_exception", &message).await)
    }

    /// Why a full reconcile costs less than recomputing `keys` changed keys,
    /// if it does: they are [`FULL_SHARE`] of the table's rows or more (as
    /// the server estimates them). Each changed key is read from a source,
    /// written to a temporary table, matched by every `$changed` and looked
    /// up in the table; a full reconcile reads each source once and compares
    /// all rows by a hash join, and past that share it takes less time
    /// (docs/BENCHMARKS.md: "the share of users changed"). Asked only past
    /// [`FULL_MIN_KEYS`]. A Citus
    /// coordinator does not know its distributed tables' rows: always the
    /// changed keys there.
    async fn better_in_full(&self, keys: i64) -> Result<Option<String>, tokio_postgres::Error> {
        let Some(table) = self.target.table.as_ref().filter(|_| !self.citus) else {
            return Ok(None);
        };
        let rows: f64 = self
            .client
            .query_typed_one(
                "SELECT reltuples::float8 FROM pg_catalog.pg_class WHERE oid = $1",
                &[(&table.oid, Type::OID)],
            )
            .await?
            .get(0);
        // -1: never analyzed or vacuumed; the size is unknown.
        if rows <= 0.0 || (keys as f64) < rows * FULL_SHARE {
            return Ok(None);
        }
        Ok(Some(format!(
            "full reconcile: {keys} keys changed, {:.0}% of the table's {rows:.0} rows \
             (from {:.0}% a full reconcile costs less)",
            100.0 * keys as f64 / rows,
            100.0 * FULL_SHARE
        )))
    }

    fn watermark_of(&self, source: &str) -> Option<String> {
        self.opened
            .states
            .iter()
            .find(|s| s.source == source)
            .and_then(|s| s.watermark.clone())
    }

    /// For each source, the highest marker value drawn so far when its
    /// writers are waited for (a sequence's, the clock's); then the wait.
    ///
    /// Who may still commit a value up to those: for a sequence, the
    /// transactions holding a lock on it (`nextval` takes one that lasts to
    /// the end of the transaction, whichever table the value goes into); for
    /// the clock, those writing the table or any of its partitions or
    /// children. Prepared transactions are among them (they keep their locks,
    /// without a backend).
    async fn wait_for_writers(&self) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
        let mut uppers = Vec::with_capacity(self.target.sources.len());
        let mut watched: Vec<u32> = Vec::new();
        for source in &self.target.sources {
            // The sequence's OID with its value; the table's is known.
            let (sql, table) = match &source.marker_kind {
                // Read from the relation, under no lock a writer would take:
                // pg_sequence_last_value() takes nextval's, and two cycles
                // reading one sequence would wait for each other.
                // `seq` is pg_get_serial_sequence()'s name, quoted by the server.
                MarkerKind::Sequence(seq) => (
                    format!(
                        "SELECT CASE WHEN is_called THEN last_value END::text, {}::regclass::oid \
                         FROM {seq}",
                        crate::quote::quote_literal(seq)
                    ),
                    None,
                ),
                MarkerKind::Clock => (
                    "SELECT clock_timestamp()::text".to_owned(),
                    Some(source.relation.oid),
                ),
                MarkerKind::Other => {
                    uppers.push(None);
                    continue;
                }
            };
            let row = self.client.query_typed_one(&sql, &[]).await?;
            uppers.push(row.get(0));
            watched.push(table.unwrap_or_else(|| row.get(1)));
        }
        if watched.is_empty() {
            return Ok(uppers);
        }
        // The transactions writing these now: values up to the uppers were
        // drawn by them or by transactions already over. A backend's is
        // waited for by its virtual transaction id, a prepared one's by its
        // transaction id. With them, the relations watched (partitions and
        // children included), read again while backends are waited for.
        let writers = self
            .client
            .query_typed_one(
                "WITH RECURSIVE watched(relid) AS ( \
                     SELECT unnest($1::oid[]) \
                     UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i \
                         JOIN watched w ON i.inhparent = w.relid), \
                 writers AS ( \
                     SELECT DISTINCT l.virtualtransaction, l.pid FROM pg_catalog.pg_locks l \
                     WHERE l.locktype = 'relation' AND l.relation IN (SELECT relid FROM watched) \
                       AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                                         WHERE datname = pg_catalog.current_database()) \
                       AND l.granted \
                       AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', \
                                      'ExclusiveLock', 'AccessExclusiveLock') \
                       AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()) \
                 SELECT coalesce((SELECT array_agg(virtualtransaction) FROM writers \
                                  WHERE pid IS NOT NULL), '{}'), \
                        coalesce((SELECT array_agg(DISTINCT x.transactionid::text) \
                                  FROM pg_catalog.pg_locks x JOIN writers w USING (virtualtransaction) \
                                  WHERE w.pid IS NULL AND x.pid IS NULL \
                                    AND x.locktype = 'transactionid'), '{}'), \
                        (SELECT array_agg(relid) FROM watched)",
                &[(&watched, Type::OID_ARRAY)],
            )
            .await?;
        let started = Instant::now();
        let (mut running, mut prepared): (Vec<String>, Vec<String>) =
            (writers.get(0), writers.get(1));
        let relids: Vec<u32> = writers.get(2);
        while !running.is_empty() || !prepared.is_empty() {
            if started.elapsed() > self.lock_timeout && !self.lock_timeout.is_zero() {
                // Going on would take their values as complete: fail, and retry.
                let message = format!(
                    "{} transaction(s) writing the sources were still open after lock_timeout \
                     ({:?}): the cycle cannot know their markers are all committed",
                    running.len() + prepared.len(),
                    self.lock_timeout
                );
                return Err(raise(self.client, "lock_not_available", &message).await);
            }
            tokio::time::sleep(WRITER_POLL).await;
            // A backend that prepares gives up its virtual transaction id,
            // not its locks (they are kept without a pid): while backends are
            // waited for, the prepared writers of the relations are read again
            // and waited for by their transaction ids. One read of pg_locks
            // (a CTE read twice is computed once): PREPARE moves the locks to
            // the prepared transaction before it lets the virtual id go, and
            // pg_locks reads the backends' own (fast-path) locks, where a
            // virtual id is, before the shared table: a virtual id found gone
            // has its locks there, unless they are released, committed.
            let still = self
                .client
                .query_typed_one(
                    "WITH locks AS (SELECT locktype, virtualxid, virtualtransaction, \
                                           transactionid, relation, database, mode, granted, pid \
                                    FROM pg_catalog.pg_locks), \
                     prepared_writers AS ( \
                         SELECT DISTINCT virtualtransaction FROM locks \
                         WHERE cardinality($1::text[]) > 0 \
                           AND pid IS NULL AND locktype = 'relation' AND relation = ANY ($3) \
                           AND database = (SELECT oid FROM pg_catalog.pg_database \
                                           WHERE datname = pg_catalog.current_database()) \
                           AND granted \
                           AND mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', \
                                        'ExclusiveLock', 'AccessExclusiveLock')) \
                     SELECT coalesce((SELECT array_agg(virtualxid) FROM locks \
                                      WHERE locktype = 'virtualxid' AND virtualxid = ANY ($1)), '{}'), \
                            coalesce((SELECT array_agg(xid) FROM ( \
                                SELECT transaction::text AS xid FROM pg_catalog.pg_prepared_xacts \
                                WHERE transaction::text = ANY ($2) \
                                UNION SELECT l.transactionid::text FROM locks l \
                                    JOIN prepared_writers USING (virtualtransaction) \
                                    WHERE l.pid IS NULL AND l.locktype = 'transactionid') x), '{}')",
                    &[
                        (&running, Type::TEXT_ARRAY),
                        (&prepared, Type::TEXT_ARRAY),
                        (&relids, Type::OID_ARRAY),
                    ],
                )
                .await?;
            (running, prepared) = (still.get(0), still.get(1));
        }
        Ok(uppers)
    }

    /// The parameters of the statements that read the changed keys.
    fn key_reads(&self, xmax: i64) -> KeyReads {
        let watermarks = self
            .target
            .sources
            .iter()
            .map(|source| self.watermark_of(&source.relation.to_string()))
            .collect();
        let sources = &self.target.sources;
        if !self.citus {
            let xmin = self.opened.seen_xmin;
            let seen = match xmin {
                Some(_) => Seen::Here,
                None => Seen::Nothing,
            };
            return KeyReads {
                seen: vec![seen; sources.len()],
                bounds: Bounds::Here { xmax, xmin },
                watermarks,
            };
        }
        // Across Citus nodes a row's xmin is its node's: each is skipped by
        // the last snapshot of its own node, where there is one.
        let lookup = match &self.taken {
            Some(taken) => nodes::lookup(&self.opened.node_snapshots, taken),
            None => Lookup::default(),
        };
        let skippable = |oid: u32| {
            !lookup.started.is_empty()
                && self
                    .taken
                    .as_ref()
                    .is_some_and(|t| t.skippable.contains(&oid))
        };
        let seen = sources
            .iter()
            .map(|s| match skippable(s.relation.oid) {
                true => Seen::ByNode,
                false => Seen::Nothing,
            })
            .collect();
        tracing::debug!(
            view = self.view_name,
            nodes = lookup.started.len(),
            ?seen,
            "the windows less the rows each node's last snapshot saw"
        );
        KeyReads {
            seen,
            bounds: Bounds::Nodes(lookup),
            watermarks,
        }
    }

    /// The changed keys, one text array per key column, when there are no
    /// more than [`CLIENT_KEYS`]; `None` when there are more.
    async fn read_keys(
        &self,
        xmax: i64,
    ) -> Result<Option<Vec<Vec<String>>>, tokio_postgres::Error> {
        let reads = self.key_reads(xmax);
        let sql =
            self.statements
                .changed_keys_read(&self.target.sources, &reads.seen, CLIENT_KEYS + 1);
        let rows = self.client.query_typed(&sql, &reads.params()).await?;
        if rows.len() > CLIENT_KEYS {
            return Ok(None);
        }
        let columns = (0..self.statements.spec.key.len())
            .map(|i| rows.iter().map(|row| row.get(i)).collect())
            .collect();
        Ok(Some(columns))
    }

    /// Applies the changes of a few keys in one statement.
    async fn apply_few(
        &self,
        keys: &[Vec<String>],
        counts: &mut Counts,
    ) -> Result<(), tokio_postgres::Error> {
        let row = self
            .client
            .query_typed_one(&self.statements.apply_few(), &bound(keys))
            .await?;
        if let Some(key) = row.get::<_, Option<String>>(0) {
            return Err(twice(self.client, &key).await);
        }
        let (deleted, changed, new): (i64, i64, i64) = (row.get(1), row.get(2), row.get(3));
        counts.deleted = deleted;
        counts.inserted = new;
        counts.updated = changed - new;
        Ok(())
    }

    /// Writes the changed keys the client read to a temporary table.
    async fn load_keys(&self, keys: &[Vec<String>]) -> Result<(), tokio_postgres::Error> {
        let client = self.client;
        client
            .batch_execute(&self.statements.changed_table())
            .await?;
        let sql = self.statements.changed_keys_bound();
        client.execute_typed(&sql, &bound(keys)).await?;
        Ok(())
    }

    /// Collects the changed keys of every source into a temporary table, read
    /// on the server; returns how many.
    async fn changed_keys(&self, xmax: i64) -> Result<i64, tokio_postgres::Error> {
        let client = self.client;
        client
            .batch_execute(&self.statements.changed_table())
            .await?;
        let reads = self.key_reads(xmax);
        let sql = self
            .statements
            .changed_keys(&self.target.sources, &reads.seen);
        Ok(client.execute_typed(&sql, &reads.params()).await? as i64)
    }

    /// The query's rows for the changed keys (or all), and the differences
    /// written to the table.
    async fn apply(&self, counts: &mut Counts) -> Result<(), tokio_postgres::Error> {
        let (client, sql, full) = (self.client, self.statements, self.full);
        // Temporary tables have no statistics until analyzed: without them
        // the planner guesses a few rows and joins them by nested loops.
        if !full {
            client
                .batch_execute(&analyze("mv_refresher_changed"))
                .await?;
        }
        let rows = client.execute_typed(&sql.result(full), &[]).await?;
        client
            .batch_execute(&analyze("mv_refresher_result"))
            .await?;
        if full {
            counts.keys = rows as i64;
        }
        if let Some(row) = client.query_typed_opt(&sql.duplicate(), &[]).await? {
            return Err(twice(client, &row.get::<_, String>(0)).await);
        }
        if !full {
            client.execute_typed(&sql.current(), &[]).await?;
            client
                .batch_execute(&analyze("mv_refresher_current"))
                .await?;
        }
        counts.deleted = client.execute_typed(&sql.delete(full), &[]).await? as i64;
        let changed = client.execute_typed(&sql.changed_rows(full), &[]).await? as i64;
        if changed > 0 {
            let new: i64 = client.query_typed_one(&sql.new_keys(), &[]).await?.get(0);
            client.execute_typed(&sql.upsert(), &[]).await?;
            counts.inserted = new;
            counts.updated = changed - new;
        }
        Ok(())
    }

    /// The sources' new watermarks and the snapshot they were read in; with
    /// them, this cluster's identifier and what the table and the sources
    /// were when the cycle began (a table it created: as it is now).
    async fn save_state(
        &self,
        watermarks: &[Option<String>],
        snapshot: &str,
        taken: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let sources: Vec<String> = self
            .target
            .sources
            .iter()
            .map(|s| s.relation.to_string())
            .collect();
        // The identities' columns from version 5 on; the parameters are
        // bound either way.
        let (mut columns, mut values, mut updates) = match self.identities {
            true => (
                ", system_identifier, table_identity, source_identity".to_owned(),
                format!(
                    ", $8::bigint, coalesce($9::jsonb, {}), u.identity",
                    identity_of("pg_catalog.to_regclass($10)")
                ),
                ", system_identifier = EXCLUDED.system_identifier, \
                 table_identity = EXCLUDED.table_identity, \
                 source_identity = EXCLUDED.source_identity"
                    .to_owned(),
            ),
            false => (String::new(), String::new(), String::new()),
        };
        // The Citus nodes' snapshots from version 6 on.
        if self.node_snapshots {
            columns.push_str(", node_snapshots");
            values.push_str(", $12::jsonb");
            updates.push_str(", node_snapshots = EXCLUDED.node_snapshots");
        }
        let sql = format!(
            "WITH gone AS (DELETE FROM {st} WHERE view_name = $1 AND source <> ALL ($2)) \
             INSERT INTO {st} AS s (view_name, source, watermark, snapshot, applied_at, \
                 last_full_at, definition{columns}) \
             SELECT $1, u.source, u.watermark, $4::pg_snapshot, $5::timestamptz, \
                 CASE WHEN $6 THEN $5::timestamptz END, md5($7){values} \
             FROM unnest($2::text[], $3::text[], $11::jsonb[]) AS u(source, watermark, identity) \
             ON CONFLICT (view_name, source) DO UPDATE SET watermark = EXCLUDED.watermark, \
                 snapshot = EXCLUDED.snapshot, applied_at = EXCLUDED.applied_at, \
                 last_full_at = coalesce(EXCLUDED.last_full_at, s.last_full_at), \
                 definition = EXCLUDED.definition{updates}",
            st = self.state_table
        );
        let opened = self.opened;
        let table = opened.table.clone().map(Json);
        let identities: Vec<Option<Json<Identity>>> =
            opened.sources.iter().map(|i| i.clone().map(Json)).collect();
        let nodes = self.taken.as_ref().map(|taken| Json(&taken.nodes));
        self.client
            .execute_typed(
                &sql,
                &[
                    (&self.view_name, Type::TEXT),
                    (&sources, Type::TEXT_ARRAY),
                    (&watermarks, Type::TEXT_ARRAY),
                    (&snapshot, Type::TEXT),
                    (&taken, Type::TEXT),
                    (&self.full, Type::BOOL),
                    (&self.definition, Type::TEXT),
                    (&opened.system, Type::INT8),
                    (&table, Type::JSONB),
                    (&self.target.quoted, Type::TEXT),
                    (&identities, Type::JSONB_ARRAY),
                    (&nodes, Type::JSONB),
                ],
            )
            .await?;
        Ok(())
    }
}

/// How many keys `keys` (one text array per key column) holds.
fn key_count(keys: &[Vec<String>]) -> usize {
    keys.first().map_or(0, Vec::len)
}

/// `keys` (one text array per key column) as the parameters `$1` ...
fn bound(keys: &[Vec<String>]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    keys.iter()
        .map(|column| (column as &(dyn ToSql + Sync), Type::TEXT_ARRAY))
        .collect()
}

/// The error of a query that returns `key` more than once.
async fn twice(client: &Client, key: &str) -> tokio_postgres::Error {
    let message = format!(
        "the query returns key {key} more than once: an incremental view holds one row per key"
    );
    raise(client, "unique_violation", &message).await
}

fn analyze(temporary: &str) -> String {
    format!("ANALYZE pg_temp.{temporary}")
}

/// An error with `condition` (a PL/pgSQL condition name) and `message`,
/// raised by the server so that it fails the cycle like any other (and a
/// transient one is retried).
async fn raise(client: &Client, condition: &str, message: &str) -> tokio_postgres::Error {
    let sql = format!(
        "DO $mv_refresher$BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}; END$mv_refresher$",
        crate::quote::quote_literal(condition),
        crate::quote::quote_literal(message)
    );
    match client.batch_execute(&sql).await {
        Err(err) => err,
        Ok(()) => unreachable!("RAISE EXCEPTION raises"),
    }
}
