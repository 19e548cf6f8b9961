//! Refresh semantics under contention and faults: the method chosen from the
//! catalog, no overlap between refreshers, dependency order and parallelism,
//! retries, timeouts, cancellation, an unreachable or vanishing server, and
//! history retention.

mod common;

use common::{Mvr, TestDb, free_port, private_cluster};

#[test]
fn auto_decides_from_the_catalog_and_records_the_reason() {
    let db = TestDb::platform("auto_method");
    db.execute(
        "CREATE MATERIALIZED VIEW m_good AS SELECT id FROM tenants; \
         CREATE UNIQUE INDEX ON m_good (id); \
         CREATE MATERIALIZED VIEW m_no_index AS SELECT id FROM tenants; \
         CREATE MATERIALIZED VIEW m_partial AS SELECT id FROM tenants; \
         CREATE UNIQUE INDEX ON m_partial (id) WHERE id > 0; \
         CREATE MATERIALIZED VIEW m_expression AS SELECT id FROM tenants; \
         CREATE UNIQUE INDEX ON m_expression ((id + 0)); \
         CREATE MATERIALIZED VIEW m_unpopulated AS SELECT id FROM tenants WITH NO DATA; \
         CREATE UNIQUE INDEX ON m_unpopulated (id); \
         CREATE MATERIALIZED VIEW m_never AS SELECT id FROM tenants; \
         CREATE UNIQUE INDEX ON m_never (id);",
    );
    let registry = db.registry(
        "[[view]]\nname = \"m_good\"\n[[view]]\nname = \"m_no_index\"\n[[view]]\nname = \"m_partial\"\n\
         [[view]]\nname = \"m_expression\"\n[[view]]\nname = \"m_unpopulated\"\n\
         [[view]]\nname = \"m_never\"\nconcurrently = \"never\"\n",
    );
    db.mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run()
        .code(0);

    let method = |view: &str| {
        let rows = db.history(view);
        (rows[0][1].clone().unwrap(), rows[0][4].clone().unwrap())
    };
    assert_eq!(method("m_good").0, "concurrently");
    for view in ["m_no_index", "m_partial", "m_expression"] {
        assert_eq!(
            method(view),
            (
                "full".into(),
                "no unique index usable by CONCURRENTLY".into()
            ),
            "{view}"
        );
    }
    assert_eq!(
        method("m_unpopulated"),
        ("full".into(), "not populated yet".into())
    );
    assert_eq!(
        method("m_never"),
        ("full".into(), "concurrently = never".into())
    );

    // Populated by the plain refresh, it now gets CONCURRENTLY.
    db.mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .arg("m_unpopulated")
        .run()
        .code(0);
    assert_eq!(
        db.history("m_unpopulated")[1][1].as_deref(),
        Some("concurrently")
    );
}

#[test]
fn always_refuses_a_view_that_cannot_be_refreshed_concurrently_without_running_anything() {
    let db = TestDb::platform("always");
    db.execute("CREATE MATERIALIZED VIEW m_plain AS SELECT id FROM tenants;");
    let registry = db.registry("[[view]]\nname = \"m_plain\"\nconcurrently = \"always\"\n");
    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(1)
        .stdout_has("has no unique index usable by CONCURRENTLY");
    let rows = db.history("m_plain");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0].as_deref(), Some("failed"));
    assert_eq!(rows[0][1], None, "no REFRESH ran");
}

#[test]
fn duplicate_rows_fail_with_sqlstate_21000_and_the_servers_detail() {
    let db = TestDb::platform("duplicates");
    db.execute(
        "CREATE TABLE src (x int, y int); INSERT INTO src VALUES (1, 1); \
         CREATE MATERIALIZED VIEW m_dup AS SELECT x, y FROM src; \
         CREATE UNIQUE INDEX ON m_dup (x); \
         INSERT INTO src VALUES (1, 1);",
    );
    let out = db.mvr().args(["refresh", "m_dup"]).run();
    out.code(1).stderr_has("duplicate rows");
    let rows = db.history("m_dup");
    assert_eq!(rows.len(), 1, "not retried: {rows:?}");
    assert_eq!(rows[0][3].as_deref(), Some("21000"));
    let error = rows[0][5].as_deref().unwrap();
    assert!(
        error.contains("duplicate rows") && error.contains("detail: Row: (1,1)"),
        "{error}"
    );
}

