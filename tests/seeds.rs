//! Every command's default path on a database that is not ours: one built from
//! the seeds' documents as they are written (`tests/fixtures/seeds_*.sql`, in
//! both dialects), with the seeds' three materialized views and without the
//! reference platform's incremental twins. The embedded default registry must
//! refresh the three and skip the twins quietly: a CronJob on it stays green.

mod common;

use common::pushgateway::Pushgateway;
use common::{Seeds, TestDb};

/// The twins of the embedded default whose tables a seeds database lacks.
const TWINS: [&str; 2] = ["public.user_activity", "public.bets_latest"];
/// The seeds' three materialized views.
const SEED_VIEWS: [&str; 3] = [
    "public.tenants_summary_view",
    "public.user_activity_view",
    "public.top_bets_today",
];

/// The log lines of `logs` at warning level or above (text format).
fn warnings(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

/// What the log tables hold: every view recorded, with its last status.
fn recorded(db: &TestDb) -> Vec<(String, String)> {
    db.rows("SELECT view_name, last_status FROM materialized_views_refresh_log ORDER BY 1")
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect()
}

/// Asserts that the metrics page `text` has series for the seed views and
/// none for a twin that is not here (a series that never succeeds alerts).
#[track_caller]
fn only_the_seed_views_have_series(seeds: Seeds, text: &str) {
    assert!(
        text.contains("view=\"public.top_bets_today\""),
        "{seeds:?}\n{text}"
    );
    for twin in TWINS {
        assert!(
            !text.contains(&format!("view=\"{twin}\"")),
            "{seeds:?}: a view not here has no series that could alert\n{text}"
        );
    }
}

fn three_successes() -> Vec<(String, String)> {
    let mut expected: Vec<_> = SEED_VIEWS
        .iter()
        .map(|v| (v.to_string(), "success".to_string()))
        .collect();
    expected.sort();
    expected
}

#[test]
fn check_says_in_one_line_that_each_missing_twin_is_skipped() {
    for seeds in Seeds::BOTH {
        let db = TestDb::seeds(seeds, "check");
        let out = db.mvr().arg("check").run();
        out.code(0).never_shows("fails").never_shows("stake");
        for twin in TWINS {
            let line = out.line_with(&format!("{twin} "));
            assert!(
                line.contains("skipped") && line.contains("create = false"),
                "{seeds:?}: {line}\n{out}"
            );
            // One line: nothing about its query or sources.
            let name = twin.trim_start_matches("public.");
            let mentions = out
                .stdout
                .lines()
                .filter(|l| l.split_whitespace().any(|w| w == twin || w == name))
                .count();
            assert_eq!(mentions, 1, "{seeds:?}: {twin}\n{out}");
        }
        assert!(warnings(&out.stderr).is_empty(), "{seeds:?}:\n{out}");
    }
}

#[test]
fn refresh_on_the_embedded_default_refreshes_the_seed_views_and_skips_the_twins() {
    for seeds in Seeds::BOTH {
        let db = TestDb::seeds(seeds, "refresh");
        let out = db.mvr().arg("refresh").run();
        out.code(0).stdout_has("3 refreshed, 2 skipped, 0 failed");
        for twin in TWINS {
            let line = out.line_with(&format!("{twin} "));
            assert!(line.contains("skipped"), "{seeds:?}: {line}\n{out}");
        }
        assert!(warnings(&out.stderr).is_empty(), "{seeds:?}:\n{out}");
        // The twins are not recorded, and their tables were not made.
        assert_eq!(recorded(&db), three_successes(), "{seeds:?}\n{out}");
        let made: i64 = db.scalar(
            "SELECT count(*) FROM pg_class WHERE relname IN ('user_activity', 'bets_latest')",
        );
        assert_eq!(made, 0);
        let skipped: i64 = db.scalar(
            "SELECT count(*) FROM materialized_views_refresh_history WHERE status <> 'success'",
        );
        assert_eq!(skipped, 0, "skips of a view not here are not history");
    }
}

#[test]
fn refresh_in_json_counts_the_twins_as_skipped_and_logs_no_warning() {
    for seeds in Seeds::BOTH {
        let db = TestDb::seeds(seeds, "json");
        let out = db
            .mvr()
            .args(["--log-format", "json", "refresh", "--format", "json"])
            .run();
        out.code(0);
        let summary: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{seeds:?}: {e}\n{out}"));
        assert_eq!(summary["counts"]["success"], 3, "{seeds:?}\n{out}");
        assert_eq!(summary["counts"]["skipped"], 2, "{seeds:?}\n{out}");
        assert_eq!(summary["counts"]["failed"], 0, "{seeds:?}\n{out}");
        for line in out.stderr.lines() {
            let event: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let level = event["level"].as_str().unwrap();
            assert!(
                level == "INFO" || level == "DEBUG",
                "{seeds:?}: {line}\n{out}"
            );
        }
    }
}

#[test]
fn one_cycle_of_run_refreshes_the_seed_views_and_skips_the_twins() {
    for seeds in Seeds::BOTH {
        let db = TestDb::seeds(seeds, "run");
        let listen = format!("127.0.0.1:{}", common::free_port());
        let mut run = db
            .mvr()
            .args(["run", "--schedule", "* * * * * *", "--listen", &listen])
            .spawn();
        // Two refreshes of each: the first cycle, twins and all, is over.
        run.wait_until("two cycles of run", || {
            let logged: bool =
                db.scalar("SELECT to_regclass('materialized_views_refresh_log') IS NOT NULL");
            let done = || -> i64 {
                db.scalar(
                    "SELECT count(*) FROM materialized_views_refresh_log \
                     WHERE refresh_count + failure_count > 1",
                )
            };
            (logged && done() >= 3).then_some(())
        });
        let metrics = ureq::get(&format!("http://{listen}/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        only_the_seed_views_have_series(seeds, &metrics);
        // Read before the stop, which may cancel a later cycle's views.
        let log = recorded(&db);
        run.signal("TERM");
        let out = run.wait();
        out.code(0);
        assert_eq!(log, three_successes(), "{seeds:?}\n{out}");
        // The logs up to the stop: the first two cycles, twins and all.
        let stop = out
            .stderr
            .find("signal received")
            .unwrap_or(out.stderr.len());
        let before_stop = &out.stderr[..out.stderr[..stop].rfind('\n').unwrap_or(0)];
        assert!(warnings(before_stop).is_empty(), "{seeds:?}:\n{out}");
        assert!(
            before_stop.contains("view skipped"),
            "{seeds:?}: the skips are logged (at info)\n{out}"
        );
    }
}

#[test]
fn status_after_a_refresh_shows_the_seed_views_fresh_and_the_twins_as_not_here() {
    for seeds in Seeds::BOTH {
        let db = TestDb::seeds(seeds, "status");
        db.mvr().arg("refresh").run().code(0);
        let out = db.mvr().args(["status", "--max-age", "1h"]).run();
        out.code(0);
        for view in SEED_VIEWS {
            assert!(out.line_with(&format!("{view} ")).contains("success"));
        }
        for twin in TWINS {
            let line = out.line_with(&format!("{twin} "));
            assert!(
                line.contains("not here") && line.contains("create = false"),
                "{seeds:?}: {line}\n{out}"
            );
        }
        let json = db.mvr().args(["status", "--format", "json"]).run();
        json.code(0);
        let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        let views = report["views"].as_array().expect("views");
        for view in SEED_VIEWS {
            let entry = views
                .iter()
                .find(|v| v["view_name"] == view)
                .unwrap_or_else(|| panic!("{seeds:?}: {view} in\n{json}"));
            assert_eq!(entry["last_status"], "success", "{seeds:?}\n{json}");
            assert_eq!(entry["skipped"], serde_json::Value::Null);
        }
        for twin in TWINS {
            let entry = views.iter().find(|v| v["view_name"] == twin).unwrap();
            let why = entry["skipped"].as_str().unwrap_or_default();
            assert!(why.contains("does not exist here"), "{seeds:?}\n{json}");
        }
        let metrics = db.mvr().args(["status", "--format", "prometheus"]).run();
        metrics.code(0);
        only_the_seed_views_have_series(seeds, &metrics.stdout);
    }
}

#[test]
fn init_and_verify_on_the_embedded_default_pass_without_the_twins() {
    for seeds in Seeds::BOTH {
        let db = TestDb::seeds(seeds, "verify");
        db.mvr().arg("init").run().code(0);
        let out = db.mvr().arg("verify").run();
        out.code(0);
        for twin in TWINS {
            let line = out.line_with(&format!("{twin}:"));
            assert!(line.contains("skipped"), "{seeds:?}: {line}\n{out}");
        }
        assert!(warnings(&out.stderr).is_empty(), "{seeds:?}:\n{out}");
    }
}

#[test]
fn a_push_after_a_refresh_on_the_embedded_default_holds_no_series_for_the_twins() {
    let gateway = Pushgateway::start();
    for seeds in Seeds::BOTH {
        let db = TestDb::seeds(seeds, "push");
        db.mvr()
            .args(["refresh", "--pushgateway", &gateway.url()])
            .run()
            .code(0)
            .stdout_has("3 refreshed, 2 skipped, 0 failed");
        let pushed = gateway.metrics();
        only_the_seed_views_have_series(seeds, &pushed);
    }
}

#[test]
fn a_stop_leaves_a_twin_that_is_not_here_skipped_not_cancelled() {
    let db = TestDb::seeds(Seeds::S001, "stop");
    db.slow_view("slow_first", 600.0);
    // The slow view runs first (one job); the stop comes while it runs.
    let registry = db.registry(
        "[[view]]\nname = \"slow_first\"\n\n\
         [[view]]\nname = \"bets_latest\"\nkey = [\"tenant_id\", \"aggregate_id\"]\n\
         create = false\nquery = \"SELECT tenant_id, aggregate_id FROM bet_events \
         WHERE $changed(tenant_id, aggregate_id) GROUP BY 1, 2\"\n\
         [[view.changes]]\ntable = \"bet_events\"\nkey = [\"tenant_id\", \"aggregate_id\"]\n\
         marker = \"timestamp\"\nlag = 60000\n",
    );
    let out = db
        .mvr_with(&registry)
        .args(["refresh", "--jobs", "1", "--deadline", "2s"])
        .run();
    out.code(1);
    assert!(
        out.line_with("public.slow_first ").contains("cancelled"),
        "{out}"
    );
    let twin = out.line_with("public.bets_latest ");
    assert!(twin.contains("skipped"), "{twin}\n{out}");
    out.never_shows("view=\"public.bets_latest\" status=\"cancelled\"");
}

#[test]
fn a_twin_whose_name_is_a_materialized_view_here_is_skipped_too() {
    let db = TestDb::seeds(Seeds::S000, "matview_named_like_a_twin");
    // A generic name the user's database uses for something else.
    db.execute(
        "CREATE MATERIALIZED VIEW user_activity AS SELECT 1 AS id; \
         CREATE UNIQUE INDEX ON user_activity (id);",
    );
    let out = db.mvr().arg("refresh").run();
    out.code(0).stdout_has("3 refreshed, 2 skipped, 0 failed");
    let line = out.line_with("public.user_activity ");
    assert!(
        line.contains("is a materialized view here"),
        "{line}\n{out}"
    );
    db.mvr().arg("check").run().code(0);
}

#[test]
fn a_twin_that_failed_before_it_was_skipped_is_not_failing_in_status() {
    let db = TestDb::seeds(Seeds::S000, "old_failures");
    db.mvr().arg("init").run().code(0);
    // What an earlier release recorded on every run: a failure.
    db.execute(
        "INSERT INTO materialized_views_refresh_log \
             (view_name, refresh_count, failure_count, last_attempt_at, last_status, last_error) \
         VALUES ('public.bets_latest', 0, 12, now(), 'failed', 'column \"seq\" does not exist')",
    );
    let json = db.mvr().args(["status", "--format", "json"]).run();
    json.code(0);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let twin = report["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["view_name"] == "public.bets_latest")
        .unwrap();
    assert_eq!(twin["failing"], false, "{json}");
    assert!(twin["skipped"].is_string(), "{json}");
}
