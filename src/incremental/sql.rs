//! The statements of an incremental cycle, made from the registry's SQL (the
//! query, the sources' key expressions, trusted like the registry itself)
//! and the catalog's names, always quoted. Values are bind parameters.
//!
//! Temporary tables live for one transaction (`ON COMMIT DROP`): the changed
//! keys, the query's rows for them, the table's rows for them (a full
//! reconcile reads the table itself), and the rows that differ. The differences are found between temporary tables on the
//! server the refresher talks to, and written with statements that read
//! them through plain subqueries: a Citus coordinator runs these against
//! distributed tables (it rejects a distributed table's `UPDATE ... FROM` a
//! local table, or a correlated subquery over one).

use super::catalog::{SourcePlan, Target, is_time};
use super::markers::clock_bound;
use crate::quote::quote_ident;
use crate::registry::{Incremental, Lag};

const CHANGED: &str = "pg_temp.mv_refresher_changed";
const RESULT: &str = "pg_temp.mv_refresher_result";
const CURRENT: &str = "pg_temp.mv_refresher_current";
const UPSERT: &str = "pg_temp.mv_refresher_upsert";

/// The statements of one incremental view.
pub struct Statements<'a> {
    pub spec: &'a Incremental,
    pub target: &'a Target,
}

impl Statements<'_> {
    fn keys(&self, prefix: &str) -> String {
        let keys: Vec<String> = self
            .spec
            .key
            .iter()
            .map(|k| format!("{prefix}{}", quote_ident(k)))
            .collect();
        keys.join(", ")
    }

    fn keys_equal(&self, left: &str, right: &str) -> String {
        let pairs: Vec<String> = self
            .spec
            .key
            .iter()
            .map(|k| format!("{left}.{k} = {right}.{k}", k = quote_ident(k)))
            .collect();
        pairs.join(" AND ")
    }

    fn values(&self) -> Vec<String> {
        self.target
            .columns
            .iter()
            .filter(|c| !self.spec.key.contains(&c.name))
            .map(|c| quote_ident(&c.name))
            .collect()
    }

    /// Creates the table on the first refresh, empty, with the key as its
    /// primary key; the full load that follows fills it.
    pub fn create_table(&self) -> String {
        format!(
            "CREATE TABLE {t} AS {query} WITH NO DATA; ALTER TABLE {t} ADD PRIMARY KEY ({keys})",
            t = self.target.quoted,
            query = self.spec.query.full(),
            keys = self.keys(""),
        )
    }

    /// The table of changed keys, typed like the view's key. No primary key:
    /// a key proven unique turns each `$changed` semi-join into a plain join,
    /// whose estimate multiplies the key columns' selectivities as if they
    /// were independent (a user's tenant is not): a few rows where there are
    /// thousands, and nested loops that re-read a grouped subquery per key.
    /// [`Self::changed_keys`] writes each key once.
    pub fn changed_table(&self) -> String {
        let columns: Vec<String> = self
            .spec
            .key
            .iter()
            .zip(self.target.key_types(self.spec))
            .map(|(k, ty)| format!("{} {ty}", quote_ident(k)))
            .collect();
        format!(
            "CREATE TEMPORARY TABLE mv_refresher_changed ({}) ON COMMIT DROP",
            columns.join(", ")
        )
    }

    /// The keys of the sources' rows changed since the last cycle, each once,
    /// in one statement: for source `i`, markers above its watermark
    /// (`$(3 + i)`, text) less its lag, or NULL; with `seen`, less the rows
    /// whose transaction ended before the last cycle's snapshot (`$2`, that
    /// snapshot's xmin; `$1`, the current snapshot's xmax, to widen 32-bit
    /// `xmin`s to full transaction ids).
    pub fn changed_keys(&self, sources: &[SourcePlan], seen: bool) -> String {
        format!(
            "INSERT INTO {CHANGED} {}",
            self.changed_reads(sources, seen)
        )
    }

    /// The keys the client read ([`Self::changed_keys_read`]), bound as text
    /// arrays (`$1` .. one per key column), written to the table of changed
    /// keys: the sources' changes are read once, however many keys.
    pub fn changed_keys_bound(&self) -> String {
        format!("INSERT INTO {CHANGED} {}", self.bound_keys())
    }

    /// The keys bound as text arrays, `$1` .. one per key column, as a query
    /// of the key's columns in the key's types.
    fn bound_keys(&self) -> String {
        let arrays: Vec<String> = self
            .target
            .key_types(self.spec)
            .enumerate()
            .map(|(i, ty)| format!("${}::text[]::{ty}[]", i + 1))
            .collect();
        format!("SELECT * FROM unnest({})", arrays.join(", "))
    }

    /// The same keys read by the client, as text, `limit` at most: few keys
    /// need no temporary table ([`Self::apply_few`]), more are written to it
    /// from the client ([`Self::changed_keys_bound`]).
    pub fn changed_keys_read(&self, sources: &[SourcePlan], seen: bool, limit: usize) -> String {
        let keys: Vec<String> = self
            .spec
            .key
            .iter()
            .map(|k| format!("c.{}::text", quote_ident(k)))
            .collect();
        format!(
            "SELECT {} FROM ({}) AS c LIMIT {limit}",
            keys.join(", "),
            self.changed_reads(sources, seen)
        )
    }

    fn changed_reads(&self, sources: &[SourcePlan], seen: bool) -> String {
        let reads: Vec<String> = sources
            .iter()
            .enumerate()
            .map(|(i, source)| self.changed_keys_of(source, &format!("${}", i + 3), seen))
            .collect();
        // UNION gives each key once; so does DISTINCT when there is one read.
        match reads.as_slice() {
            [one] => format!("SELECT DISTINCT * FROM ({one}) AS r"),
            _ => reads.join(" UNION "),
        }
    }

    fn changed_keys_of(&self, source: &SourcePlan, watermark: &str, seen: bool) -> String {
        let types: Vec<&str> = self.target.key_types(self.spec).collect();
        let exprs: Vec<String> = source
            .spec
            .key
            .iter()
            .zip(&types)
            .map(|(e, ty)| format!("({e})::{ty}"))
            .collect();
        // A source row whose key is NULL belongs to no row of the view.
        let nulls: Vec<String> = exprs.iter().map(|e| format!("{e} IS NULL")).collect();
        let named: Vec<String> = exprs
            .iter()
            .zip(&self.spec.key)
            .map(|(e, k)| format!("{e} AS {}", quote_ident(k)))
            .collect();
        let mut sql = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({})",
            named.join(", "),
            source.relation.quoted(),
            window(source, watermark),
            nulls.join(" OR ")
        );
        if seen {
            // Transaction ids that ended before the last snapshot's xmin were
            // seen by it. Those between its xmin and xmax are read again: the
            // snapshot lists top-level transactions only, and a row written by
            // a subtransaction of one still running would look seen.
            // A widened xmin at or past the current snapshot's xmax is no
            // transaction a visible row can have: it is a frozen row's old
            // xid more than 2^31 behind, seen long ago.
            let xmin = widened_xid("xmin", "$1::bigint");
            sql.push_str(&format!(
                " AND {xmin} >= $2::bigint AND {xmin} < $1::bigint"
            ));
        } else {
            // Bound all the same; always true.
            sql.push_str(" AND num_nulls($1::bigint, $2::bigint) >= 0");
        }
        sql
    }

    /// The new watermark of `source`: the largest marker (`$1`: the old one;
    /// `$2`: the highest value known complete, for waited-on markers), never
    /// past the clock of the cycle's snapshot (`$3`) when the marker is time
    /// ([`clock_bound`]): a row from a skewed clock must not hide the rows
    /// written after it. The bound also brings back a watermark already past
    /// it. NULL markers are no maximum. The largest marker is read in a
    /// subquery: Citus runs no subquery in the select list of an aggregate.
    pub fn watermark(&self, source: &SourcePlan) -> String {
        let (m, ty) = (quote_ident(&source.spec.marker), &source.marker_type);
        let highest = format!("greatest($1::text::{ty}, least(h.m, $2::text::{ty}))");
        let bounded = match clock_bound(source, "$3::text::timestamptz") {
            Some(clock) => format!("least({highest}, {clock})"),
            None => highest,
        };
        format!(
            "SELECT {bounded}::text FROM (SELECT max({m}) AS m FROM {}) h",
            source.relation.quoted()
        )
    }

    /// The query's rows: all of them, or those of the changed keys (in
    /// [`CHANGED`]).
    pub fn result(&self, full: bool) -> String {
        let query = match full {
            true => self.spec.query.full(),
            false => self.rows_of(&format!("SELECT {} FROM {CHANGED}", self.keys(""))),
        };
        format!("CREATE TEMPORARY TABLE mv_refresher_result ON COMMIT DROP AS {query}")
    }

    /// The query's rows of the keys `keys` (a query of the key's columns).
    /// The query restricts itself where its `$changed` are; its rows are
    /// then kept to those keys (a block without one returns others) behind a
    /// fence: inlined, the outer filter would be planned with the query's own
    /// and their selectivities multiplied, and an estimate of one row makes
    /// nested loops that re-read a grouped subquery once per key (2 minutes
    /// for 10,000 keys, where the fenced form takes half a second).
    fn rows_of(&self, keys: &str) -> String {
        let expanded = self.spec.query.expand(|args| {
            let args: Vec<String> = args.iter().map(|a| format!("({a})")).collect();
            format!("(({}) IN ({keys}))", args.join(", "))
        });
        format!(
            "WITH mv_refresher_rows AS MATERIALIZED ({expanded}\n) \
             SELECT * FROM mv_refresher_rows AS q WHERE ({}) IN ({keys})",
            self.keys("q.")
        )
    }

    /// One statement that applies the changes of a few keys, bound as text
    /// arrays (`$1` .. one per key column), with no temporary table: the
    /// query's rows of those keys, a key it returns twice (then nothing is
    /// written), the rows deleted (the keys the query no longer returns,
    /// found without looking each key up in the table), the rows that
    /// differ (their count, and how many of them are new) written. Returns one row: the twice
    /// returned key (or NULL), deleted, changed, new.
    pub fn apply_few(&self) -> String {
        let keys = self.bound_keys();
        let t = &self.target.quoted;
        let k = self.keys("");
        let first_key = format!("c.{}", quote_ident(&self.spec.key[0]));
        let differs = images_differ(&self.values(), "c", "r");
        format!(
            "WITH mv_refresher_result AS MATERIALIZED ({rows}), \
             mv_refresher_twice AS (SELECT ROW({k})::text AS key FROM mv_refresher_result \
                 GROUP BY {k} HAVING count(*) > 1 LIMIT 1), \
             mv_refresher_gone AS (DELETE FROM {t} AS t \
                 WHERE ({tk}) IN ({keys} EXCEPT SELECT {k} FROM mv_refresher_result) \
                 AND NOT EXISTS (SELECT FROM mv_refresher_twice) RETURNING 1), \
             mv_refresher_upsert AS MATERIALIZED (SELECT {rc}, {first_key} IS NULL AS mv_refresher_new \
                 FROM mv_refresher_result AS r LEFT JOIN {t} AS c ON {cr} \
                 WHERE NOT EXISTS (SELECT FROM mv_refresher_twice) \
                   AND ({first_key} IS NULL OR {differs})), \
             mv_refresher_written AS ({upsert} RETURNING 1) \
             SELECT (SELECT key FROM mv_refresher_twice), \
                    (SELECT count(*) FROM mv_refresher_gone), \
                    (SELECT count(*) FROM mv_refresher_upsert), \
                    (SELECT count(*) FROM mv_refresher_upsert WHERE mv_refresher_new), \
                    (SELECT count(*) FROM mv_refresher_written)",
            rows = self.rows_of(&keys),
            tk = self.keys("t."),
            rc = self.columns("r."),
            cr = self.keys_equal("c", "r"),
            upsert = self.upsert_from("mv_refresher_upsert"),
        )
    }

    /// A key the query returns twice, if any.
    pub fn duplicate(&self) -> String {
        format!(
            "SELECT ROW({k})::text FROM {RESULT} GROUP BY {k} HAVING count(*) > 1 LIMIT 1",
            k = self.keys("")
        )
    }

    /// The table's rows of the changed keys, beside the query's: the
    /// differences are found between the two on this server. A full
    /// reconcile compares with the table itself.
    pub fn current(&self) -> String {
        format!(
            "CREATE TEMPORARY TABLE mv_refresher_current ON COMMIT DROP AS \
             SELECT {} FROM {} AS t WHERE ({}) IN (SELECT {} FROM {CHANGED})",
            self.columns(""),
            self.target.quoted,
            self.keys("t."),
            self.keys("")
        )
    }

    /// What the query's rows are compared with.
    fn compared(&self, full: bool) -> &str {
        match full {
            true => &self.target.quoted,
            false => CURRENT,
        }
    }

    /// Deletes the rows whose key the query no longer returns.
    pub fn delete(&self, full: bool) -> String {
        let keys = self.keys("");
        format!(
            "DELETE FROM {} WHERE ({keys}) IN \
             (SELECT {keys} FROM {} EXCEPT SELECT {keys} FROM {RESULT})",
            self.target.quoted,
            self.compared(full)
        )
    }

    /// The query's rows that are not in the table as they are (new keys, and
    /// rows whose values differ, by their image), each marked whether its key
    /// is new.
    pub fn changed_rows(&self, full: bool) -> String {
        let differs = images_differ(&self.values(), "c", "r");
        let first_key = format!("c.{}", quote_ident(&self.spec.key[0]));
        format!(
            "CREATE TEMPORARY TABLE mv_refresher_upsert ON COMMIT DROP AS \
             SELECT {}, {first_key} IS NULL AS mv_refresher_new \
             FROM {RESULT} AS r LEFT JOIN {} AS c ON {} \
             WHERE {first_key} IS NULL OR {differs}",
            self.columns("r."),
            self.compared(full),
            self.keys_equal("c", "r"),
        )
    }

    /// How many of the changed rows have a key the table does not hold.
    pub fn new_keys(&self) -> String {
        format!("SELECT count(*) FILTER (WHERE mv_refresher_new) FROM {UPSERT}")
    }

    /// Writes the changed rows: inserted, or updated in place. Only rows that
    /// differ are written, so only they leave a dead row behind.
    pub fn upsert(&self) -> String {
        self.upsert_from(UPSERT)
    }

    fn upsert_from(&self, rows: &str) -> String {
        let values = self.values();
        let action = match values.is_empty() {
            true => "NOTHING".to_owned(),
            false => {
                let set: Vec<String> = values
                    .iter()
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                format!("UPDATE SET {}", set.join(", "))
            }
        };
        let columns = self.columns("");
        format!(
            "INSERT INTO {} ({columns}) SELECT {columns} FROM {rows} \
             ON CONFLICT ({}) DO {action}",
            self.target.quoted,
            self.keys("")
        )
    }

    fn columns(&self, prefix: &str) -> String {
        let columns: Vec<String> = self
            .target
            .columns
            .iter()
            .map(|c| format!("{prefix}{}", quote_ident(&c.name)))
            .collect();
        columns.join(", ")
    }
}

