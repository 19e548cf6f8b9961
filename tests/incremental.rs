//! Incremental views (SPEC §2.5) against a real server: after every cycle the
//! table equals its full query row for row, under random streams of writes,
//! concurrent writers and late commits; a failed cycle changes nothing;
//! `verify` finds drift planted by hand.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::TestDb;

/// Three sources, one per kind of marker: a `clock_timestamp()` default
/// (bets), a sequence (users, `v = nextval(...)` on update too), and a value
/// the application sets from its transaction's start (payments, caught by
/// `lag`). The view holds active users only: keys appear and vanish.
const SCHEMA: &str = "
CREATE TABLE users (tenant_id bigint NOT NULL, user_id bigint NOT NULL, name text, active boolean NOT NULL,
    v bigserial NOT NULL, PRIMARY KEY (tenant_id, user_id));
CREATE INDEX ON users (v);
CREATE TABLE bets (id bigserial PRIMARY KEY, tenant_id bigint NOT NULL, user_id bigint NOT NULL, amount numeric,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX ON bets (updated_at); CREATE INDEX ON bets (tenant_id, user_id);
CREATE TABLE payments (id bigserial PRIMARY KEY, tenant_id bigint NOT NULL, user_id bigint NOT NULL, amount numeric,
    ts bigint);
CREATE INDEX ON payments (ts); CREATE INDEX ON payments (tenant_id, user_id);
INSERT INTO users (tenant_id, user_id, name, active)
    SELECT 1 + g % 3, g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'u' || g END, g % 5 <> 0 FROM generate_series(1, 60) g;
INSERT INTO bets (tenant_id, user_id, amount)
    SELECT 1 + g % 3, g, CASE WHEN g % 11 = 0 THEN NULL ELSE g END FROM generate_series(1, 60) g, generate_series(1, 3);
";

const REGISTRY: &str = r#"
[[view]]
name = "user_totals"
key = ["tenant_id", "user_id"]
full_every = "0"
query = """
SELECT u.tenant_id, u.user_id, u.name, b.n AS bets, b.total AS bet_total, p.total AS paid,
       1 / (CASE WHEN u.name = 'boom' THEN 0 ELSE 1 END) AS ok
FROM users u
LEFT JOIN (SELECT tenant_id, user_id, count(*) AS n, sum(amount) AS total FROM bets
           WHERE $changed(tenant_id, user_id) GROUP BY 1, 2) b USING (tenant_id, user_id)
LEFT JOIN (SELECT tenant_id, user_id, sum(amount) AS total FROM payments
           WHERE $changed(tenant_id, user_id) -- a comment with $changed(x)
           GROUP BY 1, 2) p USING (tenant_id, user_id)
WHERE u.active AND $changed(u.tenant_id, u.user_id) AND '$changed(' IS NOT NULL
"""

[[view.changes]]
table = "users"
key = ["tenant_id", "user_id"]
marker = "v"

[[view.changes]]
table = "bets"
key = ["tenant_id", "user_id"]
marker = "updated_at"

[[view.changes]]
table = "payments"
key = ["tenant_id", "user_id"]
marker = "ts"
lag = 600000
"#;

/// The full query, for comparing.
const FULL: &str = "SELECT u.tenant_id, u.user_id, u.name, b.n AS bets, b.total AS bet_total, \
    p.total AS paid, 1 AS ok FROM users u \
    LEFT JOIN (SELECT tenant_id, user_id, count(*) AS n, sum(amount) AS total FROM bets GROUP BY 1, 2) b USING (tenant_id, user_id) \
    LEFT JOIN (SELECT tenant_id, user_id, sum(amount) AS total FROM payments GROUP BY 1, 2) p USING (tenant_id, user_id) \
    WHERE u.active";

/// Rows in the table and not the query, and the other way round.
fn drift(db: &TestDb) -> i64 {
    db.scalar(&format!(
        "SELECT count(*) FROM ((SELECT * FROM user_totals EXCEPT ALL ({FULL})) \
         UNION ALL (({FULL}) EXCEPT ALL SELECT * FROM user_totals)) d"
    ))
}

/// `(note, keys_scanned)` of the view's cycles, in order.
fn cycles(db: &TestDb) -> Vec<(String, i64)> {
    db.rows(
        "SELECT note, keys_scanned FROM materialized_views_refresh_history \
         WHERE view_name = 'public.user_totals' AND status = 'success' ORDER BY id",
    )
    .into_iter()
    .map(|r| {
        (
            r[0].clone().unwrap_or_default(),
            r[1].as_deref().unwrap_or("0").parse().unwrap(),
        )
    })
    .collect()
}

/// Refreshes `registry` until the window's rows are all applied and seen,
/// then once more, which must find nothing changed; returns that output.
///
/// A cycle skips the rows an earlier one applied by their `xmin` against the
/// last cycle's snapshot, whose xmin is the cluster's: a transaction of
/// another test open at that moment holds it back, and rows written after
/// it are read once more (never missed). So this waits until no transaction
/// older than now runs anywhere in the cluster, refreshes (that cycle's
/// snapshot is past every write), and then the next cycle must settle. A
/// window read again every cycle never does, and fails.
fn settles(db: &TestDb, registry: &std::path::Path) -> common::Output {
    let now: i64 = db.scalar("SELECT pg_current_xact_id()::text::bigint");
    common::wait_until("the cluster's older transactions to end", || {
        let xmin: i64 = db.scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint");
        (xmin > now).then_some(())
    });
    db.mvr_with(registry).arg("refresh").run().code(0);
    let out = db.mvr_with(registry).arg("refresh").run();
    out.code(0).stdout_has("nothing changed");
    out
}

/// One random write: a bet, a bet changed, a user new or changed (active
/// toggled: its key vanishes or comes back; NULL names), a payment (some
/// without a marker, some from a clock ten years ahead, some changed to no
/// marker).
fn random_write(client: &mut impl postgres::GenericClient, rng: &mut fastrand::Rng) {
    let (tenant, user) = (rng.i64(1..=3), rng.i64(1..=80));
    let amount = match rng.u8(0..10) {
        0 => None,
        _ => Some(rng.i64(1..1000)),
    };
    let sql = match rng.u8(0..5) {
        0 if tenant == 2 && rng.bool() => {
            "INSERT INTO bets_2 (tenant_id, user_id, amount) VALUES ($1, $2, $3::bigint)"
        }
        0 => "INSERT INTO bets (tenant_id, user_id, amount) VALUES ($1, $2, $3::bigint)",
        1 => {
            "UPDATE bets SET amount = $3::bigint, updated_at = clock_timestamp() \
             WHERE id = (SELECT id FROM bets WHERE tenant_id = $1 AND user_id = $2 LIMIT 1)"
        }
        2 => {
            "INSERT INTO users (tenant_id, user_id, name, active) \
             VALUES ($1, $2, CASE WHEN $3::bigint IS NULL THEN NULL ELSE 'n' || $3::bigint END, true) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET active = NOT users.active, \
                 name = EXCLUDED.name, v = nextval('users_v_seq')"
        }
        3 => match rng.u8(0..10) {
            0 => {
                "INSERT INTO payments (tenant_id, user_id, amount, ts) VALUES ($1, $2, $3::bigint, NULL)"
            }
            1 => {
                "INSERT INTO payments (tenant_id, user_id, amount, ts) VALUES ($1, $2, $3::bigint, \
                 (extract(epoch FROM now() + interval '10 years') * 1000)::bigint)"
            }
            2 => {
                "UPDATE payments SET amount = $3::bigint, ts = NULL \
                 WHERE id = (SELECT id FROM payments WHERE tenant_id = $1 AND user_id = $2 LIMIT 1)"
            }
            _ => {
                "INSERT INTO payments (tenant_id, user_id, amount, ts) \
                 VALUES ($1, $2, $3::bigint, (extract(epoch FROM now()) * 1000)::bigint)"
            }
        },
        _ => {
            "UPDATE users SET name = 'r' || $3::bigint, v = nextval('users_v_seq') \
             WHERE tenant_id = $1 AND user_id = $2"
        }
    };
    client.execute(sql, &[&tenant, &user, &amount]).unwrap();
}

/// Writers that keep committing while the refresher works: some commit
/// late (their marker drawn well before their commit), some write in a
/// subtransaction (a savepoint), as ORMs do.
/// Some of them commit in two phases, as Citus does: prepared, then
/// committed later (a prepared transaction has no backend the refresher
/// could wait for).
fn writers(db: &TestDb, stop: Arc<AtomicBool>, seed: u64) -> Vec<thread::JoinHandle<()>> {
    (0..3)
        .map(|w| {
            let mut client = db.client();
            let stop = stop.clone();
            thread::spawn(move || {
                // The writers' own isolation, whatever the database's default.
                client
                    .batch_execute(
                        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
                    )
                    .unwrap();
                let mut rng = fastrand::Rng::with_seed(seed * 10 + w);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    client.batch_execute("BEGIN").unwrap();
                    let savepoint = rng.bool();
                    if savepoint {
                        client.batch_execute("SAVEPOINT s").unwrap();
                    }
                    for _ in 0..rng.usize(1..4) {
                        random_write(&mut client, &mut rng);
                    }
                    if savepoint {
                        client.batch_execute("RELEASE SAVEPOINT s").unwrap();
                    }
                    // A late commit: the markers were drawn up to 300 ms ago.
                    let late = Duration::from_millis(rng.u64(0..300));
                    if rng.u8(0..4) == 0 {
                        n += 1;
                        let gid = format!("w{seed}_{w}_{n}");
                        client
                            .batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
                            .unwrap();
                        thread::sleep(late);
                        client
                            .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
                            .unwrap();
                    } else {
                        thread::sleep(late);
                        client.batch_execute("COMMIT").unwrap();
                    }
                }
            })
        })
        .collect()
}

