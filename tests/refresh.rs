//! `refresh` against a real server: what it refreshes, what it records, what it
//! refuses, and how it exits.

mod common;

use common::TestDb;

const SEED_QUERY: &str = "SELECT view_name, avg_refresh_time_ms, refresh_count, last_refreshed_at
FROM materialized_views_refresh_log WHERE avg_refresh_time_ms > 500;";

#[test]
fn default_registry_refreshes_the_seed_views_and_the_incremental_twins_and_logs_them() {
    let db = TestDb::platform("default_registry");
    // A new bet that only a refresh makes visible in the aggregate view.
    let before: i32 =
        db.scalar("SELECT total_bets FROM tenants_summary_view WHERE tenant_id = 10001");
    db.execute(
        "INSERT INTO bets_view (tenant_id, bet_id, user_id, stake, odds, status, created_at, \
             last_updated_timestamp, last_updated_at) \
         VALUES (10001, 'bet-new', 'user-1', 10, 2, 'placed', now(), 0, now())",
    );

    let out = db.mvr().args(["refresh"]).run();
    out.code(0)
        .stdout_has("public.tenants_summary_view")
        .stdout_has("public.user_activity_view")
        .stdout_has("public.top_bets_today")
        .stdout_has("public.user_activity ")
        .stdout_has("public.bets_latest")
        .stdout_has("5 refreshed, 0 skipped, 0 failed");

    let after: i32 =
        db.scalar("SELECT total_bets FROM tenants_summary_view WHERE tenant_id = 10001");
    assert_eq!(after, before + 1, "the view was not refreshed\n{out}");

    let log = db.rows(
        "SELECT view_name, refresh_count, failure_count, last_status, last_method, \
                last_refreshed_at IS NOT NULL, refreshed_by IS NOT NULL \
         FROM materialized_views_refresh_log ORDER BY view_name",
    );
    let expect = |name: &str, method: &str| {
        vec![
            Some(name.to_owned()),
            Some("1".into()),
            Some("0".into()),
            Some("success".into()),
            Some(method.into()),
            Some("t".into()),
            Some("t".into()),
        ]
    };
    assert_eq!(
        log,
        vec![
            expect("public.bets_latest", "incremental"),
            expect("public.tenants_summary_view", "concurrently"),
            expect("public.top_bets_today", "concurrently"),
            expect("public.user_activity", "incremental"),
            expect("public.user_activity_view", "concurrently"),
        ]
    );
    // The twins were loaded in full, and hold what their queries return.
    db.mvr().arg("verify").run().code(0);
    let twins: i64 = db.scalar(
        "SELECT (SELECT count(*) FROM user_activity) - (SELECT count(*) FROM user_activity_view)",
    );
    assert_eq!(twins, 0);
    let history = db.rows(
        "SELECT view_name, status, method, attempt, work_mem, statement_timeout, lock_timeout \
         FROM materialized_views_refresh_history WHERE method = 'concurrently' ORDER BY view_name",
    );
    assert_eq!(history.len(), 3);
    for row in history {
        assert_eq!(
            row[1..],
            [
                Some("success".into()),
                Some("concurrently".into()),
                Some("1".into()),
                Some("4MB".into()), // the server's: the registry sets none
                Some("10min".into()),
                Some("30s".into()),
            ]
        );
    }
}

#[test]
fn seeds_monitoring_query_runs_unchanged_on_the_log() {
    let db = TestDb::platform("seed_query");
    db.mvr().args(["refresh"]).run().code(0);
    db.mvr().args(["refresh"]).run().code(0);

    // The seeds' query, word for word, with the types an application reads.
    let mut client = db.client();
    let slow = client.query(SEED_QUERY, &[]).unwrap();
    for row in &slow {
        let avg: f64 = row.get("avg_refresh_time_ms");
        assert!(avg > 500.0);
    }
    // Make one view "slow" on record: the query must then report it.
    client
        .execute(
            "UPDATE materialized_views_refresh_log SET avg_refresh_time_ms = 750 \
             WHERE view_name = 'public.top_bets_today'",
            &[],
        )
        .unwrap();
    let slow = client.query(SEED_QUERY, &[]).unwrap();
    let names: Vec<String> = slow.iter().map(|r| r.get("view_name")).collect();
    assert!(
        names.contains(&"public.top_bets_today".to_owned()),
        "{names:?}"
    );
    let row = slow
        .iter()
        .find(|r| r.get::<_, String>(0) == "public.top_bets_today")
        .unwrap();
    let count: i64 = row.get("refresh_count");
    let _: std::time::SystemTime = row.get("last_refreshed_at");
    assert_eq!(count, 2);
}