/// Whether the `values` (quoted column names) of the rows `left` and `right`
/// differ by their image (`*=`), as `REFRESH MATERIALIZED VIEW CONCURRENTLY`
/// compares rows: `1.0` and `1.000`, `-0` and `0`, two strings a
/// case-insensitive collation calls equal all differ, and a NULL differs from
/// any value but NULL. Both sides' columns must be of the same types. The key
/// is not compared: rows are matched by it with `=`.
pub fn images_differ(values: &[String], left: &str, right: &str) -> String {
    if values.is_empty() {
        return "false".to_owned();
    }
    // The operator's function, not `ROW(..) *= ROW(..)`: between row
    // constructors an operator is taken column by column (no column type has
    // `*=`), and a cast to `record` does not survive the deparsing with
    // which a Citus coordinator sends the statement to its workers.
    let image = |side: &str| {
        let columns: Vec<String> = values.iter().map(|c| format!("{side}.{c}")).collect();
        format!("ROW({})", columns.join(", "))
    };
    format!(
        "NOT pg_catalog.record_image_eq({}, {})",
        image(left),
        image(right)
    )
}

/// The 64-bit transaction id nearest to `near` (a full id, like a
/// snapshot's xmax) whose low 32 bits are the `xid` expression's: a row's
/// `xmin`, widened. Every xid a live row can hold is within 2^31 of the
/// current one (older ones are frozen, and a frozen row's old xmin only makes
/// its key be read again).
pub fn widened_xid(xid: &str, near: &str) -> String {
    format!(
        "({near} + (((({xid}::text::bigint - ({near} & 4294967295)) + 2147483648) & 4294967295) \
         - 2147483648))"
    )
}

/// `source`'s rows with a marker above `watermark` (a text parameter) less
/// the lag, and those whose marker is NULL (never above anything, and they
/// change too); every row when the watermark is NULL. A btree on the marker
/// serves both conditions (a `BitmapOr` of two index scans).
fn window(source: &SourcePlan, watermark: &str) -> String {
    let (m, ty) = (quote_ident(&source.spec.marker), &source.marker_type);
    let lag = match source.spec.lag {
        Lag::Units(0) => String::new(),
        Lag::Units(n) => format!(" - {n}"),
        Lag::Duration(d) if is_time(ty) => format!(" - interval '{} milliseconds'", d.as_millis()),
        Lag::Duration(_) => String::new(),
    };
    // NULL markers only where the column may hold one: the OR costs an index
    // scan per cycle. The bound stays in the condition, not in a subquery,
    // so that the planner estimates the window with its value (in a
    // subquery, a third of the table: a one-key cycle took 10 times longer).
    let nulls = match source.marker_nullable {
        true => format!(" OR {m} IS NULL"),
        false => String::new(),
    };
    format!("({watermark}::text IS NULL OR {m} > {watermark}::text::{ty}{lag}{nulls})")
}