#[test]
fn after_every_cycle_the_table_equals_its_query_under_random_concurrent_writes() {
    let db = TestDb::empty("incremental_property");
    // Bets partitioned by tenant, written through the parent and straight
    // into a partition; and a database whose default isolation is
    // REPEATABLE READ (the refresher's sessions get it, the writers not).
    db.execute(&SCHEMA.replace(
        "CREATE TABLE bets (id bigserial PRIMARY KEY, tenant_id bigint NOT NULL, user_id bigint NOT NULL, amount numeric,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp());",
        "CREATE TABLE bets (id bigserial, tenant_id bigint NOT NULL, user_id bigint NOT NULL, amount numeric,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (tenant_id, id))
    PARTITION BY LIST (tenant_id);
CREATE TABLE bets_1 PARTITION OF bets FOR VALUES IN (1);
CREATE TABLE bets_2 PARTITION OF bets FOR VALUES IN (2);
CREATE TABLE bets_3 PARTITION OF bets FOR VALUES IN (3);",
    ));
    let partitioned: bool = db.scalar("SELECT relkind = 'p' FROM pg_class WHERE relname = 'bets'");
    assert!(partitioned);
    db.execute(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'repeatable read'",
        db.name
    ));
    let registry = db.registry(REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    assert_eq!(drift(&db), 0, "after the first, full load");
    let rows: i64 = db.scalar("SELECT count(*) FROM user_totals");
    assert!(rows > 30, "{rows} rows loaded");

    let mut rng = fastrand::Rng::with_seed(12);
    for round in 0..6u64 {
        // Now and then the table is emptied behind the refresher's back.
        if round % 3 == 1 {
            db.execute("TRUNCATE user_totals");
        }
        // Quiet writes, then writers racing the refresher's cycles.
        let mut client = db.client();
        for _ in 0..rng.usize(5..40) {
            random_write(&mut client, &mut rng);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let running = writers(&db, stop.clone(), round);
        for _ in 0..2 {
            db.mvr_with(&registry).arg("refresh").run().code(0);
        }
        stop.store(true, Ordering::Relaxed);
        for writer in running {
            writer.join().unwrap();
        }
        // Every write is committed now: one more cycle catches the late ones.
        db.mvr_with(&registry).arg("refresh").run().code(0);
        assert_eq!(drift(&db), 0, "round {round}: rows differ from the query");
        db.mvr_with(&registry).arg("verify").run().code(0);
    }

    // Nothing changed: nothing recomputed, not even the lag's window.
    settles(&db, &registry);
    let all = cycles(&db);
    let (note, keys) = all.last().unwrap();
    assert_eq!((note.as_str(), *keys), ("nothing changed", 0), "{all:?}");
    // The cycles were incremental: the first loaded everything, the first
    // after each truncation reconciled in full, the others recomputed fewer
    // keys than the table holds.
    let total: i64 = db.scalar("SELECT count(*) FROM user_totals");
    assert_eq!(all[0].0, "created and fully loaded");
    let emptied = "full reconcile: the table was emptied or rewritten";
    assert_eq!(
        all.iter()
            .filter(|(note, _)| note.starts_with(emptied))
            .count(),
        2,
        "{all:?}"
    );
    for (note, keys) in all[1..]
        .iter()
        .filter(|(note, _)| !note.starts_with(emptied))
    {
        assert!(
            note.starts_with("changed keys") || note == "nothing changed",
            "{all:?}"
        );
        assert!(*keys < total + 20, "{all:?}");
    }
}

#[test]
fn a_failed_cycle_leaves_table_and_watermarks_as_they_were_and_verify_finds_drift() {
    let db = TestDb::empty("incremental_failure");
    db.execute(SCHEMA);
    let registry = db.registry(REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    let table = "SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_totals t";
    let state =
        "SELECT string_agg(s::text, ',' ORDER BY source) FROM materialized_views_refresh_state s";
    let (before, state_before): (String, String) = (db.scalar(table), db.scalar(state));

    // A change whose recomputation fails (a division by zero in the query),
    // beside one that would succeed.
    db.execute(
        "UPDATE users SET name = 'boom', v = nextval('users_v_seq') WHERE user_id = 1; \
         INSERT INTO bets (tenant_id, user_id, amount) VALUES (3, 2, 5);",
    );
    db.mvr_with(&registry).arg("refresh").run().code(1);
    assert_eq!(db.scalar::<String>(table), before, "the table changed");
    assert_eq!(
        db.scalar::<String>(state),
        state_before,
        "the watermarks moved"
    );
    let last = db.history("user_totals").pop().unwrap();
    assert_eq!(
        (last[0].as_deref(), last[1].as_deref(), last[3].as_deref()),
        (Some("failed"), Some("incremental"), Some("22012"))
    );

    // Mended, the next cycle applies both changes.
    db.execute("UPDATE users SET name = 'mended', v = nextval('users_v_seq') WHERE user_id = 1");
    db.mvr_with(&registry).arg("refresh").run().code(0);
    assert_eq!(drift(&db), 0);

    // Drift planted behind the refresher's back: verify names the keys.
    db.execute(
        "UPDATE user_totals SET bets = 999 WHERE user_id = 2; \
         DELETE FROM user_totals WHERE user_id = 3; \
         INSERT INTO user_totals (tenant_id, user_id) VALUES (9, 9);",
    );
    db.mvr_with(&registry)
        .arg("verify")
        .run()
        .code(1)
        .stdout_has("3 key(s) differ")
        .stdout_has("(3,2): differs (column bets)")
        .stdout_has("(1,3): in the query, not in the table")
        .stdout_has("(9,9): in the table, not in the query");
    // verify compares incremental views only.
    db.mvr_with(&registry)
        .args(["verify", "bets"])
        .run()
        .code(2)
        .stderr_has("bets is not an incremental view");
    // A full reconcile mends it, touching only those rows.
    db.mvr_with(&registry)
        .args(["refresh", "--full"])
        .run()
        .code(0);
    let counts = db.rows(
        "SELECT rows_inserted, rows_updated, rows_deleted FROM materialized_views_refresh_history \
         ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(
        counts[0],
        [Some("1".into()), Some("1".into()), Some("1".into())]
    );
    db.mvr_with(&registry).arg("verify").run().code(0);

    // status and the metrics show how old the applied snapshot is.
    let json = db
        .mvr_with(&registry)
        .args(["status", "--format", "json"])
        .run();
    json.code(0);
    let status: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let age = &status["views"][0]["watermark_age_seconds"];
    assert!(
        age.as_f64().is_some_and(|a| (0.0..60.0).contains(&a)),
        "{status}"
    );
    db.mvr_with(&registry)
        .args(["status", "--format", "prometheus"])
        .run()
        .code(0)
        .stdout_has("mv_refresher_view_watermark_timestamp_seconds{view=\"public.user_totals\"} 1");
}

#[test]
fn late_commits_are_caught_with_lag_0_for_sequence_and_clock_markers_and_within_lag_otherwise() {
    let db = TestDb::empty("incremental_late");
    db.execute(SCHEMA);
    let registry = db.registry(REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);

    // Three transactions draw their markers, then stay open: a bet (clock),
    // a user (sequence), a payment written in a subtransaction (a value the
    // application sets, lag). Others with later markers commit meanwhile.
    let mut late = db.client();
    late.batch_execute(
        "BEGIN; \
         INSERT INTO bets (tenant_id, user_id, amount) VALUES (2, 13, 1000); \
         UPDATE users SET name = 'late', v = nextval('users_v_seq') WHERE user_id = 11; \
         SAVEPOINT s; \
         INSERT INTO payments (tenant_id, user_id, amount, ts) \
             VALUES (1, 12, 7, (extract(epoch FROM now()) * 1000)::bigint); \
         RELEASE SAVEPOINT s;",
    )
    .unwrap();
    thread::sleep(Duration::from_millis(20));
    db.execute(
        "INSERT INTO bets (tenant_id, user_id, amount) VALUES (3, 14, 1); \
         UPDATE users SET name = 'early', v = nextval('users_v_seq') WHERE user_id = 16; \
         INSERT INTO payments (tenant_id, user_id, amount, ts) \
             VALUES (2, 17, 1, (extract(epoch FROM now()) * 1000)::bigint);",
    );
    // The refresher waits for the bet's and the user's writer, which
    // commits a second into its cycle.
    let committer = thread::spawn(move || {
        thread::sleep(Duration::from_secs(1));
        late.batch_execute("COMMIT").unwrap();
    });
    db.mvr_with(&registry).arg("refresh").run().code(0);
    committer.join().unwrap();
    db.mvr_with(&registry).arg("refresh").run().code(0);
    assert_eq!(drift(&db), 0, "a late commit was missed");
    let bet: Option<String> = db
        .rows("SELECT bet_total::text FROM user_totals WHERE tenant_id = 2 AND user_id = 13")[0][0]
        .clone();
    assert!(bet.is_some_and(|t| t.parse::<i64>().unwrap() >= 1000));

    // Once applied, the lag's window is not recomputed again.
    settles(&db, &registry);
    let last = cycles(&db).pop().unwrap();
    assert_eq!((last.0.as_str(), last.1), ("nothing changed", 0));
}

#[test]
fn a_missing_table_is_created_unless_create_is_false_then_the_view_is_skipped_unrecorded() {
    let db = TestDb::empty("incremental_create");
    db.execute(SCHEMA);
    // init creates the state table with the log tables.
    db.mvr().arg("init").run().code(0);
    let state: bool =
        db.scalar("SELECT to_regclass('materialized_views_refresh_state') IS NOT NULL");
    assert!(state, "init did not create the state table");
    let registry = db.registry(&REGISTRY.replace(
        "name = \"user_totals\"",
        "name = \"user_totals\"\ncreate = false",
    ));
    db.mvr_with(&registry)
        .arg("check")
        .run()
        .code(0)
        .stdout_has(
            "skipped: its table public.user_totals does not exist here, and create = false",
        );
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("does not exist here, and create = false")
        .stdout_has("0 refreshed, 1 skipped, 0 failed");
    let rows: i64 = db.scalar("SELECT count(*) FROM materialized_views_refresh_history");
    assert_eq!(rows, 0, "a view that is not here leaves no rows");
    let exists: bool = db.scalar("SELECT to_regclass('user_totals') IS NOT NULL");
    assert!(!exists);

    // By default the first refresh creates it, keyed, and loads it.
    db.mvr_with(&db.registry(REGISTRY))
        .arg("refresh")
        .run()
        .code(0);
    let key: String = db.scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = 'user_totals'::regclass AND contype = 'p'",
    );
    assert_eq!(key, "PRIMARY KEY (tenant_id, user_id)");
    assert_eq!(drift(&db), 0);
}

#[test]
fn incremental_and_materialized_views_read_each_other_in_order_under_the_same_locks() {
    let db = TestDb::empty("incremental_order");
    db.execute(SCHEMA);
    // A materialized view the incremental view reads (a source with a
    // marker), and, once the incremental view's table exists, one that reads it.
    db.execute(
        "CREATE MATERIALIZED VIEW user_names AS SELECT tenant_id, user_id, name, active, v FROM users; \
         CREATE UNIQUE INDEX ON user_names (tenant_id, user_id); CREATE INDEX ON user_names (v);",
    );
    let totals = REGISTRY
        .replace("FROM users u", "FROM user_names u")
        .replace("table = \"users\"", "table = \"user_names\"");
    let first = db.registry(&format!("{totals}\n[[view]]\nname = \"user_names\"\n"));
    db.mvr_with(&first).arg("refresh").run().code(0);
    db.execute(
        "CREATE MATERIALIZED VIEW bettors AS SELECT tenant_id, count(*) AS n FROM user_totals \
         GROUP BY tenant_id; CREATE UNIQUE INDEX ON bettors (tenant_id);",
    );
    // Listed against their order: bettors reads user_totals, which reads user_names.
    let path = db.registry(&format!(
        "[[view]]\nname = \"bettors\"\n\n{totals}\n[[view]]\nname = \"user_names\"\n"
    ));
    let check = db.mvr_with(&path).arg("check").run();
    check.code(0);
    assert!(
        check
            .line_with("public.user_totals")
            .contains("incremental")
    );
    let position = |view: &str| check.stdout.find(&format!("  {view} ")).unwrap();
    assert!(
        position("public.user_names") < position("public.user_totals"),
        "{check}"
    );
    assert!(
        position("public.user_totals") < position("public.bettors"),
        "{check}"
    );

    db.execute("UPDATE users SET name = 'renamed', v = nextval('users_v_seq') WHERE user_id = 4");
    db.mvr_with(&path).arg("refresh").run().code(0);
    let order = db.rows(
        "SELECT view_name FROM materialized_views_refresh_history \
         WHERE run_id = (SELECT run_id FROM materialized_views_refresh_history ORDER BY id DESC LIMIT 1) \
         ORDER BY started_at",
    );
    assert_eq!(
        order,
        [
            [Some("public.user_names".to_owned())],
            [Some("public.user_totals".to_owned())],
            [Some("public.bettors".to_owned())],
        ]
    );
    let name: String = db.scalar("SELECT name FROM user_totals WHERE user_id = 4");
    assert_eq!(
        name, "renamed",
        "the change came through the materialized view"
    );

    // Another refresher holds the view's lock: skipped, and its dependents go on.
    let mut holder = db.client();
    holder
        .batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(1836479078, hashtext('public.user_totals'))",
        )
        .unwrap();
    db.mvr_with(&path)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("another refresher is refreshing this view")
        .stdout_has("2 refreshed, 1 skipped, 0 failed");
    holder.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_timeout_or_a_deadline_ends_the_cycle_and_leaves_nothing_behind() {
    let db = TestDb::empty("incremental_timeouts");
    db.execute(SCHEMA);
    // A query that takes a second per 20 users: its first load takes 3 s.
    let slow = REGISTRY.replace(
        "1 / (CASE WHEN u.name = 'boom' THEN 0 ELSE 1 END) AS ok",
        "1 / (CASE WHEN u.name = 'boom' THEN 0 ELSE 1 END) AS ok, pg_sleep(0.05)::text AS slept",
    );
    let registry =
        db.registry(&slow.replace("full_every = \"0\"", "full_every = \"0\"\nretries = 0"));
    db.mvr_with(&registry)
        .args(["refresh", "--deadline", "1s"])
        .run()
        .code(1);
    let last = db.history("user_totals").pop().unwrap();
    assert_eq!(
        (last[0].as_deref(), last[1].as_deref()),
        (Some("cancelled"), Some("incremental")),
        "{last:?}"
    );
    let left: i64 = db.scalar(
        "SELECT (to_regclass('user_totals') IS NOT NULL)::int \
         + (SELECT count(*) FROM materialized_views_refresh_state)",
    );
    assert_eq!(left, 0, "the table and the watermarks were left behind");

    let registry = db.registry(&slow.replace(
        "full_every = \"0\"",
        "full_every = \"0\"\nretries = 0\nstatement_timeout = \"500ms\"",
    ));
    db.mvr_with(&registry).arg("refresh").run().code(1);
    let last = db.history("user_totals").pop().unwrap();
    assert_eq!(last[3].as_deref(), Some("57014"), "{last:?}");
    assert!(
        last[5]
            .as_deref()
            .unwrap()
            .contains("statement_timeout = 500ms"),
        "{last:?}"
    );
    let left: i64 = db.scalar("SELECT (to_regclass('user_totals') IS NOT NULL)::int::int8");
    assert_eq!(left, 0);

    // check warns of a marker no index serves.
    db.execute("DROP INDEX payments_ts_idx");
    db.mvr_with(&registry)
        .arg("check")
        .run()
        .stdout_has("source public.payments: no index starts with its marker ts");
}

#[test]
fn a_rows_xmin_is_widened_to_the_full_transaction_id_nearest_the_snapshot() {
    use mv_refresher::incremental::sql::widened_xid;
    let db = TestDb::empty("incremental_xid");
    let epoch = 1_i64 << 32;
    let near = 5 * epoch + 1000;
    let high = 5 * epoch + 4_294_967_000;
    for (xmin, near, expected) in [
        // Committed after the snapshot was recorded: above its xmax.
        (1005_i64, near, 5 * epoch + 1005),
        (990, near, 5 * epoch + 990),
        // From the epoch before, and the one after.
        (4_294_967_290, near, 5 * epoch - 6),
        (100, high, 6 * epoch + 100),
    ] {
        let sql = format!(
            "SELECT {}",
            widened_xid(&format!("'{xmin}'::xid"), &format!("'{near}'::bigint"))
        );
        assert_eq!(db.scalar::<i64>(&sql), expected, "xmin {xmin} near {near}");
    }
}

#[test]
fn check_proves_each_template_and_names_the_key_the_column_and_the_changed_that_fail() {
    let db = TestDb::empty("incremental_proof");
    db.execute(SCHEMA);
    db.execute(
        "INSERT INTO payments (tenant_id, user_id, amount, ts) \
         SELECT 1 + g % 3, g, g * 10, g FROM generate_series(1, 60, 2) g",
    );
    // A correct template is proven, before and after its first load.
    let path = db.registry(REGISTRY);
    for _ in 0..2 {
        db.mvr_with(&path)
            .arg("check")
            .run()
            .code(0)
            .stdout_has("proof: public.user_totals: restricted to")
            .stdout_has("its query returns the full query's rows");
        db.mvr_with(&path).arg("refresh").run().code(0);
    }
    db.execute("DROP TABLE user_totals");
    db.mvr().args(["forget", "user_totals"]).run().code(0);

    // A $changed on the wrong expression: the bets of another user.
    let wrong = REGISTRY.replacen(
        "FROM bets\n           WHERE $changed(tenant_id, user_id)",
        "FROM bets\n           WHERE $changed(tenant_id, user_id + 1)",
        1,
    );
    assert_ne!(wrong, REGISTRY);
    let out = db.mvr_with(&db.registry(&wrong)).arg("check").run();
    out.code(1)
        .stdout_has("public.user_totals: restricted by its $changed, its query does not return")
        .stdout_has("(column bets, bet_total)")
        .stdout_has("likely cause: $changed(tenant_id, user_id + 1)");
    let line = out.line_with("likely cause");
    assert!(line.contains("key ("), "{line}");
    // Its first load fails the same way, and creates nothing.
    db.mvr_with(&db.registry(&wrong))
        .arg("refresh")
        .run()
        .code(1)
        .stdout_has("not loaded: restricted by its $changed")
        .stdout_has("likely cause: $changed(tenant_id, user_id + 1)");
    let table: Option<String> = db.scalar("SELECT to_regclass('user_totals')::text");
    assert_eq!(table, None);

    // A $changed in a block that totals more than the key (each tenant's
    // payments): restricted to a few users, the totals shrink.
    let tenant_total = REGISTRY.replacen(
        "LEFT JOIN (SELECT tenant_id, user_id, sum(amount) AS total FROM payments\n           \
         WHERE $changed(tenant_id, user_id) -- a comment with $changed(x)\n           \
         GROUP BY 1, 2) p USING (tenant_id, user_id)",
        "LEFT JOIN (SELECT tenant_id, sum(amount) AS total FROM payments\n           \
         WHERE $changed(tenant_id, user_id) GROUP BY 1) p USING (tenant_id)",
        1,
    );
    assert_ne!(tenant_total, REGISTRY);
    db.mvr_with(&db.registry(&tenant_total))
        .arg("check")
        .run()
        .code(1)
        .stdout_has("(column paid)")
        .stdout_has("likely cause: $changed(tenant_id, user_id)");
}

#[test]
fn verify_reports_what_a_reader_sees_differ_where_equality_would_hide_it() {
    let db = TestDb::empty("incremental_reader_equal");
    // A case-insensitive collation calls 'ALICE' and 'alice' equal, and
    // -0 equals 0: a reader sees both differ.
    db.execute(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         CREATE TABLE people (k int PRIMARY KEY, name text COLLATE ci, x float8, m bigserial); \
         CREATE INDEX ON people (m); \
         INSERT INTO people (k, name, x) VALUES (1, 'alice', 0), (2, 'bob', 0.5)",
    );
    let registry = db.registry(
        r#"
[[view]]
name = "names"
key = ["k"]
query = "SELECT k, name, x FROM people WHERE $changed(k)"

[[view.changes]]
table = "people"
key = ["k"]
marker = "m"
"#,
    );
    db.mvr_with(&registry).arg("refresh").run().code(0);
    db.mvr_with(&registry).arg("verify").run().code(0);
    db.execute("UPDATE names SET name = 'ALICE', x = '-0' WHERE k = 1");
    let equal: bool = db.scalar(
        "SELECT n.name = p.name AND n.x = p.x FROM names n JOIN people p USING (k) WHERE k = 1",
    );
    assert!(equal, "the planted values should be equal by =");
    db.mvr_with(&registry)
        .arg("verify")
        .run()
        .code(1)
        .stdout_has("(1): differs (column name, x)");
    db.mvr_with(&registry)
        .args(["refresh", "--full"])
        .run()
        .code(0);
    db.mvr_with(&registry).arg("verify").run().code(0);
}

#[test]
fn check_proves_each_sources_key_against_the_query_without_its_newest_rows() {
    let db = TestDb::empty("incremental_proof_sources");
    db.execute(SCHEMA);
    db.execute(
        "INSERT INTO payments (tenant_id, user_id, amount, ts) \
         SELECT 1 + g % 3, g, g * 10, g FROM generate_series(1, 60, 2) g",
    );
    // The right keys: nothing to say.
    db.mvr_with(&db.registry(REGISTRY))
        .arg("check")
        .run()
        .code(0)
        .never_shows("without its newest rows");

    // A source key on the wrong columns: the payments' id for the user.
    let wrong = REGISTRY.replacen(
        "table = \"payments\"\nkey = [\"tenant_id\", \"user_id\"]",
        "table = \"payments\"\nkey = [\"tenant_id\", \"id\"]",
        1,
    );
    assert_ne!(wrong, REGISTRY);
    db.mvr_with(&db.registry(&wrong))
        .arg("check")
        .run()
        .code(1)
        .stdout_has("public.user_totals: source public.payments: without its newest rows the query's rows of key (")
        .stdout_has("which its key (tenant_id, id) does not give those rows");

    // A tenant's total beside each of its users, with no $changed: at every
    // moment equal to its query (the template's proof holds), but a
    // payment changes every user of its tenant.
    let tenant_total = REGISTRY.replacen(
        "LEFT JOIN (SELECT tenant_id, user_id, sum(amount) AS total FROM payments\n           \
         WHERE $changed(tenant_id, user_id) -- a comment with $changed(x)\n           \
         GROUP BY 1, 2) p USING (tenant_id, user_id)",
        "LEFT JOIN (SELECT tenant_id, sum(amount) AS total FROM payments GROUP BY 1) p USING (tenant_id)",
        1,
    );
    assert_ne!(tenant_total, REGISTRY);
    db.mvr_with(&db.registry(&tenant_total))
        .arg("check")
        .run()
        .code(1)
        .stdout_has("proof: public.user_totals: restricted to")
        .stdout_has("source public.payments: without its newest rows the query's rows of key (");
}

#[test]
fn a_column_declared_volatile_is_written_and_left_out_of_verify_and_the_proofs() {
    let (db, _) = sums("incremental_volatile", "timestamptz", "\"1min\"");
    // The smallest input: no table yet, an empty source, a one-column key:
    // proven on the one key that exists nowhere, nothing to say of the source.
    db.mvr_with(&db.registry(&sums_registry("\"1min\"", "0")))
        .arg("check")
        .run()
        .code(0)
        .stdout_has("proof: public.sums: restricted to 1 keys")
        .never_shows("without its newest rows");
    db.execute("INSERT INTO s (k, v, m) SELECT g % 5, g, now() FROM generate_series(1, 50) g");
    let stamped = |volatile: &str| {
        format!(
            r#"
[[view]]
name = "stamped"
key = ["k"]
{volatile}
query = "SELECT k, sum(v) AS v, clock_timestamp() AS computed_at FROM s WHERE $changed(k) GROUP BY k"

[[view.changes]]
table = "s"
key = ["k"]
marker = "m"
lag = "1min"
"#
        )
    };
    // Undeclared, the clock differs between any two reads: the proof fails.
    db.mvr_with(&db.registry(&stamped("")))
        .arg("check")
        .run()
        .code(1)
        .stdout_has("differs (column computed_at)");
    let declared = db.registry(&stamped("volatile = [\"computed_at\"]"));
    db.mvr_with(&declared)
        .arg("check")
        .run()
        .code(0)
        .stdout_has("proof: public.stamped: restricted to");
    db.mvr_with(&declared).arg("refresh").run().code(0);
    let stamped_rows: i64 = db.scalar("SELECT count(computed_at) FROM stamped");
    assert_eq!(stamped_rows, 5, "the column is written");
    db.mvr_with(&declared)
        .arg("verify")
        .run()
        .code(0)
        .stdout_has("public.stamped: not compared (declared volatile): computed_at")
        .stdout_has("public.stamped: equal to its query");
    // A key is always compared; a column the query lacks is named.
    db.mvr_with(&db.registry(&stamped("volatile = [\"k\"]")))
        .arg("check")
        .run()
        .code(2)
        .stderr_has("key \"volatile\": k is a key column");
    db.mvr_with(&db.registry(&stamped("volatile = [\"nope\"]")))
        .arg("check")
        .run()
        .code(1)
        .stdout_has("declares column nope volatile, which its query does not return");
}

#[test]
fn check_says_when_a_template_could_not_be_proven_within_the_timeout() {
    let db = TestDb::empty("incremental_proof_timeout");
    db.execute(SCHEMA);
    let slow = REGISTRY
        .replacen(
            "full_every = \"0\"",
            "full_every = \"0\"\nstatement_timeout = \"300ms\"",
            1,
        )
        .replacen(
            "WHERE u.active AND",
            "WHERE u.active AND (SELECT pg_sleep(1)) IS NOT NULL AND",
            1,
        );
    db.mvr_with(&db.registry(&slow))
        .arg("check")
        .run()
        .code(0)
        .stdout_has(
            "warning: public.user_totals: its template could not be proven within 300 ms \
             (statement_timeout)",
        );
}

#[test]
fn a_changed_definition_reconciles_in_full_and_a_null_key_is_no_key() {
    let db = TestDb::empty("incremental_definition");
    db.execute(SCHEMA);
    // Payments without an amount give no key: they change no sum.
    let registry = REGISTRY.replacen(
        "table = \"payments\"\nkey = [\"tenant_id\", \"user_id\"]",
        "table = \"payments\"\nkey = [\"tenant_id\", \"CASE WHEN amount IS NULL THEN NULL ELSE user_id END\"]",
        1,
    );
    assert_ne!(registry, REGISTRY);
    let path = db.registry(&registry);
    db.mvr_with(&path).arg("refresh").run().code(0);
    db.execute(
        "INSERT INTO payments (tenant_id, user_id, amount, ts) \
         VALUES (2, 4, NULL, (extract(epoch FROM now()) * 1000)::bigint)",
    );
    settles(&db, &path);
    assert_eq!(drift(&db), 0);

    // The query changes (bets counted twice): the next cycle reconciles in
    // full, and the table follows the new query.
    let doubled = registry.replace("count(*) AS n", "2 * count(*) AS n");
    let path = db.registry(&doubled);
    db.mvr_with(&path)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("full reconcile: the query, the key or a source changed");
    let off: i64 = db.scalar(&format!(
        "SELECT count(*) FROM (SELECT tenant_id, user_id, 2 * bets FROM ({FULL}) q \
         EXCEPT SELECT tenant_id, user_id, bets FROM user_totals) d"
    ));
    assert_eq!(off, 0);
    settles(&db, &path);
}

#[test]
fn a_writer_still_open_after_lock_timeout_fails_the_attempt_and_the_retry_succeeds() {
    let db = TestDb::empty("incremental_retry");
    db.execute(SCHEMA);
    let registry = db.registry(&REGISTRY.replace(
        "full_every = \"0\"",
        "full_every = \"0\"\nlock_timeout = \"1s\"\nretries = 1",
    ));
    db.mvr_with(&registry).arg("refresh").run().code(0);
    // A writer of users (a sequence marker) stays open: the cycle waits for
    // it, gives up after lock_timeout, and the retry finds it committed.
    let mut holder = db.client();
    holder
        .batch_execute(
            "BEGIN; UPDATE users SET name = 'held', v = nextval('users_v_seq') WHERE user_id = 2",
        )
        .unwrap();
    let run = db.mvr_with(&registry).arg("refresh").spawn();
    common::wait_until("a failed attempt", || {
        let failed: i64 = db.scalar(
            "SELECT count(*) FROM materialized_views_refresh_history \
             WHERE status = 'failed' AND sqlstate = '55P03'",
        );
        (failed > 0).then_some(())
    });
    holder.batch_execute("COMMIT").unwrap();
    run.wait().code(0);
    let attempts = db.rows(
        "SELECT status, attempt::text, error FROM materialized_views_refresh_history \
         WHERE run_id = (SELECT run_id FROM materialized_views_refresh_history ORDER BY id DESC LIMIT 1) \
         ORDER BY id",
    );
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts[0][2]
            .as_deref()
            .unwrap()
            .contains("still open after lock_timeout"),
        "{attempts:?}"
    );
    assert_eq!(attempts[1][..2], [Some("success".into()), Some("2".into())]);
    assert_eq!(drift(&db), 0);
    let name: String = db.scalar("SELECT name FROM user_totals WHERE user_id = 2");
    assert_eq!(name, "held");
}