#[test]
fn two_refreshers_never_refresh_the_same_view_at_once() {
    let db = TestDb::platform("no_overlap");
    db.slow_view("m_slow", 4.0);
    let first = db.mvr().args(["refresh", "m_slow"]).spawn();
    db.wait_for_refresh("m_slow");

    let second = db.mvr().args(["refresh", "m_slow"]).run();
    second
        .code(0)
        .stdout_has("skipped")
        .stdout_has("another refresher is refreshing this view");
    first.wait().code(0).stdout_has("1 refreshed");

    let rows = db.history("m_slow");
    let statuses: Vec<_> = rows.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(statuses, ["skipped", "success"]);
    assert_eq!(
        rows[0][4].as_deref(),
        Some("another refresher is refreshing this view")
    );
    let log: String = db.scalar(
        "SELECT last_status FROM materialized_views_refresh_log WHERE view_name = 'public.m_slow'",
    );
    assert_eq!(
        log, "success",
        "a skip does not overwrite the view's last status"
    );
}

#[test]
fn dependencies_refresh_first_whatever_the_registry_order() {
    let db = TestDb::platform("dependencies");
    // c reads b through a plain view; b reads a.
    db.execute(
        "CREATE MATERIALIZED VIEW m_a AS SELECT id FROM tenants; CREATE UNIQUE INDEX ON m_a (id); \
         CREATE MATERIALIZED VIEW m_b AS SELECT id FROM m_a; CREATE UNIQUE INDEX ON m_b (id); \
         CREATE VIEW v_b AS SELECT id FROM m_b; \
         CREATE MATERIALIZED VIEW m_c AS SELECT id FROM v_b; CREATE UNIQUE INDEX ON m_c (id);",
    );
    let registry = db
        .registry("[[view]]\nname = \"m_c\"\n[[view]]\nname = \"m_b\"\n[[view]]\nname = \"m_a\"\n");

    let check = db.mvr().args(["check", "--registry"]).arg(&registry).run();
    check.code(0);
    let order: Vec<&str> = check
        .stdout
        .lines()
        .filter_map(|l| {
            ["m_a", "m_b", "m_c"]
                .into_iter()
                .find(|v| l.contains(&format!("public.{v} ")))
        })
        .collect();
    assert_eq!(order, ["m_a", "m_b", "m_c"], "{check}");

    // New rows reach c only if a and b were refreshed before it.
    db.execute("INSERT INTO tenants (id, name, slug) VALUES (30001, 'Late', 'late')");
    db.mvr()
        .args(["refresh", "--jobs", "2", "--registry"])
        .arg(&registry)
        .run()
        .code(0);
    let in_c: i64 = db.scalar("SELECT count(*) FROM m_c WHERE id = 30001");
    assert_eq!(in_c, 1);
    let ordered: bool = db.scalar(
        "SELECT bool_and(next.started_at >= prev.finished_at) FROM \
         (VALUES ('public.m_a', 'public.m_b'), ('public.m_b', 'public.m_c')) AS p (a, b) \
         JOIN materialized_views_refresh_history prev ON prev.view_name = p.a \
         JOIN materialized_views_refresh_history next ON next.view_name = p.b",
    );
    assert!(
        ordered,
        "each view must start after the one it reads finished"
    );
}

