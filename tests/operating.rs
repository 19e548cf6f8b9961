//! Operating it: the `run` loop (schedule, overlap, a database that goes away and
//! comes back, shutdown), its HTTP endpoints over a real socket, and the
//! freshness `status` reports for alerts.

mod common;

use common::{Mvr, TestDb, private_cluster};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().unwrap()))
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
        &format!("mv_refresher_view_refreshes_total{{view=\"{view}\",status=\"{status}\"}}"),
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
        let (_, body) = get(port, "/metrics")?;
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
        "mv_refresher_view_staleness_seconds{view=\"public.top_bets_today\"}",
        "mv_refresher_view_refresh_duration_seconds_count{view=\"public.top_bets_today\"}",
        "mv_refresher_cycles_total{outcome=\"ok\"}",
        "mv_refresher_next_run_timestamp_seconds",
    ] {
        let value = sample(&metrics, name).unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        assert!(value >= 0.0 && value.is_finite(), "{name} = {value}");
    }
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
    assert_eq!(refreshes(text, "public.top_bets_today", "failed"), 0.0);
    let staleness = sample(
        text,
        "mv_refresher_view_staleness_seconds{view=\"public.top_bets_today\"}",
    )
    .unwrap();
    assert!((0.0..3600.0).contains(&staleness), "{staleness}");
    assert_eq!(
        sample(
            text,
            "mv_refresher_view_staleness_seconds{view=\"public.m_never\"}"
        ),
        Some(f64::INFINITY)
    );
    assert!(
        sample(
            text,
            "mv_refresher_view_last_success_timestamp_seconds{view=\"public.top_bets_today\"}"
        )
        .is_some()
    );
    assert!(text.contains("# TYPE mv_refresher_view_refreshes counter"));
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
