//! What the catalog says about incremental views, read while planning: the
//! query's columns (from a temporary view of it, rolled back), the table's
//! columns and unique keys, and each source's marker and indexes. A handful
//! of statements for all incremental views of a registry.

use std::collections::HashMap;

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use crate::catalog::{self, Lookup, Relation};
use crate::db::describe_error;
use crate::quote::{display_ident, quote_ident};
use crate::registry::{Incremental, Lag, Source};

/// One column: its name and its type, as `format_type` spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
}

/// How a source's marker grows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerKind {
    /// Drawn from a sequence at insert (`serial`, identity, `nextval`): the
    /// refresher waits for the table's in-flight writers before reading.
    Sequence(String),
    /// `clock_timestamp()` at insert: waited for the same way.
    Clock,
    /// Anything else (`now()`, a value the application sets): only `lag`
    /// catches a late commit.
    Other,
}

/// A source of an incremental view, as found.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    pub spec: Source,
    pub relation: Relation,
    /// The marker's type, as SQL spells it (`bigint`, `timestamp with time zone`).
    pub marker_type: String,
    pub marker_kind: MarkerKind,
    /// The marker's column may hold NULL: such rows are in every cycle's window.
    pub marker_nullable: bool,
    /// An index whose first column is the marker: the window is an index scan.
    pub marker_index: Option<String>,
    /// An index whose leading columns are the key's (when the key is plain columns).
    pub key_index: Option<String>,
}

/// An incremental view, as the catalog shows it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The table; `None` until the first refresh creates it.
    pub table: Option<Relation>,
    /// The table's name for SQL, quoted and schema-qualified.
    pub quoted: String,
    /// The query's columns, in order.
    pub columns: Vec<Column>,
    pub sources: Vec<SourcePlan>,
    /// What `check` should say about it (a marker without an index, …).
    pub warnings: Vec<String>,
}

impl Target {
    /// The key columns' types, in key order.
    pub fn key_types<'a>(&'a self, spec: &'a Incremental) -> impl Iterator<Item = &'a str> + 'a {
        spec.key.iter().map(|k| {
            self.columns
                .iter()
                .find(|c| &c.name == k)
                .map_or("text", |c| c.type_name.as_str())
        })
    }
}

/// One incremental view to describe: its registry form and what its name is.
pub struct Wanted<'a> {
    pub spec: &'a Incremental,
    pub lookup: &'a Lookup,
}

/// What [`describe`] found for one view: the target, or the problem that
/// stops it; and the relations its query reads.
pub struct Described {
    pub target: Result<Target, String>,
    /// OIDs among `known` (see [`describe`]) that the query reads.
    pub reads: Vec<u32>,
}

const PROBE_SAVEPOINT: &str = "mv_refresher_probe";