#[test]
fn a_dependency_through_a_begin_atomic_function_orders_views() {
    let db = TestDb::platform("atomic_dependency");
    // m_sum reads m_base only through f(), whose body the catalog records
    // (pg_depend) because it is BEGIN ATOMIC; g() adds a second hop.
    db.execute(
        "CREATE MATERIALIZED VIEW m_base AS SELECT id FROM tenants; \
         CREATE UNIQUE INDEX ON m_base (id); \
         CREATE FUNCTION f() RETURNS bigint LANGUAGE sql STABLE \
             BEGIN ATOMIC SELECT count(*) FROM m_base; END; \
         CREATE FUNCTION g() RETURNS bigint LANGUAGE sql STABLE BEGIN ATOMIC SELECT f(); END; \
         CREATE MATERIALIZED VIEW m_sum AS SELECT 1 AS id, g() AS n; \
         CREATE UNIQUE INDEX ON m_sum (id);",
    );
    let registry = db.registry("[[view]]\nname = \"m_sum\"\n[[view]]\nname = \"m_base\"\n");
    let check = db.mvr().args(["check", "--registry"]).arg(&registry).run();
    check.code(0);
    let sum_line = check.line_with("public.m_sum ");
    assert!(
        sum_line.trim_end().ends_with('1'),
        "m_sum must come after view 1, m_base\n{check}"
    );

    db.execute("INSERT INTO tenants (id, name, slug) VALUES (30002, 'Late', 'late2')");
    db.mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run()
        .code(0);
    let (n, tenants): (i64, i64) = (
        db.scalar("SELECT n FROM m_sum"),
        db.scalar("SELECT count(*) FROM tenants"),
    );
    assert_eq!(n, tenants, "m_sum must be refreshed after m_base");
}

#[test]
fn a_view_dropped_after_planning_fails_alone() {
    let db = TestDb::platform("dropped_after_planning");
    db.slow_view("slow_first", 2.0);
    db.execute(
        "CREATE MATERIALIZED VIEW doomed AS SELECT id FROM tenants; \
         CREATE UNIQUE INDEX ON doomed (id);",
    );
    let registry = db.registry(
        "[[view]]\nname = \"slow_first\"\n[[view]]\nname = \"doomed\"\n\
         [[view]]\nname = \"top_bets_today\"\n",
    );
    let mut running = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .spawn();
    running.wait_until("the first view's refresh", || {
        (db.running_refreshes() > 0).then_some(())
    });
    db.execute("DROP MATERIALIZED VIEW doomed");
    let out = running.wait();
    out.code(1).stdout_has("doomed");
    let first = |view: &str| {
        db.history(view)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no history row for {view}\n{out}"))
    };
    assert_eq!(first("slow_first")[0].as_deref(), Some("success"));
    let doomed = first("doomed");
    assert_eq!(doomed[0].as_deref(), Some("failed"), "{out}");
    assert!(
        doomed[5].as_deref().unwrap_or("").contains("dropped"),
        "{doomed:?}"
    );
    assert_eq!(first("top_bets_today")[0].as_deref(), Some("success"));
}

#[test]
fn independent_views_refresh_in_parallel_up_to_jobs() {
    let db = TestDb::platform("parallel");
    db.slow_view("m_one", 2.0);
    db.slow_view("m_two", 2.0);
    let registry = db.registry("[[view]]\nname = \"m_one\"\n[[view]]\nname = \"m_two\"\n");
    db.mvr()
        .args(["refresh", "--jobs", "2", "--registry"])
        .arg(&registry)
        .run()
        .code(0);
    let overlap: bool = db.scalar(
        "SELECT a.started_at < b.finished_at AND b.started_at < a.finished_at \
         FROM materialized_views_refresh_history a, materialized_views_refresh_history b \
         WHERE a.view_name = 'public.m_one' AND b.view_name = 'public.m_two'",
    );
    assert!(overlap, "with --jobs 2 the two refreshes overlap");

    db.mvr()
        .args(["refresh", "--jobs", "1", "--registry"])
        .arg(&registry)
        .run()
        .code(0);
    let serial: bool = db.scalar(
        "SELECT NOT (a.started_at < b.finished_at AND b.started_at < a.finished_at) \
         FROM materialized_views_refresh_history a, materialized_views_refresh_history b \
         WHERE a.view_name = 'public.m_one' AND b.view_name = 'public.m_two' \
           AND a.id > 2 AND b.id > 2",
    );
    assert!(serial, "with --jobs 1 they do not");
}