/// The issue's shared setup: one source `s` whose marker `m` is the clock at
/// insert, a view of sums per `k` (8 keys).
const S_SCHEMA: &str = "
CREATE TABLE s (id bigserial PRIMARY KEY, k int NOT NULL, v int NOT NULL,
    m timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX ON s (m); CREATE INDEX ON s (k);
INSERT INTO s (k, v) SELECT g % 8, g FROM generate_series(1, 80) g;
";

const S_REGISTRY: &str = r#"
[[view]]
name = "iv"
key = ["k"]
full_every = "0"
query = "SELECT k, sum(v) AS total, count(*) AS n FROM s WHERE $changed(k) GROUP BY k"

[[view.changes]]
table = "s"
key = ["k"]
marker = "m"
"#;

/// The note of the last successful cycle of `public.iv`.
fn last_note(db: &TestDb) -> String {
    let mut notes: Vec<String> = db
        .history("iv")
        .into_iter()
        .filter(|row| row[0].as_deref() == Some("success"))
        .map(|row| row[4].clone().unwrap_or_default())
        .collect();
    notes.pop().unwrap_or_default()
}

/// One refresh of `registry` that must succeed, then `verify`, which must
/// find the table equal to its query; returns the cycle's note.
fn refresh_and_verify(db: &TestDb, registry: &std::path::Path) -> String {
    db.mvr_with(registry).arg("refresh").run().code(0);
    let note = last_note(db);
    let verify = db.mvr_with(registry).arg("verify").run();
    assert_eq!(
        verify.code,
        Some(0),
        "after a cycle noted {note:?}\n{verify}"
    );
    note
}

#[test]
fn a_truncated_table_is_reconciled_in_full_by_the_next_cycle() {
    let db = TestDb::empty("incremental_truncated");
    db.execute(S_SCHEMA);
    let registry = db.registry(S_REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    // Emptied behind the refresher's back; one key changes meanwhile.
    db.execute("TRUNCATE iv; INSERT INTO s (k, v) VALUES (3, 1000);");
    let note = refresh_and_verify(&db, &registry);
    assert_eq!(
        note,
        "full reconcile: the table was emptied or rewritten since the last cycle \
         (its relfilenode changed)"
    );
    let rows: i64 = db.scalar("SELECT count(*) FROM iv");
    assert_eq!(rows, 8);
    // Its new identity is kept: the next cycle is incremental again.
    assert_eq!(refresh_and_verify(&db, &registry), "nothing changed");
}

#[test]
fn a_create_false_table_re_created_by_a_migration_is_reconciled_in_full() {
    let db = TestDb::empty("incremental_recreated");
    db.execute(S_SCHEMA);
    let table = "CREATE TABLE iv (k int PRIMARY KEY, total bigint, n bigint)";
    db.execute(table);
    let registry =
        db.registry(&S_REGISTRY.replace("name = \"iv\"", "name = \"iv\"\ncreate = false"));
    db.mvr_with(&registry).arg("refresh").run().code(0);
    assert_eq!(drift_of_iv(&db), 0);
    // A migration drops the table and creates it again, empty.
    db.execute(&format!("DROP TABLE iv; {table}"));
    let note = refresh_and_verify(&db, &registry);
    assert_eq!(
        note,
        "full reconcile: the table was re-created since the last cycle (its OID changed)"
    );
    assert_eq!(refresh_and_verify(&db, &registry), "nothing changed");
}

#[test]
fn a_source_truncated_and_replayed_with_its_old_markers_is_reconciled_in_full() {
    let db = TestDb::empty("incremental_rebuilt");
    db.execute(S_SCHEMA);
    let registry = db.registry(S_REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    // Rebuilt from its events: the same rows, corrected, with the markers
    // they had (all below the watermark).
    db.execute(
        "CREATE TABLE kept AS SELECT * FROM s; TRUNCATE s; \
         INSERT INTO s SELECT id, k, v * 2, m FROM kept; DROP TABLE kept;",
    );
    let note = refresh_and_verify(&db, &registry);
    assert_eq!(
        note,
        "full reconcile: source public.s was rebuilt since the last cycle \
         (its relfilenode changed)"
    );
    assert_eq!(refresh_and_verify(&db, &registry), "nothing changed");
}

#[test]
fn a_state_saved_in_another_cluster_or_ahead_of_this_server_is_reconciled_in_full() {
    let db = TestDb::empty("incremental_copied");
    db.execute(S_SCHEMA);
    let registry = db.registry(S_REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);

    // A copy into a cluster whose transaction ids are lower than the ones
    // the state was saved with: a change written there (transaction `t`)
    // lies below the saved snapshot, as if the last cycle had seen it.
    let t: i64 = db.scalar(
        "WITH w AS (INSERT INTO s (k, v) VALUES (2, 500) RETURNING 1) \
         SELECT pg_current_xact_id()::text::bigint FROM w",
    );
    db.execute(&format!(
        "UPDATE materialized_views_refresh_state \
         SET snapshot = '{next}:{next}:', system_identifier = system_identifier # 1",
        next = t + 1
    ));
    let note = refresh_and_verify(&db, &registry);
    assert!(
        note.starts_with(
            "full reconcile: the state was saved in another cluster (system identifier "
        ),
        "{note}"
    );
    assert_eq!(refresh_and_verify(&db, &registry), "nothing changed");

    // The same copy with the cluster unknown (a state saved before it was
    // kept): the snapshot, ahead of every transaction here, gives it away.
    db.execute(
        "INSERT INTO s (k, v) VALUES (5, 700); \
         UPDATE materialized_views_refresh_state \
         SET snapshot = '4000000000:4000000000:', system_identifier = NULL",
    );
    let note = refresh_and_verify(&db, &registry);
    assert_eq!(
        note,
        "full reconcile: the saved snapshot is ahead of this server's (a copy of the database?)"
    );
    assert_eq!(refresh_and_verify(&db, &registry), "nothing changed");
}

/// Rows of `iv` that differ from its query, both ways.
fn drift_of_iv(db: &TestDb) -> i64 {
    let full = "SELECT k, sum(v) AS total, count(*) AS n FROM s GROUP BY k";
    db.scalar(&format!(
        "SELECT count(*) FROM ((TABLE iv EXCEPT ALL ({full})) \
         UNION ALL (({full}) EXCEPT ALL TABLE iv)) d"
    ))
}

/// Takes the log tables back to version 4: no cluster, no identities.
fn back_to_version_4(db: &TestDb) {
    db.execute(
        "ALTER TABLE materialized_views_refresh_state DROP COLUMN system_identifier, \
             DROP COLUMN table_identity, DROP COLUMN source_identity; \
         COMMENT ON TABLE materialized_views_refresh_history IS 'mv-refresher schema version 4';",
    );
}

#[test]
fn a_version_4_state_is_upgraded_and_trusted_and_a_role_that_may_not_upgrade_keeps_it_as_before() {
    let db = TestDb::empty("incremental_upgrade");
    db.execute(S_SCHEMA);
    let registry = db.registry(S_REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);

    // A role that may write the tables but not alter them: the cycles go
    // on as they did with version 4, without identities.
    back_to_version_4(&db);
    let role = format!("writer_{}", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
    ));
    let url = db.url().replace("postgres@", &format!("{role}@"));
    db.execute("INSERT INTO s (k, v) VALUES (1, 100)");
    common::Mvr::new()
        .env("DATABASE_URL", &url)
        .arg("--registry")
        .arg(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stderr_has("may not upgrade");
    assert_eq!(last_note(&db), "changed keys of 1 source(s)");
    db.mvr_with(&registry).arg("verify").run().code(0);

    // Upgraded by the next refresh of a role that may: the state saved
    // without identities is taken as this table's (no full reconcile), and
    // kept with them from now on.
    db.execute("INSERT INTO s (k, v) VALUES (2, 100)");
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stderr_has("upgraded the log tables");
    assert_eq!(last_note(&db), "changed keys of 1 source(s)");
    let version: String = db.scalar(
        "SELECT obj_description('materialized_views_refresh_history'::regclass, 'pg_class')",
    );
    assert_eq!(version, "mv-refresher schema version 6");
    let kept: i64 = db.scalar(
        "SELECT count(*) FROM materialized_views_refresh_state \
         WHERE system_identifier = (SELECT system_identifier FROM pg_control_system()) \
           AND (table_identity ->> 'oid')::oid = 'iv'::regclass \
           AND (source_identity ->> 'oid')::oid = 's'::regclass",
    );
    assert_eq!(kept, 1);
    // init upgrades version 4 as well, and changes nothing on version 6.
    back_to_version_4(&db);
    for _ in 0..2 {
        db.mvr().arg("init").run().code(0);
        let version: String = db.scalar(
            "SELECT obj_description('materialized_views_refresh_history'::regclass, 'pg_class')",
        );
        assert_eq!(version, "mv-refresher schema version 6");
    }
    // A cycle keeps the identities again; they serve at once.
    db.mvr_with(&registry).arg("refresh").run().code(0);
    db.execute("TRUNCATE iv");
    assert!(
        refresh_and_verify(&db, &registry).starts_with("full reconcile: the table was emptied")
    );
    db.execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"));
}

#[test]
fn a_role_that_may_not_read_the_system_identifier_still_runs_incremental_cycles() {
    let db = TestDb::empty("incremental_no_control");
    db.execute(S_SCHEMA);
    let registry = db.registry(S_REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    // As a managed service may: pg_control_system() refused.
    let role = format!("nocontrol_{}", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; \
         REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC; \
         INSERT INTO s (k, v) VALUES (4, 100);"
    ));
    let url = db.url().replace("postgres@", &format!("{role}@"));
    common::Mvr::new()
        .env("DATABASE_URL", &url)
        .arg("--registry")
        .arg(&registry)
        .arg("refresh")
        .run()
        .code(0);
    assert_eq!(last_note(&db), "changed keys of 1 source(s)");
    let unknown: bool =
        db.scalar("SELECT system_identifier IS NULL FROM materialized_views_refresh_state");
    assert!(unknown, "the cluster is kept as unknown");
    db.mvr_with(&registry).arg("verify").run().code(0);
    db.execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"));
}

/// The reproductions of issue 19: one source `s` whose marker `m` has the
/// type given (nullable, indexed, set by the application: `lag` catches
/// late commits), and the sums of its values by `k`.
fn sums(test: &str, marker_type: &str, lag: &str) -> (TestDb, std::path::PathBuf) {
    let db = TestDb::empty(test);
    db.execute(&format!(
        "CREATE TABLE s (id bigserial PRIMARY KEY, k int NOT NULL, v int, m {marker_type}); \
         CREATE INDEX s_m_idx ON s (m); CREATE INDEX ON s (k);"
    ));
    let registry = db.registry(&sums_registry(lag, "0"));
    (db, registry)
}

fn sums_registry(lag: &str, full_every: &str) -> String {
    format!(
        r#"
[[view]]
name = "sums"
key = ["k"]
full_every = "{full_every}"
query = "SELECT k, sum(v) AS v, count(*) AS n FROM s WHERE $changed(k) GROUP BY k"

[[view.changes]]
table = "s"
key = ["k"]
marker = "m"
lag = {lag}
"#
    )
}

/// The table `sums` against its query: rows in one and not the other.
fn sums_drift(db: &TestDb) -> i64 {
    let full = "SELECT k, sum(v) AS v, count(*) AS n FROM s GROUP BY k";
    db.scalar(&format!(
        "SELECT count(*) FROM ((SELECT * FROM sums EXCEPT ALL {full}) \
         UNION ALL ({full} EXCEPT ALL SELECT * FROM sums)) d"
    ))
}

#[test]
fn a_null_marker_is_read_whether_a_row_is_inserted_with_it_or_updated_to_it() {
    let (db, registry) = sums("incremental_null_marker", "timestamptz", "\"1min\"");
    db.execute("INSERT INTO s (k, v, m) SELECT g % 8, g, now() FROM generate_series(1, 40) g");
    db.mvr_with(&registry).arg("refresh").run().code(0);

    // A row inserted without a marker: its key is recomputed.
    db.execute("INSERT INTO s (k, v, m) VALUES (1, 1000, NULL), (9, 5, NULL)");
    db.mvr_with(&registry).arg("refresh").run().code(0);
    assert_eq!(
        sums_drift(&db),
        0,
        "an insert with a NULL marker was missed"
    );
    db.mvr_with(&registry).arg("verify").run().code(0);

    // A row whose marker is set to NULL by an update: the same.
    db.execute("UPDATE s SET v = v + 500, m = NULL WHERE id = 3");
    db.mvr_with(&registry).arg("refresh").run().code(0);
    assert_eq!(sums_drift(&db), 0, "an update to a NULL marker was missed");
    db.mvr_with(&registry).arg("verify").run().code(0);

    // On PostgreSQL the rows already seen are not recomputed again.
    settles(&db, &registry);
    // check says what a nullable marker costs.
    db.mvr_with(&registry)
        .arg("check")
        .run()
        .code(0)
        .stdout_has(
            "warning: public.sums: source public.s: its marker m may be NULL, and every cycle \
             reads the rows where it is",
        )
        .stdout_has("only those written since the last cycle are recomputed");
}

/// The target `sums` over `s` (nullable timestamptz marker, indexed), as
/// planning would describe it: for tests of a cycle's statements.
fn sums_target(
    db: &TestDb,
    spec: &mv_refresher::registry::Incremental,
) -> mv_refresher::incremental::catalog::Target {
    use mv_refresher::catalog::Relation;
    use mv_refresher::incremental::catalog::{Column, MarkerKind, SourcePlan, Target};

    let source = SourcePlan {
        spec: spec.changes[0].clone(),
        relation: Relation {
            oid: db.scalar("SELECT 's'::regclass::oid"),
            schema: "public".into(),
            name: "s".into(),
        },
        marker_type: "timestamp with time zone".into(),
        marker_kind: MarkerKind::Other,
        marker_nullable: true,
        marker_index: Some("s_m_idx".into()),
        key_index: None,
    };
    let column = |name: &str, type_name: &str| Column {
        name: name.into(),
        type_name: type_name.into(),
    };
    Target {
        table: None,
        quoted: "public.sums".into(),
        columns: vec![
            column("k", "integer"),
            column("v", "bigint"),
            column("n", "bigint"),
        ],
        sources: vec![source],
        warnings: Vec::new(),
    }
}

#[test]
fn on_citus_a_row_is_skipped_by_the_last_snapshot_of_the_node_that_holds_it() {
    use mv_refresher::incremental::nodes::{NodeSnapshot, Taken, lookup};
    use mv_refresher::incremental::sql::{Seen, Statements};
    use mv_refresher::registry::Registry;

    // One server stands in for a node: the read is the one pushed down to
    // its shards, which finds the node's last snapshot by its start time.
    let (db, _) = sums("incremental_by_node", "timestamptz", "\"1min\"");
    db.execute("INSERT INTO s (k, v, m) VALUES (1, 1, now()), (2, 2, now())");
    // The node's snapshot, as if no other transaction ran: its xmin is the
    // id after the insert's (a snapshot taken while another runs has an
    // older one, and skips less).
    let taken = db.rows(
        "SELECT to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', \
                        'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                (xmin::text::bigint + 1)::text \
         FROM s WHERE k = 1",
    );
    let here = NodeSnapshot {
        started: taken[0][0].clone().unwrap(),
        xmin: taken[0][1].as_deref().unwrap().parse().unwrap(),
    };
    // After the snapshot: a new key, and an old one updated.
    db.execute("INSERT INTO s (k, v, m) VALUES (3, 3, now())");
    db.execute("UPDATE s SET v = 20 WHERE k = 2");

    let registry = Registry::parse(&sums_registry("\"1min\"", "0"), "sums.toml").unwrap();
    let spec = registry.views[0].incremental.as_ref().unwrap();
    let target = sums_target(&db, spec);
    let statements = Statements {
        spec,
        target: &target,
    };
    let sql = format!(
        "SELECT k::int FROM ({}) c ORDER BY 1",
        statements.changed_keys_read(&target.sources, &[Seen::ByNode], 100)
    );
    let mut client = db.client();
    let mut keys = |saved: Vec<NodeSnapshot>, shared: Vec<String>| -> Vec<i32> {
        let now = Taken {
            nodes: Vec::new(),
            shared,
            skippable: Vec::new(),
        };
        let lookup = lookup(&[Some(saved)], &now);
        client
            .query(&sql, &[&lookup.started, &lookup.xmins, &None::<String>])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    assert_eq!(keys(vec![here.clone()], Vec::new()), [2, 3]);
    // A full transaction id: only its low 32 bits are compared.
    let epochs_on = NodeSnapshot {
        xmin: here.xmin + (7 << 32),
        ..here.clone()
    };
    assert_eq!(keys(vec![epochs_on], Vec::new()), [2, 3]);
    // Another node's snapshot, or none: every row is read.
    let other = NodeSnapshot {
        started: "2001-02-03T04:05:06.000007Z".into(),
        xmin: here.xmin + 1000,
    };
    assert_eq!(keys(vec![other], Vec::new()), [1, 2, 3]);
    assert_eq!(keys(Vec::new(), Vec::new()), [1, 2, 3]);
    // Two nodes started in the same microsecond now: neither is known.
    assert_eq!(keys(vec![here.clone()], vec![here.started]), [1, 2, 3]);
}

#[test]
fn transaction_ids_compare_as_the_server_compares_them_across_a_wraparound() {
    use mv_refresher::incremental::sql::xid_at_or_after;
    let db = TestDb::empty("incremental_xid_order");
    for (xid, other, after) in [
        (1005_i64, 1000_i64, true),
        (1000, 1000, true),
        (999, 1000, false),
        // Past the wraparound: 5 comes after 4294967290, and not before.
        (5, 4_294_967_290, true),
        (4_294_967_290, 5, false),
    ] {
        let sql = format!(
            "SELECT {}",
            xid_at_or_after(&format!("'{xid}'::xid"), &format!("{other}::bigint"))
        );
        assert_eq!(db.scalar::<bool>(&sql), after, "{xid} against {other}");
    }
}

#[test]
fn null_markers_are_read_through_the_index_on_the_marker() {
    use mv_refresher::incremental::sql::{Seen, Statements};
    use mv_refresher::registry::Registry;

    let (db, _) = sums("incremental_null_plan", "timestamptz", "\"1min\"");
    // A day of rows, one in a hundred without a marker.
    db.execute(
        "INSERT INTO s (k, v, m) SELECT g % 1000, g, \
             CASE WHEN g % 100 <> 0 THEN now() - (100000 - g) * interval '1 second' END \
         FROM generate_series(1, 100000) g; ANALYZE s",
    );
    let registry = Registry::parse(&sums_registry("\"1min\"", "0"), "sums.toml").unwrap();
    let spec = registry.views[0].incremental.as_ref().unwrap();
    let target = sums_target(&db, spec);
    let source = target.sources[0].clone();
    let statements = Statements {
        spec,
        target: &target,
    };
    let plan = db.rows(&format!(
        "BEGIN; {}; PREPARE changed (bigint, bigint, text) AS {}; \
         EXPLAIN (FORMAT JSON) EXECUTE changed(pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             0, (now() - interval '10 minutes')::text); ROLLBACK",
        statements.changed_table(),
        statements.changed_keys(std::slice::from_ref(&source), &[Seen::Here])
    ));
    let plan: serde_json::Value = serde_json::from_str(plan[0][0].as_deref().unwrap()).unwrap();
    // Every node of the plan, depth first.
    fn nodes<'a>(node: &'a serde_json::Value, all: &mut Vec<&'a serde_json::Value>) {
        all.push(node);
        for child in node["Plans"].as_array().into_iter().flatten() {
            nodes(child, all);
        }
    }
    let mut all = Vec::new();
    nodes(&plan[0]["Plan"], &mut all);
    let scans_s: Vec<&str> = all
        .iter()
        .filter(|n| n["Relation Name"] == "s")
        .map(|n| n["Node Type"].as_str().unwrap())
        .collect();
    assert!(!scans_s.contains(&"Seq Scan"), "{plan:#}");
    let conditions: Vec<&str> = all
        .iter()
        .filter(|n| n["Index Name"] == "s_m_idx")
        .filter_map(|n| n["Index Cond"].as_str())
        .collect();
    assert!(
        conditions.iter().any(|c| c.contains("m IS NULL")),
        "the NULL markers are not read through the index: {plan:#}"
    );
    assert!(
        conditions.iter().any(|c| c.contains("m >")),
        "the window is not read through the index: {plan:#}"
    );
}

#[test]
fn a_marker_from_the_future_does_not_hide_the_rows_written_after_it() {
    // A timestamp, and a bigint of epoch milliseconds (the seeds' markers).
    for (marker_type, lag, now, later) in [
        (
            "timestamptz",
            "\"1min\"",
            "now()",
            "now() + interval '10 years'",
        ),
        (
            "bigint",
            "60000",
            "(extract(epoch FROM now()) * 1000)::bigint",
            "(extract(epoch FROM now() + interval '10 years') * 1000)::bigint",
        ),
    ] {
        let (db, registry) = sums(
            &format!("incremental_future_{marker_type}"),
            marker_type,
            lag,
        );
        db.execute(&format!(
            "INSERT INTO s (k, v, m) SELECT g % 8, g, {now} FROM generate_series(1, 40) g"
        ));
        db.mvr_with(&registry).arg("refresh").run().code(0);

        // A writer whose clock is ten years ahead: its row is applied ...
        db.execute(&format!(
            "INSERT INTO s (k, v, m) VALUES (1, 1000, {later})"
        ));
        db.mvr_with(&registry).arg("refresh").run().code(0);
        assert_eq!(sums_drift(&db), 0, "{marker_type}");
        // ... and an ordinary row written after it is not hidden.
        db.execute(&format!("INSERT INTO s (k, v, m) VALUES (2, 7, {now})"));
        db.mvr_with(&registry).arg("refresh").run().code(0);
        assert_eq!(
            sums_drift(&db),
            0,
            "{marker_type}: the later row was hidden"
        );
        db.mvr_with(&registry).arg("verify").run().code(0);

        // check and status report the row ahead of the clock.
        let ahead = "source public.s: 1 row(s) with a marker more than 5min ahead of the server's \
                     clock";
        db.mvr_with(&registry)
            .arg("check")
            .run()
            .code(0)
            .stdout_has(&format!("warning: public.sums: {ahead}"));
        db.mvr_with(&registry)
            .arg("status")
            .run()
            .code(0)
            .stdout_has(&format!("public.sums: {ahead}"));
        let json = db
            .mvr_with(&registry)
            .args(["status", "--format", "json"])
            .run();
        json.code(0);
        let status: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        let ahead = &status["views"][0]["markers_ahead"];
        assert_eq!(ahead[0]["source"], "public.s", "{status}");
        assert_eq!(ahead[0]["rows"], 1, "{status}");
    }
}

#[test]
fn check_says_what_no_marker_shows_and_the_full_every_that_bounds_it() {
    let (db, _) = sums("incremental_unseen", "timestamptz", "\"1min\"");
    let unseen = "  not seen by any marker: rows deleted from a source, and the old key of a row \
                  whose key changes; they stay in its table";
    let path = db.registry(&sums_registry("\"1min\"", "6h"));
    let out = db.mvr_with(&path).arg("check").run();
    out.code(0)
        .stdout_has(&format!("{unseen} until the full reconcile (every 6h)"))
        .never_shows("full_every = \"0\"")
        .never_shows("refreshed by this registry");

    // Never reconciled: said loudly.
    let path = db.registry(&sums_registry("\"1min\"", "0"));
    db.mvr_with(&path)
        .arg("check")
        .run()
        .code(0)
        .stdout_has(&format!("{unseen} for good: full_every = \"0\""))
        .stdout_has("warning: public.sums: full_every = \"0\": it is never reconciled in full");

    // A source the registry refreshes itself: its lag must cover that.
    db.execute(
        "CREATE MATERIALIZED VIEW s_copy AS SELECT * FROM s; \
         CREATE UNIQUE INDEX ON s_copy (id); CREATE INDEX ON s_copy (m);",
    );
    let copied = sums_registry("\"1min\"", "6h").replace("table = \"s\"", "table = \"s_copy\"");
    let path = db.registry(&format!("{copied}\n[[view]]\nname = \"s_copy\"\n"));
    db.mvr_with(&path).arg("check").run().code(0).stdout_has(
        "    public.s_copy is refreshed by this registry (public.s_copy): its rows change when \
         it is refreshed, with the markers they had before, so lag (now 1min) must be at least \
         its refresh period; what comes later is missed until the full reconcile (every 6h)",
    );
}

/// The two kinds of marker whose writers are waited for: a sequence's
/// values, and `clock_timestamp()` at insert.
const WAITED_MARKERS: [&str; 2] = [
    "bigserial",
    "timestamptz NOT NULL DEFAULT clock_timestamp()",
];

/// Waits until the refresher `run` is waiting for the sources' writers (its
/// session's statement is the wait's, which looks for prepared
/// transactions); fails at once if it ends first, not having waited.
fn wait_for_the_wait(db: &TestDb, run: &mut common::Running) {
    run.wait_until("the refresher to wait for the sources' writers", || {
        let waiting: bool = db.scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'mv-refresher' AND pid <> pg_backend_pid() \
             AND state IN ('active', 'idle in transaction') \
             AND query LIKE '%pg_prepared_xacts%')",
        );
        waiting.then_some(())
    });
}

/// For each waited-for marker: `setup` makes the source `s` (with `{marker}`
/// for its marker's type), the view is loaded, `hold` opens a writer on its
/// own connection, a later marker commits, and the writer ends (`end`) while
/// a cycle waits for it: with lag 0 the cycle reads its row all the same.
fn a_writer_ending_during_the_wait_is_caught(
    test: &str,
    setup: &str,
    hold: &str,
    end: &str,
    database_default: Option<&str>,
) {
    for (i, marker) in WAITED_MARKERS.iter().enumerate() {
        let db = TestDb::empty(&format!("{test}_{i}"));
        if let Some(setting) = database_default {
            db.execute(&format!("ALTER DATABASE \"{}\" SET {setting}", db.name));
        }
        db.execute(&setup.replace("{marker}", marker));
        db.execute("INSERT INTO s (k, v) SELECT g % 4, g FROM generate_series(1, 20) g");
        let registry = db.registry(&sums_registry("0", "0"));
        db.mvr_with(&registry).arg("refresh").run().code(0);

        let mut writer = db.client();
        writer.batch_execute(hold).unwrap();
        db.execute("INSERT INTO s (k, v) VALUES (2, 1)");
        let mut run = db.mvr_with(&registry).arg("refresh").spawn();
        wait_for_the_wait(&db, &mut run);
        writer.batch_execute(end).unwrap();
        run.wait().code(0);
        assert_eq!(sums_drift(&db), 0, "{marker}: the late row was missed");
        let total: i64 = db.scalar("SELECT v FROM sums WHERE k = 1");
        assert!(total >= 1000, "{marker}: {total}");
    }
}

#[test]
fn a_prepared_insert_committed_during_the_wait_is_caught_with_lag_0() {
    let gid = format!("mvr_late_{}", std::process::id());
    a_writer_ending_during_the_wait_is_caught(
        "incremental_prepared",
        "CREATE TABLE s (id bigserial, k int NOT NULL, v int, m {marker}); CREATE INDEX ON s (m)",
        &format!("BEGIN; INSERT INTO s (k, v) VALUES (1, 1000); PREPARE TRANSACTION '{gid}'"),
        &format!("COMMIT PREPARED '{gid}'"),
        None,
    );
}

#[test]
fn an_insert_straight_into_a_partition_committed_during_the_wait_is_caught_with_lag_0() {
    a_writer_ending_during_the_wait_is_caught(
        "incremental_partition",
        "CREATE TABLE s (id bigserial, k int NOT NULL, v int, m {marker}) PARTITION BY RANGE (k); \
         CREATE TABLE s_low PARTITION OF s FOR VALUES FROM (0) TO (2); \
         CREATE TABLE s_high PARTITION OF s FOR VALUES FROM (2) TO (100); \
         CREATE INDEX ON s (m)",
        "BEGIN; INSERT INTO s_low (k, v) VALUES (1, 1000)",
        "COMMIT",
        None,
    );
}

#[test]
fn under_a_repeatable_read_default_a_writer_committed_during_the_wait_is_caught() {
    a_writer_ending_during_the_wait_is_caught(
        "incremental_repeatable_read",
        "CREATE TABLE s (id bigserial, k int NOT NULL, v int, m {marker}); CREATE INDEX ON s (m)",
        "BEGIN; INSERT INTO s (k, v) VALUES (1, 1000)",
        "COMMIT",
        Some("default_transaction_isolation = 'repeatable read'"),
    );
}

#[test]
fn values_equal_but_not_identical_are_rewritten_and_verify_sees_them() {
    let db = TestDb::empty("incremental_images");
    db.execute(
        "CREATE TABLE s (id bigserial, k int NOT NULL, v numeric, f float8, m bigserial); \
         CREATE INDEX ON s (m); \
         INSERT INTO s (k, v, f) VALUES (1, 1.0, 0), (2, 2.5, 1);",
    );
    let registry = db
        .registry(&sums_registry("0", "0").replace("sum(v) AS v,", "sum(v) AS v, min(f) AS low,"));
    db.mvr_with(&registry).arg("refresh").run().code(0);
    let row = "SELECT v::text || ' ' || low::text FROM sums WHERE k = 1";
    assert_eq!(db.scalar::<String>(row), "1.0 0");

    // Equal by `=`, not by image: 1.0 and 1.000, 0 and -0.
    db.execute("UPDATE s SET v = 1.000, f = '-0', m = nextval('s_m_seq') WHERE k = 1");
    db.mvr_with(&registry).arg("refresh").run().code(0);
    assert_eq!(db.scalar::<String>(row), "1.000 -0");
    let updated: i64 = db.scalar(
        "SELECT rows_updated FROM materialized_views_refresh_history ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(updated, 1);

    // Planted by hand: verify sees it, and a full reconcile mends it.
    db.execute("UPDATE sums SET v = 1.0 WHERE k = 1");
    db.mvr_with(&registry)
        .arg("verify")
        .run()
        .code(1)
        .stdout_has("1 key(s) differ")
        .stdout_has("(1): differs (column v)");
    db.mvr_with(&registry)
        .args(["refresh", "--full"])
        .run()
        .code(0);
    assert_eq!(db.scalar::<String>(row), "1.000 -0");
    db.mvr_with(&registry).arg("verify").run().code(0);
}

#[test]
fn a_writer_preparing_during_the_wait_is_still_waited_for_until_it_commits() {
    for (i, marker) in WAITED_MARKERS.iter().enumerate() {
        let db = TestDb::empty(&format!("incremental_prepares_in_wait_{i}"));
        db.execute(&format!(
            "CREATE TABLE s (id bigserial, k int NOT NULL, v int, m {marker}); \
             CREATE INDEX ON s (m); \
             INSERT INTO s (k, v) SELECT g % 4, g FROM generate_series(1, 20) g"
        ));
        let registry = db.registry(&sums_registry("0", "0"));
        db.mvr_with(&registry).arg("refresh").run().code(0);

        // A backend writer, waited for by its virtual transaction id. A
        // test failing midway leaves its prepared transaction to TestDb's
        // drop, which rolls it back.
        let gid = format!("mvr_prepares_{}_{i}", std::process::id());
        let mut writer = db.client();
        writer
            .batch_execute("BEGIN; INSERT INTO s (k, v) VALUES (1, 1000)")
            .unwrap();
        db.execute("INSERT INTO s (k, v) VALUES (2, 1)");
        let mut run = db.mvr_with(&registry).arg("refresh").spawn();
        wait_for_the_wait(&db, &mut run);

        // It prepares: its virtual transaction id is gone, its row is not
        // committed yet.
        writer
            .batch_execute(&format!("PREPARE TRANSACTION '{}'", gid))
            .unwrap();
        // A chance to end the wait wrongly; then the refresher must still be
        // running and polling, after the PREPARE.
        std::thread::sleep(Duration::from_millis(300));
        run.wait_until("the refresher to poll again after the PREPARE", || {
            let polled: bool = db.scalar(&format!(
                "SELECT EXISTS (SELECT FROM pg_stat_activity a \
                 WHERE datname = current_database() AND application_name = 'mv-refresher' \
                 AND a.pid <> pg_backend_pid() AND query LIKE '%pg_prepared_xacts%' \
                 AND query_start > (SELECT prepared FROM pg_prepared_xacts WHERE gid = '{}'))",
                gid
            ));
            polled.then_some(())
        });

        writer
            .batch_execute(&format!("COMMIT PREPARED '{}'", gid))
            .unwrap();
        run.wait().code(0);
        assert_eq!(
            sums_drift(&db),
            0,
            "{marker}: the row of a writer prepared during the wait was missed"
        );
        let total: i64 = db.scalar("SELECT v FROM sums WHERE k = 1");
        assert!(total >= 1000, "{marker}: {total}");
        db.mvr_with(&registry).arg("verify").run().code(0);
    }
}

#[test]
fn a_partition_attached_already_loaded_is_reconciled_in_full_and_a_new_empty_one_is_not() {
    let db = TestDb::empty("incremental_attached");
    let now = "(extract(epoch FROM now()) * 1000)::bigint";
    db.execute(&format!(
        "CREATE TABLE p (id bigint NOT NULL, k int NOT NULL, v int NOT NULL, m bigint NOT NULL) \
             PARTITION BY LIST (k); \
         CREATE TABLE p_a PARTITION OF p FOR VALUES IN (0, 1, 2, 3); \
         CREATE INDEX ON p (m); \
         INSERT INTO p SELECT g, g % 4, g, {now} FROM generate_series(1, 40) g; \
         CREATE TABLE p_b (LIKE p); \
         INSERT INTO p_b SELECT g, 4 + g % 4, g, {now} - 86400000 FROM generate_series(1, 40) g;"
    ));
    // The sums by `k` of a list-partitioned source `p` whose marker `m` is
    // epoch milliseconds set by the application (`lag` a minute).
    let registry = db.registry(
        &(S_REGISTRY
            .replace("FROM s ", "FROM p ")
            .replace("table = \"s\"", "table = \"p\"")
            + "lag = 60000\n"),
    );
    db.mvr_with(&registry).arg("refresh").run().code(0);

    // The bulk-load idiom: created, loaded, then attached, its rows' markers
    // a day old, far below the watermark.
    db.execute("ALTER TABLE p ATTACH PARTITION p_b FOR VALUES IN (4, 5, 6, 7)");
    assert_eq!(
        refresh_and_verify(&db, &registry),
        "full reconcile: source public.p gained a partition since the last cycle \
         (a new partition already holds rows)"
    );
    let rows: i64 = db.scalar("SELECT count(*) FROM iv");
    assert_eq!(rows, 8);
    assert_eq!(refresh_and_verify(&db, &registry), "nothing changed");

    // A new partition created empty is no change; the rows written into it
    // are found by their markers.
    db.execute("CREATE TABLE p_c PARTITION OF p FOR VALUES IN (8)");
    assert_eq!(refresh_and_verify(&db, &registry), "nothing changed");
    db.execute(&format!("INSERT INTO p VALUES (100, 8, 5, {now})"));
    assert_eq!(
        refresh_and_verify(&db, &registry),
        "changed keys of 1 source(s)"
    );
}

#[test]
fn a_materialized_view_source_refreshed_plainly_is_not_reconciled_in_full() {
    let db = TestDb::empty("incremental_mv_source");
    db.execute(
        "CREATE TABLE b (id bigserial PRIMARY KEY, k int NOT NULL, v int NOT NULL, \
             m timestamptz NOT NULL DEFAULT clock_timestamp()); \
         INSERT INTO b (k, v) SELECT g % 8, g FROM generate_series(1, 80) g; \
         CREATE MATERIALIZED VIEW mvs AS SELECT id, k, v, m FROM b; \
         CREATE UNIQUE INDEX ON mvs (id); CREATE INDEX ON mvs (m); CREATE INDEX ON mvs (k);",
    );
    // Refreshed plainly: new storage every time.
    let registry = db.registry(&format!(
        "[[view]]\nname = \"mvs\"\nconcurrently = \"never\"\n{}\nlag = \"1min\"\n",
        S_REGISTRY
            .replace("FROM s ", "FROM mvs ")
            .replace("table = \"s\"", "table = \"mvs\"")
    ));
    let file = "SELECT relfilenode::bigint FROM pg_class WHERE oid = 'mvs'::regclass";
    let first: i64 = db.scalar(file);
    refresh_and_verify(&db, &registry);
    for v in [1000, 2000] {
        db.execute(&format!("INSERT INTO b (k, v) VALUES (3, {v})"));
        assert_eq!(
            refresh_and_verify(&db, &registry),
            "changed keys of 1 source(s)"
        );
    }
    assert_ne!(
        db.scalar::<i64>(file),
        first,
        "mvs was not refreshed plainly"
    );
    let notes: Vec<Option<String>> = db
        .history("iv")
        .into_iter()
        .filter(|row| row[0].as_deref() == Some("success"))
        .map(|row| row[4].clone())
        .collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(
        notes[1..]
            .iter()
            .all(|note| !note.as_deref().unwrap_or("").starts_with("full reconcile")),
        "{notes:?}"
    );
    let total: i64 = db.scalar("SELECT total FROM iv WHERE k = 3");
    let want: i64 = db.scalar("SELECT sum(v) FROM b WHERE k = 3");
    assert_eq!(total, want);
}

/// The plans of one cycle of `view`, as the server ran them (auto_explain,
/// analyzed, sent to the refresher as notices, which it logs at debug):
/// `(statement, plan)` of each.
fn cycle_plans(
    db: &TestDb,
    registry: &std::path::Path,
    view: &str,
) -> Vec<(String, serde_json::Value)> {
    let database: String = db.scalar("SELECT current_database()");
    let settings = [
        ("session_preload_libraries", "auto_explain"),
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_analyze", "on"),
        ("auto_explain.log_timing", "off"),
        ("auto_explain.log_format", "json"),
        ("auto_explain.log_level", "notice"),
    ];
    for (name, value) in settings {
        db.execute(&format!(
            "ALTER DATABASE \"{database}\" SET {name} = '{value}'"
        ));
    }
    let run = db
        .mvr_with(registry)
        .env("RUST_LOG", "debug")
        .args(["--log-format", "json", "refresh", view])
        .run();
    db.execute(&format!("ALTER DATABASE \"{database}\" RESET ALL"));
    run.code(0);
    run.stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| {
            let message = event["message"].as_str()?;
            let (_, plan) = message.split_once("plan:\n")?;
            let plan: serde_json::Value = serde_json::from_str(plan).ok()?;
            let statement = plan["Query Text"].as_str()?.to_owned();
            Some((statement, plan["Plan"].clone()))
        })
        .collect()
}

/// The nodes of `plan` run more than once over a grouped subquery (an
/// aggregate below them): a subquery re-read per key, as a nested loop does
/// with a misestimated outer side. Each as its node type and loop count.
fn rereads_of_grouped_subqueries(plan: &serde_json::Value) -> Vec<String> {
    fn has_aggregate(node: &serde_json::Value) -> bool {
        node["Node Type"] == "Aggregate"
            || node["Plans"]
                .as_array()
                .is_some_and(|children| children.iter().any(has_aggregate))
    }
    fn walk(node: &serde_json::Value, found: &mut Vec<String>) {
        let loops = node["Actual Loops"].as_i64().unwrap_or(0);
        if loops > 1 && has_aggregate(node) {
            found.push(format!("{} x{loops}", node["Node Type"]));
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, found);
        }
    }
    let mut found = Vec::new();
    walk(plan, &mut found);
    found
}

