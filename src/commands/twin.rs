//! `twin VIEW`: the registry entry of a materialized view's incremental twin
//! (SPEC §2.1, §2.5), derived and then proven. The key is the view's unique
//! index; `$changed` and the sources' keys come from the definition's parse
//! tree ([`crate::incremental::derive`]); each source's marker from the
//! catalog. TOML goes to stdout, the reasoning to stderr; exit 1 when the
//! view cannot be decomposed by key, a source has no usable marker, or the
//! proof fails.

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::config::TwinConfig;
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::incremental::derive::{self, Derived};
use crate::incremental::proof::{self, Proof, Verdict};
use crate::quote::display_ident;
use crate::refresh_log::RefreshLog;
use crate::registry::Registry;

pub(super) async fn twin(
    target: &DbTarget,
    log: &RefreshLog,
    options: &TwinConfig,
) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);
    let Some(view) = view(&client, &options.view)
        .await
        .map_err(db_err("reading the view's definition"))?
    else {
        return Err(Error::Usage(format!(
            "{}: no materialized view of that name",
            options.view
        )));
    };
    let refuse = |why: String| {
        eprintln!("{}: {why}", view.name);
        Ok(Exit::ViewsFailed)
    };
    let Some(key) = view.key.clone() else {
        return refuse(format!(
            "no unique index on plain columns, so its twin has no key \
             (CREATE UNIQUE INDEX ON {} (...) on the columns that identify a row)",
            view.name
        ));
    };
    let derived = match derive::derive(&view.definition, &key) {
        Ok(derived) => derived,
        Err(why) => return refuse(why),
    };
    let mut changes = Vec::new();
    for source in &derived.sources {
        let marker = marker(&client, &source.table, &options.markers)
            .await
            .map_err(db_err("reading the sources' markers"))?;
        match marker {
            Ok(marker) => changes.push((source, marker)),
            Err(why) => return refuse(why),
        }
    }
    let name = options.name.clone().unwrap_or_else(|| twin_name(&view));
    let toml = entry(&name, &key, &derived, &changes);
    eprintln!(
        "{}: rows whose key ({}) holds a NULL are left out: the twin's key is its primary key",
        view.name,
        key.join(", ")
    );
    for (source, marker) in &changes {
        eprintln!(
            "{}: source {} keyed by ({}), marker {} ({})",
            view.name,
            marker.table,
            source.key.join(", "),
            marker.column,
            marker.why
        );
    }
    let registry = Registry::parse(&toml, "the derived entry")
        .map_err(|e| Error::Usage(format!("the derived entry does not read back: {e}")))?;
    let (_, plan) = super::plan(&client, target, log, &registry.views).await?;
    let step = &plan.steps[0];
    let (Some(spec), Some(found)) = (&step.spec.incremental, &step.incremental) else {
        return refuse(format!(
            "the derived entry cannot be planned: {}",
            step.problem.as_deref().unwrap_or("no incremental view")
        ));
    };
    let Proof { template, sources } =
        proof::prove_read_only(&client, spec, found, proof::TIMEOUT_MS)
            .await
            .map_err(db_err("proving the twin"))?;
    if let Some(unmapped) = sources
        && !unmapped.is_empty()
    {
        for u in &unmapped {
            eprintln!("{}: {}", view.name, u.describe());
        }
        return refuse("the derived twin failed its proof".into());
    }
    match template {
        Verdict::Proven { keys } => eprintln!(
            "{}: proven on {keys} keys: restricted by its $changed, the query returns the full \
             query's rows",
            view.name
        ),
        Verdict::Unfinished => eprintln!(
            "{}: warning: the proof did not finish within {} s: run `mv-refresher verify` after \
             the first refresh",
            view.name,
            proof::TIMEOUT_MS / 1000
        ),
        Verdict::Differs { differences, .. } => {
            for d in &differences {
                eprintln!("{}: {}", view.name, d.describe());
            }
            return refuse("the derived twin failed its proof".into());
        }
    }
    if plan.citus {
        citus_advice(&client, &view.name, &name, &key, &changes).await;
    }
    print!("{toml}");
    Ok(Exit::Success)
}

/// The materialized view: its name, definition and key.
struct View {
    /// Schema-qualified.
    name: String,
    schema: String,
    relname: String,
    definition: String,
    /// The columns of its unique index (the primary one, else the narrowest).
    /// Not the catalog's `unique_keys`: those are a table's keys for
    /// `ON CONFLICT`, on `NOT NULL` columns, which a materialized view's
    /// columns never are.
    key: Option<Vec<String>>,
}