#[test]
fn a_view_depending_on_a_failed_view_is_skipped_with_that_reason() {
    let db = TestDb::platform("failed_dependency");
    db.failing_view("m_x");
    db.execute("CREATE MATERIALIZED VIEW m_y AS SELECT x FROM m_x WITH NO DATA;");
    let registry = db.registry("[[view]]\nname = \"m_y\"\n[[view]]\nname = \"m_x\"\n");
    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(1).stdout_has("0 refreshed, 1 skipped, 1 failed");
    let y = db.history("m_y");
    assert_eq!(y[0][0].as_deref(), Some("skipped"));
    assert_eq!(
        y[0][4].as_deref(),
        Some("depends on public.m_x, which was not refreshed")
    );
}

#[test]
fn a_terminated_backend_is_retried_and_every_attempt_recorded() {
    let db = TestDb::platform("retry");
    db.slow_view("m_retry", 3.0);
    let registry = db.registry("[[view]]\nname = \"m_retry\"\nretries = 2\n");
    let run = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .spawn();
    let pid = db.wait_for_refresh("m_retry");
    let killed: bool = db.scalar(&format!("SELECT pg_terminate_backend({pid})"));
    assert!(killed);
    let out = run.wait();
    out.code(0).stdout_has("1 refreshed").stderr_has("retrying");

    let rows = db.history("m_retry");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0][0..4],
        [
            Some("failed".into()),
            Some("full".into()),
            Some("1".into()),
            Some("57P01".into())
        ]
    );
    assert_eq!(
        rows[1][0..3],
        [
            Some("success".into()),
            Some("full".into()),
            Some("2".into())
        ]
    );
    let counts = db.rows("SELECT refresh_count, failure_count FROM materialized_views_refresh_log WHERE view_name = 'public.m_retry'");
    assert_eq!(
        counts,
        [[Some("1".into()), Some("0".into())]],
        "a retried failure is not a failed refresh"
    );
}

#[test]
fn lock_timeout_is_retried_then_fails_naming_the_setting() {
    let db = TestDb::platform("lock_timeout");
    db.execute("CREATE MATERIALIZED VIEW m_locked AS SELECT id FROM tenants;");
    // A reader in an open transaction: a plain REFRESH needs ACCESS EXCLUSIVE.
    let mut holder = db.client();
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM m_locked;")
        .unwrap();

    let registry = db.registry(
        "[[view]]\nname = \"m_locked\"\nconcurrently = \"never\"\nlock_timeout = \"200ms\"\nretries = 1\n",
    );
    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(1).stderr_has("lock_timeout = 200ms");
    holder.batch_execute("ROLLBACK").unwrap();

    let rows = db.history("m_locked");
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[2].clone().unwrap(),
                r[3].clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("failed".to_owned(), "1".to_owned(), "55P03".to_owned()),
            ("failed".into(), "2".into(), "55P03".into())
        ]
    );
}

#[test]
fn the_deadline_cancels_the_running_refresh_on_the_server() {
    let db = TestDb::platform("deadline");
    db.slow_view("m_endless", 600.0);
    let out = db
        .mvr()
        .args(["refresh", "--deadline", "1s", "m_endless"])
        .run();
    out.code(1).stdout_has("cancelled").stderr_has("deadline");
    assert_eq!(
        db.running_refreshes(),
        0,
        "no backend may be left running the REFRESH"
    );
    let rows = db.history("m_endless");
    assert_eq!(rows[0][0].as_deref(), Some("cancelled"));
    assert!(
        rows[0][5]
            .as_deref()
            .unwrap()
            .contains("canceling statement due to user request")
    );
}

fn signal_cancels(signal: &str, code: i32) {
    let db = TestDb::platform(&format!("signal_{signal}"));
    db.slow_view("m_endless", 600.0);
    db.execute("CREATE MATERIALIZED VIEW m_later AS SELECT id FROM tenants;");
    let registry = db.registry("[[view]]\nname = \"m_endless\"\n[[view]]\nname = \"m_later\"\n");
    let run = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .spawn();
    db.wait_for_refresh("m_endless");
    run.signal(signal);
    let out = run.wait();
    out.code(code)
        .stdout_has("cancelled")
        .stdout_has("not started");
    assert_eq!(
        db.running_refreshes(),
        0,
        "no backend may be left running the REFRESH\n{out}"
    );
    assert_eq!(db.history("m_endless")[0][0].as_deref(), Some("cancelled"));
    assert_eq!(db.history("m_later")[0][0].as_deref(), Some("cancelled"));
    assert_eq!(db.history("m_later")[0][1], None, "it never ran");
    let status: String = db.scalar("SELECT last_status FROM materialized_views_refresh_log WHERE view_name = 'public.m_endless'");
    assert_eq!(status, "cancelled");
}

