//! The proof of an incremental view's template (SPEC §2.5): for a sample of
//! keys, the query restricted by its `$changed` returns exactly the full
//! query's rows of those keys. A `$changed` on the wrong expression, or one
//! in a block whose rows do not map to the key (a total over more than the
//! key), drops or changes rows of some key, and the proof names the key,
//! the columns and the `$changed` without which the rows agree.
//!
//! The keys: some of the table's (when it exists), those of each source's
//! newest rows, and one made to exist nowhere. Each comparison is one
//! statement, so one snapshot, run on the caller's transaction: `check`
//! runs it read-only under a statement timeout, a first load in its own
//! transaction before it creates anything.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::catalog::Target;
use super::sql::Statements;
use crate::registry::Incremental;

/// Keys drawn from the table, and from each source.
const SAMPLE: usize = 20;

/// Differences reported per view.
const SHOWN: usize = 5;

/// As many differences as there are.
const ALL: usize = 1 << 40;

/// What the proof found.
#[derive(Debug)]
pub enum Verdict {
    /// The restricted query agreed with the full one on `keys` keys.
    Proven { keys: usize },
    /// It did not: the first differences, and how many keys differ.
    Differs {
        differences: Vec<Difference>,
        total: i64,
        keys: usize,
    },
    /// The statement timeout ended it.
    Unfinished,
}

/// One key whose rows differ.
#[derive(Debug)]
pub struct Difference {
    /// The key, as `ROW(...)::text` prints it.
    pub key: String,
    /// How: missing from the restricted query, or differs.
    pub how: String,
    /// The columns whose values differ, comma-separated.
    pub columns: String,
    /// The `$changed` without which the rows of this key agree, as written.
    pub causes: Vec<String>,
}

impl Difference {
    /// One line for a person: key, how, columns, the likely cause.
    pub fn describe(&self) -> String {
        let mut line = format!("key {}: {}", self.key, self.how);
        if !self.columns.is_empty() {
            line.push_str(&format!(" (column {})", self.columns));
        }
        match self.causes.as_slice() {
            [] => line.push_str(
                "; no single $changed explains it: is a block aggregated over more than the key?",
            ),
            causes => line.push_str(&format!(
                "; likely cause: {} (without it the rows agree)",
                causes.join(", ")
            )),
        }
        line
    }
}

/// The longest a proof's statement may take outside a refresh (`check`,
/// `twin`; less where the view's own `statement_timeout` is less): they run
/// before deployments.
pub const TIMEOUT_MS: u64 = 60_000;

/// Both proofs of a view, in a read-only transaction of their own.
pub struct Proof {
    pub template: Verdict,
    /// The sources' keys: `None` when the statement timeout ended it, or
    /// the template's proof did not finish.
    pub sources: Option<Vec<Unmapped>>,
}

/// Proves `spec`'s template and then its sources' keys, read-only in one
/// `REPEATABLE READ` snapshot, each statement under `timeout_ms`.
pub async fn prove_read_only(
    client: &Client,
    spec: &Incremental,
    target: &Target,
    timeout_ms: u64,
) -> Result<Proof, tokio_postgres::Error> {
    let begin = [
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".to_owned(),
        format!("SET LOCAL statement_timeout = {timeout_ms}"),
        "SET LOCAL jit = off".to_owned(),
    ];
    crate::db::execute_each(client, &begin).await?;
    let proof = async {
        let template = prove(client, spec, target).await?;
        let sources = match template {
            Verdict::Unfinished => None,
            _ => sources(client, spec, target).await?,
        };
        Ok(Proof { template, sources })
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    proof
}

/// Proves `spec`'s template on `client`'s transaction. A statement timeout
/// (`query_canceled`) is [`Verdict::Unfinished`]; other errors are returned.
pub async fn prove(
    client: &Client,
    spec: &Incremental,
    target: &Target,
) -> Result<Verdict, tokio_postgres::Error> {
    match compare(client, &Statements { spec, target }).await {
        Err(err) if err.code() == Some(&SqlState::QUERY_CANCELED) => Ok(Verdict::Unfinished),
        other => other,
    }
}

/// The proof, any error returned (a timeout too: a first load's transaction
/// cannot go on after it).
pub async fn compare(
    client: &Client,
    statements: &Statements<'_>,
) -> Result<Verdict, tokio_postgres::Error> {
    let absent = absent_key(statements);
    let rows = client
        .query_typed(&statements.sample_keys(SAMPLE, absent.as_deref()), &[])
        .await?;
    let width = statements.spec.key.len();
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); width];
    let mut seen = std::collections::HashSet::new();
    for row in &rows {
        let key: Vec<Option<String>> = (0..width).map(|i| row.get(i + 1)).collect();
        // A NULL in the key is no key.
        if key.iter().any(Option::is_none) || !seen.insert(key.clone()) {
            continue;
        }
        for (column, value) in columns.iter_mut().zip(key) {
            column.push(value);
        }
    }
    let keys = seen.len();
    let params: Vec<(&(dyn ToSql + Sync), Type)> = columns
        .iter()
        .map(|c| (c as &(dyn ToSql + Sync), Type::TEXT_ARRAY))
        .collect();
    let rows = client
        .query_typed(&statements.proof(None, SHOWN), &params)
        .await?;
    let Some(first) = rows.first() else {
        return Ok(Verdict::Proven { keys });
    };
    let total: i64 = first.get(3);
    let mut differences: Vec<Difference> = rows
        .iter()
        .map(|row| Difference {
            key: row.get(0),
            how: row.get(1),
            columns: row.get(2),
            causes: Vec::new(),
        })
        .collect();
    // Each `$changed` in turn made true: a key whose rows then agree was
    // restricted wrongly by it.
    let marks = statements.spec.query.arities().count();
    for i in 0..marks {
        let still: Vec<String> = client
            .query_typed(&statements.proof(Some(i), ALL), &params)
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for difference in differences.iter_mut() {
            if !still.contains(&difference.key)
                && let Some(mark) = statements.spec.query.mark(i)
            {
                difference.causes.push(mark);
            }
        }
    }
    Ok(Verdict::Differs {
        differences,
        total,
        keys,
    })
}

