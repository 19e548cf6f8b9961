//! `verify`: each incremental view's table against its full query, in one
//! read-only snapshot; the keys that differ are printed, and any makes the
//! exit code 1.

use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::incremental::catalog::Target;
use crate::incremental::sql::{Statements, images_differ};
use crate::outln;
use crate::plan::Step;
use crate::quote::quote_ident;
use crate::refresh_log::RefreshLog;
use crate::registry::{Incremental, ViewSpec};

/// Keys printed per view; the rest are counted.
const SHOWN: usize = 20;

pub(super) async fn verify(
    target: &DbTarget,
    log: &RefreshLog,
    views: &[ViewSpec],
) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let client = target.connect(&pool).await?;
    let (_, plan) = super::plan(&client, target, log, views).await?;
    let db_err = |context| Error::in_context(context, target);
    let mut differs = false;
    for step in &plan.steps {
        if let Some(why) = &step.skip {
            // Not in this database on purpose: nothing to compare.
            outln!("{}: skipped: {why}", step.view_name());
            continue;
        }
        let (Some(spec), Some(found)) = (&step.spec.incremental, &step.incremental) else {
            let why = step.problem.as_deref().unwrap_or("cannot be verified");
            outln!("{}: {why}", step.view_name());
            differs = true;
            continue;
        };
        if found.table.is_none() {
            outln!(
                "{}: has no table yet (its first refresh creates it)",
                step.view_name()
            );
            differs = true;
            continue;
        }
        // The table is read through a CTE without statistics: the join's
        // estimate is far too high, and JIT compiling it cost a third of the
        // time at 100k keys. One statement each (Citus forwards SETs).
        let begin = [
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            "SET LOCAL jit = off",
        ];
        crate::db::execute_each(&*client, &begin)
            .await
            .map_err(db_err("verifying"))?;
        let rows = client.query_typed(&diff_sql(spec, found), &[]).await;
        let _ = client.batch_execute("ROLLBACK").await;
        let rows = rows.map_err(db_err("comparing a view with its query"))?;
        differs |= report(step, &spec.volatile, &rows);
    }
    Ok(match differs {
        true => Exit::ViewsFailed,
        false => Exit::Success,
    })
}

/// Prints one view's differences; whether there are any.
fn report(step: &Step, volatile: &[String], rows: &[tokio_postgres::Row]) -> bool {
    if !volatile.is_empty() {
        outln!(
            "{}: not compared (declared volatile): {}",
            step.view_name(),
            volatile.join(", ")
        );
    }
    let Some(first) = rows.first() else {
        outln!("{}: equal to its query", step.view_name());
        return false;
    };
    let total: i64 = first.get(2);
    outln!("{}: {total} key(s) differ from its query", step.view_name());
    for row in rows.iter().take(SHOWN) {
        let (key, how): (String, String) = (row.get(0), row.get(1));
        outln!("  {key}: {how}");
    }
    if total as usize > SHOWN {
        outln!("  … and {} more", total as usize - SHOWN);
    }
    true
}

/// The keys whose rows differ between the table and the full query, each
/// with how, and their count. Rows are matched by key and compared by their
/// image, as the refresh compares them (`1.0` is not `1.000`); a key the
/// query returns more than once differs.
fn diff_sql(spec: &Incremental, target: &Target) -> String {
    let columns: Vec<String> = target
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let keys: Vec<String> = spec.key.iter().map(|k| quote_ident(k)).collect();
    let values = Statements { spec, target }.compared_values();
    format!(
        "WITH q AS MATERIALIZED ({query}), \
              t AS MATERIALIZED (SELECT {columns} FROM {table}), \
              k AS (SELECT ROW({keys})::text AS key, \
                       CASE WHEN bool_and(t.mv_refresher_t IS NULL) THEN 'in the query, not in the table' \
                            WHEN bool_and(q.mv_refresher_q IS NULL) THEN 'in the table, not in the query' \
                            WHEN count(*) > 1 THEN 'returned more than once by the query' \
                            ELSE 'differs (column ' || min({columns_differ}) || ')' END AS how \
                    FROM (SELECT true AS mv_refresher_q, * FROM q) AS q \
                    FULL JOIN (SELECT true AS mv_refresher_t, * FROM t) AS t USING ({keys}) \
                    GROUP BY {keys} \
                    HAVING count(*) > 1 OR bool_or(q.mv_refresher_q IS NULL \
                        OR t.mv_refresher_t IS NULL OR {differs})) \
         SELECT key, how, count(*) OVER () FROM k ORDER BY key LIMIT {limit}",
        query = spec.query.full(),
        columns = columns.join(", "),
        table = target.quoted,
        keys = keys.join(", "),
        differs = images_differ(&values, "q", "t"),
        columns_differ = Statements { spec, target }.columns_differing("q", "t"),
        limit = SHOWN + 1,
    )
}