/// SIGTERM during a refresh of a ten-minute view over `url`: the server
/// cancels it (its own message says so) before the process exits, and leaves
/// no backend running it.
fn sigterm_cancels_on_the_server_over(db: &TestDb, url: &str) {
    db.slow_view("m_endless", 600.0);
    let run = Mvr::new()
        .env("DATABASE_URL", url)
        .args(["refresh", "m_endless"])
        .spawn();
    db.wait_for_refresh("m_endless");
    run.signal("TERM");
    let out = run.wait();
    out.code(143).stdout_has("cancelled");
    assert_eq!(
        db.running_refreshes(),
        0,
        "no backend may be left running the REFRESH\n{out}"
    );
    let error = db.history("m_endless")[0][5].clone().unwrap_or_default();
    assert!(
        error.contains("canceling statement due to user request"),
        "cancelled by the server: {error}\n{out}"
    );
}

/// Issue 18: the cancel request went to the first host and port of the list,
/// not to the one the session was connected to.
#[test]
fn a_cancel_goes_to_the_host_connected_to_not_the_first_of_the_list() {
    let db = TestDb::platform("cancel_second_host");
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}",
        free_port(),
        db.cluster.port,
        db.name
    );
    sigterm_cancels_on_the_server_over(&db, &url);
}

/// Issue 18: with `hostaddr`, the session went to that address (as libpq
/// does) but the cancel request to the host name, which need not resolve.
#[test]
fn a_cancel_goes_to_hostaddr_not_to_the_host_name() {
    let db = TestDb::platform("cancel_hostaddr");
    let url = format!(
        "host=db.invalid hostaddr=127.0.0.1 port={} user=postgres dbname={}",
        db.cluster.port, db.name
    );
    sigterm_cancels_on_the_server_over(&db, &url);
}

#[test]
fn sigterm_cancels_server_side_and_exits_143() {
    signal_cancels("TERM", 143);
}

#[test]
fn sigint_cancels_server_side_and_exits_130() {
    signal_cancels("INT", 130);
}

#[test]
fn min_interval_skips_a_view_refreshed_recently() {
    let db = TestDb::platform("min_interval");
    let registry = db.registry("[[view]]\nname = \"top_bets_today\"\nmin_interval = \"1h\"\n");
    db.mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run()
        .code(0)
        .stdout_has("1 refreshed");
    db.mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run()
        .code(0)
        .stdout_has("0 refreshed, 1 skipped")
        .stdout_has("fresh: refreshed");
    let rows = db.history("top_bets_today");
    assert_eq!(rows.len(), 2);
    assert!(rows[1][4].as_deref().unwrap().starts_with("fresh"));
}

#[test]
fn history_older_than_the_retention_is_pruned_in_batches() {
    let db = TestDb::platform("retention");
    db.mvr().args(["init"]).run().code(0);
    db.execute(
        "INSERT INTO materialized_views_refresh_history (run_id, view_name, started_at, finished_at, duration_ms, status, attempt) \
         SELECT gen_random_uuid(), 'public.old', now() - interval '40 days', now() - interval '40 days', 1, 'success', 1 \
         FROM generate_series(1, 2500); \
         INSERT INTO materialized_views_refresh_history (run_id, view_name, started_at, finished_at, duration_ms, status, attempt) \
         SELECT gen_random_uuid(), 'public.recent', now() - interval '10 days', now() - interval '10 days', 1, 'success', 1 \
         FROM generate_series(1, 5);",
    );
    db.mvr()
        .args(["refresh", "--history-retention", "0", "top_bets_today"])
        .run()
        .code(0);
    let kept: i64 = db.scalar("SELECT count(*) FROM materialized_views_refresh_history");
    assert_eq!(kept, 2506, "retention 0 keeps everything");

    let out = db.mvr().args(["refresh", "top_bets_today"]).run();
    out.code(0)
        .stderr_has("pruned the refresh history")
        .stderr_has("rows=2500");
    let left = db.rows(
        "SELECT view_name, count(*) FROM materialized_views_refresh_history GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        left,
        [
            [Some("public.recent".into()), Some("5".into())],
            [Some("public.top_bets_today".into()), Some("2".into())],
        ]
    );
}