/// Describes `wanted`; `known`: the OIDs of the plan's views, among which
/// the dependencies are reported. Runs in the caller's transaction, behind a
/// savepoint it rolls back: the temporary views it makes are never committed.
pub async fn describe(
    client: &impl GenericClient,
    wanted: &[Wanted<'_>],
    known: &[u32],
) -> Result<Vec<Described>, tokio_postgres::Error> {
    // Citus warns that a temporary view depends on a temporary schema: not
    // news, and rolled back with the rest.
    let silenced = [
        format!("SAVEPOINT {PROBE_SAVEPOINT}"),
        "SET LOCAL client_min_messages = error".to_owned(),
    ];
    crate::db::execute_each(client, &silenced).await?;
    let described = probe(client, wanted, known).await;
    let undone = [
        format!("ROLLBACK TO SAVEPOINT {PROBE_SAVEPOINT}"),
        format!("RELEASE SAVEPOINT {PROBE_SAVEPOINT}"),
    ];
    crate::db::execute_each(client, &undone).await?;
    let mut described = described?;
    let sources = sources(client, wanted).await?;
    for (found, sources) in described.iter_mut().zip(sources) {
        if let Ok(target) = &mut found.target {
            match sources {
                Ok(sources) => match check_lags(&sources) {
                    Ok(()) => {
                        target.warnings.extend(source_warnings(&sources));
                        target.sources = sources;
                    }
                    Err(problem) => found.target = Err(problem),
                },
                Err(problem) => found.target = Err(problem),
            }
        }
    }
    Ok(described)
}

/// Each query as a temporary view (its OID), or why its SQL fails.
async fn create_probes(
    client: &impl GenericClient,
    wanted: &[Wanted<'_>],
) -> Result<Vec<Result<u32, String>>, tokio_postgres::Error> {
    let mut probes = Vec::with_capacity(wanted.len());
    for (i, view) in wanted.iter().enumerate() {
        let savepoint = format!("{PROBE_SAVEPOINT}_{i}");
        let name = format!("mv_refresher_probe_{i}");
        client
            .batch_execute(&format!("SAVEPOINT {savepoint}"))
            .await?;
        let sql = format!("CREATE TEMPORARY VIEW {name} AS {}", view.spec.query.full());
        match client.batch_execute(&sql).await {
            Ok(()) => {
                let name = format!("pg_temp.{name}");
                let row = client
                    .query_typed_one("SELECT $1::text::regclass::oid", &[(&name, Type::TEXT)])
                    .await?;
                probes.push(Ok(row.get(0)));
            }
            Err(err) if err.code().is_some() => {
                client
                    .batch_execute(&format!("ROLLBACK TO SAVEPOINT {savepoint}"))
                    .await?;
                let why = format!("has a query that fails: {}", describe_error(&err));
                probes.push(Err(why));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(probes)
}

/// Each query as a temporary view: its columns and what it reads; the table's
/// columns and keys. Errors of the user's SQL become problems.
async fn probe(
    client: &impl GenericClient,
    wanted: &[Wanted<'_>],
    known: &[u32],
) -> Result<Vec<Described>, tokio_postgres::Error> {
    let probes = create_probes(client, wanted).await?;
    let tables: Vec<u32> = wanted
        .iter()
        .filter_map(|view| match view.lookup {
            Lookup::Table(relation) => Some(relation.oid),
            _ => None,
        })
        .collect();
    let probe_oids: Vec<u32> = probes
        .iter()
        .filter_map(|p| p.as_ref().ok().copied())
        .collect();
    let all: Vec<u32> = probe_oids.iter().chain(&tables).copied().collect();
    let columns = columns(client, &all).await?;
    let keys = unique_keys(client, &tables).await?;
    let denied = denied(client, wanted).await?;
    let mut with_known = known.to_vec();
    with_known.extend(&probe_oids);
    let mut reads: HashMap<u32, Vec<u32>> = HashMap::new();
    for (viewer, source) in catalog::dependencies(client, &with_known).await? {
        if probe_oids.contains(&viewer) && !probe_oids.contains(&source) {
            reads.entry(viewer).or_default().push(source);
        }
    }
    Ok(wanted
        .iter()
        .zip(probes)
        .zip(denied)
        .map(|((view, probe), denied)| {
            let reads = probe
                .as_ref()
                .ok()
                .and_then(|oid| reads.get(oid).cloned())
                .unwrap_or_default();
            let target = probe.and_then(|oid| {
                let query_columns = columns.get(&oid).cloned().unwrap_or_default();
                target(view, query_columns, &columns, &keys)
            });
            let target = match denied {
                Some(why) => Err(why),
                None => target,
            };
            Described { target, reads }
        })
        .collect())
}

/// Why the connected role may not maintain each view's table (or create it
/// where it is missing), if it may not: one statement for all.
async fn denied(
    client: &impl GenericClient,
    wanted: &[Wanted<'_>],
) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let oids: Vec<u32> = wanted
        .iter()
        .map(|w| match w.lookup {
            Lookup::Table(relation) => relation.oid,
            _ => 0,
        })
        .collect();
    let schemas: Vec<&str> = wanted
        .iter()
        .map(|w| match w.lookup {
            Lookup::Missing { schema, .. } => schema.as_str(),
            _ => "",
        })
        .collect();
    let rows = client
        .query_typed(
            "SELECT CASE WHEN t.oid <> 0 THEN \
                 has_table_privilege(t.oid, 'SELECT') AND has_table_privilege(t.oid, 'INSERT') \
                 AND has_table_privilege(t.oid, 'UPDATE') AND has_table_privilege(t.oid, 'DELETE') \
               WHEN t.schema <> '' AND EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = t.schema) \
               THEN has_schema_privilege(t.schema, 'CREATE') ELSE true END, current_user::text \
             FROM unnest($1::oid[], $2::text[]) WITH ORDINALITY AS t(oid, schema, i) ORDER BY t.i",
            &[(&oids, Type::OID_ARRAY), (&schemas, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(wanted
        .iter()
        .zip(rows)
        .map(|(w, row)| {
            let (allowed, user): (bool, String) = (row.get(0), row.get(1));
            (!allowed).then(|| match w.lookup {
                Lookup::Table(_) => format!(
                    "may not be maintained by role {user:?}: it needs SELECT, INSERT, UPDATE and \
                     DELETE on its table"
                ),
                _ => format!(
                    "may not be created by role {user:?}: it needs CREATE on the schema (or \
                     create the table yourself)"
                ),
            })
        })
        .collect())
}

/// The target of `view` whose query has `query_columns`: the table must
/// match them, and its key be a unique key of the table.
fn target(
    view: &Wanted<'_>,
    query_columns: Vec<Column>,
    columns: &HashMap<u32, Vec<Column>>,
    keys: &HashMap<u32, Vec<Vec<String>>>,
) -> Result<Target, String> {
    let spec = view.spec;
    if let Some(c) = spec
        .volatile
        .iter()
        .find(|v| !query_columns.iter().any(|c| &c.name == *v))
    {
        return Err(format!(
            "declares column {} volatile, which its query does not return (it returns {})",
            display_ident(c),
            names(&query_columns)
        ));
    }
    for key in &spec.key {
        if !query_columns.iter().any(|c| &c.name == key) {
            return Err(format!(
                "has key column {}, which its query does not return (it returns {})",
                display_ident(key),
                names(&query_columns)
            ));
        }
    }
    let (table, quoted) = match view.lookup {
        Lookup::Table(relation) => (Some(relation.clone()), relation.quoted()),
        Lookup::Missing { schema, name, .. } => (
            None,
            format!("{}.{}", quote_ident(schema), quote_ident(name)),
        ),
        Lookup::MatView(_) => {
            return Err(
                "is a materialized view: an incremental view is a table the refresher \
                        keeps equal to its query (give it another name, or drop key, query and \
                        changes to refresh the materialized view)"
                    .into(),
            );
        }
        Lookup::Other { kind, .. } => {
            return Err(format!("is {kind}, and an incremental view is a table"));
        }
    };
    if let Some(relation) = &table {
        let have = columns.get(&relation.oid).map_or(&[][..], Vec::as_slice);
        let unique = keys.get(&relation.oid).map_or(&[][..], Vec::as_slice);
        check_table(spec, have, &query_columns, unique)?;
    }
    Ok(Target {
        table,
        quoted,
        columns: query_columns,
        sources: Vec::new(),
        warnings: Vec::new(),
    })
}

/// An existing table must have the query's columns, and the key as a
/// unique key (`unique`: the table's unique keys).
fn check_table(
    spec: &Incremental,
    have: &[Column],
    query_columns: &[Column],
    unique: &[Vec<String>],
) -> Result<(), String> {
    if have != query_columns {
        return Err(format!(
            "has a table whose columns ({}) differ from its query's ({}): names, order and \
             types must match",
            typed(have),
            typed(query_columns)
        ));
    }
    let is_key = |cols: &Vec<String>| {
        cols.len() == spec.key.len() && cols.iter().all(|c| spec.key.contains(c))
    };
    if !unique.iter().any(is_key) {
        let key: Vec<String> = spec.key.iter().map(|k| display_ident(k)).collect();
        return Err(format!(
            "has key ({}), which is not the primary key or a unique index (not partial, on \
             plain NOT NULL columns) of its table",
            key.join(", ")
        ));
    }
    Ok(())
}

fn names(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| display_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn typed(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| format!("{} {}", display_ident(&c.name), c.type_name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns of each of `oids`, in order.
async fn columns(
    client: &impl GenericClient,
    oids: &[u32],
) -> Result<HashMap<u32, Vec<Column>>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT attrelid, attname::text, pg_catalog.format_type(atttypid, atttypmod) \
             FROM pg_catalog.pg_attribute \
             WHERE attrelid = ANY ($1) AND attnum > 0 AND NOT attisdropped \
             ORDER BY attrelid, attnum",
            &[(&oids, Type::OID_ARRAY)],
        )
        .await?;
    let mut columns: HashMap<u32, Vec<Column>> = HashMap::new();
    for row in rows {
        columns.entry(row.get(0)).or_default().push(Column {
            name: row.get(1),
            type_name: row.get(2),
        });
    }
    Ok(columns)
}

/// An index of a table: its name, its columns (`None` for an expression),
/// whether it is unique (immediate, on NOT NULL columns: a key).
struct Index {
    name: String,
    columns: Vec<Option<String>>,
    unique: bool,
}

/// The indexes of `oids`.
async fn indexes(
    client: &impl GenericClient,
    oids: &[u32],
) -> Result<HashMap<u32, Vec<Index>>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT i.indrelid, c.relname::text, \
                 ARRAY(SELECT a.attname::text \
                       FROM unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, n) \
                       LEFT JOIN pg_catalog.pg_attribute a \
                         ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum > 0 \
                       ORDER BY k.n), \
                 i.indisunique AND i.indimmediate AND NOT EXISTS ( \
                     SELECT FROM unnest(i.indkey[0:i.indnkeyatts - 1]) AS k(attnum) \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE NOT a.attnotnull) \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = ANY ($1) AND i.indisvalid AND i.indpred IS NULL \
             ORDER BY i.indrelid, i.indisprimary DESC, c.relname",
            &[(&oids, Type::OID_ARRAY)],
        )
        .await?;
    let mut indexes: HashMap<u32, Vec<Index>> = HashMap::new();
    for row in rows {
        indexes.entry(row.get(0)).or_default().push(Index {
            name: row.get(1),
            columns: row.get(2),
            unique: row.get(3),
        });
    }
    Ok(indexes)
}

/// The unique keys (plain columns, not partial) of each of `oids`.
async fn unique_keys(
    client: &impl GenericClient,
    oids: &[u32],
) -> Result<HashMap<u32, Vec<Vec<String>>>, tokio_postgres::Error> {
    let indexes = indexes(client, oids).await?;
    Ok(indexes
        .into_iter()
        .map(|(oid, list)| {
            let keys = list
                .into_iter()
                .filter(|i| i.unique)
                .filter_map(|i| i.columns.into_iter().collect::<Option<Vec<_>>>())
                .collect();
            (oid, keys)
        })
        .collect())
}

/// The sources of each view: found, with their markers and indexes, or the
/// problem with one of them.
async fn sources(
    client: &impl GenericClient,
    wanted: &[Wanted<'_>],
) -> Result<Vec<Result<Vec<SourcePlan>, String>>, tokio_postgres::Error> {
    let all: Vec<&Source> = wanted.iter().flat_map(|w| &w.spec.changes).collect();
    let names: Vec<_> = all.iter().map(|s| s.table.clone()).collect();
    let found = catalog::find(client, &names).await?;
    let oids: Vec<u32> = found
        .views
        .iter()
        .map(|f| match &f.lookup {
            Lookup::Table(r) | Lookup::MatView(r) | Lookup::Other { relation: r, .. } => r.oid,
            Lookup::Missing { .. } => 0,
        })
        .collect();
    let markers: Vec<&str> = all.iter().map(|s| s.marker.as_str()).collect();
    let rows = client
        .query_typed(
            "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), \
                 pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, \
                 pg_catalog.pg_get_serial_sequence(s.oid::regclass::text, a.attname), \
                 s.oid = 0 OR has_table_privilege(s.oid, 'SELECT'), current_user::text, \
                 (SELECT q.seqcache FROM pg_catalog.pg_sequence q WHERE q.seqrelid = \
                     pg_catalog.pg_get_serial_sequence(s.oid::regclass::text, a.attname)::regclass), \
                 coalesce(NOT a.attnotnull, false) \
             FROM unnest($1::oid[], $2::text[]) WITH ORDINALITY AS s(oid, marker, i) \
             LEFT JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = s.oid AND a.attname = s.marker AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             ORDER BY s.i",
            &[(&oids, Type::OID_ARRAY), (&markers, Type::TEXT_ARRAY)],
        )
        .await?;
    let indexes = indexes(client, &oids).await?;
    let mut plans = all
        .iter()
        .zip(found.views)
        .zip(rows)
        .map(|((spec, found), row)| source_plan(spec, found.lookup, &row, &indexes));
    Ok(wanted
        .iter()
        .map(|w| {
            (&mut plans)
                .take(w.spec.changes.len())
                .collect::<Result<Vec<_>, _>>()
        })
        .collect())
}

fn source_plan(
    spec: &Source,
    lookup: Lookup,
    row: &tokio_postgres::Row,
    indexes: &HashMap<u32, Vec<Index>>,
) -> Result<SourcePlan, String> {
    let relation = match lookup {
        Lookup::Table(r) | Lookup::MatView(r) => r,
        Lookup::Other { relation, kind } => {
            return Err(format!(
                "has source {relation}, which is {kind}, not a table"
            ));
        }
        Lookup::Missing { qualified, .. } => {
            return Err(format!("has source {qualified}, which does not exist"));
        }
    };
    let Some(marker_type) = row.get::<_, Option<String>>(0) else {
        return Err(format!(
            "has source {relation} without a column {} (its marker)",
            display_ident(&spec.marker)
        ));
    };
    let (readable, user): (bool, String) = (row.get(4), row.get(5));
    if !readable {
        return Err(format!(
            "has source {relation}, which role {user:?} may not read (it needs SELECT)"
        ));
    }
    let marker_kind = marker_kind(row, &marker_type);
    let list = indexes.get(&relation.oid).map(Vec::as_slice).unwrap_or(&[]);
    let marker_index = list
        .iter()
        .find(|i| i.columns.first().and_then(Option::as_deref) == Some(&spec.marker))
        .map(|i| i.name.clone());
    let plain_key: Option<Vec<String>> = spec.key.iter().map(|e| plain_column(e)).collect();
    let key_index = plain_key.and_then(|key| {
        list.iter()
            .find(|i| {
                i.columns.len() >= key.len()
                    && i.columns[..key.len()]
                        .iter()
                        .all(|c| c.as_ref().is_some_and(|c| key.contains(c)))
            })
            .map(|i| i.name.clone())
    });
    Ok(SourcePlan {
        spec: spec.clone(),
        relation,
        marker_type,
        marker_kind,
        marker_nullable: row.get(7),
        marker_index,
        key_index,
    })
}

/// How a marker grows, from its column's default (one row of the sources'
/// query). Writers are waited for only where every value is drawn at insert
/// and in order: a sequence of cache 1 that the column takes by default
/// (`serial`) or always (identity `ALWAYS`; `BY DEFAULT` takes any value), or
/// `clock_timestamp()` itself into a `timestamptz`. Anything else relies on
/// `lag`.
fn marker_kind(row: &tokio_postgres::Row, marker_type: &str) -> MarkerKind {
    let default: Option<String> = row.get(1);
    let identity: Option<String> = row.get(2);
    let sequence: Option<String> = row.get(3);
    let cache: Option<i64> = row.get(6);
    match (sequence, default.as_deref()) {
        (Some(seq), _) if cache == Some(1) && identity.as_deref() == Some("a") => {
            MarkerKind::Sequence(seq)
        }
        (Some(seq), Some(d))
            if cache == Some(1)
                && d.starts_with("nextval(")
                && d.contains(seq.rsplit('.').next().unwrap_or(&seq)) =>
        {
            MarkerKind::Sequence(seq)
        }
        (_, Some("clock_timestamp()")) if marker_type == "timestamp with time zone" => {
            MarkerKind::Clock
        }
        _ => MarkerKind::Other,
    }
}

/// The column an expression is, when it is a plain column name.
fn plain_column(expr: &str) -> Option<String> {
    let expr = expr.trim();
    if let Some(inner) = expr.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
        return (!inner.contains('"')).then(|| inner.to_owned());
    }
    let plain = expr.chars().all(|c| c.is_alphanumeric() || c == '_')
        && expr.chars().next().is_some_and(|c| !c.is_ascii_digit());
    plain.then(|| expr.to_lowercase())
}

/// Whether a marker type is a timestamp (lag is a duration) or a number.
pub fn is_time(type_name: &str) -> bool {
    type_name.starts_with("timestamp") || type_name == "date"
}

fn is_number(type_name: &str) -> bool {
    matches!(
        type_name,
        "smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision"
    ) || type_name.starts_with("numeric(")
}

/// Each lag must be in its marker's units.
fn check_lags(sources: &[SourcePlan]) -> Result<(), String> {
    for source in sources {
        let (lag, ty) = (source.spec.lag, source.marker_type.as_str());
        let fits = match lag {
            Lag::Units(0) => is_time(ty) || is_number(ty),
            Lag::Units(_) => is_number(ty),
            Lag::Duration(_) => is_time(ty),
        };
        if !fits {
            return Err(format!(
                "has source {} whose marker {} is {ty}, and lag = {lag} {}",
                source.relation,
                display_ident(&source.spec.marker),
                match is_time(ty) {
                    true => "is not a duration (write it like \"1min\")",
                    false if is_number(ty) => "is not a number",
                    false => "cannot be applied: a marker must be a number or a timestamp",
                }
            ));
        }
    }
    Ok(())
}

/// What `check` warns about a view's sources.
fn source_warnings(sources: &[SourcePlan]) -> Vec<String> {
    let mut warnings = Vec::new();
    for source in sources {
        if source.marker_index.is_none() {
            warnings.push(format!(
                "source {}: no index starts with its marker {}, so every cycle reads the whole \
                 table (CREATE INDEX ON {} ({}))",
                source.relation,
                display_ident(&source.spec.marker),
                source.relation,
                display_ident(&source.spec.marker)
            ));
        }
        if source.marker_nullable {
            warnings.push(format!(
                "source {}: its marker {} may be NULL, and every cycle reads the rows where it \
                 is (a NULL marker is never above the watermark): only those written since the \
                 last cycle are recomputed, but on Citus those of a reference table are \
                 recomputed every cycle (make it NOT NULL if it never is)",
                source.relation,
                display_ident(&source.spec.marker),
            ));
        }
        let waits = source.marker_kind != MarkerKind::Other;
        if !waits && source.spec.lag == Lag::Units(0) {
            warnings.push(format!(
                "source {}: its marker {} is not drawn from a sequence or clock_timestamp(), and \
                 lag is 0: a transaction that commits after a cycle with an older marker is \
                 missed until the next full reconcile (set lag to the longest write transaction)",
                source.relation,
                display_ident(&source.spec.marker)
            ));
        }
    }
    warnings
}
