//! What the database says about the registry's views: whether a name is a
//! materialized view, whether it is populated, whether it has a unique index
//! `CONCURRENTLY` can use, and which views it reads from.
//!
//! Names are looked up as bind parameters against `pg_class`, never spliced into
//! SQL; only the catalog's own spelling is quoted into a `REFRESH` later. This
//! module reads the catalog; it decides nothing about what to run.

use std::fmt;

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use crate::quote::{display_ident, quote_ident};
use crate::registry::ViewName;
use crate::units::Memory;

/// A relation found in the catalog: its OID and its exact schema and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
}

/// What a registry name turned out to be.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A materialized view.
    MatView(Relation),
    /// A table (plain or partitioned): what an incremental view is.
    Table(Relation),
    /// Something else, e.g. a table or a plain view; `kind` says what.
    Other {
        relation: Relation,
        kind: &'static str,
    },
    /// Nothing; `qualified` is the name with the schema it was expected in,
    /// for people, `schema` and `name` the same unquoted.
    Missing {
        qualified: String,
        schema: String,
        name: String,
    },
}

/// The state of a materialized view that decides how it can be refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewState {
    pub populated: bool,
    /// Has an index CONCURRENTLY accepts: unique, valid, immediate, on plain
    /// columns only and without a WHERE clause.
    pub has_usable_unique_index: bool,
}

impl Relation {
    /// The name for SQL: both parts quoted.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for Relation {
    /// The name for people and the log tables: `public.top_bets_today`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

impl Lookup {
    /// The schema-qualified name to report this view under.
    pub fn qualified_name(&self) -> String {
        match self {
            Self::MatView(relation) | Self::Table(relation) | Self::Other { relation, .. } => {
                relation.to_string()
            }
            Self::Missing { qualified, .. } => qualified.clone(),
        }
    }

    /// Whether this is what a registry view names: a materialized view, or for
    /// an `incremental` one a table (or nothing yet, which its first refresh
    /// creates or skips). Anything else fails every run and is never recorded.
    pub fn fits(&self, incremental: bool) -> bool {
        match self {
            Self::MatView(_) => !incremental,
            Self::Table(_) | Self::Missing { .. } if incremental => true,
            _ => false,
        }
    }

    /// Why an incremental view with `create = false` (`may_create` false)
    /// whose name this is, is skipped on purpose by every run: its table is
    /// not in this database (nothing has its name, or a relation of another
    /// kind does: a generic name such as the embedded default's
    /// `user_activity` may be a view of the user's). `None`: it is here, or
    /// it may be created.
    pub fn not_here(&self, may_create: bool) -> Option<String> {
        if may_create {
            return None;
        }
        match self {
            Self::Missing { qualified, .. } => Some(format!(
                "its table {qualified} does not exist here, and create = false"
            )),
            Self::MatView(relation) => Some(format!(
                "{relation} is a materialized view here, not its table, and create = false"
            )),
            Self::Other { relation, kind } => Some(format!(
                "{relation} is {kind} here, not its table, and create = false"
            )),
            Self::Table(_) => None,
        }
    }
}

/// A registry view as the log tables and the metrics name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryName {
    /// Schema-qualified: `public.top_bets_today`.
    pub qualified: String,
    /// It names nothing that can be refreshed (a typo, a table): see
    /// [`Lookup::fits`].
    pub unrefreshable: bool,
    /// Skipped on purpose by every run: an incremental view with `create =
    /// false` whose table is not in this database (nothing, or a relation of
    /// another kind, has its name). It has no metrics (a
    /// series that never succeeds would page someone for nothing).
    pub not_here: bool,
}

/// Every materialized view the session can see, schema-qualified: the
/// candidates for "did you mean".
pub async fn materialized_views(
    client: &impl GenericClient,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT n.nspname::text, c.relname::text \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'm' ORDER BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| format!("{}.{}", display_ident(r.get(0)), display_ident(r.get(1))))
        .collect())
}

/// The one of `candidates` closest to `name` (qualified or not), when it is
/// close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let unqualified = |n: &'a str| n.rsplit_once('.').map_or(n, |(_, rest)| rest);
    let wanted = name.rsplit_once('.').map_or(name, |(_, rest)| rest);
    candidates
        .iter()
        .map(|c| {
            // The whole names when both are qualified, the view names otherwise.
            let score = if name.contains('.') {
                strsim::jaro_winkler(name, c)
                    .max(strsim::jaro_winkler(wanted, unqualified(c)) - 0.05)
            } else {
                strsim::jaro_winkler(wanted, unqualified(c))
            };
            (score, c.as_str())
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn relkind_name(kind: i8) -> &'static str {
    match kind as u8 {
        b'r' => "a table",
        b'p' => "a partitioned table",
        b'v' => "a view",
        b'i' | b'I' => "an index",
        b'S' => "a sequence",
        b'f' => "a foreign table",
        b'c' => "a composite type",
        b't' => "a TOAST table",
        _ => "not a materialized view",
    }
}

/// What the catalog says about the names of a registry, in one query.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// One per name asked about, in the same order.
    pub views: Vec<Found>,
    /// The database has the `citus` extension.
    pub citus: bool,
    /// The session's `work_mem`: the server's, the database's or the role's.
    pub work_mem: Memory,
}

