//! `check`, `status`, `init`, bad registries and unreachable databases: every
//! exit code, and what is printed for each.

mod common;

use common::{Mvr, PASSWORD, PASSWORD_ROLE, TestDb, cluster, free_port};

/// A URL nothing listens on: a registry error must win over it (exit 2, not 3),
/// which shows the registry is checked before any connection is tried.
fn closed_port_url() -> String {
    format!("postgres://postgres@127.0.0.1:{}/nothing", free_port())
}

fn registry_error(name: &str, toml: &str) -> common::Output {
    let path = std::env::temp_dir().join(format!("mvr-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let out = Mvr::new()
        .env("DATABASE_URL", &closed_port_url())
        .args(["refresh", "--registry"])
        .arg(&path)
        .run();
    std::fs::remove_file(&path).unwrap();
    out.code(2).stderr_has(&format!("{}:", path.display()));
    out
}

#[test]
fn bad_registries_exit_2_naming_file_line_and_key_before_connecting() {
    registry_error(
        "unknown_key",
        "[[view]]\nname = \"a\"\nwork_memory = \"64MB\"\n",
    )
    .stderr_has(":3:")
    .stderr_has("work_memory");
    registry_error(
        "bad_memory",
        "[[view]]\nname = \"a\"\nwork_mem = \"64 gigs\"\n",
    )
    .stderr_has(":3:")
    .stderr_has("work_mem")
    .stderr_has("invalid memory size");
    registry_error(
        "bad_duration",
        "[defaults]\nstatement_timeout = \"soon\"\n[[view]]\nname = \"a\"\n",
    )
    .stderr_has(":2:")
    .stderr_has("statement_timeout");
    registry_error(
        "out_of_range",
        "[[view]]\nname = \"a\"\nwork_mem = \"16kB\"\n",
    )
    .stderr_has(":3:")
    .stderr_has("out of range");
    registry_error(
        "huge_timeout",
        "[[view]]\nname = \"a\"\nlock_timeout = \"30d\"\n",
    )
    .stderr_has(":3:")
    .stderr_has("lock_timeout");
    registry_error("retries", "[[view]]\nname = \"a\"\nretries = -1\n")
        .stderr_has(":3:")
        .stderr_has("retries");
    registry_error(
        "concurrently",
        "[[view]]\nname = \"a\"\nconcurrently = \"sometimes\"\n",
    )
    .stderr_has(":3:")
    .stderr_has("concurrently");
    registry_error(
        "duplicate",
        "[[view]]\nname = \"a\"\n\n[[view]]\nname = \"public.A\"\n",
    )
    .stderr_has(":5:")
    .stderr_has("listed twice");
    registry_error("empty", "[defaults]\nretries = 1\n").stderr_has("no views");
    registry_error("no_name", "[[view]]\nwork_mem = \"1MB\"\n").stderr_has("no key \"name\"");
    registry_error("syntax", "[[view]\nname = \"a\"\n").stderr_has(":1:");
    registry_error("wrong_type", "[[view]]\nname = \"a\"\nretries = \"two\"\n").stderr_has(":3:");
    // Longer than PostgreSQL's 63 bytes: once an error from the server that
    // stopped the whole run, valid views beside it included.
    registry_error(
        "too_long",
        &format!(
            "[[view]]\nname = \"top_bets_today\"\n\n[[view]]\nname = \"{}\"\n",
            "x".repeat(64)
        ),
    )
    .stderr_has(":5:")
    .stderr_has("64 bytes long");
}

#[test]
fn a_missing_registry_file_is_exit_2() {
    Mvr::new()
        .env("DATABASE_URL", &closed_port_url())
        .args(["check", "--registry", "/nonexistent/registry.toml"])
        .run()
        .code(2)
        .stderr_has("/nonexistent/registry.toml")
        .stderr_has("cannot read registry");
}

#[test]
fn bad_invocations_exit_2() {
    Mvr::new().args(["refresh", "--no-such-flag"]).run().code(2);
    for args in [["--jobs", "0", "refresh"], ["refresh", "--jobs", "0"]] {
        Mvr::new()
            .args(args)
            .run()
            .code(2)
            .stderr_has("--jobs")
            .stderr_has("must be at least 1");
    }
    // --jobs belongs to the commands that refresh.
    Mvr::new()
        .args(["status", "--jobs", "2"])
        .run()
        .code(2)
        .stderr_has("--jobs");
    Mvr::new()
        .args(["--jobs", "2", "init"])
        .run()
        .code(2)
        .stderr_has("--jobs applies to refresh and run only");
    Mvr::new().args(["frobnicate"]).run().code(2);
    Mvr::new().args(["status", "--format", "xml"]).run().code(2);
    Mvr::new()
        .env("MV_REFRESHER_JOBS", "many")
        .args(["refresh"])
        .run()
        .code(2)
        .stderr_has("--jobs");
    Mvr::new()
        .args(["--database-url", "postgres://u@h:notaport/d", "refresh"])
        .run()
        .code(2)
        .stderr_has("DATABASE_URL");
}

#[test]
fn unreachable_database_exits_3_naming_host_port_and_database() {
    let url = closed_port_url();
    let port = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    for command in ["refresh", "check", "status", "init"] {
        Mvr::new()
            .env("DATABASE_URL", &url)
            .arg(command)
            .run()
            .code(3)
            .stderr_has(&format!("host 127.0.0.1 port {port} database \"nothing\""));
    }
}

#[test]
fn a_missing_database_exits_3() {
    Mvr::new()
        .env("DATABASE_URL", &cluster().url("no_such_database"))
        .arg("refresh")
        .run()
        .code(3)
        .stderr_has("database \"no_such_database\"")
        .stderr_has("does not exist");
}

#[test]
fn pg_variables_are_used_when_no_url_is_given() {
    let db = TestDb::platform("pg_variables");
    Mvr::new()
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &cluster().port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", &db.name)
        .args(["refresh", "top_bets_today"])
        .run()
        .code(0)
        .stdout_has("1 refreshed");
}

#[test]
fn a_password_appears_in_no_output() {
    let db = TestDb::platform("password");
    let url = db
        .url()
        .replace("postgres@", &format!("{PASSWORD_ROLE}:{PASSWORD}@"));
    let wrong = db
        .url()
        .replace("postgres@", &format!("{PASSWORD_ROLE}:{PASSWORD}-wrong@"));

    // It works with the password...
    db.mvr()
        .env("DATABASE_URL", &url)
        .args(["--log-format", "json", "refresh"])
        .run()
        .code(0)
        .never_shows(PASSWORD);
    for args in [
        vec!["refresh"],
        vec!["check"],
        vec!["status"],
        vec!["status", "--format", "json"],
        vec!["init"],
        vec!["refresh", "no_such_view"],
        vec!["--help"],
        vec!["refresh", "--help"],
    ] {
        db.mvr()
            .env("DATABASE_URL", &url)
            .args(&args)
            .run()
            .never_shows(PASSWORD);
    }
    // ... and with it in PGPASSWORD.
    Mvr::new()
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &cluster().port.to_string())
        .env("PGUSER", PASSWORD_ROLE)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", &db.name)
        .args(["check"])
        .run()
        .code(0)
        .never_shows(PASSWORD);
    // A wrong one is exit 3, and still never shown.
    db.mvr()
        .env("DATABASE_URL", &wrong)
        .arg("refresh")
        .run()
        .code(3)
        .stderr_has("password authentication failed")
        .never_shows(PASSWORD);
    db.mvr()
        .env("DATABASE_URL", &wrong)
        .args(["--log-format", "json", "status"])
        .run()
        .code(3)
        .never_shows(PASSWORD);
}

#[test]
fn check_prints_the_plan_and_exits_0_when_all_is_well() {
    let db = TestDb::platform("check_ok");
    let out = db.mvr().arg("check").run();
    let version: String = db.scalar("SHOW server_version");
    out.code(0)
        .stdout_has("<embedded default registry> (5 views)")
        .stdout_has(&format!("PostgreSQL {version}"))
        .stdout_has("missing in schema public")
        .stdout_has("no problems");
    for view in [
        "public.tenants_summary_view",
        "public.user_activity_view",
        "public.top_bets_today",
    ] {
        let line = out.line_with(view);
        assert!(line.contains("concurrently"), "{line}");
        assert!(
            line.contains("4MB (server)") && line.contains("10min") && line.contains("30s"),
            "{line}"
        );
    }
    for twin in ["public.user_activity ", "public.bets_latest"] {
        let line = out.line_with(twin);
        assert!(line.contains("incremental"), "{line}");
    }
    out.stdout_has("public.bet_events: marker seq (bigint, from sequence");
    let created: bool =
        db.scalar("SELECT to_regclass('materialized_views_refresh_log') IS NOT NULL");
    assert!(!created, "check must not create anything");
}

/// Issue 18: with several hosts, `check` named the first host and port of the
/// list, not the one it reached.
#[test]
fn check_names_the_host_and_port_it_connected_to_not_the_first_of_the_list() {
    let db = TestDb::platform("check_second_host");
    let (closed, port) = (free_port(), db.cluster.port);
    for url in [
        format!(
            "postgres://postgres@127.0.0.1:{closed},localhost:{port}/{}",
            db.name
        ),
        format!(
            "host=127.0.0.1,localhost port={closed},{port} user=postgres dbname={}",
            db.name
        ),
    ] {
        let out = Mvr::new().env("DATABASE_URL", &url).arg("check").run();
        out.code(0);
        let line = out.line_with("database:");
        assert!(
            line.contains(&format!(
                "host localhost port {port} database \"{}\"",
                db.name
            )),
            "{line}\n{out}"
        );
        assert!(!line.contains(&format!("port {closed} ")), "{line}");
    }
}

#[test]
fn check_reports_every_view_that_cannot_be_refreshed_as_configured() {
    let db = TestDb::platform("check_problems");
    db.execute(
        "CREATE MATERIALIZED VIEW no_index AS SELECT id FROM tenants; \
         CREATE MATERIALIZED VIEW partial_index AS SELECT id FROM tenants; \
         CREATE UNIQUE INDEX ON partial_index (id) WHERE id > 0; \
         CREATE MATERIALIZED VIEW unpopulated AS SELECT id FROM tenants WITH NO DATA; \
         CREATE UNIQUE INDEX ON unpopulated (id); \
         CREATE MATERIALIZED VIEW fine_without_index AS SELECT id FROM tenants;",
    );
    let registry = db.registry(
        "[[view]]\nname = \"no_index\"\nconcurrently = \"always\"\n\n\
         [[view]]\nname = \"partial_index\"\nconcurrently = \"always\"\n\n\
         [[view]]\nname = \"unpopulated\"\nconcurrently = \"always\"\n\n\
         [[view]]\nname = \"fine_without_index\"\n\n\
         [[view]]\nname = \"missing\"\n\n\
         [[view]]\nname = \"bets_view\"\n",
    );
    let out = db.mvr().args(["check", "--registry"]).arg(&registry).run();
    out.code(1)
        .stdout_has("public.no_index has no unique index usable by CONCURRENTLY")
        .stdout_has("public.partial_index has no unique index usable by CONCURRENTLY")
        .stdout_has("public.unpopulated is not populated")
        .stdout_has("public.missing does not exist")
        .stdout_has("public.bets_view is a table, not a materialized view");
    let fine = out.line_with("public.fine_without_index");
    assert!(
        fine.contains("full (no unique index usable by CONCURRENTLY)"),
        "{fine}"
    );
    // Not a problem, only a warning: its readers wait while it refreshes.
    let (before, problems) = out
        .stdout
        .split_once("problems:")
        .expect("a problems section");
    assert!(!problems.contains("fine_without_index"), "{out}");
    assert!(
        before.contains("warning: public.fine_without_index is refreshed without CONCURRENTLY"),
        "{out}"
    );

    // refresh agrees with check: `always` refuses without running anything.
    let refresh = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    refresh
        .code(1)
        .stdout_has("1 refreshed, 0 skipped, 5 failed");
    let ran: i64 = db
        .scalar("SELECT count(*) FROM materialized_views_refresh_history WHERE method IS NOT NULL");
    assert_eq!(ran, 1, "only fine_without_index ran a REFRESH\n{refresh}");
    let method: String = db.scalar(
        "SELECT method FROM materialized_views_refresh_history WHERE view_name = 'public.fine_without_index'",
    );
    assert_eq!(method, "full");
}

#[test]
fn status_reports_each_view_in_table_and_json() {
    let db = TestDb::platform("status");
    // Before any refresh: every view is "never", and that is not an error.
    let out = db.mvr().arg("status").run();
    out.code(0)
        .stdout_has("never")
        .stderr_has("do not exist yet");

    db.mvr().arg("refresh").run().code(0);
    db.failing_view("broken");
    let registry = db.registry(
        "[[view]]\nname = \"tenants_summary_view\"\n[[view]]\nname = \"user_activity_view\"\n\
         [[view]]\nname = \"top_bets_today\"\n[[view]]\nname = \"broken\"\n",
    );
    db.mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run()
        .code(1);

    let table = db.mvr().args(["status", "--registry"]).arg(&registry).run();
    table.code(0);
    let line = table.line_with("public.broken");
    assert!(
        line.contains("never") && line.contains("failed") && line.contains("division by zero"),
        "{line}"
    );
    let line = table.line_with("public.top_bets_today");
    assert!(line.contains("success"), "{line}");

    let json = db
        .mvr()
        .args(["status", "--format", "json", "--registry"])
        .arg(&registry)
        .run();
    json.code(0);
    let doc: serde_json::Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert_eq!(doc["log_schema"], "public");
    assert_eq!(doc["log_tables_exist"], true);
    let views = doc["views"].as_array().unwrap();
    let names: Vec<_> = views
        .iter()
        .map(|v| v["view_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "public.tenants_summary_view",
            "public.user_activity_view",
            "public.top_bets_today",
            "public.broken"
        ]
    );
    let top = &views[2];
    assert_eq!(top["refresh_count"], 2);
    assert_eq!(top["failure_count"], 0);
    assert_eq!(top["last_status"], "success");
    assert_eq!(top["last_method"], "concurrently");
    assert!(top["age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(top["avg_refresh_time_ms"].as_f64().unwrap() >= 0.0);
    assert!(top["last_refreshed_at"].as_str().unwrap().ends_with('Z'));
    let broken = &views[3];
    assert_eq!(broken["refresh_count"], 0);
    assert_eq!(broken["failure_count"], 1);
    assert_eq!(broken["last_refreshed_at"], serde_json::Value::Null);
    assert!(
        broken["last_error"]
            .as_str()
            .unwrap()
            .contains("division by zero")
    );
}

#[test]
fn init_creates_the_log_tables_with_the_specified_columns_and_is_idempotent() {
    let db = TestDb::empty("init");
    db.mvr()
        .arg("init")
        .run()
        .code(0)
        .stdout_has("log tables ready");
    // Again, on tables that exist: one line, no NOTICE per table and index.
    let again = db.mvr().arg("init").run();
    again.code(0);
    let said: Vec<&str> = again.stdout.lines().chain(again.stderr.lines()).collect();
    assert_eq!(said.len(), 1, "{again}");
    assert!(said[0].starts_with("log tables ready"), "{again}");
    let columns = |table: &str| -> Vec<String> {
        db.rows(&format!(
            "SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position"
        ))
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
    };
    assert_eq!(
        columns("materialized_views_refresh_log"),
        [
            "view_name",
            "refresh_count",
            "failure_count",
            "avg_refresh_time_ms",
            "last_refresh_time_ms",
            "last_refreshed_at",
            "last_attempt_at",
            "last_status",
            "last_method",
            "last_error",
            "refreshed_by",
            "skip_count",
            "cancel_count",
        ]
    );
    let history = columns("materialized_views_refresh_history");
    for column in [
        "id",
        "run_id",
        "view_name",
        "started_at",
        "finished_at",
        "duration_ms",
        "status",
        "method",
        "attempt",
        "work_mem",
        "statement_timeout",
        "lock_timeout",
        "sqlstate",
        "error",
        "host",
    ] {
        assert!(
            history.iter().any(|c| c == column),
            "history lacks {column}: {history:?}"
        );
    }
}

#[test]
fn init_in_a_missing_schema_fails_clearly() {
    let db = TestDb::empty("init_missing_schema");
    db.mvr()
        .args(["--log-schema", "nope", "init"])
        .run()
        .code(1)
        .stderr_has("schema \"nope\" does not exist");
}

#[test]
fn log_tables_of_an_older_version_are_upgraded_by_refresh() {
    let db = TestDb::platform("upgrade");
    db.mvr().arg("init").run().code(0);
    // What version 1 created: no vacuum_ms, no version comment.
    db.execute(
        "ALTER TABLE materialized_views_refresh_history DROP COLUMN vacuum_ms; \
         COMMENT ON TABLE materialized_views_refresh_history IS NULL;",
    );
    db.mvr()
        .args(["refresh", "top_bets_today"])
        .run()
        .code(0)
        .stderr_has("upgraded the log tables");
    let has_column: bool = db.scalar(
        "SELECT EXISTS (SELECT FROM information_schema.columns \
         WHERE table_name = 'materialized_views_refresh_history' AND column_name = 'vacuum_ms')",
    );
    assert!(has_column);
    let out = db.mvr().args(["refresh", "top_bets_today"]).run();
    out.code(0);
    assert!(
        !out.stderr.contains("upgraded"),
        "upgraded once only\n{out}"
    );
}

#[test]
fn check_reports_views_the_role_may_not_refresh() {
    let db = TestDb::platform("privileges");
    let role = format!("limited_{}", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; \
         ALTER MATERIALIZED VIEW top_bets_today OWNER TO {role};"
    ));
    let url = db.url().replace("postgres@", &format!("{role}@"));
    let check = Mvr::new().env("DATABASE_URL", &url).arg("check").run();
    check.code(1);
    for view in ["public.tenants_summary_view", "public.user_activity_view"] {
        check.stdout_has(&format!("{view} may not be refreshed by role \"{role}\""));
    }
    assert!(
        !check.stdout.contains("public.top_bets_today may not"),
        "{check}"
    );
    // The incremental twins: their tables must be written.
    check.stdout_has(&format!(
        "public.user_activity may not be maintained by role \"{role}\": it needs SELECT, INSERT, \
         UPDATE and DELETE on its table"
    ));

    // refresh agrees: those two fail before running anything, the owned one refreshes.
    db.mvr().arg("init").run().code(0);
    db.execute(&format!(
        "GRANT INSERT, UPDATE, SELECT ON ALL TABLES IN SCHEMA public TO {role}"
    ));
    let refresh = Mvr::new().env("DATABASE_URL", &url).arg("refresh").run();
    refresh
        .code(1)
        .stdout_has("1 refreshed, 0 skipped, 4 failed");

    // Membership in the owning role is enough.
    db.execute(&format!("GRANT postgres TO {role}"));
    Mvr::new()
        .env("DATABASE_URL", &url)
        .arg("check")
        .run()
        .code(0);
    db.execute(&format!(
        "REVOKE postgres FROM {role}; DROP OWNED BY {role}; DROP ROLE {role};"
    ));
}

#[test]
fn the_database_url_can_come_from_a_file() {
    let db = TestDb::platform("url_file");
    let url = db
        .url()
        .replace("postgres@", &format!("{PASSWORD_ROLE}:{PASSWORD}@"));
    let file = db.registry(&url); // any file in the test's directory will do
    Mvr::new()
        .args(["refresh", "top_bets_today", "--database-url-file"])
        .arg(&file)
        .run()
        .code(0)
        .stdout_has("1 refreshed")
        .never_shows(PASSWORD);
    Mvr::new()
        .env("DATABASE_URL", &url)
        .args(["refresh", "--database-url-file"])
        .arg(&file)
        .run()
        .code(2)
        .stderr_has("not both")
        .never_shows(PASSWORD);
    Mvr::new()
        .args(["refresh", "--database-url-file", "/nonexistent/url"])
        .run()
        .code(2)
        .stderr_has("/nonexistent/url");
}

#[test]
fn status_reads_a_log_table_made_by_hand_in_the_seeds_shape() {
    let db = TestDb::platform("seeds_shaped_log");
    // What a team following the seeds might already have: integer counts,
    // numeric averages, varchar names.
    db.execute(
        "CREATE TABLE materialized_views_refresh_log ( \
             view_name varchar(255) PRIMARY KEY, refresh_count integer NOT NULL DEFAULT 0, \
             failure_count integer NOT NULL DEFAULT 0, avg_refresh_time_ms numeric, \
             last_refresh_time_ms numeric, last_refreshed_at timestamp, last_attempt_at timestamp, \
             last_status varchar(20), last_method varchar(20), last_error text, refreshed_by varchar(255)); \
         INSERT INTO materialized_views_refresh_log (view_name, refresh_count, avg_refresh_time_ms, \
             last_refreshed_at, last_status) \
         VALUES ('public.top_bets_today', 7, 123.5, now() - interval '1 minute', 'success');",
    );
    db.mvr().arg("init").run().code(0);
    let out = db.mvr().args(["status", "--format", "json"]).run();
    out.code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let top = &doc["views"][2];
    assert_eq!(top["view_name"], "public.top_bets_today");
    assert_eq!(top["refresh_count"], 7);
    assert_eq!(top["avg_refresh_time_ms"], 123.5);

    // And refresh keeps counting in it.
    db.mvr().args(["refresh", "top_bets_today"]).run().code(0);
    let count: i32 = db.scalar(
        "SELECT refresh_count FROM materialized_views_refresh_log WHERE view_name = 'public.top_bets_today'",
    );
    assert_eq!(count, 8);
}

/// A statement that fails ends the command with its context and the server's
/// own message, printed once.
#[test]
fn a_failed_statement_prints_its_context_and_the_servers_message_once() {
    let db = TestDb::empty("init_denied");
    db.execute(&format!(
        "CREATE ROLE denied_{0} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        db.name
    ));
    let url = db
        .url()
        .replace("postgres@", &format!("denied_{}@", db.name));
    let out = Mvr::new().env("DATABASE_URL", &url).args(["init"]).run();
    out.code(1);
    let stderr = out.stderr.trim();
    assert!(
        stderr.starts_with(
            "mv-refresher: error: creating the log tables in schema \"public\": \
             permission denied for schema public"
        ),
        "{out}"
    );
    assert_eq!(stderr.matches("permission denied").count(), 1, "{out}");
    db.execute(&format!("DROP ROLE denied_{}", db.name));
}

/// `auto` resolving to a plain refresh of a view people read is a trap worth
/// a warning: readers wait for the whole refresh.
#[test]
fn check_warns_when_auto_resolves_to_a_refresh_that_blocks_readers() {
    let db = TestDb::empty("check_blocking");
    db.execute(
        "CREATE MATERIALIZED VIEW no_key AS SELECT 1 AS x; \
         CREATE MATERIALIZED VIEW keyed AS SELECT 1 AS x; CREATE UNIQUE INDEX ON keyed (x); \
         CREATE MATERIALIZED VIEW empty_yet AS SELECT 1 AS x WITH NO DATA;",
    );
    let registry = db.registry(
        "[[view]]\nname = \"no_key\"\n\n[[view]]\nname = \"keyed\"\n\n\
         [[view]]\nname = \"empty_yet\"\n",
    );
    let out = db.mvr_with(&registry).args(["check"]).run();
    out.code(0).stdout_has(
        "warning: public.no_key is refreshed without CONCURRENTLY (no unique index usable by \
         CONCURRENTLY): its plain refresh takes an ACCESS EXCLUSIVE lock",
    );
    assert_eq!(out.stdout.matches("warning:").count(), 1, "{out}");
}

/// A registry name that is not a materialized view (a typo, a table) fails
/// every run but was never recorded, so `status` showed it as `never`, 0
/// failed, no error: it now says it fails, why, and the name meant, as the run
/// says it; and the log tables still never hold it.
#[test]
fn status_shows_a_registry_name_that_is_no_materialized_view_as_failing_with_did_you_mean() {
    let db = TestDb::platform("status_typo");
    let registry = db.registry(
        "[[view]]\nname = \"top_bets_today\"\n[[view]]\nname = \"user_activty_view\"\n\
         [[view]]\nname = \"bets_view\"\n",
    );
    let typo = "public.user_activty_view does not exist (no relation of that name); \
                did you mean public.user_activity_view?";
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(1)
        .stdout_has(typo);

    let table = db.mvr_with(&registry).arg("status").run();
    table.code(0);
    let line = table.line_with("public.user_activty_view");
    assert!(
        line.contains(" failed ")
            && line.contains(
                "does not exist (no relation of that name); did you mean public.user_activity_view?"
            ),
        "{line}"
    );
    let line = table.line_with("public.bets_view");
    assert!(
        line.contains(" failed ") && line.contains("is a table, not a materialized view"),
        "{line}"
    );

    let json = db
        .mvr_with(&registry)
        .args(["status", "--format", "json"])
        .run();
    json.code(0);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let view = |name: &str| {
        doc["views"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["view_name"] == name)
            .unwrap_or_else(|| panic!("no {name}\n{json}"))
            .clone()
    };
    let typo_view = view("public.user_activty_view");
    assert_eq!(typo_view["failing"], true, "{json}");
    assert_eq!(
        typo_view["problem"],
        "does not exist (no relation of that name); did you mean public.user_activity_view?"
    );
    assert_eq!(view("public.bets_view")["failing"], true);
    let top = view("public.top_bets_today");
    assert_eq!(top["failing"], false);
    assert_eq!(top["problem"], serde_json::Value::Null);

    let prometheus = db
        .mvr_with(&registry)
        .args(["status", "--format", "prometheus"])
        .run();
    prometheus
        .code(0)
        .stdout_has("mv_refresher_view_failing{view=\"public.user_activty_view\"} 1\n")
        .stdout_has("mv_refresher_view_failing{view=\"public.bets_view\"} 1\n")
        .stdout_has("mv_refresher_view_failing{view=\"public.top_bets_today\"} 0\n");

    // Reported, never recorded.
    let recorded: i64 = db.scalar(
        "SELECT (SELECT count(*) FROM materialized_views_refresh_log \
                 WHERE view_name <> 'public.top_bets_today') \
              + (SELECT count(*) FROM materialized_views_refresh_history \
                 WHERE view_name <> 'public.top_bets_today')",
    );
    assert_eq!(recorded, 0);
}

/// `status` did not say how each view was refreshed: its METHOD column shows
/// the latest attempt's, as the log has it (`last_method` in JSON).
#[test]
fn status_shows_the_method_of_each_views_latest_refresh() {
    let db = TestDb::platform("status_method");
    db.mvr().arg("refresh").run().code(0);
    let out = db.mvr().arg("status").run();
    out.code(0);
    let header = out.line_with("VIEW");
    assert!(header.contains(" METHOD "), "{header}");
    // Columns are separated by at least two spaces, and every cell has text.
    let cells = |line: &str| -> Vec<String> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let at = cells(header).iter().position(|n| n == "METHOD").unwrap();
    let method_of = |view: &str| cells(out.line_with(view))[at].clone();
    assert_eq!(method_of("public.top_bets_today"), "concurrently", "{out}");
    assert_eq!(
        method_of("public.tenants_summary_view"),
        "concurrently",
        "{out}"
    );
    assert_eq!(method_of("public.user_activity "), "incremental", "{out}");

    let json = db.mvr().args(["status", "--format", "json"]).run();
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let twin = doc["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["view_name"] == "public.bets_latest")
        .unwrap();
    assert_eq!(twin["last_method"], "incremental", "{json}");
}

/// With neither DATABASE_URL nor a PG* variable the refresher tries libpq's
/// default, localhost:5432, and its exit-3 error said nothing of how to name
/// another database: it now does, and only then.
#[test]
fn without_a_database_url_or_pg_variables_exit_3_says_how_to_name_the_database() {
    // Nothing of the harness listens on 5432 (its clusters take free ports); a
    // server someone runs there would not let user postgres in over TCP
    // without a password either (Debian's default), also exit 3.
    Mvr::new()
        .arg("refresh")
        .run()
        .code(3)
        .stderr_has("could not connect to host localhost port 5432")
        .stderr_has("set DATABASE_URL (or --database-url, --database-url-file) or the PG* variables (PGHOST, PGPORT,");
    // Where something said where: no advice on how to say it.
    let url = closed_port_url();
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    Mvr::new()
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port)
        .arg("refresh")
        .run()
        .code(3)
        .never_shows("set DATABASE_URL");
    Mvr::new()
        .env("DATABASE_URL", &url)
        .arg("refresh")
        .run()
        .code(3)
        .never_shows("set DATABASE_URL");
}

/// A misspelled registry key listed every key there is but suggested none.
#[test]
fn a_misspelled_registry_key_suggests_the_closest() {
    registry_error(
        "misspelled_key",
        "[[view]]\nname = \"a\"\nstatment_timeout = \"1min\"\n",
    )
    .stderr_has(":3:")
    .stderr_has("unknown field `statment_timeout`: did you mean `statement_timeout`?");
    // Nothing close: no guess.
    registry_error("far_key", "[[view]]\nname = \"a\"\nfrobnicate = 1\n")
        .stderr_has("unknown field `frobnicate`")
        .never_shows("did you mean");
}

/// A registry file that cannot be read was reported at a made-up line and
/// column (`nope.toml:1:1`).
#[test]
fn a_missing_registry_file_is_reported_without_a_line_or_column() {
    let missing = std::env::temp_dir().join(format!("mvr-{}-nope.toml", std::process::id()));
    let shown = missing.display().to_string();
    Mvr::new()
        .env("DATABASE_URL", &closed_port_url())
        .args(["refresh", "--registry", &shown])
        .run()
        .code(2)
        .stderr_has(&format!(
            "cannot read registry {shown}: No such file or directory\n"
        ))
        .never_shows(&format!("{shown}:1:1"))
        .never_shows("os error");
}

/// `--help` said the embedded default lists "the three aggregate views" (it has
/// five) and cited "SPEC §2.1", a document users do not have.
#[test]
fn help_describes_the_embedded_default_and_cites_no_document_users_lack() {
    for args in [
        vec!["--help"],
        vec!["refresh", "--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["status", "--help"],
    ] {
        let out = Mvr::new().args(&args).run();
        out.code(0)
            .stdout_has("five views")
            .stdout_has("user_activity, bets_latest")
            .never_shows("SPEC")
            .never_shows("three aggregate");
    }
}

/// `check` printed `lag = 60000` without a unit.
#[test]
fn check_prints_a_sources_lag_with_its_unit() {
    let db = TestDb::platform("check_lag_unit");
    let out = db.mvr().arg("check").run();
    out.code(0);
    let line = out.line_with("public.bets_view: marker last_updated_timestamp");
    assert!(
        line.contains("late commits caught within lag = 60000 (marker units)"),
        "{line}"
    );
    // A duration says its own unit.
    let registry = db.registry(
        "[[view]]\nname = \"recent_users\"\nkey = [\"tenant_id\", \"user_id\"]\n\
         query = \"SELECT tenant_id, user_id, count(*) AS n FROM bets_view \
                   WHERE $changed(tenant_id, user_id) GROUP BY tenant_id, user_id\"\n\
         [[view.changes]]\ntable = \"bets_view\"\nkey = [\"tenant_id\", \"user_id\"]\n\
         marker = \"created_at\"\nlag = \"1min\"\n",
    );
    let out = db.mvr_with(&registry).arg("check").run();
    let line = out.line_with("public.bets_view: marker created_at");
    assert!(line.contains("within lag = 1min;"), "{out}");
}