/// The plan of the cycle's statement that computes the query's rows.
fn result_plan(plans: &[(String, serde_json::Value)]) -> &serde_json::Value {
    let found = plans
        .iter()
        .find(|(statement, _)| statement.contains("mv_refresher_result"));
    &found
        .expect("no plan of the query's rows among the notices")
        .1
}

/// The view shaped like the seeds' user_activity_view (LEFT JOIN grouped
/// subqueries USING the key, $changed in each and in the outer query) over
/// `users` users in 20 tenants (a user's tenant follows from the user: the
/// key's columns correlate, where a misestimate shows), 5% of them changed:
/// the query's rows are read without re-reading a grouped subquery per key,
/// and the table ends equal to its query.
fn five_percent_of(users: i64, test: &str) {
    let db = TestDb::empty(test);
    db.execute(SCHEMA);
    let last = 999 + users;
    db.execute(&format!(
        "INSERT INTO users (tenant_id, user_id, name, active) \
             SELECT g % 20, g, 'u' || g, true FROM generate_series(1000, {last}) g; \
         INSERT INTO bets (tenant_id, user_id, amount) \
             SELECT g % 20, g, g FROM generate_series(1000, {last}) g, generate_series(1, 5); \
         INSERT INTO payments (tenant_id, user_id, amount, ts) \
             SELECT g % 20, g, g, 1 FROM generate_series(1000, {last}) g, generate_series(1, 2); \
         ANALYZE"
    ));
    let registry = db.registry(REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    // The load seen by a cycle, whatever other tests' transactions do.
    settles(&db, &registry);
    // 5% of the users bet again, 1% leave the view, 1% are new.
    db.execute(&format!(
        "UPDATE bets SET amount = amount + 1, updated_at = clock_timestamp() \
         WHERE id IN (SELECT min(id) FROM bets WHERE user_id >= 1000 AND user_id % 20 = 7 \
                      GROUP BY user_id); \
         UPDATE users SET active = false, v = nextval(pg_get_serial_sequence('users', 'v')) \
         WHERE user_id >= 1000 AND user_id % 100 = 3; \
         INSERT INTO users (tenant_id, user_id, name, active) \
             SELECT g % 20, g, 'new' || g, true FROM generate_series({last} + 1, {last} + {users} / 100) g"
    ));
    let plans = cycle_plans(&db, &registry, "user_totals");
    let (note, keys) = cycles(&db).pop().unwrap();
    let changed = users / 20 + 2 * users / 100;
    assert_eq!(
        (note.as_str(), keys),
        ("changed keys of 3 source(s)", changed)
    );
    let counts: Vec<Option<String>> = db.rows(
        "SELECT rows_inserted::text, rows_deleted::text FROM materialized_views_refresh_history \
         ORDER BY id DESC LIMIT 1",
    )[0]
    .clone();
    let new = (users / 100).to_string();
    assert_eq!(counts, [Some(new.clone()), Some(new)]);
    let plan = result_plan(&plans);
    let rereads = rereads_of_grouped_subqueries(plan);
    assert!(
        rereads.is_empty(),
        "grouped subqueries re-read: {rereads:?}\n{plan:#}"
    );
    assert_eq!(drift(&db), 0);
}

#[test]
fn a_cycle_with_five_percent_of_the_keys_changed_reads_each_grouped_subquery_once() {
    // 280 keys: read by the client, applied in one statement.
    five_percent_of(4000, "incremental_five_percent_plan");
}

#[test]
fn a_cycle_with_five_percent_of_more_keys_changed_reads_each_grouped_subquery_once() {
    // 2,800 keys: still one statement.
    five_percent_of(40000, "incremental_five_percent_more_plan");
}

#[test]
fn a_cycle_with_five_percent_of_many_keys_changed_reads_each_grouped_subquery_once() {
    // 7,000 keys: in a temporary table.
    five_percent_of(100000, "incremental_five_percent_many_plan");
}

#[test]
fn a_cycle_of_the_reference_twin_reads_each_grouped_subquery_once() {
    // user_activity, written with CTEs (the embedded default registry), on
    // the reference platform's sample data, 5% of the users changed.
    let db = TestDb::platform("incremental_twin_plan");
    db.mvr().args(["refresh", "user_activity"]).run().code(0);
    let users: i64 = db.scalar(
        "WITH picked AS (SELECT DISTINCT ON (tenant_id, user_id) tenant_id, bet_id FROM bets_view \
                         WHERE abs(hashtext(user_id)) % 20 = 0 ORDER BY tenant_id, user_id, bet_id), \
              changed AS (UPDATE bets_view b SET stake = b.stake + 1, \
                              last_updated_timestamp = (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
                          FROM picked p WHERE b.tenant_id = p.tenant_id AND b.bet_id = p.bet_id \
                          RETURNING 1) \
         SELECT count(*) FROM changed",
    );
    assert!(users > 20, "too few users changed: {users}");
    let registry = db.registry(include_str!("../src/default_registry.toml"));
    let plans = cycle_plans(&db, &registry, "user_activity");
    let plan = result_plan(&plans);
    let rereads = rereads_of_grouped_subqueries(plan);
    assert!(
        rereads.is_empty(),
        "grouped subqueries re-read: {rereads:?}\n{plan:#}"
    );
    db.mvr().args(["verify", "user_activity"]).run().code(0);
}