#[test]
fn a_server_that_accepts_but_never_answers_hits_the_connect_timeout() {
    // The kernel completes the TCP handshake; nobody ever answers the startup.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    Mvr::new()
        .env(
            "DATABASE_URL",
            &format!("postgres://postgres@127.0.0.1:{port}/x?connect_timeout=1"),
        )
        .arg("refresh")
        .run()
        .code(3)
        .stderr_has("connect timeout");
    drop(listener);
}

#[test]
fn an_unknown_host_exits_3() {
    Mvr::new()
        .env("DATABASE_URL", "postgres://postgres@no-such-host.invalid/x")
        .arg("refresh")
        .run()
        .code(3)
        .stderr_has("host no-such-host.invalid");
}

#[test]
fn the_server_going_away_mid_run_fails_the_remaining_views() {
    let cluster = private_cluster("server_goes_away");
    let db = TestDb::platform_on(cluster, "server_goes_away");
    db.slow_view("m_slow", 30.0);
    let registry = db.registry(
        "[defaults]\nretries = 1\n[[view]]\nname = \"m_slow\"\n[[view]]\nname = \"top_bets_today\"\n",
    );
    let run = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .spawn();
    db.wait_for_refresh("m_slow");
    cluster.halt();
    let out = run.wait();
    out.code(1).stdout_has("0 refreshed, 0 skipped, 2 failed");
    let line = out.line_with("public.top_bets_today");
    assert!(
        line.contains("failed") && line.contains("could not connect"),
        "{line}"
    );
    cluster.resume();
}

#[test]
fn a_dependency_cycle_is_reported_and_never_hangs_or_panics() {
    let db = TestDb::platform("cycle");
    // m_one reads v, v is redefined to read m_two, which reads m_one.
    db.execute(
        "CREATE VIEW v AS SELECT id FROM tenants; \
         CREATE MATERIALIZED VIEW m_one AS SELECT id FROM v; \
         CREATE MATERIALIZED VIEW m_two AS SELECT id FROM m_one; \
         CREATE OR REPLACE VIEW v AS SELECT id FROM m_two;",
    );
    let registry = db.registry("[[view]]\nname = \"m_one\"\n[[view]]\nname = \"m_two\"\n");
    db.mvr()
        .args(["check", "--registry"])
        .arg(&registry)
        .run()
        .code(1)
        .stdout_has("dependency cycle");
    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(1).stdout_has("dependency cycle");
    assert!(!out.stderr.contains("panicked"), "{out}");
}

#[test]
fn a_view_named_with_its_schema_is_that_view_even_if_the_registry_omits_the_schema() {
    let db = TestDb::platform("schema_named");
    db.execute(
        "CREATE SCHEMA reporting; \
         CREATE MATERIALIZED VIEW public.daily AS SELECT 1 AS x; \
         CREATE MATERIALIZED VIEW reporting.daily AS SELECT 2 AS x;",
    );
    let registry = db.registry("[[view]]\nname = \"daily\"\nwork_mem = \"3MB\"\n");
    db.mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .args(["reporting.daily", "daily"])
        .run()
        .code(0)
        .stdout_has("2 refreshed");
    let rows = db.rows(
        "SELECT view_name, work_mem FROM materialized_views_refresh_history ORDER BY view_name",
    );
    assert_eq!(
        rows,
        [
            [Some("public.daily".into()), Some("3MB".into())],
            [Some("reporting.daily".into()), Some("3MB".into())],
        ]
    );
}
