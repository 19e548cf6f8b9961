//! Markers against the server's clock. A marker that is time (a timestamp,
//! or an integer holding epoch milliseconds) gives a watermark that never
//! passes the clock of the cycle's snapshot, so one row written by a skewed
//! clock cannot hide the rows written after it; the rows more than
//! [`ALLOWANCE`] ahead of the clock are counted here for `check` and `status`,
//! which report them. Other markers (sequences, counters) have no bound.

use tokio_postgres::GenericClient;

use super::catalog::{MarkerKind, SourcePlan};
use crate::quote::quote_ident;

/// How far ahead of the server's clock a marker may be before its row is
/// reported: application servers' clocks drift a little.
pub const ALLOWANCE: &str = "5min";
const ALLOWANCE_SQL: &str = "interval '5 minutes'";

/// An integer marker is read as epoch milliseconds when its largest value
/// below the upper bound is at least the lower one: 2001-09-09 to 2286-11-20
/// in milliseconds, where no honest time is in seconds or microseconds.
const EPOCH_MS: (&str, &str) = ("1000000000000", "10000000000000");

/// How many rows ahead of the clock are counted, at most.
pub const COUNTED: i64 = 1000;

/// `clock` (a `timestamptz` expression) in the terms of `source`'s marker,
/// or `None` when the marker is not time. A `timestamp` marker is read in
/// the session's `TimeZone`; an integer or numeric marker is time when its
/// values are epoch milliseconds (see [`EPOCH_MS`]), and never when a
/// sequence draws it. A bound too low only makes a cycle read rows again.
pub fn clock_bound(source: &SourcePlan, clock: &str) -> Option<String> {
    let ty = source.marker_type.as_str();
    match ty {
        "timestamp with time zone" => Some(format!("({clock})")),
        "timestamp without time zone" => Some(format!("({clock})::timestamp")),
        "date" => Some(format!("({clock})::date")),
        "bigint" | "numeric" | "double precision" if !is_sequence(source) => {
            Some(epoch_ms(source, clock))
        }
        _ if ty.starts_with("numeric(") && !is_sequence(source) => Some(epoch_ms(source, clock)),
        _ => None,
    }
}

fn is_sequence(source: &SourcePlan) -> bool {
    matches!(source.marker_kind, MarkerKind::Sequence(_))
}

/// `clock` in epoch milliseconds when `source`'s markers are, else NULL.
fn epoch_ms(source: &SourcePlan, clock: &str) -> String {
    let (m, ty) = (quote_ident(&source.spec.marker), &source.marker_type);
    let (low, high) = EPOCH_MS;
    format!(
        "(CASE WHEN (SELECT max({m}) FROM {} WHERE {m} < {high}) >= {low} \
         THEN floor(extract(epoch FROM {clock}) * 1000)::{ty} END)",
        source.relation.quoted()
    )
}

/// Rows of one source whose marker is more than [`ALLOWANCE`] ahead of the
/// server's clock.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ahead {
    pub source: String,
    /// How many, counted up to [`COUNTED`] + 1.
    pub rows: i64,
    /// The largest of their markers, as text.
    pub largest: String,
}

impl std::fmt::Display for Ahead {
    /// `source public.s: 1 row(s) with a marker more than 5min ahead of the
    /// server's clock (up to ...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = match self.rows > COUNTED {
            true => format!("more than {COUNTED}"),
            false => self.rows.to_string(),
        };
        write!(
            f,
            "source {}: {rows} row(s) with a marker more than {ALLOWANCE} ahead of the server's \
             clock (up to {})",
            self.source, self.largest
        )
    }
}

/// The rows ahead of the clock in each of `sources` whose marker is time
/// and indexed (counting is then a short index scan; without the index
/// `check` already warns that every cycle reads the whole table). One
/// statement; only sources that have such rows are returned.
pub async fn ahead(
    client: &impl GenericClient,
    sources: &[SourcePlan],
) -> Result<Vec<Ahead>, tokio_postgres::Error> {
    let clock = format!("statement_timestamp() + {ALLOWANCE_SQL}");
    let counted: Vec<(&SourcePlan, String)> = sources
        .iter()
        .filter(|s| s.marker_index.is_some())
        .filter_map(|s| {
            let bound = clock_bound(s, &clock)?;
            let m = quote_ident(&s.spec.marker);
            Some((
                s,
                format!(
                    "SELECT count(*), max(m)::text FROM (SELECT {m} AS m FROM {} \
                     WHERE {m} > {bound} LIMIT {}) a",
                    s.relation.quoted(),
                    COUNTED + 1
                ),
            ))
        })
        .collect();
    if counted.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<String> = counted
        .iter()
        .enumerate()
        .map(|(i, (_, sql))| format!("SELECT {i}, * FROM ({sql}) c{i}"))
        .collect();
    let rows = client.query_typed(&parts.join(" UNION ALL "), &[]).await?;
    let mut found: Vec<(i32, Ahead)> = rows
        .iter()
        .map(|row| (row.get::<_, i32>(0), row.get::<_, i64>(1), row.get(2)))
        .filter(|(_, count, _)| *count > 0)
        .map(|(i, rows, largest): (i32, i64, Option<String>)| {
            let source = counted[i as usize].0.relation.to_string();
            let largest = largest.unwrap_or_default();
            (
                i,
                Ahead {
                    source,
                    rows,
                    largest,
                },
            )
        })
        .collect();
    found.sort_by_key(|(i, _)| *i);
    Ok(found.into_iter().map(|(_, ahead)| ahead).collect())
}
