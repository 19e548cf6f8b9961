//! Operating it: the `run` loop (schedule, overlap, a database that goes away and
//! comes back, shutdown), its HTTP endpoints over a real socket, and the
//! freshness `status` reports for alerts.

mod common;

use common::pushgateway::Pushgateway;
use common::{Mvr, TestDb, free_port, private_cluster};

/// `mv-refresher run` on `db` every second, with `registry` (else the embedded
/// default) and the `extra` options.
fn run_every_second(
    db: &TestDb,
    registry: Option<&std::path::Path>,
    extra: &[&str],
) -> common::Running {
    let mut mvr = db
        .mvr()
        .args(["run", "--schedule", "* * * * * *"])
        .args(extra);
    if let Some(registry) = registry {
        mvr = mvr.arg("--registry").arg(registry);
    }
    mvr.spawn()
}

/// GET `path`: `(status code, body)`; `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_typed(port, path).map(|(status, _, body)| (status, body))
}

/// GET `path`: `(status code, Content-Type, body)`; `None` while nothing listens.
fn get_typed(port: u16, path: &str) -> Option<(u16, String, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Some((
        status,
        content_type,
        response.body_mut().read_to_string().unwrap(),
    ))
}

/// The `/metrics` page, checked to be Prometheus's text format 0.0.4 (not
/// OpenMetrics); `None` while nothing listens.
fn scrape(port: u16) -> Option<String> {
    let (status, content_type, body) = get_typed(port, "/metrics")?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!body.contains("# EOF"), "{body}");
    Some(body)
}

/// The series of a metrics page (name and labels, no values), in order.
fn series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').unwrap().0)
        .collect()
}