async fn view(client: &Client, name: &str) -> Result<Option<View>, tokio_postgres::Error> {
    let row = client
        .query_typed_opt(
            "SELECT n.nspname::text, c.relname::text, pg_catalog.pg_get_viewdef(c.oid, true), \
                 (SELECT array_agg(a.attname::text ORDER BY k.i) \
                  FROM (SELECT i.indexrelid, i.indkey FROM pg_catalog.pg_index i \
                        WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL \
                          AND i.indexprs IS NULL \
                        ORDER BY i.indisprimary DESC, i.indnkeyatts, i.indexrelid LIMIT 1) u, \
                       unnest(u.indkey) WITH ORDINALITY AS k(attnum, i) \
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = pg_catalog.to_regclass($1) AND c.relkind = 'm'",
            &[(&name, Type::TEXT)],
        )
        .await?;
    Ok(row.map(|row| {
        let (schema, relname): (String, String) = (row.get(0), row.get(1));
        View {
            name: format!("{schema}.{relname}"),
            schema,
            relname,
            definition: row.get(2),
            key: row.get(3),
        }
    }))
}

/// The view's name without `_view`, or with `_incremental`; in its schema.
fn twin_name(view: &View) -> String {
    let base = match view.relname.strip_suffix("_view") {
        Some(base) if !base.is_empty() => base.to_owned(),
        _ => format!("{}_incremental", view.relname),
    };
    match view.schema.as_str() {
        "public" => base,
        schema => format!("{schema}.{base}"),
    }
}

/// A source's marker, and why it was chosen.
struct Marker {
    /// The source, schema-qualified.
    table: String,
    column: String,
    /// `lag`, as TOML; `None`: writers are waited for.
    lag: Option<String>,
    why: String,
}

/// Chooses `table`'s marker (SPEC §2.5): `--marker` first; else a column
/// the application sets on every write (`last_updated_*`, `updated_at`,
/// `*_updated_at`, `*_timestamp`) with an index that starts with it; else one
/// drawn from a sequence or `clock_timestamp()` on insert (new rows only).
/// The error names the source and the index that would make one.
async fn marker(
    client: &Client,
    table: &str,
    given: &[String],
) -> Result<Result<Marker, String>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), \
                 a.attname::text, \
                 pg_catalog.format_type(a.atttypid, a.atttypmod), \
                 coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity::text, \
                 EXISTS (SELECT FROM pg_catalog.pg_index i \
                         WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum), c.relkind::text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                 AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
             WHERE c.oid = pg_catalog.to_regclass($1) ORDER BY a.attnum",
            &[(&table, Type::TEXT)],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(Err(format!("source {table}: not found")));
    };
    let qualified: String = first.get(0);
    if first.get::<_, String>(6) == "v" {
        return Ok(Err(format!(
            "source {qualified} is a view: a twin follows tables (write the view's tables into \
             the query, or make it a materialized view)"
        )));
    }
    struct Column {
        name: String,
        type_name: String,
        default: String,
        identity: String,
        indexed: bool,
    }
    let columns: Vec<Column> = rows
        .iter()
        .map(|r| Column {
            name: r.get(1),
            type_name: r.get(2),
            default: r.get(3),
            identity: r.get(4),
            indexed: r.get(5),
        })
        .collect();
    let lag = |c: &Column| match c.type_name.as_str() {
        t if t.starts_with("timestamp") || t == "date" => Some("\"1min\"".to_owned()),
        _ => Some("60000".to_owned()),
    };
    let short = qualified
        .rsplit('.')
        .next()
        .unwrap_or(&qualified)
        .to_owned();
    if let Some(column) = given.iter().find_map(|m| {
        let (t, c) = m.rsplit_once('.')?;
        (t == table || t == qualified || t == short).then_some(c)
    }) {
        let Some(c) = columns.iter().find(|c| c.name == column) else {
            return Ok(Err(format!("--marker {table}.{column}: no such column")));
        };
        return Ok(Ok(Marker {
            table: qualified,
            column: c.name.clone(),
            lag: lag(c),
            why: "given by --marker".into(),
        }));
    }
    let set_by_application = |name: &str| {
        name.starts_with("last_updated")
            || name == "updated_at"
            || name.ends_with("_updated_at")
            || name.ends_with("_timestamp")
    };
    let rank = |name: &str| match name {
        n if n.starts_with("last_updated") => 0,
        "updated_at" => 1,
        n if n.ends_with("_updated_at") => 2,
        _ => 3,
    };
    let mut named: Vec<&Column> = columns
        .iter()
        .filter(|c| set_by_application(&c.name))
        .collect();
    named.sort_by_key(|c| rank(&c.name));
    if let Some(c) = named.iter().find(|c| c.indexed) {
        return Ok(Ok(Marker {
            table: qualified,
            column: c.name.clone(),
            lag: lag(c),
            why: format!(
                "set by the application on each write, with an index: late commits caught \
                 within lag = {}",
                lag(c).unwrap_or_default()
            ),
        }));
    }
    let drawn = |c: &Column| {
        c.identity == "a"
            || c.default.starts_with("nextval(")
            || (c.default == "clock_timestamp()" && c.type_name == "timestamp with time zone")
    };
    if let Some(c) = columns.iter().find(|c| c.indexed && drawn(c)) {
        return Ok(Ok(Marker {
            table: qualified,
            column: c.name.clone(),
            lag: None,
            why: "drawn on insert (a sequence or clock_timestamp()): its writers are waited \
                  for, lag = 0; it sees new rows only, and updates wait for the full reconcile"
                .into(),
        }));
    }
    Ok(Err(match named.first() {
        Some(c) => format!(
            "source {qualified} has no usable marker: {} marks its changes but no index starts \
             with it, so every cycle would read the whole table \
             (CREATE INDEX ON {qualified} ({}); or --marker {short}.COLUMN)",
            c.name,
            display_ident(&c.name)
        ),
        None => format!(
            "source {qualified} has no column that marks its changes (last_updated_*, \
             updated_at, *_timestamp, or one drawn from a sequence, with an index): add one, \
             or name it with --marker {short}.COLUMN"
        ),
    }))
}