/// What one name turned out to be, and for a materialized view what decides
/// its refresh.
#[derive(Debug, Clone)]
pub struct Found {
    pub lookup: Lookup,
    /// The state of a materialized view; `None` for anything else.
    pub state: Option<ViewState>,
    /// Why the connected role may not refresh it, if it may not.
    pub denied: Option<String>,
}

/// Finds each of `names` the way PostgreSQL would (in its schema, or the first
/// schema of the search path that has a relation of that name) and reads what
/// decides its refresh: one statement, however many names.
///
/// Up to PostgreSQL 16 only the owner of a view or a member of the owning role
/// may refresh it; 17 adds the MAINTAIN privilege.
pub async fn find(
    client: &impl GenericClient,
    names: &[ViewName],
) -> Result<Catalog, tokio_postgres::Error> {
    let schemas: Vec<Option<&str>> = names.iter().map(|n| n.schema.as_deref()).collect();
    let relnames: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
    // CASE, not OR: has_table_privilege(.., 'MAINTAIN') is an error before 17.
    let rows = client
        .query_typed(
            "SELECT c.oid, ns.nspname::text, c.relname::text, c.relkind, c.relispopulated, \
                 EXISTS (SELECT FROM pg_catalog.pg_index i \
                         WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid \
                           AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL), \
                 CASE WHEN pg_catalog.pg_has_role(c.relowner, 'USAGE') THEN true \
                      WHEN current_setting('server_version_num')::int >= 170000 \
                      THEN pg_catalog.has_table_privilege(c.oid, 'MAINTAIN') \
                      ELSE false END, \
                 pg_catalog.pg_get_userbyid(c.relowner)::text, current_user::text, \
                 coalesce(n.schema, (pg_catalog.current_schemas(false))[1], 'public')::text, \
                 EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus'), \
                 current_setting('work_mem') \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS n(schema, name, i) \
             LEFT JOIN LATERAL ( \
                 SELECT c.* FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace \
                 WHERE c.relname = n.name \
                   AND CASE WHEN n.schema IS NULL \
                            THEN ns.nspname = ANY (pg_catalog.current_schemas(true)) \
                            ELSE ns.nspname = n.schema END \
                 ORDER BY pg_catalog.array_position(pg_catalog.current_schemas(true), ns.nspname) \
                 LIMIT 1) AS c ON true \
             LEFT JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace \
             ORDER BY n.i",
            &[(&schemas, Type::TEXT_ARRAY), (&relnames, Type::TEXT_ARRAY)],
        )
        .await?;
    let citus = rows.first().is_some_and(|r| r.get(10));
    let work_mem = rows
        .first()
        .and_then(|r| r.get::<_, String>(11).parse().ok())
        .unwrap_or(Memory::from_kilobytes(4096));
    let views = rows
        .iter()
        .zip(names)
        .map(|(row, name)| found(row, name))
        .collect();
    Ok(Catalog {
        views,
        citus,
        work_mem,
    })
}

/// One row of [`find`]'s query.
fn found(row: &tokio_postgres::Row, name: &ViewName) -> Found {
    let Some(oid) = row.get::<_, Option<u32>>(0) else {
        let schema: String = row.get(9);
        return Found {
            lookup: Lookup::Missing {
                qualified: format!("{}.{}", display_ident(&schema), display_ident(&name.name)),
                schema,
                name: name.name.clone(),
            },
            state: None,
            denied: None,
        };
    };
    let relation = Relation {
        oid,
        schema: row.get(1),
        name: row.get(2),
    };
    let kind: i8 = row.get(3);
    if matches!(kind as u8, b'r' | b'p') {
        return Found {
            lookup: Lookup::Table(relation),
            state: None,
            denied: None,
        };
    }
    if kind as u8 != b'm' {
        return Found {
            lookup: Lookup::Other {
                relation,
                kind: relkind_name(kind),
            },
            state: None,
            denied: None,
        };
    }
    let (allowed, owner, user): (bool, String, String) = (row.get(6), row.get(7), row.get(8));
    Found {
        lookup: Lookup::MatView(relation),
        state: Some(ViewState {
            populated: row.get(4),
            has_usable_unique_index: row.get(5),
        }),
        denied: (!allowed).then(|| {
            format!(
                "may not be refreshed by role {user:?}: only its owner {owner:?}, a member of that \
                 role (GRANT {owner} TO {user}) or, on PostgreSQL 17, a role with MAINTAIN on it may"
            )
        }),
    }
}