#[test]
fn a_cycle_of_a_grouped_query_reads_its_group_once() {
    // iv: one source grouped by the key, 5% of 4,000 keys changed.
    let db = TestDb::empty("incremental_grouped_plan");
    db.execute(S_SCHEMA);
    db.execute(
        "INSERT INTO s (k, v) SELECT g % 4000, g FROM generate_series(1, 20000) g; ANALYZE s",
    );
    let registry = db.registry(S_REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    settles(&db, &registry);
    db.execute("UPDATE s SET v = v + 1, m = clock_timestamp() WHERE k % 20 = 7 AND id <= 4000");
    let plans = cycle_plans(&db, &registry, "iv");
    assert_eq!(last_note(&db), "changed keys of 1 source(s)");
    let plan = result_plan(&plans);
    let rereads = rereads_of_grouped_subqueries(plan);
    assert!(
        rereads.is_empty(),
        "grouped subqueries re-read: {rereads:?}\n{plan:#}"
    );
    db.mvr_with(&registry).arg("verify").run().code(0);
}

#[test]
fn a_cycle_with_more_keys_than_one_statement_applies_reads_the_sources_changes_once() {
    // 6,000 of 16,000 keys changed: more than one statement applies (5,000;
    // through a temporary table), fewer than a full reconcile would.
    let db = TestDb::empty("incremental_changes_read_once");
    db.execute(S_SCHEMA);
    db.execute(
        "INSERT INTO s (k, v) SELECT g % 16000, g FROM generate_series(1, 32000) g; ANALYZE s",
    );
    let registry = db.registry(S_REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    settles(&db, &registry);
    db.execute("UPDATE s SET v = v + 1, m = clock_timestamp() WHERE k < 6000 AND id <= 16000");
    let plans = cycle_plans(&db, &registry, "iv");
    let cycle = db.rows(
        "SELECT note, keys_scanned::text FROM materialized_views_refresh_history \
         WHERE view_name = 'public.iv' AND status = 'success' ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(
        cycle[0],
        [
            Some("changed keys of 1 source(s)".to_owned()),
            Some("6000".to_owned())
        ]
    );
    // The statements that read the source's window of changed rows.
    let reads: Vec<&str> = plans
        .iter()
        .map(|(statement, _)| statement.as_str())
        .filter(|statement| statement.contains("\"m\" > $3::text"))
        .collect();
    assert_eq!(
        reads.len(),
        1,
        "the window read {} times: {reads:#?}",
        reads.len()
    );
    db.mvr_with(&registry).arg("verify").run().code(0);
}

#[test]
fn a_cycle_with_a_large_share_of_the_keys_changed_is_run_as_a_full_reconcile() {
    let db = TestDb::empty("incremental_large_share");
    db.execute(S_SCHEMA);
    db.execute("INSERT INTO s (k, v) SELECT g % 4000, g FROM generate_series(1, 8000) g");
    let registry = db.registry(S_REGISTRY);
    db.mvr_with(&registry).arg("refresh").run().code(0);
    settles(&db, &registry);
    // 5%: the changed keys. Three quarters of the table: cheaper in full.
    db.execute("UPDATE s SET v = v + 1, m = clock_timestamp() WHERE k % 20 = 3");
    assert_eq!(
        refresh_and_verify(&db, &registry),
        "changed keys of 1 source(s)"
    );
    db.execute("UPDATE s SET v = v + 1, m = clock_timestamp() WHERE k % 4 <> 0");
    assert_eq!(
        refresh_and_verify(&db, &registry),
        "full reconcile: 3000 keys changed, 75% of the table's 4000 rows \
         (from 50% a full reconcile costs less)"
    );
    // A full reconcile counts for full_every: the state says when it was.
    let full: bool = db.scalar(
        "SELECT last_full_at > applied_at - interval '1 second' FROM materialized_views_refresh_state",
    );
    assert!(full);
    db.execute("UPDATE s SET v = v + 1, m = clock_timestamp() WHERE k = 5");
    assert_eq!(
        refresh_and_verify(&db, &registry),
        "changed keys of 1 source(s)"
    );
}

#[test]
fn a_query_returning_a_key_twice_fails_the_cycle_and_changes_nothing() {
    let db = TestDb::empty("incremental_key_twice");
    db.execute(
        "CREATE TABLE d (id serial PRIMARY KEY, k int NOT NULL, v int NOT NULL, \
             m timestamptz NOT NULL DEFAULT clock_timestamp()); \
         CREATE INDEX ON d (m); \
         INSERT INTO d (k, v) SELECT g, g FROM generate_series(1, 4000) g",
    );
    let registry = db.registry(
        r#"
[[view]]
name = "dv"
key = ["k"]
query = "SELECT k, v FROM d WHERE $changed(k)"

[[view.changes]]
table = "d"
key = ["k"]
marker = "m"
"#,
    );
    db.mvr_with(&registry).arg("refresh").run().code(0);
    db.execute("ANALYZE dv");
    let before: i64 = db.scalar("SELECT sum(v) FROM dv");
    // A few keys (one statement), then most of them (a full reconcile).
    for changed in ["k <= 10", "k <= 3000"] {
        db.execute(&format!(
            "UPDATE d SET v = v + 1, m = clock_timestamp() WHERE {changed}; \
             INSERT INTO d (k, v) VALUES (3, -1)"
        ));
        let out = db.mvr_with(&registry).arg("refresh").run();
        out.code(1)
            .stdout_has("the query returns key (3) more than once");
        assert_eq!(db.scalar::<i64>("SELECT sum(v) FROM dv"), before);
        db.execute("DELETE FROM d WHERE v = -1");
    }
}

/// Rows in `twin` and not in the materialized view `view`, and the other way
/// round, once the view is refreshed in full.
fn twin_drift(db: &TestDb, twin: &str, view: &str) -> i64 {
    db.execute(&format!("REFRESH MATERIALIZED VIEW {view}"));
    db.scalar(&format!(
        "SELECT count(*) FROM ((SELECT * FROM {twin} EXCEPT ALL SELECT * FROM {view}) \
         UNION ALL (SELECT * FROM {view} EXCEPT ALL SELECT * FROM {twin})) d"
    ))
}

#[test]
fn twin_derives_the_platform_views_twin_which_stays_equal_to_the_view() {
    let db = TestDb::platform("incremental_twin_platform");
    let out = db
        .mvr()
        .args(["twin", "user_activity_view", "--as", "user_activity_twin"])
        .run();
    out.code(0)
        .stderr_has("public.user_activity_view: proven on")
        .stderr_has("marker last_updated_timestamp (set by the application on each write");
    assert!(
        out.stdout
            .starts_with("[[view]]\nname = \"user_activity_twin\""),
        "{out}"
    );
    assert_eq!(out.stdout.matches("$changed(").count(), 3, "{out}");
    assert_eq!(out.stdout.matches("[[view.changes]]").count(), 3, "{out}");

    let registry = db.registry(&out.stdout);
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("created and fully loaded");
    assert_eq!(
        twin_drift(&db, "user_activity_twin", "user_activity_view"),
        0
    );
    // The application's writes, with the markers it sets.
    db.execute(
        "UPDATE bets_view SET stake = stake + 7, \
             last_updated_timestamp = (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
         WHERE bet_id IN (SELECT bet_id FROM bets_view ORDER BY bet_id LIMIT 5); \
         UPDATE user_balances_view SET balance = balance - 3, \
             last_transaction_timestamp = (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
         WHERE user_id IN (SELECT user_id FROM user_balances_view ORDER BY user_id DESC LIMIT 5)",
    );
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("changed keys of 3 source(s)");
    assert_eq!(
        twin_drift(&db, "user_activity_twin", "user_activity_view"),
        0
    );

    // What no key decomposes is refused, with the reason.
    db.mvr()
        .args(["twin", "top_bets_today"])
        .run()
        .code(1)
        .stderr_has(
            "public.top_bets_today: ORDER BY ... LIMIT 1000 keeps the top rows of the whole \
             table; any row can enter or leave it",
        );
    db.mvr()
        .args(["twin", "tenants_summary_view"])
        .run()
        .code(1)
        .stderr_has("AS last_refreshed_at: now() in a column; in the twin each row would hold the time its key was last recomputed");
    db.mvr()
        .args(["twin", "no_such_view"])
        .run()
        .code(2)
        .stderr_has("no_such_view: no materialized view of that name");
}

#[test]
fn twin_on_the_seeds_databases_names_the_index_a_marker_needs_then_derives_the_twin() {
    use common::Seeds;
    for seeds in Seeds::BOTH {
        let db = TestDb::seeds(seeds, &format!("incremental_twin_{seeds:?}").to_lowercase());
        // The seeds index no marker: each source's is named with its index.
        let out = db.mvr().args(["twin", "user_activity_view"]).run();
        out.code(1)
            .stderr_has("has no usable marker: last_")
            .stderr_has("marks its changes but no index starts with it");
        let hint = out.log_line_with("CREATE INDEX ON");
        assert!(hint.contains("(CREATE INDEX ON public."), "{hint}");
        for table in ["bets_view", "payments_view"] {
            db.execute(&format!("CREATE INDEX ON {table} (last_updated_timestamp)"));
        }
        let marker = match seeds {
            Seeds::S000 => "last_updated_timestamp",
            Seeds::S001 => "last_transaction_timestamp",
        };
        db.execute(&format!("CREATE INDEX ON user_balances_view ({marker})"));
        let out = db.mvr().args(["twin", "user_activity_view"]).run();
        out.code(0).stderr_has("proven on");
        let registry = db.registry(&out.stdout);
        db.mvr_with(&registry).arg("refresh").run().code(0);
        db.execute(
            "UPDATE bets_view SET payout = coalesce(payout, 0) + 1, \
                 last_updated_timestamp = (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
             WHERE bet_id IN (SELECT bet_id FROM bets_view ORDER BY bet_id LIMIT 3)",
        );
        db.mvr_with(&registry)
            .arg("refresh")
            .run()
            .code(0)
            .stdout_has("changed keys");
        assert_eq!(
            twin_drift(&db, "user_activity", "user_activity_view"),
            0,
            "{seeds:?}"
        );
    }
}

#[test]
fn twins_derived_from_generated_views_stay_equal_to_them_through_random_writes() {
    let db = TestDb::empty("incremental_twin_property");
    db.execute(
        "CREATE SCHEMA \"Odd Schema\"; \
         CREATE TABLE d (k1 int NOT NULL, k2 int NOT NULL, label text, last_updated_ms bigint NOT NULL, \
             PRIMARY KEY (k1, k2)); \
         CREATE INDEX ON d (last_updated_ms); \
         CREATE TABLE \"Odd Schema\".a (id serial PRIMARY KEY, k1 int, k2 int, \"Value\" numeric, \
             change_timestamp bigint NOT NULL); \
         CREATE INDEX ON \"Odd Schema\".a (change_timestamp); \
         CREATE TABLE b (id serial PRIMARY KEY, k1 int, k2 int, w int, updated_at timestamptz NOT NULL); \
         CREATE INDEX ON b (updated_at);",
    );
    // A small grammar of the shapes views are written in, over the key (k1, k2).
    let grouped_a =
        "SELECT k1, k2, count(*) AS n, sum(\"Value\") AS s FROM \"Odd Schema\".a GROUP BY k1, k2";
    let shapes = [
        // GROUP BY the key in the outer query, schema-qualified, quoted.
        grouped_a.to_owned(),
        // A driving table and a grouped subquery, USING.
        format!(
            "SELECT d.k1, d.k2, d.label, x.n, x.s FROM d LEFT JOIN ({grouped_a}) x USING (k1, k2)"
        ),
        // A CTE joined ON.
        "WITH x AS (SELECT k1, k2, sum(w) AS w, count(*) AS c FROM b GROUP BY k1, k2) \
         SELECT d.k1, d.k2, coalesce(x.w, 0) AS w, x.c FROM d JOIN x ON x.k1 = d.k1 AND x.k2 = d.k2"
            .to_owned(),
        // GROUP BY in the outer query over joined tables.
        "SELECT a.k1, a.k2, count(*) AS n, max(b.w) AS w FROM \"Odd Schema\".a a \
         JOIN b ON b.k1 = a.k1 AND b.k2 = a.k2 GROUP BY a.k1, a.k2"
            .to_owned(),
        // DISTINCT ON the key: each key's latest row.
        "SELECT DISTINCT ON (k1, k2) k1, k2, \"Value\" AS latest FROM \"Odd Schema\".a \
         ORDER BY k1, k2, id DESC"
            .to_owned(),
        // The seeds' shape: two grouped subqueries beside the driving table.
        format!(
            "SELECT d.k1, d.k2, x.s, y.w FROM d LEFT JOIN ({grouped_a}) x ON x.k1 = d.k1 AND x.k2 = d.k2 \
             LEFT JOIN (SELECT k1, k2, sum(w) AS w FROM b GROUP BY k1, k2) y ON y.k1 = d.k1 AND y.k2 = d.k2"
        ),
    ];
    let ms = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
    for (i, shape) in shapes.iter().enumerate() {
        let seed = 20 + i as u64;
        let mut rng = fastrand::Rng::with_seed(seed);
        // One round of writes: inserts (a tenth with a NULL k2), updates of
        // values (a key never changes: that is a delete for the old key,
        // left to the full reconcile), new driving rows.
        let writes = |rng: &mut fastrand::Rng| {
            let key = |rng: &mut fastrand::Rng| match rng.u8(0..10) {
                0 => format!("{}, NULL", rng.u8(1..4)),
                _ => format!("{}, {}", rng.u8(1..4), rng.u8(1..7)),
            };
            let mut sql = String::new();
            for _ in 0..rng.usize(1..6) {
                sql.push_str(&format!(
                    "INSERT INTO \"Odd Schema\".a (k1, k2, \"Value\", change_timestamp) VALUES ({}, {}.5, {ms}); \
                     INSERT INTO b (k1, k2, w, updated_at) VALUES ({}, {}, clock_timestamp()); ",
                    key(rng),
                    rng.u16(0..100),
                    key(rng),
                    rng.u16(0..100)
                ));
            }
            sql.push_str(&format!(
                "UPDATE \"Odd Schema\".a SET \"Value\" = \"Value\" + 1, change_timestamp = {ms} WHERE id % 7 = {}; \
                 UPDATE b SET w = w * 2, updated_at = clock_timestamp() WHERE id % 5 = {}; \
                 INSERT INTO d (k1, k2, label, last_updated_ms) VALUES ({}, {}, 'l', {ms}) \
                     ON CONFLICT (k1, k2) DO UPDATE SET label = d.label || '+', last_updated_ms = {ms};",
                rng.u8(0..7),
                rng.u8(0..5),
                rng.u8(1..4),
                rng.u8(1..7)
            ));
            db.execute(&sql);
        };
        writes(&mut rng);
        let view = format!("pv_{i}");
        db.execute(&format!(
            "CREATE MATERIALIZED VIEW {view} AS {shape}; CREATE UNIQUE INDEX ON {view} (k1, k2)"
        ));
        let out = db
            .mvr()
            .args(["twin", &view, "--as", &format!("tw_{i}")])
            .run();
        assert_eq!(out.code, Some(0), "seed {seed}, shape {shape}\n{out}");
        let registry = db.registry(&out.stdout);
        for round in 0..4 {
            db.mvr_with(&registry).arg("refresh").run().code(0);
            db.execute(&format!("REFRESH MATERIALIZED VIEW {view}"));
            let differ: i64 = db.scalar(&format!(
                "SELECT count(*) FROM ((SELECT * FROM tw_{i} EXCEPT ALL \
                     SELECT * FROM {view} WHERE k1 IS NOT NULL AND k2 IS NOT NULL) \
                 UNION ALL (SELECT * FROM {view} WHERE k1 IS NOT NULL AND k2 IS NOT NULL \
                     EXCEPT ALL SELECT * FROM tw_{i})) x"
            ));
            assert_eq!(
                differ, 0,
                "seed {seed}, round {round}, shape {shape}\n{}",
                out.stdout
            );
            writes(&mut rng);
        }
    }
}