/// The registry entry, as TOML.
fn entry(
    name: &str,
    key: &[String],
    derived: &Derived,
    changes: &[(&derive::Source, Marker)],
) -> String {
    let string = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let list = |items: &[String]| {
        let items: Vec<String> = items.iter().map(|s| string(s)).collect();
        format!("[{}]", items.join(", "))
    };
    let query = derived
        .query
        .replace('\\', "\\\\")
        .replace("\"\"\"", "\"\"\\\"");
    let mut toml = format!(
        "[[view]]\nname = {}\nkey = {}\nquery = \"\"\"\n{}\n\"\"\"\n",
        string(name),
        list(key),
        query.trim_end()
    );
    for (source, marker) in changes {
        toml.push_str(&format!(
            "\n[[view.changes]]\ntable = {}\nkey = {}\nmarker = {}\n",
            string(&marker.table),
            list(&source.key),
            string(&marker.column)
        ));
        if let Some(lag) = &marker.lag {
            toml.push_str(&format!("lag = {lag}\n"));
        }
    }
    toml
}

/// On Citus: how to create the twin distributed and co-located with its
/// sources, when the key holds their distribution column.
async fn citus_advice(
    client: &Client,
    view: &str,
    name: &str,
    key: &[String],
    changes: &[(&derive::Source, Marker)],
) {
    let tables: Vec<String> = changes.iter().map(|(_, m)| m.table.clone()).collect();
    let Ok(rows) = client
        .query_typed(
            "SELECT p.logicalrelid::regclass::text, \
                 pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) \
             FROM pg_dist_partition p \
             WHERE p.logicalrelid = ANY (SELECT pg_catalog.to_regclass(t) FROM unnest($1::text[]) t) \
               AND p.partmethod = 'h'",
            &[(&tables, Type::TEXT_ARRAY)],
        )
        .await
    else {
        return;
    };
    let columns: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    let (Some(first), Some(column)) = (rows.first(), columns.first()) else {
        return;
    };
    if columns.iter().all(|c| c == column) && key.contains(column) {
        let source: String = first.get(0);
        eprintln!(
            "{view}: on Citus, create the twin distributed and co-located with its sources before \
             its first refresh (the refresher creates plain tables): \
             CREATE TABLE {name} (LIKE {view}); ALTER TABLE {name} ADD PRIMARY KEY ({}); \
             SELECT create_distributed_table('{name}', '{column}', colocate_with => '{source}');",
            key.join(", ")
        );
    }
}
