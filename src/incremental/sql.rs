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

/// Which of a source's rows in its window the last cycle saw, to be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// None known: the window is read whole.
    Nothing,
    /// On this server, those whose transaction ended before the last
    /// cycle's snapshot's xmin (`$2`, a full id; `$1`, the current
    /// snapshot's xmax, to widen a row's 32-bit `xmin`).
    Here,
    /// On Citus, those whose transaction ended before the xmin of the last
    /// snapshot taken on the node holding the row (`$1`, the nodes' start
    /// times; `$2`, their xmins' low 32 bits: [`super::nodes::Lookup`]).
    ByNode,
}

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

    /// The value columns rows are compared by when proven or verified: all
    /// but those declared volatile (quoted).
    pub fn compared_values(&self) -> Vec<String> {
        self.target
            .columns
            .iter()
            .filter(|c| !self.spec.key.contains(&c.name) && !self.spec.volatile.contains(&c.name))
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
    /// (`$(3 + i)`, text) less its lag, or NULL; less the rows the last cycle
    /// saw, as `seen[i]` tells them (`$1` and `$2`).
    pub fn changed_keys(&self, sources: &[SourcePlan], seen: &[Seen]) -> String {
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
    pub fn changed_keys_read(&self, sources: &[SourcePlan], seen: &[Seen], limit: usize) -> String {
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

    fn changed_reads(&self, sources: &[SourcePlan], seen: &[Seen]) -> String {
        let reads: Vec<String> = sources
            .iter()
            .zip(seen)
            .enumerate()
            .map(|(i, (source, &seen))| self.changed_keys_of(source, &format!("${}", i + 3), seen))
            .collect();
        // UNION gives each key once; so does DISTINCT when there is one read.
        match reads.as_slice() {
            [one] => format!("SELECT DISTINCT * FROM ({one}) AS r"),
            _ => reads.join(" UNION "),
        }
    }

    fn changed_keys_of(&self, source: &SourcePlan, watermark: &str, seen: Seen) -> String {
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
        match seen {
            Seen::Here => {
                // Transaction ids that ended before the last snapshot's xmin
                // were seen by it. Those between its xmin and xmax are read
                // again: the snapshot lists top-level transactions only, and a
                // row written by a subtransaction of one still running would
                // look seen. A widened xmin at or past the current snapshot's
                // xmax is no transaction a visible row can have: it is a
                // frozen row's old xid more than 2^31 behind, seen long ago.
                let xmin = widened_xid("xmin", "$1::bigint");
                sql.push_str(&format!(
                    " AND {xmin} >= $2::bigint AND {xmin} < $1::bigint"
                ));
            }
            Seen::ByNode => {
                // The same on the node that holds the row, where the shard
                // query runs: its own last snapshot's xmin, looked up by its
                // start time (the low 32 bits, compared as the server compares
                // transaction ids: a row in the window is recent). A node not
                // found has its rows read.
                let xmin = "($2::bigint[])[pg_catalog.array_position($1::timestamptz[], \
                            pg_catalog.pg_postmaster_start_time())]";
                sql.push_str(&format!(
                    " AND coalesce({}, true)",
                    xid_at_or_after("xmin", xmin)
                ));
            }
            // Bound all the same; always true.
            Seen::Nothing => sql.push_str(" AND num_nulls($1, $2) >= 0"),
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
        self.rows_of_but(keys, None)
    }

    /// [`Self::rows_of`] with the `open`-th `$changed` (from 0) true, where
    /// it is `Some`: what the query gives without that restriction.
    fn rows_of_but(&self, keys: &str, open: Option<usize>) -> String {
        let expanded = self.spec.query.expand_each(|i, args| {
            if open == Some(i) {
                return "true".into();
            }
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

    /// `source`'s key expressions, each cast to the key column's type and
    /// named after it.
    fn keys_of(&self, source: &SourcePlan) -> Vec<String> {
        source
            .spec
            .key
            .iter()
            .zip(self.target.key_types(self.spec))
            .zip(&self.spec.key)
            .map(|((e, ty), k)| format!("({e})::{ty} AS {}", quote_ident(k)))
            .collect()
    }

    /// Keys to prove the query with ([`Self::proof`]), as text, one row
    /// each with where it came from: up to `n` of the table's (when it
    /// exists), the keys of each source's `n` newest rows (by its marker),
    /// and `absent`, a key made to exist nowhere (one value per key column),
    /// when there is one.
    pub fn sample_keys(&self, n: usize, absent: Option<&[String]>) -> String {
        let text: Vec<String> = self
            .spec
            .key
            .iter()
            .map(|k| format!("{}::text", quote_ident(k)))
            .collect();
        let text = text.join(", ");
        let mut reads = Vec::new();
        if self.target.table.is_some() {
            reads.push(format!(
                "SELECT 'the table', {text} FROM (SELECT {} FROM {} ORDER BY random() LIMIT {n}) AS t",
                self.keys(""),
                self.target.quoted
            ));
        }
        for source in &self.target.sources {
            let exprs = self.keys_of(source);
            let marker = quote_ident(&source.spec.marker);
            reads.push(format!(
                "SELECT {origin}, {text} FROM (SELECT {} FROM {} WHERE {marker} IS NOT NULL \
                 ORDER BY {marker} DESC LIMIT {n}) AS s",
                exprs.join(", "),
                source.relation.quoted(),
                origin =
                    crate::quote::quote_literal(&format!("the newest rows of {}", source.relation)),
            ));
        }
        if let Some(values) = absent {
            let values: Vec<String> = values
                .iter()
                .map(|v| crate::quote::quote_literal(v))
                .collect();
            reads.push(format!("SELECT 'nowhere', {}", values.join(", ")));
        }
        reads.join(" UNION ALL ")
    }

    /// The proof of the query's `$changed`: for the keys bound as text
    /// arrays (`$1` .. one per key column), the query restricted to them
    /// (with the `open`-th `$changed` true, when `Some`) against the full
    /// query's rows of those keys, in one statement (one snapshot). One row
    /// per key that differs, at most `limit`: the key, how, the columns
    /// whose values differ (by their image), and how many keys differ.
    pub fn proof(&self, open: Option<usize>, limit: usize) -> String {
        let k = self.keys("");
        let keys = "SELECT * FROM mv_refresher_keys";
        let columns = format!("min({})", self.columns_differing("r", "w"));
        format!(
            "WITH mv_refresher_keys({k}) AS MATERIALIZED ({bound}), \
             mv_refresher_r AS MATERIALIZED ({restricted}), \
             mv_refresher_w AS MATERIALIZED (SELECT * FROM ({full}\n) AS q WHERE ({qk}) IN ({keys})), \
             mv_refresher_d AS (SELECT ROW({k})::text AS key, \
                 CASE WHEN count(*) > 1 THEN 'returned more than once' \
                      WHEN bool_and(r.mv_refresher_r IS NULL) THEN 'missing from the restricted query' \
                      WHEN bool_and(w.mv_refresher_w IS NULL) THEN 'not in the full query' \
                      ELSE 'differs' END AS how, \
                 {columns} AS columns \
               FROM (SELECT true AS mv_refresher_r, * FROM mv_refresher_r) AS r \
               FULL JOIN (SELECT true AS mv_refresher_w, * FROM mv_refresher_w) AS w USING ({k}) \
               GROUP BY {k} \
               HAVING count(*) > 1 OR bool_or(r.mv_refresher_r IS NULL OR w.mv_refresher_w IS NULL \
                   OR {differs})) \
             SELECT key, how, columns, count(*) OVER () FROM mv_refresher_d ORDER BY key LIMIT {limit}",
            bound = self.bound_keys(),
            restricted = self.rows_of_but(keys, open),
            full = self.spec.query.full(),
            qk = self.keys("q."),
            differs = images_differ(&self.compared_values(), "r", "w"),
        )
    }

    /// For each of the sources, the keys whose rows differ between the full
    /// query and the full query without that source's `n` newest rows (by
    /// marker, ties included), less the keys the source's `key` gives those
    /// rows: 5 at most per source, as `(index of the source, key as text)`.
    /// One statement: the full query is computed once, beside one rewrite
    /// per source; a source whose references cannot be rewritten is left
    /// out. `None` when none can be.
    pub fn without_newest(&self, n: usize) -> Option<String> {
        let full = self.spec.query.full();
        let k = self.keys("");
        let nulls: Vec<String> = self
            .spec
            .key
            .iter()
            .map(|c| format!("{} IS NULL", quote_ident(c)))
            .collect();
        let nulls = nulls.join(" OR ");
        let compared = [k.clone()]
            .into_iter()
            .chain(self.compared_values())
            .collect::<Vec<_>>()
            .join(", ");
        let mut ctes = vec![format!("mv_refresher_with AS MATERIALIZED ({full}\n)")];
        let mut reads = Vec::new();
        for (i, source) in self.target.sources.iter().enumerate() {
            let m = quote_ident(&source.spec.marker);
            let table = source.relation.quoted();
            let threshold = format!("({m} >= (SELECT t FROM mv_refresher_threshold_{i}))");
            let Ok(without) = super::derive::without_rows(
                &full,
                &source.relation.schema,
                &source.relation.name,
                &format!("{threshold} IS NOT TRUE"),
            ) else {
                continue;
            };
            ctes.push(format!(
                "mv_refresher_threshold_{i} AS MATERIALIZED (SELECT min(m) AS t FROM \
                     (SELECT {m} AS m FROM {table} WHERE {m} IS NOT NULL ORDER BY {m} DESC LIMIT {n}) s), \
                 mv_refresher_mapped_{i} AS MATERIALIZED (SELECT {k} FROM \
                     (SELECT {mapped} FROM {table} WHERE {threshold}) s WHERE NOT ({nulls})), \
                 mv_refresher_without_{i} AS MATERIALIZED ({without}\n), \
                 mv_refresher_d_{i} AS ((SELECT {compared} FROM mv_refresher_with \
                         EXCEPT ALL SELECT {compared} FROM mv_refresher_without_{i}) \
                     UNION ALL (SELECT {compared} FROM mv_refresher_without_{i} \
                         EXCEPT ALL SELECT {compared} FROM mv_refresher_with))",
                mapped = self.keys_of(source).join(", "),
            ));
            reads.push(format!(
                "(SELECT DISTINCT {i}, ROW({k})::text FROM mv_refresher_d_{i} \
                 WHERE NOT ({nulls}) AND ({k}) NOT IN (SELECT {k} FROM mv_refresher_mapped_{i}) \
                 ORDER BY 2 LIMIT 5)"
            ));
        }
        if reads.is_empty() {
            return None;
        }
        Some(format!(
            "WITH {} {}",
            ctes.join(", "),
            reads.join(" UNION ALL ")
        ))
    }

    /// The names of the value columns whose images differ between the rows
    /// `left` and `right`, comma-separated (`''` when none do).
    pub fn columns_differing(&self, left: &str, right: &str) -> String {
        let columns: Vec<String> = self
            .target
            .columns
            .iter()
            .filter(|c| !self.spec.key.contains(&c.name) && !self.spec.volatile.contains(&c.name))
            .map(|column| {
                format!(
                    "CASE WHEN {} THEN {} END",
                    images_differ(&[quote_ident(&column.name)], left, right),
                    crate::quote::quote_literal(&column.name)
                )
            })
            .collect();
        match columns.is_empty() {
            true => "''".to_owned(),
            false => format!("array_to_string(ARRAY[{}], ', ')", columns.join(", ")),
        }
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

/// Whether the transaction id `xid` (an `xid` expression) is `other` (the
/// low 32 bits of one, a `bigint` expression) or comes after it, as the
/// server compares two ids within 2^31 of each other.
pub fn xid_at_or_after(xid: &str, other: &str) -> String {
    format!("(((({xid}::text::bigint - {other}) + 2147483648) & 4294967295) >= 2147483648)")
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