/// A source whose rows change keys its `key` does not map them to.
#[derive(Debug)]
pub struct Unmapped {
    /// The source, as the catalog names it.
    pub source: String,
    /// Its key expressions, as the registry gives them.
    pub key: Vec<String>,
    /// Some of the keys whose rows change, as `ROW(...)::text` prints them.
    pub keys: Vec<String>,
}

impl Unmapped {
    pub fn describe(&self) -> String {
        format!(
            "source {}: without its newest rows the query's rows of key {} change, which its key \
             ({}) does not give those rows: is the key mapped to the wrong columns, or does a \
             block total more than the view's key?",
            self.source,
            self.keys.join(", "),
            self.key.join(", ")
        )
    }
}

/// The proof of the sources' keys: the full query with and without each
/// source's newest rows (by marker), in one statement; the keys whose
/// rows differ must be those the source's `key` gives the rows left out. A
/// source key on the wrong columns, or a block that totals more than the
/// key (a tenant's sum beside each user) with no `$changed`, changes other
/// keys' rows: a cycle would recompute too few. `Ok(None)`: the statement
/// timeout ended it.
pub async fn sources(
    client: &Client,
    spec: &Incremental,
    target: &Target,
) -> Result<Option<Vec<Unmapped>>, tokio_postgres::Error> {
    let statements = Statements { spec, target };
    let Some(sql) = statements.without_newest(SAMPLE) else {
        return Ok(Some(Vec::new()));
    };
    let rows = match client.query_typed(&sql, &[]).await {
        Err(err) if err.code() == Some(&SqlState::QUERY_CANCELED) => return Ok(None),
        rows => rows?,
    };
    let mut unmapped: Vec<Unmapped> = Vec::new();
    for row in &rows {
        let (i, key): (i32, String) = (row.get(0), row.get(1));
        let source = &target.sources[i as usize];
        let name = source.relation.to_string();
        match unmapped.iter_mut().find(|u| u.source == name) {
            Some(u) => u.keys.push(key),
            None => unmapped.push(Unmapped {
                source: name,
                key: source.spec.key.clone(),
                keys: vec![key],
            }),
        }
    }
    Ok(Some(unmapped))
}

/// A key no row has, one value per key column by its type: an integer or
/// number far below any id, a string no application writes. `None` when a
/// key column's type has no such value here.
fn absent_key(statements: &Statements<'_>) -> Option<Vec<String>> {
    statements
        .target
        .key_types(statements.spec)
        .map(|ty| {
            let ty = ty.to_ascii_lowercase();
            let value = match ty.as_str() {
                "smallint" => "-32767",
                "integer" | "bigint" => "-987654321",
                t if t.starts_with("numeric") => "-987654321",
                "text" => "mv-refresher: absent",
                t if t.starts_with("character") => "mv-refresher: absent",
                "uuid" => "00000000-0000-4000-8000-00000000a65e",
                _ => return None,
            };
            Some(value.to_owned())
        })
        .collect()
}