#[test]
fn average_and_counts_follow_the_history() {
    let db = TestDb::platform("averages");
    for _ in 0..3 {
        db.mvr()
            .args(["refresh", "tenants_summary_view"])
            .run()
            .code(0);
    }
    let (avg, last, count): (f64, f64, i64) = {
        let row = db
            .client()
            .query_one(
                "SELECT avg_refresh_time_ms, last_refresh_time_ms, refresh_count \
                 FROM materialized_views_refresh_log WHERE view_name = 'public.tenants_summary_view'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let (history_avg, history_last): (f64, f64) = {
        let row = db
            .client()
            .query_one(
                "SELECT avg(duration_ms), (array_agg(duration_ms ORDER BY id DESC))[1] \
                 FROM materialized_views_refresh_history \
                 WHERE view_name = 'public.tenants_summary_view' AND status = 'success'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(count, 3);
    // Stored to a tenth of a millisecond, as people read it: each of the
    // three updates rounds by at most 0.05 ms.
    assert!(
        ((avg * 10.0).round() - avg * 10.0).abs() < 1e-6,
        "{avg} is rounded to 0.1 ms"
    );
    assert!((avg - history_avg).abs() <= 0.1, "{avg} vs {history_avg}");
    assert!(
        (last - history_last).abs() < 1e-9,
        "{last} vs {history_last}"
    );
}

#[test]
fn a_name_that_is_not_a_materialized_view_fails_alone_unlogged_with_the_closest_view() {
    let db = TestDb::platform("missing_view");
    let registry = db.registry(
        "[[view]]\nname = \"tenants_summary_view\"\n\n[[view]]\nname = \"user_activity_veiw\"\n\n\
         [[view]]\nname = \"tenants\"\n\n[[view]]\nname = \"top_bets_today\"\n",
    );
    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(1)
        .stdout_has("2 refreshed, 0 skipped, 2 failed")
        .stderr_has("public.user_activity_veiw does not exist")
        .stderr_has("did you mean public.user_activity_view?")
        .stderr_has("is a table, not a materialized view");

    // A typo never becomes a row of its own in the log tables.
    let logged = db.rows(
        "SELECT view_name FROM materialized_views_refresh_log \
         UNION ALL SELECT DISTINCT view_name FROM materialized_views_refresh_history ORDER BY 1",
    );
    assert_eq!(
        logged,
        [
            [Some("public.tenants_summary_view".to_owned())],
            [Some("public.tenants_summary_view".to_owned())],
            [Some("public.top_bets_today".to_owned())],
            [Some("public.top_bets_today".to_owned())],
        ]
    );
}

#[test]
fn a_typo_on_the_command_line_exits_2_before_anything_is_written() {
    let db = TestDb::platform("typo_cli");
    let out = db
        .mvr()
        .args(["refresh", "top_bets_today", "user_activity_veiw"])
        .run();
    out.code(2)
        .stderr_has("there is no materialized view user_activity_veiw; did you mean public.user_activity_view?")
        .stderr_has("nothing was refreshed");
    let tables: i64 = db
        .scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'materialized_views_refresh_%'");
    assert_eq!(tables, 0, "no log tables were created");
}

/// Issue 18: an error without a SQLSTATE was taken for a lost connection.
/// Here the success row's `INSERT ... RETURNING id` returns no row (a trigger
/// moves history rows to an archive, as trigger-based partitioning does): the
/// client's "unexpected number of rows" made the committed refresh a failure,
/// retried as transient.
#[test]
fn a_success_row_a_trigger_diverts_is_no_lost_connection_and_nothing_is_retried() {
    let db = TestDb::platform("history_trigger");
    db.mvr().arg("init").run().code(0);
    db.execute(
        "CREATE TABLE history_archive (LIKE materialized_views_refresh_history); \
         CREATE FUNCTION archive_history() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN INSERT INTO history_archive SELECT NEW.*; RETURN NULL; END$$; \
         CREATE TRIGGER archive BEFORE INSERT ON materialized_views_refresh_history \
           FOR EACH ROW EXECUTE FUNCTION archive_history();",
    );
    let out = db.mvr().args(["refresh", "top_bets_today"]).run();
    out.code(0).stdout_has("1 refreshed");
    let archived = db.rows(
        "SELECT status, attempt::text FROM history_archive \
         WHERE view_name = 'public.top_bets_today' ORDER BY id",
    );
    assert_eq!(
        archived,
        [[Some("success".to_owned()), Some("1".to_owned())]],
        "one attempt, recorded once\n{out}"
    );
    let count: i64 = db.scalar(
        "SELECT refresh_count FROM materialized_views_refresh_log \
         WHERE view_name = 'public.top_bets_today'",
    );
    assert_eq!(count, 1, "{out}");
}

#[test]
fn a_failing_refresh_is_rolled_back_recorded_with_its_sqlstate_and_does_not_stop_others() {
    let db = TestDb::platform("failing_refresh");
    db.failing_view("fragile");
    let registry =
        db.registry("[[view]]\nname = \"fragile\"\n\n[[view]]\nname = \"tenants_summary_view\"\n");
    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(1).stderr_has("division by zero");

    let row = db.rows(
        "SELECT status, method, sqlstate, error FROM materialized_views_refresh_history \
         WHERE view_name = 'public.fragile'",
    );
    assert_eq!(row.len(), 1, "a division by zero is not retried");
    assert_eq!(row[0][0].as_deref(), Some("failed"));
    assert_eq!(
        row[0][1].as_deref(),
        Some("full"),
        "unpopulated: plain refresh"
    );
    assert_eq!(row[0][2].as_deref(), Some("22012"));
    let populated: bool =
        db.scalar("SELECT relispopulated FROM pg_class WHERE relname = 'fragile'");
    assert!(!populated, "the failed refresh must leave nothing behind");
    let (ok, failed): (i64, i64) = {
        let r = db
            .client()
            .query_one(
                "SELECT refresh_count, failure_count FROM materialized_views_refresh_log \
                 WHERE view_name = 'public.fragile'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((ok, failed), (0, 1));
    let other: String = db.scalar(
        "SELECT last_status FROM materialized_views_refresh_log WHERE view_name = 'public.tenants_summary_view'",
    );
    assert_eq!(other, "success");
}

#[test]
fn per_view_settings_apply_inside_the_refresh_and_nowhere_else() {
    let db = TestDb::platform("settings");
    // Views that capture the settings their refresh ran with.
    db.execute(
        "CREATE MATERIALIZED VIEW probe_a AS SELECT 1 AS id, current_setting('work_mem') AS work_mem, \
             current_setting('statement_timeout') AS statement_timeout, \
             current_setting('lock_timeout') AS lock_timeout; \
         CREATE UNIQUE INDEX ON probe_a (id); \
         CREATE MATERIALIZED VIEW probe_b AS SELECT * FROM probe_a WITH NO DATA; \
         CREATE MATERIALIZED VIEW probe_c AS SELECT 1 AS id, current_setting('work_mem') AS work_mem, \
             current_setting('statement_timeout') AS statement_timeout, \
             current_setting('lock_timeout') AS lock_timeout; \
         CREATE UNIQUE INDEX ON probe_c (id);",
    );
    let registry = db.registry(
        "[defaults]\nwork_mem = \"5MB\"\n\n\
         [[view]]\nname = \"probe_a\"\nwork_mem = \"3MB\"\nstatement_timeout = \"7s\"\nlock_timeout = \"2s\"\n\n\
         [[view]]\nname = \"probe_c\"\n",
    );
    db.mvr()
        .args(["refresh", "--jobs", "1", "--registry"])
        .arg(&registry)
        .run()
        .code(0);
    let a = db.rows("SELECT work_mem, statement_timeout, lock_timeout FROM probe_a");
    assert_eq!(
        a,
        [[Some("3MB".into()), Some("7s".into()), Some("2s".into())]]
    );
    // The next view on the same pooled connection sees its own settings, not probe_a's.
    let c = db.rows("SELECT work_mem, statement_timeout, lock_timeout FROM probe_c");
    assert_eq!(
        c,
        [[Some("5MB".into()), Some("10min".into()), Some("30s".into())]]
    );
    let recorded = db.rows(
        "SELECT work_mem, statement_timeout, lock_timeout FROM materialized_views_refresh_history \
         WHERE view_name = 'public.probe_a'",
    );
    assert_eq!(
        recorded,
        [[Some("3MB".into()), Some("7s".into()), Some("2s".into())]]
    );
}

#[test]
fn statement_timeout_failure_names_the_setting() {
    let db = TestDb::platform("statement_timeout");
    db.execute("CREATE MATERIALIZED VIEW slow AS SELECT pg_sleep(5)::text AS slept WITH NO DATA;");
    let registry = db.registry("[[view]]\nname = \"slow\"\nstatement_timeout = \"100ms\"\n");
    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(1).stderr_has("statement_timeout = 100ms");
    let sqlstate: String = db.scalar(
        "SELECT sqlstate FROM materialized_views_refresh_history WHERE view_name = 'public.slow'",
    );
    assert_eq!(sqlstate, "57014");
}

#[test]
fn a_log_that_cannot_be_written_never_undoes_the_refresh() {
    let db = TestDb::platform("log_write_fails");
    db.mvr().args(["init"]).run().code(0);
    db.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'log is read-only today'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON materialized_views_refresh_log \
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    );
    let before: i32 =
        db.scalar("SELECT total_bets FROM tenants_summary_view WHERE tenant_id = 10001");
    db.execute(
        "INSERT INTO bets_view (tenant_id, bet_id, user_id, stake, odds, status, created_at, \
             last_updated_timestamp, last_updated_at) \
         VALUES (10001, 'bet-new', 'user-1', 10, 2, 'placed', now(), 0, now())",
    );
    let out = db.mvr().args(["refresh", "tenants_summary_view"]).run();
    out.code(1)
        .stderr_has("could not record the outcome")
        .stderr_has("log is read-only today")
        .stdout_has("success");
    let after: i32 =
        db.scalar("SELECT total_bets FROM tenants_summary_view WHERE tenant_id = 10001");
    assert_eq!(after, before + 1, "the refresh must stand\n{out}");
}

#[test]
fn a_role_that_may_not_create_the_log_tables_still_refreshes() {
    let db = TestDb::platform("no_create_privilege");
    db.execute(&format!(
        "CREATE ROLE limited_{0} LOGIN; \
         REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO limited_{0}; \
         ALTER MATERIALIZED VIEW tenants_summary_view OWNER TO limited_{0};",
        db.name
    ));
    let url = db
        .url()
        .replace("postgres@", &format!("limited_{}@", db.name));
    let before: i64 = db.scalar("SELECT count(*) FROM tenants_summary_view");
    db.execute("INSERT INTO tenants (id, name, slug) VALUES (20001, 'New', 'new')");
    let out = common::Mvr::new()
        .env("DATABASE_URL", &url)
        .args(["refresh", "tenants_summary_view"])
        .run();
    out.code(0)
        .stderr_has("may not create them")
        .stdout_has("1 refreshed");
    let after: i64 = db.scalar("SELECT count(*) FROM tenants_summary_view");
    assert_eq!(after, before + 1);
    let exists: bool =
        db.scalar("SELECT to_regclass('materialized_views_refresh_log') IS NOT NULL");
    assert!(!exists);
    db.execute(&format!(
        "DROP OWNED BY limited_{0}; DROP ROLE limited_{0};",
        db.name
    ));
}

#[test]
fn json_logs_have_one_event_per_view_with_its_fields() {
    let db = TestDb::platform("json_logs");
    let out = db.mvr().args(["--log-format", "json", "refresh"]).run();
    out.code(0);
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}\n{out}"))
        })
        .collect();
    let refreshed: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "view refreshed")
        .collect();
    assert_eq!(refreshed.len(), 5, "{out}");
    for event in refreshed {
        let view = event["view"].as_str().unwrap();
        assert!(view.starts_with("public."));
        assert_eq!(event["status"], "success");
        let method = match view {
            "public.user_activity" | "public.bets_latest" => "incremental",
            _ => "concurrently",
        };
        assert_eq!(event["method"], method, "{view}");
        assert!(event["duration_ms"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn log_schema_option_puts_the_tables_there() {
    let db = TestDb::platform("log_schema");
    db.execute("CREATE SCHEMA ops;");
    db.mvr()
        .args(["--log-schema", "ops", "refresh", "top_bets_today"])
        .run()
        .code(0);
    let n: i64 = db.scalar("SELECT count(*) FROM ops.materialized_views_refresh_log");
    assert_eq!(n, 1);
    let public: bool =
        db.scalar("SELECT to_regclass('public.materialized_views_refresh_log') IS NULL");
    assert!(public);
}

/// Readers first: a plain refresh of a populated view takes an ACCESS EXCLUSIVE
/// lock, and every new reader queues behind it while it waits; it waits
/// `plain_lock_timeout` (2 s), not the view's `lock_timeout`.
#[test]
fn a_plain_refresh_of_a_populated_view_gives_way_to_readers_after_two_seconds() {
    let db = TestDb::empty("plain_gives_way");
    db.execute("CREATE MATERIALIZED VIEW no_key AS SELECT 1 AS x");
    // A reader in the middle of its transaction.
    let mut reader = db.client();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM no_key")
        .unwrap();
    let registry =
        db.registry("[[view]]\nname = \"no_key\"\nlock_timeout = \"10min\"\nretries = 0\n");
    let out = db.mvr_with(&registry).args(["refresh"]).run();
    out.code(1)
        .stderr_has("plain_lock_timeout = 2s")
        .stderr_has("readers queue behind it");
    let row = db.rows(
        "SELECT status, method, sqlstate, lock_timeout FROM materialized_views_refresh_history \
         WHERE view_name = 'public.no_key'",
    );
    let expected = ["failed", "full", "55P03", "2s"].map(|v| Some(v.to_owned()));
    assert_eq!(row, vec![expected.to_vec()], "{out}");
    reader.batch_execute("COMMIT").unwrap();
    // Nobody reading: the same refresh goes through.
    db.mvr_with(&registry).args(["refresh"]).run().code(0);
}

/// A success row the refresh's own transaction could not write is written
/// after the commit, so `min_interval` and `status` see the view as fresh.
#[test]
fn a_success_the_transaction_could_not_record_is_recorded_after_the_commit() {
    let db = TestDb::platform("log_after_commit");
    db.mvr().args(["init"]).run().code(0);
    // Refuses rows written under the view's own work_mem, i.e. inside the
    // refresh's transaction, and accepts them anywhere else.
    db.execute(
        "CREATE FUNCTION refuse_inside() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN IF current_setting('work_mem') = '7MB' THEN \
                  RAISE EXCEPTION 'not inside the refresh today'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_inside BEFORE INSERT ON materialized_views_refresh_history \
             FOR EACH ROW EXECUTE FUNCTION refuse_inside();",
    );
    let registry = db.registry("[[view]]\nname = \"tenants_summary_view\"\nwork_mem = \"7MB\"\n");
    let out = db.mvr_with(&registry).args(["refresh"]).run();
    out.code(0)
        .stderr_has("not inside the refresh today")
        .stderr_has("writing it again")
        .stdout_has("1 refreshed");
    let summary = db.rows(
        "SELECT refresh_count::text, last_status FROM materialized_views_refresh_log \
         WHERE view_name = 'public.tenants_summary_view'",
    );
    assert_eq!(
        summary,
        vec![vec![Some("1".into()), Some("success".into())]],
        "{out}"
    );
    let statuses: Vec<_> = db
        .history("tenants_summary_view")
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    assert_eq!(statuses, vec![Some("success".to_owned())], "{out}");
}

/// Another refresher holding a view (a manual `refresh A` while the CronJob
/// runs) skips that view, and no longer the views that read it.
#[test]
fn losing_a_views_lock_to_another_refresher_does_not_skip_its_dependents() {
    let db = TestDb::empty("lock_lost_dependents");
    db.execute(
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1); \
         CREATE MATERIALIZED VIEW base_mv AS SELECT x FROM t; \
         CREATE UNIQUE INDEX ON base_mv (x); \
         CREATE MATERIALIZED VIEW reader_mv AS SELECT count(*) AS n FROM base_mv; \
         CREATE UNIQUE INDEX ON reader_mv (n);",
    );
    // The advisory lock a refresher of base_mv holds.
    let mut other = db.client();
    other
        .batch_execute(
            "SELECT pg_advisory_lock((x'6d767266'::bigint << 32) | 'base_mv'::regclass::oid::bigint)",
        )
        .unwrap();
    let registry = db.registry("[[view]]\nname = \"reader_mv\"\n\n[[view]]\nname = \"base_mv\"\n");
    let out = db.mvr_with(&registry).args(["refresh"]).run();
    out.code(0).stdout_has("1 refreshed, 1 skipped, 0 failed");
    let statuses =
        db.rows("SELECT view_name, status FROM materialized_views_refresh_history ORDER BY id");
    let row = |view: &str, status: &str| vec![Some(format!("public.{view}")), Some(status.into())];
    assert_eq!(
        statuses,
        vec![row("base_mv", "skipped"), row("reader_mv", "success")],
        "{out}"
    );
}

/// Housekeeping never waits long: a failure row for a log table someone holds
/// locked fails after the housekeeping lock timeout, and the run ends.
#[test]
fn a_locked_log_table_fails_the_recording_and_the_run_still_ends() {
    let db = TestDb::platform("locked_log_table");
    db.mvr().args(["init"]).run().code(0);
    db.failing_view("broken_mv");
    let mut holder = db.client();
    holder
        .batch_execute(
            "BEGIN; LOCK TABLE materialized_views_refresh_history IN ACCESS EXCLUSIVE MODE",
        )
        .unwrap();
    let registry = db.registry("[[view]]\nname = \"broken_mv\"\nretries = 0\n");
    let out = db.mvr_with(&registry).args(["refresh"]).run();
    out.code(1)
        .stdout_has("division by zero")
        .stderr_has("could not record the outcome")
        .stderr_has("lock timeout");
    holder.batch_execute("ROLLBACK").unwrap();
}

/// `work_mem = "auto"` finds the best setting of a view whose refresh time is
/// known for every setting: its query sleeps 30 ms plus 40 ms per power of two
/// away from 16MB. From the server's 4MB the tuner surveys 4MB, 16MB, 64MB,
/// 256MB, 1GB and 1MB, refines around 16MB (32MB, 8MB), and stays on 16MB.
#[test]
fn work_mem_auto_settles_on_the_best_setting_and_says_why() {
    let db = TestDb::empty("work_mem_auto");
    db.execute(&format!("ALTER DATABASE {} SET work_mem = '4MB'", db.name));
    db.execute(
        "CREATE FUNCTION work_mem_distance() RETURNS float8 LANGUAGE sql AS \
             $$ SELECT abs(log(2, pg_size_bytes(current_setting('work_mem')) / (16 * 1024 * 1024.0)))::float8 $$; \
         CREATE MATERIALIZED VIEW tuned_mv AS \
             SELECT 1 AS id, pg_sleep(0.03 + 0.04 * work_mem_distance())::text AS slept; \
         CREATE UNIQUE INDEX ON tuned_mv (id);",
    );
    let registry = db.registry("[[view]]\nname = \"tuned_mv\"\nwork_mem = \"auto\"\n");
    for _ in 0..26 {
        db.mvr_with(&registry).args(["refresh"]).run().code(0);
    }
    let used: Vec<String> = db
        .rows(
            "SELECT work_mem FROM materialized_views_refresh_history \
             WHERE view_name = 'public.tuned_mv' ORDER BY id",
        )
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    let steps = ["4MB", "16MB", "64MB", "256MB", "1GB", "1MB", "32MB", "8MB"];
    let expected: Vec<&str> = steps.iter().flat_map(|&s| [s; 3]).collect();
    assert_eq!(used[..24], expected, "survey, then refinement: {used:?}");
    assert_eq!(used[24..], ["16MB"; 2], "and the best kept: {used:?}");
    let out = db.mvr_with(&registry).args(["check"]).run();
    out.code(0).stdout_has("16MB, tuned: median");
    let out = db
        .mvr_with(&registry)
        .args(["status", "--format", "json"])
        .run();
    out.code(0)
        .stdout_has("\"work_mem\": \"16MB, tuned: median");
}

/// Refreshers starting together on a database without log tables: the ones
/// that waited while another created them must not run the DDL again (its
/// ALTER TABLEs take ACCESS EXCLUSIVE locks, which deadlocked with a refresh
/// already reading the tables). Seen as a rare deadlock of three refreshers
/// behind PgBouncer; here made certain: the tables are created while this
/// refresher waits for the DDL lock, and a reader holds them meanwhile.
#[test]
fn a_refresher_that_waited_while_another_created_the_log_tables_leaves_them_alone() {
    let db = TestDb::empty("log_tables_created_meanwhile");
    db.execute("CREATE MATERIALIZED VIEW m AS SELECT 1 AS id; CREATE UNIQUE INDEX ON m (id);");
    let mut holder = db.client();
    holder
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(x'6d76726600000000'::bigint)")
        .unwrap();
    let registry = db.registry("[[view]]\nname = \"m\"\n");
    let mut refresher = db.mvr_with(&registry).args(["refresh"]).spawn();
    refresher.wait_until("the refresher waiting for the DDL lock", || {
        let waiting: i64 =
            db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted");
        (waiting > 0).then_some(())
    });
    // Another refresher's tables, committed while this one waits.
    let ddl = std::fs::read_to_string(common::repo().join("src/sql/log_tables.sql")).unwrap();
    db.execute(&ddl.replace("{schema}", "public"));
    let mut reader = db.client();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM materialized_views_refresh_log")
        .unwrap();
    holder.batch_execute("COMMIT").unwrap();
    let out = refresher.wait();
    out.code(0).stdout_has("1 refreshed");
    reader.batch_execute("COMMIT").unwrap();
}

#[test]
fn a_server_warning_is_a_warn_event_naming_the_view_and_notices_stay_at_debug() {
    let db = TestDb::platform("server_notices");
    db.execute(
        "CREATE FUNCTION noisy(i int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
             RAISE WARNING 'noisy_view: row % looks odd', i; \
             RAISE NOTICE 'chatter that is about nothing in particular'; \
             RETURN i; END $$; \
         CREATE MATERIALIZED VIEW noisy_view AS SELECT noisy(1) AS id; \
         CREATE UNIQUE INDEX ON noisy_view (id);",
    );
    let registry = db.registry("[[view]]\nname = \"noisy_view\"\n");
    let out = db.mvr_with(&registry).arg("refresh").run();
    out.code(0).never_shows("chatter");
    let warning = out.log_line_with("row 1 looks odd");
    assert!(
        warning.contains(" WARN ") && warning.contains("view=\"public.noisy_view\""),
        "{warning}\n{out}"
    );

    // The same in JSON: the level, the view and the server's severity.
    let out = db
        .mvr_with(&registry)
        .args(["--log-format", "json", "refresh"])
        .run();
    out.code(0).never_shows("chatter");
    let event: serde_json::Value =
        serde_json::from_str(out.log_line_with("row 1 looks odd")).unwrap();
    assert_eq!(event["level"], "WARN", "{out}");
    assert_eq!(event["view"], "public.noisy_view", "{out}");
    assert_eq!(event["severity"], "WARNING", "{out}");
}

/// Issue 20: views refreshed one after another share a connection (the
/// first one planning's); a server warning names the view whose refresh
/// raised it, not the one that opened the connection.
#[test]
fn a_server_warning_names_its_own_view_on_a_connection_views_share() {
    let db = TestDb::platform("shared_notices");
    db.execute(
        "CREATE FUNCTION noisy(i int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
             RAISE WARNING 'row % looks odd', i; RETURN i; END $$; \
         CREATE MATERIALIZED VIEW first_noisy AS SELECT noisy(1) AS id; \
         CREATE UNIQUE INDEX ON first_noisy (id); \
         CREATE MATERIALIZED VIEW second_noisy AS SELECT noisy(2) AS id; \
         CREATE UNIQUE INDEX ON second_noisy (id);",
    );
    let registry =
        db.registry("[[view]]\nname = \"first_noisy\"\n\n[[view]]\nname = \"second_noisy\"\n");
    let out = db
        .mvr_with(&registry)
        .args(["--log-format", "json", "refresh", "--jobs", "1"])
        .run();
    out.code(0);
    for (row, view) in [(1, "public.first_noisy"), (2, "public.second_noisy")] {
        let event: serde_json::Value =
            serde_json::from_str(out.log_line_with(&format!("row {row} looks odd"))).unwrap();
        assert_eq!(event["view"], view, "{out}");
    }
}

#[test]
fn a_commit_that_fails_leaves_no_warning_about_a_transaction_not_in_progress() {
    let db = TestDb::platform("commit_fails");
    db.mvr().arg("init").run().code(0);
    // The success row is written in the refresh's transaction; a deferred
    // trigger on it makes that COMMIT fail.
    db.execute(
        "CREATE FUNCTION no_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.status = 'success' THEN RAISE EXCEPTION 'no commit today'; END IF; \
             RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER no_commit AFTER INSERT ON materialized_views_refresh_history \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION no_commit();",
    );
    let registry = db.registry("[[view]]\nname = \"top_bets_today\"\nretries = 0\n");
    let out = db.mvr_with(&registry).arg("refresh").run();
    out.code(1).stdout_has("no commit today");
    out.never_shows("no transaction in progress");
}