/// The schema-qualified names of `views`, as the log tables and the metrics
/// know them, each found the way PostgreSQL would, in one statement; and
/// whether each names something that can be refreshed at all.
pub async fn registry_names(
    client: &impl GenericClient,
    views: &[crate::registry::ViewSpec],
) -> Result<Vec<RegistryName>, tokio_postgres::Error> {
    let names: Vec<ViewName> = views.iter().map(|view| view.name.clone()).collect();
    let catalog = find(client, &names).await?;
    Ok(views
        .iter()
        .zip(&catalog.views)
        .map(|(view, found)| RegistryName {
            qualified: found.lookup.qualified_name(),
            unrefreshable: !found.lookup.fits(view.incremental.is_some()),
            not_here: view
                .incremental
                .as_ref()
                .and_then(|i| found.lookup.not_here(i.create))
                .is_some(),
        })
        .collect())
}

/// Finds one name; see [`find`].
pub async fn lookup(
    client: &impl GenericClient,
    name: &ViewName,
) -> Result<Lookup, tokio_postgres::Error> {
    let mut catalog = find(client, std::slice::from_ref(name)).await?;
    Ok(catalog.views.remove(0).lookup)
}

/// The pairs `(view, dependency)` among `oids`: `view` reads `dependency`,
/// directly, through plain views, or through SQL functions whose bodies the
/// catalog knows (`BEGIN ATOMIC`, PostgreSQL 14+), to any depth.
pub async fn dependencies(
    client: &impl GenericClient,
    oids: &[u32],
) -> Result<Vec<(u32, u32)>, tokio_postgres::Error> {
    // `reads` holds every relation and function a view reaches: its rule's
    // dependencies, then those of each plain view (its rule) and each function
    // (its body) reached. Types, operators and the like are never followed.
    // Functions with a string body (`AS '...'`, PL/pgSQL) record nothing.
    let rows = client
        .query_typed(
            "WITH RECURSIVE reads(viewer, classid, objid) AS ( \
                 SELECT r.ev_class, d.refclassid, d.refobjid \
                 FROM pg_catalog.pg_rewrite r \
                 JOIN pg_catalog.pg_depend d \
                   ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
                 WHERE r.ev_class = ANY ($1) \
                   AND d.refclassid IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_proc'::regclass) \
               UNION \
                 SELECT reads.viewer, d.refclassid, d.refobjid \
                 FROM reads \
                 LEFT JOIN pg_catalog.pg_class c \
                   ON reads.classid = 'pg_catalog.pg_class'::regclass AND c.oid = reads.objid \
                  AND c.relkind = 'v' \
                 LEFT JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid \
                 JOIN pg_catalog.pg_depend d \
                   ON d.classid = CASE WHEN r.oid IS NULL THEN reads.classid \
                                       ELSE 'pg_catalog.pg_rewrite'::regclass END \
                  AND d.objid = coalesce(r.oid, reads.objid) \
                 WHERE (r.oid IS NOT NULL OR reads.classid = 'pg_catalog.pg_proc'::regclass) \
                   AND d.refclassid IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_proc'::regclass) \
             ) \
             SELECT DISTINCT viewer, objid FROM reads \
             WHERE classid = 'pg_catalog.pg_class'::regclass AND objid = ANY ($1) \
               AND viewer <> objid",
            &[(&oids, Type::OID_ARRAY)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Dead and live rows of a view, as the refresh's own transaction sees them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bloat {
    pub dead: f64,
    pub live: f64,
}

impl Bloat {
    /// Autovacuum's default trigger: more dead rows than 50 + 20% of the live ones.
    pub fn needs_vacuum(self) -> bool {
        self.dead > 50.0 + 0.2 * self.live
    }
}

/// Reads the view's dead rows: those its statistics knew of, plus those the
/// current transaction left (committed statistics arrive only later).
///
/// The statistics functions are called directly: `pg_stat_all_tables` and
/// `pg_stat_xact_all_tables` are views over them whose planning cost more
/// than the whole rest of a small view's success row (0.4 ms a view).
pub async fn bloat(client: &impl GenericClient, oid: u32) -> Result<Bloat, tokio_postgres::Error> {
    let sql = format!("SELECT {}", bloat_columns("$1"));
    let row = client.query_typed_one(&sql, &[(&oid, Type::OID)]).await?;
    Ok(Bloat {
        dead: row.get(0),
        live: row.get(1),
    })
}

/// The select list of [`bloat`] for the relation whose OID is `oid` (SQL):
/// its dead rows and its rows, both `float8`.
pub fn bloat_columns(oid: &str) -> String {
    format!(
        "(pg_catalog.pg_stat_get_xact_tuples_deleted({oid}) \
          + pg_catalog.pg_stat_get_xact_tuples_updated({oid}) \
          + pg_catalog.pg_stat_get_dead_tuples({oid}))::float8, \
         greatest((SELECT c.reltuples FROM pg_catalog.pg_class c WHERE c.oid = {oid})::float8, \
                  (pg_catalog.pg_stat_get_live_tuples({oid}) \
                   + pg_catalog.pg_stat_get_xact_tuples_inserted({oid}) \
                   - pg_catalog.pg_stat_get_xact_tuples_deleted({oid}))::float8, 0)"
    )
}

/// Whether this database, which has the `citus` extension, is the Citus
/// coordinator.
pub async fn is_citus_coordinator(
    client: &impl GenericClient,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_typed_one("SELECT citus_is_coordinator()", &[])
        .await?;
    Ok(row.get(0))
}