/// Asserts that `promtool check metrics` accepts `text`; promtool is in
/// Debian's prometheus package.
#[track_caller]
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): apt-get install prometheus (Debian's package has it)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- the metrics ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// A schedule that does not come round while a test runs (once a year).
const NEVER_SOON: &str = "0 0 1 1 *";

/// `mv-refresher run` on `db` with `schedule`, serving on `port`.
fn run_serving(
    db: &TestDb,
    registry: &std::path::Path,
    schedule: &str,
    port: u16,
) -> common::Running {
    db.mvr()
        .args(["run", "--schedule", schedule, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--registry")
        .arg(registry)
        .spawn()
}

/// The value of the sample `name{labels}` in a metrics page.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn refreshes(metrics: &str, view: &str, status: &str) -> f64 {
    sample(
        metrics,
        &format!("mv_refresher_view_refreshes_total{{status=\"{status}\",view=\"{view}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn run_refreshes_on_the_schedule_and_serves_metrics_health_and_readiness() {
    let db = TestDb::platform("run_metrics");
    let port = free_port();
    let mut run = run_every_second(&db, None, &["--listen", &format!("127.0.0.1:{port}")]);

    // Two cycles at least: the counters move.
    let metrics = run.wait_until("two refreshes of every view", || {
        let body = scrape(port)?;
        [
            "public.tenants_summary_view",
            "public.user_activity_view",
            "public.top_bets_today",
        ]
        .iter()
        .all(|v| refreshes(&body, v, "success") >= 2.0)
        .then_some(body)
    });
    for name in [
        "mv_refresher_view_last_success_timestamp_seconds{view=\"public.top_bets_today\"}",
        "mv_refresher_view_last_duration_seconds{view=\"public.top_bets_today\"}",
        "mv_refresher_view_failing{view=\"public.top_bets_today\"}",
        "mv_refresher_view_refresh_duration_seconds_count{view=\"public.top_bets_today\"}",
        "mv_refresher_view_retries_total{view=\"public.top_bets_today\"}",
        "mv_refresher_view_lock_skips_total{view=\"public.top_bets_today\"}",
        "mv_refresher_cycles_total{outcome=\"ok\"}",
        "mv_refresher_next_run_timestamp_seconds",
        "mv_refresher_last_run_timestamp_seconds",
        "mv_refresher_last_run_duration_seconds",
        "mv_refresher_refreshes_in_progress",
    ] {
        let value = sample(&metrics, name).unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        assert!(value >= 0.0 && value.is_finite(), "{name} = {value}");
    }
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "mv_refresher_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    promtool_accepts(&metrics);
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    assert_eq!(get(port, "/readyz").unwrap(), (200, "ready\n".into()));

    run.signal("TERM");
    let out = run.wait();
    out.code(0).stderr_has("shutting down");
    let count: i64 = db.scalar(
        "SELECT refresh_count FROM materialized_views_refresh_log WHERE view_name = 'public.top_bets_today'",
    );
    assert!(count >= 2, "{count}");
}

#[test]
fn a_tick_during_a_running_cycle_is_skipped_and_failures_never_stop_the_loop() {
    let db = TestDb::platform("run_overlap");
    db.slow_view("m_slow", 2.5);
    db.failing_view("m_broken");
    let registry = db.registry("[[view]]\nname = \"m_slow\"\n[[view]]\nname = \"m_broken\"\n");
    let port = free_port();
    let mut run = run_every_second(
        &db,
        Some(&registry),
        &["--listen", &format!("127.0.0.1:{port}")],
    );
    run.wait_until("an overlapped tick and two failed cycles", || {
        let (_, body) = get(port, "/metrics")?;
        let overlapped = sample(&body, "mv_refresher_cycles_total{outcome=\"overlapped\"}")?;
        let failed = sample(&body, "mv_refresher_cycles_total{outcome=\"failed\"}")?;
        (overlapped >= 1.0 && failed >= 2.0).then_some(())
    });
    run.signal("TERM");
    run.wait().code(0).stderr_has("this tick is skipped");
    let failures: i64 = db.scalar(
        "SELECT failure_count FROM materialized_views_refresh_log WHERE view_name = 'public.m_broken'",
    );
    assert!(failures >= 2);
}

#[test]
fn the_loop_survives_the_database_going_away_and_recovers_by_itself() {
    let cluster = private_cluster("run_recovers");
    let db = TestDb::platform_on(cluster, "run_recovers");
    let port = free_port();
    let registry = db.registry("[[view]]\nname = \"top_bets_today\"\n");
    let mut run = run_every_second(
        &db,
        Some(&registry),
        &["--listen", &format!("127.0.0.1:{port}")],
    );
    run.wait_until("the first refresh", || {
        let (_, body) = get(port, "/metrics")?;
        (refreshes(&body, "public.top_bets_today", "success") >= 1.0).then_some(())
    });

    cluster.halt();
    run.wait_until(
        "readiness to fail and a cycle to find the database unreachable",
        || {
            let (code, _) = get(port, "/readyz")?;
            let (_, body) = get(port, "/metrics")?;
            let unreachable = sample(&body, "mv_refresher_cycles_total{outcome=\"unreachable\"}")?;
            (code == 503 && unreachable >= 1.0).then_some(())
        },
    );
    assert_eq!(
        get(port, "/healthz").unwrap().0,
        200,
        "the process is alive"
    );

    cluster.resume();
    let before = refreshes(
        &get(port, "/metrics").unwrap().1,
        "public.top_bets_today",
        "success",
    );
    run.wait_until("refreshes to resume", || {
        let (_, body) = get(port, "/metrics")?;
        (refreshes(&body, "public.top_bets_today", "success") > before).then_some(())
    });
    run.wait_until("readiness to come back", || {
        (get(port, "/readyz")?.0 == 200).then_some(())
    });

    // Ctrl-C, as a person at the terminal would stop it.
    run.signal("INT");
    run.wait()
        .code(0)
        .stderr_has("database unreachable; backing off");
}

#[test]
fn sigterm_gives_running_refreshes_the_grace_period_then_cancels_them() {
    let db = TestDb::platform("run_grace");
    db.slow_view("m_short", 2.0);
    db.slow_view("m_endless", 600.0);

    // Within the grace period: the refresh finishes and is recorded.
    let registry = db.registry("[[view]]\nname = \"m_short\"\n");
    let run = run_every_second(&db, Some(&registry), &["--shutdown-grace", "60s"]);
    db.wait_for_refresh("m_short");
    run.signal("TERM");
    run.wait().code(0);
    let status: String = db.scalar("SELECT status FROM materialized_views_refresh_history WHERE view_name = 'public.m_short' ORDER BY id DESC LIMIT 1");
    assert_eq!(status, "success");

    // Past it: cancelled on the server.
    let registry = db.registry("[[view]]\nname = \"m_endless\"\n");
    let run = run_every_second(&db, Some(&registry), &["--shutdown-grace", "1s"]);
    db.wait_for_refresh("m_endless");
    run.signal("TERM");
    run.wait().code(0);
    assert_eq!(db.running_refreshes(), 0);
    let status: String = db.scalar("SELECT status FROM materialized_views_refresh_history WHERE view_name = 'public.m_endless'");
    assert_eq!(status, "cancelled");
    let counts = db.rows(
        "SELECT refresh_count, failure_count, cancel_count, last_status \
         FROM materialized_views_refresh_log WHERE view_name = 'public.m_endless'",
    );
    assert_eq!(
        counts,
        [[
            Some("0".into()),
            Some("0".into()),
            Some("1".into()),
            Some("cancelled".into())
        ]]
    );
}

#[test]
fn min_interval_is_honoured_by_the_loop() {
    let db = TestDb::platform("run_min_interval");
    let registry = db.registry(
        "[[view]]\nname = \"top_bets_today\"\nmin_interval = \"1h\"\n[[view]]\nname = \"tenants_summary_view\"\n",
    );
    let port = free_port();
    let mut run = run_every_second(
        &db,
        Some(&registry),
        &["--listen", &format!("127.0.0.1:{port}")],
    );
    run.wait_until("three cycles", || {
        let (_, body) = get(port, "/metrics")?;
        (refreshes(&body, "public.tenants_summary_view", "success") >= 3.0).then_some(())
    });
    run.signal("TERM");
    run.wait().code(0);
    let rows = db.rows(
        "SELECT status, count(*) FROM materialized_views_refresh_history \
         WHERE view_name = 'public.top_bets_today' GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        rows[1],
        [Some("success".into()), Some("1".into())],
        "{rows:?}"
    );
    assert_eq!(rows[0][0].as_deref(), Some("skipped"));
    let note: String = db.scalar(
        "SELECT note FROM materialized_views_refresh_history WHERE status = 'skipped' LIMIT 1",
    );
    assert!(note.starts_with("fresh: refreshed"), "{note}");
    // Skips are counted, and change nothing else in the view's summary row.
    let log = db.rows(
        "SELECT refresh_count, skip_count = (SELECT count(*) FROM materialized_views_refresh_history \
                                             WHERE view_name = l.view_name AND status = 'skipped'), \
                last_status, last_attempt_at = last_refreshed_at \
         FROM materialized_views_refresh_log l WHERE view_name = 'public.top_bets_today'",
    );
    assert_eq!(
        log,
        [[
            Some("1".into()),
            Some("t".into()),
            Some("success".into()),
            Some("t".into())
        ]]
    );
}

/// The reference platform's `bets_latest` as an incremental view, and
/// `top_bets_today` as a materialized view: both five minutes apart by
/// `[defaults]`, the incremental one every cycle by its own `min_interval`.
const FAST_AND_SLOW: &str = r#"
[defaults]
min_interval = "5m"

[[view]]
name = "top_bets_today"

[[view]]
name = "bets_latest"
min_interval = "0"
key = ["tenant_id", "aggregate_id"]
query = """
SELECT DISTINCT ON (tenant_id, aggregate_id)
       tenant_id, aggregate_id, event_type AS last_event_type, event_data AS last_event_data,
       "timestamp" AS last_event_timestamp, version, seq AS last_event_seq
FROM bet_events
WHERE $changed(tenant_id, aggregate_id)
ORDER BY tenant_id, aggregate_id, seq DESC
"""

[[view.changes]]
table = "bet_events"
key = ["tenant_id", "aggregate_id"]
marker = "seq"
"#;

/// `(run_id, view, status, note)` of every history row, cycle by cycle.
fn cycles(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT run_id::text, view_name, status, note FROM materialized_views_refresh_history h \
         ORDER BY (SELECT min(id) FROM materialized_views_refresh_history f WHERE f.run_id = h.run_id), \
                  view_name",
    )
}

#[test]
fn run_every_refreshes_at_once_and_again_every_period() {
    let db = TestDb::platform("run_every");
    let registry = db.registry("[[view]]\nname = \"top_bets_today\"\n");
    db.mvr().arg("init").run().code(0);
    // An hour apart: the first cycle starts at once, not an hour from now.
    let mut hourly = db
        .mvr_with(&registry)
        .args(["run", "--every", "1h"])
        .spawn();
    hourly.wait_until("the first cycle", || {
        (db.history("top_bets_today").len() == 1).then_some(())
    });
    hourly.signal("TERM");
    hourly.wait().code(0).stderr_has("every 1h");
    assert_eq!(
        db.history("top_bets_today")[0][0].as_deref(),
        Some("success")
    );

    let mut every_second = db
        .mvr_with(&registry)
        .env("MV_REFRESHER_EVERY", "1s")
        .arg("run")
        .spawn();
    every_second.wait_until("three more cycles", || {
        (db.history("top_bets_today").len() >= 4).then_some(())
    });
    every_second.signal("TERM");
    every_second.wait().code(0).stderr_has("every 1s");
    let statuses: Vec<_> = db
        .history("top_bets_today")
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    assert!(statuses[..4].iter().all(|s| s == "success"), "{statuses:?}");
}

#[test]
fn bad_every_values_exit_2_naming_the_option() {
    let closed = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    let run = |args: &[&str]| {
        Mvr::new()
            .env("DATABASE_URL", &closed)
            .arg("run")
            .args(args)
            .run()
    };
    run(&["--every", "0s"])
        .code(2)
        .stderr_has("--every")
        .stderr_has("at least 1s");
    run(&["--every", "500ms"]).code(2).stderr_has("at least 1s");
    run(&["--every", "10"])
        .code(2)
        .stderr_has("--every")
        .stderr_has("a number and a unit");
    run(&["--every", "10s", "--schedule", "* * * * *"])
        .code(2)
        .stderr_has("--schedule (MV_REFRESHER_SCHEDULE) or --every (MV_REFRESHER_EVERY), not both");
    Mvr::new()
        .env("DATABASE_URL", &closed)
        .env("MV_REFRESHER_SCHEDULE", "*/5 * * * *")
        .args(["run", "--every", "10s"])
        .run()
        .code(2)
        .stderr_has("not both");
}

#[test]
fn incremental_views_every_cycle_while_materialized_views_keep_to_their_min_interval() {
    let db = TestDb::platform("run_fast_and_slow");
    let registry = db.registry(FAST_AND_SLOW);
    let port = free_port();
    let mut run = db
        .mvr_with(&registry)
        .args(["run", "--every", "1s", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .spawn();
    let metrics = run.wait_until("four cycles of the incremental view", || {
        let body = scrape(port)?;
        (refreshes(&body, "public.bets_latest", "success") >= 4.0).then_some(body)
    });
    // The alerts' thresholds follow how often each view is meant to be
    // refreshed: the loop's period, or min_interval when longer.
    assert_eq!(
        sample(
            &metrics,
            "mv_refresher_view_interval_seconds{view=\"public.bets_latest\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "mv_refresher_view_interval_seconds{view=\"public.top_bets_today\"}"
        ),
        Some(300.0),
        "{metrics}"
    );
    run.signal("TERM");
    run.wait().code(0);

    // Cycle by cycle: the incremental view refreshed in every one, the
    // materialized view in the first only, skipped as fresh in the others.
    let rows = cycles(&db);
    let mut runs: Vec<&str> = rows.iter().map(|r| r[0].as_deref().unwrap()).collect();
    runs.dedup();
    assert!(runs.len() >= 4, "{rows:#?}");
    for (i, run_id) in runs.iter().enumerate() {
        let of = |view: &str| {
            rows.iter()
                .find(|r| r[0].as_deref() == Some(*run_id) && r[1].as_deref() == Some(view))
                .map(|r| (r[2].clone().unwrap(), r[3].clone().unwrap_or_default()))
        };
        // The shutdown may have come in the middle of the last cycle.
        if i == runs.len() - 1 {
            break;
        }
        let (status, _) = of("public.bets_latest").unwrap_or_else(|| panic!("{rows:#?}"));
        assert_eq!(status, "success", "cycle {i}: {rows:#?}");
        let (status, note) = of("public.top_bets_today").unwrap_or_else(|| panic!("{rows:#?}"));
        match i {
            0 => assert_eq!(status, "success", "{rows:#?}"),
            _ => {
                assert_eq!(status, "skipped", "cycle {i}: {rows:#?}");
                assert!(note.contains("min_interval is 5min"), "{note}");
            }
        }
    }
    let refreshed: i64 = db.scalar(
        "SELECT refresh_count FROM materialized_views_refresh_log \
         WHERE view_name = 'public.top_bets_today'",
    );
    assert_eq!(refreshed, 1);
}

#[test]
fn the_loop_deployments_registry_checks_and_refreshes_on_the_reference_platform() {
    let db = TestDb::platform("deploy_loop_registry");
    let registry = common::repo().join("deploy/loop/registry.toml");
    let check = db.mvr_with(&registry).arg("check").run();
    check.code(0);
    for view in [
        "public.user_activity_view",
        "public.user_activity ",
        "public.bets_latest",
    ] {
        check.stdout_has(view);
    }
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("5 refreshed");
    // Again at once: the materialized views are fresh, the incremental ones
    // run.
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("2 refreshed, 3 skipped");
}

/// Makes the last success of `view` have started `started_s` seconds ago and
/// taken `took_ms`.
fn refreshed_ago(db: &TestDb, view: &str, started_s: u32, took_ms: u32) {
    db.execute(&format!(
        "UPDATE materialized_views_refresh_log \
         SET last_refreshed_at = clock_timestamp() - make_interval(secs => {started_s}) \
                                 + make_interval(secs => {took_ms} / 1000.0), \
             last_refresh_time_ms = {took_ms} \
         WHERE view_name = 'public.{view}'"
    ));
}

#[test]
fn min_interval_is_met_at_the_tick_it_falls_due_not_one_later() {
    let db = TestDb::platform("min_interval_boundary");
    let registry = db.registry(
        "[defaults]\nmin_interval = \"1h\"\n[[view]]\nname = \"top_bets_today\"\n\
         [[view]]\nname = \"tenants_summary_view\"\n[[view]]\nname = \"user_activity_view\"\n",
    );
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("3 refreshed");
    let last = |view: &str| db.history(view).last().unwrap()[0].clone().unwrap();

    // A CronJob (`refresh`) comes back a minute later at the soonest: a view
    // due within half a minute is refreshed now, not a whole run later.
    refreshed_ago(&db, "top_bets_today", 3600 - 20, 0);
    // Counted from the start of the last refresh, which read the data then:
    // one that took 15 s and ended 59m50s ago is due.
    refreshed_ago(&db, "tenants_summary_view", 3600 + 5, 15_000);
    // Due in a minute: not yet.
    refreshed_ago(&db, "user_activity_view", 3600 - 90, 0);
    db.mvr_with(&registry)
        .arg("refresh")
        .run()
        .code(0)
        .stdout_has("2 refreshed, 1 skipped");
    assert_eq!(last("top_bets_today"), "success");
    assert_eq!(last("tenants_summary_view"), "success");
    assert_eq!(last("user_activity_view"), "skipped");

    // A loop every 10 minutes comes back in 10: due within 5 is due now,
    // within 6 is not.
    refreshed_ago(&db, "top_bets_today", 3600 - 4 * 60, 0);
    refreshed_ago(&db, "tenants_summary_view", 3600 - 6 * 60, 0);
    let mut run = db
        .mvr_with(&registry)
        .args(["run", "--every", "10m"])
        .spawn();
    run.wait_until("its first cycle", || {
        (db.history("top_bets_today").len() == 3 && db.history("tenants_summary_view").len() == 3)
            .then_some(())
    });
    run.signal("TERM");
    run.wait().code(0);
    assert_eq!(last("top_bets_today"), "success");
    assert_eq!(last("tenants_summary_view"), "skipped");
}

#[test]
fn a_role_that_may_not_upgrade_version_2_log_tables_still_records_refreshes_and_skips() {
    let db = TestDb::platform("old_log_no_upgrade");
    db.mvr().arg("init").run().code(0);
    // What version 2 created: no skip_count, no cancel_count.
    db.execute(
        "ALTER TABLE materialized_views_refresh_log DROP COLUMN skip_count, DROP COLUMN cancel_count; \
         COMMENT ON TABLE materialized_views_refresh_history IS 'mv-refresher schema version 2';",
    );
    let role = format!("writer_{}", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN; GRANT INSERT, UPDATE, SELECT ON ALL TABLES IN SCHEMA public TO {role}; \
         ALTER MATERIALIZED VIEW top_bets_today OWNER TO {role};"
    ));
    let url = db.url().replace("postgres@", &format!("{role}@"));
    let registry = db.registry("[[view]]\nname = \"top_bets_today\"\nmin_interval = \"1h\"\n");
    let refresh = || {
        Mvr::new()
            .env("DATABASE_URL", &url)
            .args(["refresh", "--registry"])
            .arg(&registry)
            .run()
    };
    refresh()
        .code(0)
        .stdout_has("1 refreshed")
        .stderr_has("may not upgrade");
    refresh().code(0).stdout_has("1 skipped");
    let status = Mvr::new()
        .env("DATABASE_URL", &url)
        .args(["status", "--format", "prometheus", "--registry"])
        .arg(&registry)
        .run();
    status.code(0);
    assert_eq!(
        refreshes(&status.stdout, "public.top_bets_today", "success"),
        1.0
    );
    db.execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"));
}

#[test]
fn bad_run_options_exit_2_before_connecting() {
    let closed = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    Mvr::new()
        .env("DATABASE_URL", &closed)
        .args(["run", "--schedule", "every five minutes"])
        .run()
        .code(2)
        .stderr_has("--schedule");
    Mvr::new()
        .env("DATABASE_URL", &closed)
        .args(["run", "--timezone", "Mars/Olympus"])
        .run()
        .code(2)
        .stderr_has("time zone");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    Mvr::new()
        .env("DATABASE_URL", &closed)
        .args(["run", "--listen", &addr])
        .run()
        .code(2)
        .stderr_has("cannot listen");
}

#[test]
fn status_speaks_prometheus_with_the_same_names() {
    let db = TestDb::platform("status_prometheus");
    db.execute("CREATE MATERIALIZED VIEW m_never AS SELECT 1 AS x;");
    let registry =
        db.registry("[[view]]\nname = \"top_bets_today\"\n[[view]]\nname = \"m_never\"\n");
    db.mvr().args(["refresh", "top_bets_today"]).run().code(0);
    db.mvr().args(["refresh", "top_bets_today"]).run().code(0);
    let out = db
        .mvr()
        .args(["status", "--format", "prometheus", "--registry"])
        .arg(&registry)
        .run();
    out.code(0);
    let text = &out.stdout;
    assert_eq!(
        refreshes(text, "public.top_bets_today", "success"),
        2.0,
        "{text}"
    );
    for status in ["failed", "skipped", "cancelled"] {
        let series = format!(
            "mv_refresher_view_refreshes_total{{status=\"{status}\",view=\"public.top_bets_today\"}}"
        );
        assert_eq!(sample(text, &series), Some(0.0), "{series}\n{text}");
    }
    let (last, duration): (f64, f64) = {
        let row = db
            .client()
            .query_one(
                "SELECT extract(epoch FROM last_refreshed_at)::float8, last_refresh_time_ms / 1000 \
                 FROM materialized_views_refresh_log WHERE view_name = 'public.top_bets_today'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let success = |view: &str| {
        sample(
            text,
            &format!("mv_refresher_view_last_success_timestamp_seconds{{view=\"{view}\"}}"),
        )
    };
    assert!((success("public.top_bets_today").unwrap() - last).abs() < 0.001);
    assert_eq!(success("public.m_never"), Some(0.0), "never refreshed: 0");
    let last_duration = sample(
        text,
        "mv_refresher_view_last_duration_seconds{view=\"public.top_bets_today\"}",
    )
    .unwrap();
    assert!((last_duration - duration).abs() < 0.001);
    assert!(
        sample(
            text,
            "mv_refresher_view_last_duration_seconds{view=\"public.m_never\"}"
        )
        .is_none()
    );
    assert_eq!(
        sample(text, "mv_refresher_view_failing{view=\"public.m_never\"}"),
        Some(0.0)
    );
    assert!(text.contains("# TYPE mv_refresher_view_refreshes_total counter"));
    // The text format 0.0.4, and nothing only `run` knows.
    for absent in [
        "# EOF",
        "mv_refresher_next_run_timestamp_seconds",
        "mv_refresher_cycles_total",
        "mv_refresher_last_run_timestamp_seconds",
    ] {
        assert!(!text.contains(absent), "{absent}\n{text}");
    }
    promtool_accepts(text);
}

#[test]
fn status_prometheus_reads_a_log_table_without_the_newer_counts() {
    let db = TestDb::platform("status_prometheus_old_log");
    // The seeds' shape, made by hand, never upgraded: no skip_count, no
    // cancel_count, no history table.
    db.execute(
        "CREATE TABLE materialized_views_refresh_log ( \
             view_name varchar(255) PRIMARY KEY, refresh_count integer NOT NULL DEFAULT 0, \
             failure_count integer NOT NULL DEFAULT 0, avg_refresh_time_ms numeric, \
             last_refresh_time_ms numeric, last_refreshed_at timestamp, last_attempt_at timestamp, \
             last_status varchar(20), last_method varchar(20), last_error text, refreshed_by varchar(255)); \
         INSERT INTO materialized_views_refresh_log (view_name, refresh_count, failure_count, \
             last_refresh_time_ms, last_refreshed_at, last_status) \
         VALUES ('public.top_bets_today', 7, 2, 1500, now() - interval '1 minute', 'failed');",
    );
    let out = db.mvr().args(["status", "--format", "prometheus"]).run();
    out.code(0);
    let text = &out.stdout;
    assert_eq!(refreshes(text, "public.top_bets_today", "success"), 7.0);
    assert_eq!(refreshes(text, "public.top_bets_today", "failed"), 2.0);
    assert_eq!(
        sample(
            text,
            "mv_refresher_view_refreshes_total{status=\"skipped\",view=\"public.top_bets_today\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            text,
            "mv_refresher_view_failing{view=\"public.top_bets_today\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            text,
            "mv_refresher_view_last_duration_seconds{view=\"public.top_bets_today\"}"
        ),
        Some(1.5)
    );
    promtool_accepts(text);
}

#[test]
fn status_max_age_fails_for_old_or_never_refreshed_views() {
    let db = TestDb::platform("status_max_age");
    db.mvr().arg("refresh").run().code(0);
    db.mvr().args(["status", "--max-age", "1h"]).run().code(0);
    db.execute("UPDATE materialized_views_refresh_log SET last_refreshed_at = now() - interval '2 hours' WHERE view_name = 'public.top_bets_today'");
    db.mvr()
        .args(["status", "--max-age", "1h"])
        .run()
        .code(1)
        .stderr_has("public.top_bets_today")
        .stderr_has("older than --max-age");
    db.mvr()
        .args(["status", "--max-age", "3h", "--format", "json"])
        .run()
        .code(0);

    db.execute("CREATE MATERIALIZED VIEW m_never AS SELECT 1 AS x;");
    let registry = db.registry("[[view]]\nname = \"m_never\"\n");
    db.mvr()
        .args(["status", "--max-age", "3h", "--registry"])
        .arg(&registry)
        .run()
        .code(1)
        .stderr_has("never refreshed");
}

#[test]
fn status_shows_next_due_time_and_recent_durations() {
    let db = TestDb::platform("status_next_due");
    let registry = db.registry(
        "[[view]]\nname = \"top_bets_today\"\nmin_interval = \"1h\"\n[[view]]\nname = \"tenants_summary_view\"\n",
    );
    for _ in 0..3 {
        db.mvr()
            .args(["refresh", "tenants_summary_view"])
            .run()
            .code(0);
    }
    db.mvr().args(["refresh", "top_bets_today"]).run().code(0);

    let table = db.mvr().args(["status", "--registry"]).arg(&registry).run();
    table.code(0);
    let line = table.line_with("public.tenants_summary_view");
    assert!(line.contains("every run"), "{line}");
    let spark: String = line.chars().filter(|c| ('▁'..='█').contains(c)).collect();
    assert_eq!(
        spark.chars().count(),
        3,
        "one bar per recent refresh: {line}"
    );

    let json = db
        .mvr()
        .args(["status", "--format", "json", "--registry"])
        .arg(&registry)
        .run();
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let top = &doc["views"][0];
    assert_eq!(top["min_interval"], "1h");
    let due = top["next_due_at"].as_str().unwrap();
    assert!(
        due.ends_with('Z') && due > top["last_refreshed_at"].as_str().unwrap(),
        "{due}"
    );
    assert_eq!(
        doc["views"][1]["recent_durations_ms"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(doc["views"][1]["next_due_at"], serde_json::Value::Null);
}

#[test]
fn a_concurrent_refresh_that_changes_every_row_is_followed_by_vacuum() {
    let db = TestDb::platform("vacuum");
    // Every refresh changes every row (the timestamp), leaving 2000 dead rows.
    db.execute(
        "CREATE MATERIALIZED VIEW m_churn AS SELECT g AS id, clock_timestamp() AS at FROM generate_series(1, 2000) g; \
         CREATE UNIQUE INDEX ON m_churn (id); \
         CREATE MATERIALIZED VIEW m_churn_kept AS SELECT * FROM m_churn; \
         CREATE UNIQUE INDEX ON m_churn_kept (id); \
         CREATE MATERIALIZED VIEW m_steady AS SELECT id FROM tenants; \
         CREATE UNIQUE INDEX ON m_steady (id);",
    );
    let registry = db.registry(
        "[[view]]\nname = \"m_churn\"\n[[view]]\nname = \"m_churn_kept\"\nvacuum = \"never\"\n\
         [[view]]\nname = \"m_steady\"\n",
    );
    // Stale data for m_churn_kept so that its refresh changes every row too.
    db.execute("REFRESH MATERIALIZED VIEW m_churn;");
    // relallvisible: only VACUUM marks pages all-visible, no REFRESH does.
    let all_visible = |view: &str| -> i32 {
        db.scalar(&format!(
            "SELECT relallvisible FROM pg_class WHERE relname = '{view}'"
        ))
    };
    assert_eq!(
        (all_visible("m_churn"), all_visible("m_churn_kept")),
        (0, 0)
    );

    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    out.code(0).stdout_has("vacuumed 2000 dead rows");
    let vacuumed = db.rows(
        "SELECT view_name, method, vacuum_ms IS NOT NULL FROM materialized_views_refresh_history ORDER BY view_name",
    );
    assert_eq!(
        vacuumed,
        [
            [
                Some("public.m_churn".into()),
                Some("concurrently".into()),
                Some("t".into())
            ],
            [
                Some("public.m_churn_kept".into()),
                Some("concurrently".into()),
                Some("f".into())
            ],
            [
                Some("public.m_steady".into()),
                Some("concurrently".into()),
                Some("f".into())
            ],
        ]
    );
    // The server's own evidence: pages of the vacuumed view only are all-visible.
    assert!(all_visible("m_churn") > 0);
    assert_eq!(all_visible("m_churn_kept"), 0);
}

#[test]
fn refresh_on_a_terminal_shows_live_progress_and_piped_it_does_not() {
    let db = TestDb::platform("progress");
    db.slow_view("m_slow", 0.5);
    let registry =
        db.registry("[[view]]\nname = \"m_slow\"\n[[view]]\nname = \"top_bets_today\"\n");
    // History first, so the terminal run knows what to expect.
    let piped = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run();
    piped.code(0);
    for progress_only in ["expected", "no history yet", "success in"] {
        assert!(
            !piped.stdout.contains(progress_only),
            "piped output shows progress\n{piped}"
        );
    }

    let out = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .in_terminal()
        .run();
    out.code(0)
        .stdout_has("public.m_slow")
        .stdout_has("expected")
        .stdout_has("success in")
        .stdout_has("2 refreshed, 0 skipped, 0 failed");
}

/// Two views refreshed one after the other, the second 1.5 s after the first
/// (it reads the first, and sleeps).
fn two_views_far_apart(db: &TestDb) -> std::path::PathBuf {
    db.execute(
        "CREATE MATERIALIZED VIEW m_first AS SELECT id FROM tenants WITH NO DATA; \
         CREATE UNIQUE INDEX ON m_first (id); \
         CREATE MATERIALIZED VIEW m_second AS \
             SELECT id, pg_sleep(1.5)::text AS slept FROM m_first WHERE id = (SELECT min(id) FROM m_first) \
             WITH NO DATA; \
         CREATE UNIQUE INDEX ON m_second (id);",
    );
    db.registry("[[view]]\nname = \"m_second\"\n[[view]]\nname = \"m_first\"\n")
}

/// `view`'s `last_refreshed_at` in the log, Unix seconds.
fn logged_success(db: &TestDb, view: &str) -> f64 {
    db.scalar(&format!(
        "SELECT extract(epoch FROM last_refreshed_at)::float8 FROM materialized_views_refresh_log \
         WHERE view_name = 'public.{view}'"
    ))
}

fn last_success(metrics: &str, view: &str) -> Option<f64> {
    sample(
        metrics,
        &format!("mv_refresher_view_last_success_timestamp_seconds{{view=\"public.{view}\"}}"),
    )
}

#[test]
fn run_starts_with_the_last_success_another_refresher_logged() {
    let db = TestDb::platform("metrics_from_log_at_start");
    let registry = two_views_far_apart(&db);
    // Another process (a CronJob, another replica, this one before a restart).
    db.mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run()
        .code(0);
    let (first, second) = (
        logged_success(&db, "m_first"),
        logged_success(&db, "m_second"),
    );

    let port = free_port();
    let mut run = run_serving(&db, &registry, NEVER_SOON, port);
    let metrics = run.wait_until("the metrics", || scrape(port));
    assert_eq!(last_success(&metrics, "m_first"), Some(first), "{metrics}");
    assert_eq!(last_success(&metrics, "m_second"), Some(second));
    assert_eq!(refreshes(&metrics, "public.m_second", "success"), 1.0);
    assert!(
        sample(&metrics, "mv_refresher_last_run_timestamp_seconds").is_none(),
        "no cycle ran here yet\n{metrics}"
    );
    run.signal("TERM");
    run.wait().code(0);
}

#[test]
fn each_view_reports_when_its_own_refresh_ended_not_the_cycle() {
    let db = TestDb::platform("metrics_per_view_end");
    let registry = two_views_far_apart(&db);
    let port = free_port();
    let mut run = run_serving(&db, &registry, "* * * * * *", port);
    let metrics = run.wait_until("a cycle of this process", || {
        let body = scrape(port)?;
        (refreshes(&body, "public.m_second", "success") >= 1.0).then_some(body)
    });
    let first = last_success(&metrics, "m_first").unwrap();
    let second = last_success(&metrics, "m_second").unwrap();
    assert!(
        second - first >= 1.4,
        "m_second ended 1.5 s after m_first, not with it: {first} {second}\n{metrics}"
    );
    let ended = sample(&metrics, "mv_refresher_last_run_timestamp_seconds").unwrap();
    assert!(ended - first >= 1.4, "{first} {ended}");
    run.signal("TERM");
    run.wait().code(0);
}

#[test]
fn every_series_is_there_from_the_first_scrape_in_the_same_order_every_time() {
    let db = TestDb::platform("metrics_stable");
    db.execute("CREATE MATERIALIZED VIEW m_never AS SELECT 1 AS x;");
    let registry = db.registry(
        "[[view]]\nname = \"user_activity_view\"\n[[view]]\nname = \"m_never\"\n\
         [[view]]\nname = \"top_bets_today\"\n[[view]]\nname = \"tenants_summary_view\"\n",
    );
    db.mvr().args(["refresh", "top_bets_today"]).run().code(0);
    let port = free_port();
    let mut run = run_serving(&db, &registry, NEVER_SOON, port);
    let first = run.wait_until("the metrics", || scrape(port));
    for view in [
        "public.m_never",
        "public.tenants_summary_view",
        "public.top_bets_today",
        "public.user_activity_view",
    ] {
        for status in ["success", "failed", "skipped", "cancelled"] {
            let series =
                format!("mv_refresher_view_refreshes_total{{status=\"{status}\",view=\"{view}\"}}");
            let expected = if (view, status) == ("public.top_bets_today", "success") {
                1.0
            } else {
                0.0
            };
            assert_eq!(sample(&first, &series), Some(expected), "{series}\n{first}");
        }
        for family in [
            "mv_refresher_view_last_success_timestamp_seconds",
            "mv_refresher_view_failing",
            "mv_refresher_view_retries_total",
            "mv_refresher_view_lock_skips_total",
            "mv_refresher_view_refresh_duration_seconds_count",
        ] {
            let series = format!("{family}{{view=\"{view}\"}}");
            assert!(sample(&first, &series).is_some(), "{series}\n{first}");
        }
    }
    assert_eq!(last_success(&first, "m_never"), Some(0.0));
    for outcome in ["ok", "failed", "unreachable", "overlapped"] {
        let series = format!("mv_refresher_cycles_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&first, &series), Some(0.0), "{series}\n{first}");
    }
    assert_eq!(
        sample(&first, "mv_refresher_refreshes_in_progress"),
        Some(0.0)
    );

    let second = scrape(port).unwrap();
    assert_eq!(series(&first), series(&second));
    let families: Vec<&str> = first
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert!(families.is_sorted(), "{families:?}");
    promtool_accepts(&first);
    run.signal("TERM");
    run.wait().code(0);
}

/// A daily schedule whose next run is `seconds` from now (UTC, 6 fields).
fn once_in(seconds: u64) -> String {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds;
    let of_day = at % 86_400;
    format!(
        "{} {} {} * * *",
        of_day % 60,
        of_day / 60 % 60,
        of_day / 3600
    )
}

#[test]
fn readiness_returns_with_the_database_not_with_the_next_cycle() {
    let cluster = private_cluster("ready_again");
    let db = TestDb::platform_on(cluster, "ready_again");
    let registry = db.registry("[[view]]\nname = \"top_bets_today\"\n");
    cluster.halt();
    let port = free_port();
    // One cycle, soon, while the database is down; the next a day later.
    let mut run = run_serving(&db, &registry, &once_in(6), port);
    run.wait_until("the cycle to find the database unreachable", || {
        let body = scrape(port)?;
        let unreachable = sample(&body, "mv_refresher_cycles_total{outcome=\"unreachable\"}")?;
        (unreachable >= 1.0).then_some(())
    });
    let (code, body) = get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("the last cycle could not reach the database"),
        "{body}"
    );

    cluster.resume();
    run.wait_until("readiness to come back", || {
        (get(port, "/readyz")?.0 == 200).then_some(())
    });
    let metrics = scrape(port).unwrap();
    assert_eq!(
        sample(&metrics, "mv_refresher_cycles_total{outcome=\"ok\"}"),
        Some(0.0),
        "ready before any cycle reached the database\n{metrics}"
    );
    run.signal("TERM");
    run.wait().code(0);
}

#[test]
fn refreshes_in_progress_retries_and_lock_skips_are_counted() {
    let db = TestDb::platform("metrics_progress");
    db.slow_view("m_slow", 5.0);
    let registry = db.registry("[[view]]\nname = \"m_slow\"\nretries = 2\n");

    // Another refresher holds the view: this process skips it.
    let other = db
        .mvr()
        .args(["refresh", "--registry"])
        .arg(&registry)
        .spawn();
    db.wait_for_refresh("m_slow");
    let port = free_port();
    let mut run = run_serving(&db, &registry, "* * * * * *", port);
    let skipped = run.wait_until("a lock skip", || {
        let body = scrape(port)?;
        let skips = sample(
            &body,
            "mv_refresher_view_lock_skips_total{view=\"public.m_slow\"}",
        )?;
        (skips >= 1.0).then_some(body)
    });
    assert!(
        refreshes(&skipped, "public.m_slow", "skipped") >= 1.0,
        "{skipped}"
    );
    other.wait().code(0);

    // This process refreshes it now.
    run.wait_until("a REFRESH in progress", || {
        let body = scrape(port)?;
        (sample(&body, "mv_refresher_refreshes_in_progress")? == 1.0).then_some(())
    });
    let pid = db.wait_for_refresh("m_slow");
    let killed: bool = db.scalar(&format!("SELECT pg_terminate_backend({pid})"));
    assert!(killed);
    let metrics = run.wait_until("the retry to be counted", || {
        let body = scrape(port)?;
        let retries = sample(
            &body,
            "mv_refresher_view_retries_total{view=\"public.m_slow\"}",
        )?;
        (retries >= 1.0).then_some(body)
    });
    // A retried attempt is no final outcome: the log counts no failure.
    assert_eq!(refreshes(&metrics, "public.m_slow", "failed"), 0.0);
    run.signal("TERM");
    run.wait().code(0);
}

/// Issue 18: clap split MV_REFRESHER_PUSHGATEWAY_LABELS at every comma, so a
/// label value could not hold one. `\,` keeps it (and `\\` a backslash);
/// repeated flags still give one label each.
#[test]
fn a_pushgateway_label_value_may_hold_an_escaped_comma() {
    let db = TestDb::platform("push_comma");
    let gateway = Pushgateway::start();
    let registry = db.registry("[[view]]\nname = \"top_bets_today\"\n");
    db.mvr()
        .env("MV_REFRESHER_PUSHGATEWAY", &gateway.url())
        .env(
            "MV_REFRESHER_PUSHGATEWAY_LABELS",
            r"database=platform,team=a\,b,path=c:\\d",
        )
        .args(["refresh", "--registry"])
        .arg(&registry)
        .run()
        .code(0);
    db.mvr()
        .env("MV_REFRESHER_PUSHGATEWAY", &gateway.url())
        .args([
            "refresh",
            "--pushgateway-label",
            "database=other",
            "--pushgateway-label",
            "team=x",
            "--registry",
        ])
        .arg(&registry)
        .run()
        .code(0);
    let groups: Vec<_> = gateway.groups().into_iter().map(|g| g.labels).collect();
    let group = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    for expected in [
        group(&[
            ("database", "platform"),
            ("team", "a,b"),
            ("path", r"c:\d"),
            ("job", "mv-refresher"),
        ]),
        group(&[
            ("database", "other"),
            ("team", "x"),
            ("job", "mv-refresher"),
        ]),
    ] {
        assert!(groups.contains(&expected), "{expected:?} not in {groups:?}");
    }
    assert_eq!(groups.len(), 2, "{groups:?}");
}

#[test]
fn refresh_pushes_the_log_tables_truth_to_a_pushgateway_and_a_failed_push_is_only_a_warning() {
    let db = TestDb::platform("push");
    db.failing_view("fragile");
    let gateway = Pushgateway::start();
    let good = db.registry("[[view]]\nname = \"top_bets_today\"\n[[view]]\nname = \"fragile\"\n");
    let push = |registry: &std::path::Path| {
        db.mvr()
            .env("MV_REFRESHER_PUSHGATEWAY", &gateway.url())
            .env("MV_REFRESHER_PUSHGATEWAY_LABELS", "database=platform")
            .args(["--log-format", "json", "refresh", "--registry"])
            .arg(registry)
            .run()
    };
    // A failing view: exit 1 all the same, and the push says so.
    push(&good).code(1).stderr_has("pushed the metrics");
    push(&good).code(1);

    let groups = gateway.groups();
    assert_eq!(groups.len(), 1, "one group: {groups:?}");
    assert_eq!(
        groups[0].labels,
        [("database", "platform"), ("job", "mv-refresher")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into()
    );
    let pushed = |name: &str, labels: &[(&str, &str)]| {
        let mut labels = labels.to_vec();
        labels.push(("database", "platform"));
        gateway
            .value(name, &labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} not pushed:\n{}", gateway.metrics()))
    };
    let top = ("view", "public.top_bets_today");
    let fragile = ("view", "public.fragile");
    // The end of the view's own last refresh, as the log table has it.
    let logged: f64 = db.scalar(
        "SELECT extract(epoch FROM last_refreshed_at)::float8 FROM materialized_views_refresh_log \
         WHERE view_name = 'public.top_bets_today'",
    );
    let last_success = pushed("mv_refresher_view_last_success_timestamp_seconds", &[top]);
    assert!(
        (last_success - logged).abs() < 0.001,
        "{last_success} vs {logged}"
    );
    assert_eq!(
        pushed(
            "mv_refresher_view_last_success_timestamp_seconds",
            &[fragile]
        ),
        0.0
    );
    assert_eq!(pushed("mv_refresher_view_failing", &[fragile]), 1.0);
    assert_eq!(pushed("mv_refresher_view_failing", &[top]), 0.0);
    // Counts of both runs: cumulative, from the log table, every status present.
    for (view, status, count) in [
        (top, "success", 2.0),
        (top, "failed", 0.0),
        (top, "skipped", 0.0),
        (top, "cancelled", 0.0),
        (fragile, "failed", 2.0),
        (fragile, "success", 0.0),
    ] {
        assert_eq!(
            pushed(
                "mv_refresher_view_refreshes_total",
                &[view, ("status", status)]
            ),
            count,
            "{view:?} {status}"
        );
    }
    let run_end = pushed("mv_refresher_last_run_timestamp_seconds", &[]);
    assert!(run_end >= logged, "the run ended after its last refresh");
    assert_eq!(
        pushed(
            "mv_refresher_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // No scheduler here, so no scheduler metrics.
    let page = gateway.metrics();
    assert!(!page.contains("mv_refresher_cycles_total"), "{page}");
    assert!(!page.contains("mv_refresher_next_run"), "{page}");
    promtool_accepts(&page);

    // The gateway gone: a warning, the run's own exit code, nothing else.
    let url = gateway.url();
    drop(gateway);
    let only_top = db.registry("[[view]]\nname = \"top_bets_today\"\n");
    let out = db
        .mvr()
        .args([
            "--log-format",
            "json",
            "refresh",
            "--pushgateway",
            &url,
            "--registry",
        ])
        .arg(&only_top)
        .run();
    out.code(0)
        .stderr_has("the metrics were not pushed")
        .stderr_has(&url);

    // A bad address or label is a bad invocation: exit 2, nothing refreshed.
    for (option, value, says) in [
        ("--pushgateway", "ftp://gateway:9091", "--pushgateway"),
        ("--pushgateway-label", "job=other", "job"),
    ] {
        let mut args = vec!["refresh", option, value];
        if option == "--pushgateway-label" {
            args.extend(["--pushgateway", "http://127.0.0.1:9"]);
        }
        db.mvr().args(args).run().code(2).stderr_has(says);
    }
    assert_eq!(
        db.scalar::<i64>("SELECT refresh_count FROM materialized_views_refresh_log WHERE view_name = 'public.top_bets_today'"),
        3,
        "the bad invocations refreshed nothing"
    );
}

/// A registry name that is not a materialized view (a typo, a table) fails
/// every run, but its metrics said `failing 0` (only its last success, 0, gave
/// it away), so the failing alert never fired: `/metrics` from the first scrape,
/// the Pushgateway's push and `status --format prometheus` now all say
/// failing; the log tables still never hold it.
#[test]
fn a_registry_name_that_is_no_materialized_view_is_failing_in_every_metrics_path() {
    let db = TestDb::platform("metrics_typo");
    let registry = db.registry(
        "[[view]]\nname = \"top_bets_today\"\n[[view]]\nname = \"user_activty_view\"\n\
         [[view]]\nname = \"bets_view\"\n",
    );
    let failing = |metrics: &str, view: &str| {
        sample(
            metrics,
            &format!("mv_refresher_view_failing{{view=\"public.{view}\"}}"),
        )
    };

    // The sidecar: from the first scrape, before any cycle.
    let port = free_port();
    let mut run = run_serving(&db, &registry, NEVER_SOON, port);
    let metrics = run.wait_until("the metrics", || scrape(port));
    assert_eq!(
        failing(&metrics, "user_activty_view"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(failing(&metrics, "bets_view"), Some(1.0), "{metrics}");
    assert_eq!(failing(&metrics, "top_bets_today"), Some(0.0), "{metrics}");
    run.signal("TERM");
    run.wait().code(0);

    // The CronJob: its push.
    let gateway = Pushgateway::start();
    db.mvr_with(&registry)
        .args(["refresh", "--pushgateway", &gateway.url()])
        .run()
        .code(1);
    for (view, value) in [
        ("public.user_activty_view", 1.0),
        ("public.bets_view", 1.0),
        ("public.top_bets_today", 0.0),
    ] {
        assert_eq!(
            gateway.value("mv_refresher_view_failing", &[("view", view)]),
            Some(value),
            "{view}\n{}",
            gateway.metrics()
        );
    }
    promtool_accepts(&gateway.metrics());

    // And the log tables' own report.
    let out = db
        .mvr_with(&registry)
        .args(["status", "--format", "prometheus"])
        .run();
    out.code(0);
    assert_eq!(
        failing(&out.stdout, "user_activty_view"),
        Some(1.0),
        "{out}"
    );
    assert_eq!(failing(&out.stdout, "top_bets_today"), Some(0.0), "{out}");

    let recorded: i64 = db.scalar(
        "SELECT count(*) FROM materialized_views_refresh_history \
         WHERE view_name <> 'public.top_bets_today'",
    );
    assert_eq!(recorded, 0, "reported, never recorded");
}
