//! What `refresh` and the other commands print, as the machines and the people
//! reading it see it: JSON logs with nothing else on either stream, the results
//! for scripts, the registry the user meant, `forget`, and a terminal that stays
//! readable while progress is drawn.

mod common;

use common::{TERMINAL, TestDb, free_port};
use serde_json::Value;

/// Every line of `text`, each of which must be one JSON object.
fn json_lines(stream: &str, text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => value,
            _ => panic!("a line on {stream} is not a JSON object: {line:?}\n{text}"),
        })
        .collect()
}

/// Every number in `value` has at most three decimals.
fn assert_short_numbers(value: &Value) {
    match value {
        Value::Number(n) => {
            let text = n.to_string();
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{text} has more than three decimals");
        }
        Value::Array(items) => items.iter().for_each(assert_short_numbers),
        Value::Object(fields) => fields.values().for_each(assert_short_numbers),
        _ => {}
    }
}

#[test]
fn json_logs_are_all_json_with_a_run_span_and_a_summary() {
    let db = TestDb::platform("json_logs");
    db.failing_view("fragile");
    let registry = db.registry(
        "[[view]]\nname = \"fragile\"\n[[view]]\nname = \"top_bets_today\"\n\
         [[view]]\nname = \"tenants_summary_view\"\n",
    );
    let out = db
        .mvr()
        .args(["--log-format", "json", "refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(1);
    assert_eq!(out.stdout, "", "JSON logs alone print no table");
    let events = json_lines("stderr", &out.stderr);

    // One run span around every event of the run, not a copied field.
    let run_ids: Vec<&str> = events
        .iter()
        .map(|e| {
            assert_eq!(
                e["span"]["name"], "run",
                "an event outside the run span: {e}"
            );
            e["span"]["run_id"].as_str().expect("run_id in the span")
        })
        .collect();
    assert!(run_ids.windows(2).all(|w| w[0] == w[1]), "{run_ids:?}");
    let per_view: Vec<&Value> = events.iter().filter(|e| e["view"].is_string()).collect();
    assert!(per_view.len() >= 3, "{}", out.stderr);

    let summary = events.last().unwrap();
    assert_eq!(
        summary["message"], "run finished",
        "the summary ends the run"
    );
    assert_eq!(
        (
            &summary["success"],
            &summary["failed"],
            &summary["skipped"],
            &summary["cancelled"]
        ),
        (&2.into(), &1.into(), &0.into(), &0.into())
    );
    assert!(summary["duration_ms"].is_u64());
    // The run_id is the one the log tables recorded.
    let recorded: String =
        db.scalar("SELECT DISTINCT run_id::text FROM materialized_views_refresh_history");
    assert_eq!(run_ids[0], recorded);
    events.iter().for_each(assert_short_numbers);

    // A bad command line, in JSON too.
    let bad = db
        .mvr()
        .env("MV_REFRESHER_LOG_FORMAT", "json")
        .args(["refresh", "--jobs", "0"])
        .run();
    bad.code(2);
    let events = json_lines("stderr", &bad.stderr);
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("must be at least 1"),
        "{bad}"
    );
}

#[test]
fn refresh_format_chooses_the_results_on_stdout_independently_of_the_logs() {
    let db = TestDb::platform("json_results");
    let out = db
        .mvr()
        .args(["--log-format", "text", "refresh", "--format", "json"])
        .run();
    out.code(0);
    let results = json_lines("stdout", &out.stdout);
    assert_eq!(results.len(), 1, "one object for the whole run\n{out}");
    let run = &results[0];
    assert_eq!(run["counts"]["success"], 5);
    assert_eq!(run["ok"], true);
    let views: Vec<&str> = run["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["view"].as_str().unwrap())
        .collect();
    assert_eq!(
        views.len(),
        5,
        "every registry view, in plan order: {views:?}"
    );
    assert!(views.contains(&"public.user_activity_view"));
    assert_short_numbers(run);
    // Text logs stay on stderr.
    out.stderr_has("run finished");

    let table = db
        .mvr()
        .args(["--log-format", "json", "refresh", "--format", "table"])
        .run();
    table
        .code(0)
        .stdout_has("public.user_activity_view")
        .stdout_has("5 refreshed, 0 skipped, 0 failed in ");
    json_lines("stderr", &table.stderr);
}

#[test]
fn the_embedded_registry_on_a_foreign_database_exits_2_and_writes_nothing() {
    let db = TestDb::empty("foreign");
    db.execute("CREATE TABLE orders (id int); CREATE MATERIALIZED VIEW order_totals AS SELECT count(*) FROM orders");
    for command in ["refresh", "run"] {
        let out = db
            .mvr()
            .env_remove("MV_REFRESHER_REGISTRY")
            .arg(command)
            .run();
        out.code(2)
            .stderr_has("embedded default registry")
            .stderr_has("--registry")
            .stderr_has("MV_REFRESHER_REGISTRY");
    }
    let tables: i64 = db
        .scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'materialized_views_refresh_%'");
    assert_eq!(tables, 0, "nothing was written");
}

#[test]
fn forget_removes_a_dropped_views_rows_and_nothing_else() {
    let db = TestDb::platform("forget");
    db.execute(
        "CREATE MATERIALIZED VIEW old_report AS SELECT 1 AS id; CREATE UNIQUE INDEX ON old_report (id)",
    );
    let registry =
        db.registry("[[view]]\nname = \"old_report\"\n[[view]]\nname = \"top_bets_today\"\n");
    for _ in 0..2 {
        db.mvr()
            .args(["refresh", "--registry"])
            .arg(&registry)
            .run()
            .code(0);
    }
    db.execute("DROP MATERIALIZED VIEW old_report");
    let count = |view: &str| -> i64 {
        db.scalar(&format!(
            "SELECT (SELECT count(*) FROM materialized_views_refresh_log WHERE view_name = '{view}') \
                  + (SELECT count(*) FROM materialized_views_refresh_history WHERE view_name = '{view}')"
        ))
    };
    assert_eq!(count("public.old_report"), 3);

    // A name the log does not know: exit 2, the closest one named, nothing deleted.
    db.mvr()
        .args(["forget", "old_report", "old_reprot"])
        .run()
        .code(2)
        .stderr_has("no rows for old_reprot; did you mean public.old_report?")
        .stderr_has("nothing was deleted");
    assert_eq!(count("public.old_report"), 3);

    db.mvr()
        .args(["forget", "old_report"])
        .run()
        .code(0)
        .stdout_has("forgot public.old_report: 1 summary row and 2 history rows");
    assert_eq!(count("public.old_report"), 0);
    assert_eq!(count("public.top_bets_today"), 3, "other views keep theirs");
    db.mvr().arg("status").run().never_shows("old_report");
}

#[test]
fn check_counts_in_words_and_prints_the_next_runs_of_a_schedule() {
    let db = TestDb::platform("check_schedule");
    let registry = db.registry("[[view]]\nname = \"top_bets_today\"\n");
    let out = db
        .mvr()
        .args(["check", "--schedule", "@hourly", "--registry"])
        .arg(&registry)
        .run();
    out.code(0).stdout_has("(1 view)").never_shows("1 views");
    let line = out.line_with("schedule:");
    assert_eq!(line.matches(":00:00 UTC").count(), 3, "{line}");
}

/// What the terminal of `Mvr::in_terminal` shows after `bytes`, line by line.
fn screen(bytes: &[u8]) -> Vec<String> {
    let size = |n: u16| std::num::NonZeroU16::new(n).expect("a size");
    let mut terminal = vt100::Parser::new(size(TERMINAL.0), size(TERMINAL.1), 0);
    terminal.process(bytes);
    terminal
        .screen()
        .contents()
        .lines()
        .map(|line| line.trim_end().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn on_a_terminal_progress_and_logs_do_not_collide_and_each_view_is_reported_once() {
    let db = TestDb::platform("terminal");
    db.slow_view("m_slow", 0.6);
    db.slow_view("m_slower", 1.2);
    db.failing_view("fragile");
    let registry = db.registry(
        "[[view]]\nname = \"m_slow\"\n[[view]]\nname = \"m_slower\"\n\
         [[view]]\nname = \"fragile\"\n[[view]]\nname = \"top_bets_today\"\n",
    );
    let refresh = || {
        db.mvr()
            .args(["refresh", "--jobs", "2", "--registry"])
            .arg(&registry)
            .in_terminal()
            .run()
    };
    refresh().code(1);
    // With history, so bars with expectations are drawn too.
    let out = refresh();
    out.code(1);
    assert!(
        out.stdout.contains("expected"),
        "progress was drawn while the views ran\n{out}"
    );

    let lines = screen(out.stdout.as_bytes());
    let text = lines.join("\n");
    // The drawing is gone: no stale frames, no bars.
    for drawn in ["expected", "no history yet", "[=", "success in"] {
        assert!(
            !text.contains(drawn),
            "{drawn:?} left on the screen:\n{text}"
        );
    }
    // Each view once, in the table; the failure's error line is whole, on a
    // line of its own that starts with its timestamp.
    for view in [
        "public.m_slow ",
        "public.m_slower ",
        "public.top_bets_today ",
    ] {
        assert_eq!(
            lines.iter().filter(|l| l.contains(view)).count(),
            1,
            "{view} reported other than once:\n{text}"
        );
    }
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(!errors.is_empty(), "the failure's error is shown:\n{text}");
    for line in errors {
        assert!(
            line.starts_with("20") && line.contains("division by zero"),
            "a cut or mixed log line: {line:?}\n{text}"
        );
    }
    // Informational logs wait for the table: no "view refreshed" lines.
    assert!(!text.contains("view refreshed"), "{text}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("3 refreshed, 0 skipped, 1 failed in"))
            .count(),
        1,
        "{text}"
    );
}

#[test]
fn schedules_are_read_as_kubernetes_reads_them() {
    let closed = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    for (expression, says) in [
        ("*5 * * * *", "minute \"*5\" is not a number (0-59)"),
        ("*/5 * * ** *", "month \"**\" is not a number"),
        (
            "5/* * * * *",
            "minute \"5/*\": the step \"*\" is not a number",
        ),
        ("0 0 32 * *", "day of month 32 is out of range 1-31"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("0 0 * 12-13 *", "month \"12-13\": 13 is out of range 1-12"),
    ] {
        let out = common::Mvr::new()
            .env("DATABASE_URL", &closed)
            .args(["run", "--schedule", expression])
            .run();
        out.code(2)
            .stderr_has(&format!("--schedule: schedule {expression:?}: {says}"))
            .never_shows("^")
            .never_shows("less than");
    }

    // Descriptors are schedules too; `run` says when it will run, at start.
    let db = TestDb::platform("schedule_next");
    let port = free_port();
    let mut run = db
        .mvr()
        .args(["run", "--schedule", "@daily", "--timezone", "Europe/Berlin"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .spawn();
    run.wait_until("serving", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    run.signal("TERM");
    let out = run.wait();
    out.code(0);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("refreshing on schedule"))
        .unwrap_or_else(|| panic!("no schedule at start\n{out}"));
    assert_eq!(line.matches(" 00:00:00 CE").count(), 3, "{line}");
}

#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let db = TestDb::platform("broken_pipe");
    // `mv-refresher check | head -0`: nobody reads stdout at all.
    for command in ["check", "status"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mv-refresher"))
            .env_clear()
            .env("DATABASE_URL", db.url())
            .arg(command)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{command}: {stderr}");
    }
}

#[test]
fn status_json_numbers_are_short_even_for_rows_written_by_others() {
    let db = TestDb::platform("short_numbers");
    db.mvr().arg("refresh").run().code(0);
    // A row as an older refresher (or a hand-written script) left it.
    db.execute(
        "UPDATE materialized_views_refresh_log \
         SET avg_refresh_time_ms = 7.805479666666667, last_refresh_time_ms = 7.1627410000000005 \
         WHERE view_name = 'public.top_bets_today'; \
         UPDATE materialized_views_refresh_history SET duration_ms = 6.862527999999999",
    );
    let out = db.mvr().args(["status", "--format", "json"]).run();
    out.code(0);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_short_numbers(&report);
    let top = report["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["view_name"] == "public.top_bets_today")
        .unwrap();
    assert_eq!(top["avg_refresh_time_ms"], 7.8);
}

/// `refresh --format json` lacked the counts of an incremental cycle that the
/// history has, and its run-wide `failed` (a flag) sat beside `counts.failed`
/// (a number): each view now has the history's `keys_scanned`, `rows_inserted`,
/// `rows_updated`, `rows_deleted` (null for a materialized view), and the flag
/// is `ok`.
#[test]
fn refresh_json_has_each_incremental_cycles_counts_and_no_ambiguous_failed() {
    let db = TestDb::platform("json_counts");
    let refresh = |mvr: common::Mvr, code: i32| {
        let out = mvr.args(["refresh", "--format", "json"]).run();
        out.code(code);
        let results = json_lines("stdout", &out.stdout);
        assert_eq!(results.len(), 1, "{out}");
        results.into_iter().next().unwrap()
    };
    // The embedded default: the three materialized views and the two twins.
    refresh(db.mvr(), 0);
    // One bet changes: its key recomputed, its row updated.
    db.execute(
        "INSERT INTO bet_events (tenant_id, aggregate_id, idempotency_key, event_type, \
                                 event_data, \"timestamp\", version) \
         SELECT tenant_id, aggregate_id, gen_random_uuid()::text, 'V1_BETS_BET_SETTLED', \
                '{}'::jsonb, \"timestamp\" + 1, version + 1 \
         FROM bet_events ORDER BY seq DESC LIMIT 1",
    );
    let run = refresh(db.mvr(), 0);
    assert_eq!(run["ok"], true, "{run}");
    assert!(run.get("failed").is_none(), "{run}");
    let view = |run: &Value, name: &str| {
        run["views"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["view"] == name)
            .unwrap_or_else(|| panic!("no {name}: {run}"))
            .clone()
    };
    let twin = view(&run, "public.bets_latest");
    assert_eq!(twin["method"], "incremental", "{twin}");
    assert_eq!(
        (
            &twin["keys_scanned"],
            &twin["rows_inserted"],
            &twin["rows_updated"],
            &twin["rows_deleted"]
        ),
        (&1.into(), &0.into(), &1.into(), &0.into()),
        "{twin}"
    );
    // As the history has them.
    let history = db.rows(
        "SELECT keys_scanned, rows_inserted, rows_updated, rows_deleted \
         FROM materialized_views_refresh_history \
         WHERE view_name = 'public.bets_latest' ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(
        history[0],
        ["1", "0", "1", "0"].map(|v| Some(v.to_owned())).to_vec()
    );
    let matview = view(&run, "public.top_bets_today");
    for count in [
        "keys_scanned",
        "rows_inserted",
        "rows_updated",
        "rows_deleted",
    ] {
        assert_eq!(matview[count], Value::Null, "{matview}");
    }

    // A failure: the number is counts.failed, the run is not ok.
    db.failing_view("fragile");
    let registry =
        db.registry("[[view]]\nname = \"top_bets_today\"\n[[view]]\nname = \"fragile\"\n");
    let run = refresh(db.mvr_with(&registry), 1);
    assert_eq!(
        (&run["ok"], &run["counts"]["failed"]),
        (&false.into(), &1.into()),
        "{run}"
    );
    assert!(run.get("failed").is_none(), "{run}");
    assert_eq!(view(&run, "public.fragile")["keys_scanned"], Value::Null);
}
