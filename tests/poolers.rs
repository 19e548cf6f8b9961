//! The refresher as it is really deployed: behind PgBouncer in transaction and
//! session pooling (prepared statements, advisory locks, cancel requests and
//! pools that make clients wait), and behind a network that goes silent
//! mid-refresh (the run must still end by itself; the kernel must probe a
//! silent server within a minute).

mod common;

use std::time::{Duration, Instant};

use common::counting::{CountingProxy, describe};
use common::middlebox::{PgBouncer, StallingProxy};
use common::{Running, TestDb};

const VIEWS: [&str; 5] = [
    "public.tenants_summary_view",
    "public.user_activity_view",
    "public.top_bets_today",
    "public.user_activity",
    "public.bets_latest",
];

/// `(view_name, status, error)` of the history rows after `after_id`.
fn history_since(db: &TestDb, after_id: i64) -> Vec<(String, String, Option<String>)> {
    db.rows(&format!(
        "SELECT view_name, status, error FROM materialized_views_refresh_history \
         WHERE id > {after_id} ORDER BY id"
    ))
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap(), r[2].clone()))
    .collect()
}

/// The highest history id so far (0 before the log tables exist).
fn last_id(db: &TestDb) -> i64 {
    let exists: bool =
        db.scalar("SELECT to_regclass('materialized_views_refresh_history') IS NOT NULL");
    if !exists {
        return 0;
    }
    db.scalar("SELECT coalesce(max(id), 0)::bigint FROM materialized_views_refresh_history")
}

/// `status` of the history rows of `view`, in order.
fn statuses(db: &TestDb, view: &str) -> Vec<String> {
    db.history(view)
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect()
}

/// Waits until a backend runs a REFRESH of `view` for `run`, and returns its
/// pid; fails at once, with the output, when `run` ends first.
fn refresh_backend(run: &mut Running, db: &TestDb, view: &str) -> i32 {
    run.wait_until(&format!("a REFRESH of {view} running"), || {
        db.refresh_pid(view)
    })
}

/// Everything a deployment does, through a PgBouncer in `mode`: check,
/// refresh one at a time and three at a time, three refreshers at once,
/// status, and the run loop.
fn the_whole_tool_works_through(mode: &str) {
    let db = TestDb::platform(&format!("bouncer_{mode}"));
    let bouncer = PgBouncer::start(db.cluster, mode, 20);
    let url = bouncer.url(&db.name);
    let mvr = || db.mvr().env("DATABASE_URL", &url);

    mvr().arg("check").run().code(0);

    let out = mvr().arg("refresh").run();
    out.code(0).stdout_has("5 refreshed, 0 skipped, 0 failed");
    let rows = history_since(&db, 0);
    let mut refreshed: Vec<_> = rows
        .iter()
        .map(|(view, status, error)| {
            assert_eq!(status, "success", "{view}: {error:?}\n{out}");
            view.as_str()
        })
        .collect();
    refreshed.sort();
    let mut expected = VIEWS.to_vec();
    expected.sort();
    assert_eq!(refreshed, expected, "{out}");

    let before = last_id(&db);
    let out = mvr().args(["refresh", "--jobs", "3"]).run();
    out.code(0).stdout_has("5 refreshed, 0 skipped, 0 failed");
    let rows = history_since(&db, before);
    assert_eq!(rows.len(), 5, "{rows:?}\n{out}");
    assert!(rows.iter().all(|r| r.1 == "success"), "{rows:?}\n{out}");

    // Three refreshers at once: each view refreshed or skipped, never failed.
    let before = last_id(&db);
    let runs: Vec<Running> = (0..3)
        .map(|_| mvr().args(["refresh", "--jobs", "3"]).spawn())
        .collect();
    let outs: Vec<_> = runs.into_iter().map(Running::wait).collect();
    for out in &outs {
        out.code(0).stdout_has("0 failed");
    }
    let rows = history_since(&db, before);
    assert_eq!(rows.len(), 15, "{rows:?}");
    for (view, status, error) in &rows {
        assert!(
            status == "success" || status == "skipped",
            "{view}: {status} {error:?}"
        );
    }

    mvr()
        .arg("status")
        .run()
        .code(0)
        .stdout_has("public.top_bets_today");

    // The loop: at least one cycle refreshes, SIGTERM ends it with 0.
    let before = last_id(&db);
    let mut run = mvr().args(["run", "--schedule", "*/1 * * * * *"]).spawn();
    run.wait_until("a cycle of the run loop through PgBouncer", || {
        let rows = history_since(&db, before);
        rows.iter()
            .any(|r| r.1 == "success")
            .then_some(())
            .or_else(|| {
                let failed = rows.iter().find(|r| r.1 == "failed");
                assert!(failed.is_none(), "the loop failed a view: {failed:?}");
                None
            })
    });
    run.signal("TERM");
    run.wait().code(0);
    bouncer.assert_running("at the end");
}

#[test]
fn the_whole_tool_works_through_pgbouncer_in_transaction_pooling() {
    the_whole_tool_works_through("transaction");
}

#[test]
fn the_whole_tool_works_through_pgbouncer_in_session_pooling() {
    the_whole_tool_works_through("session");
}

#[test]
fn the_advisory_lock_holds_through_transaction_pooling_and_is_not_leaked() {
    let db = TestDb::platform("bouncer_lock");
    db.slow_view("m_slow", 3.0);
    let bouncer = PgBouncer::start(db.cluster, "transaction", 5);
    let url = bouncer.url(&db.name);
    let mvr = || db.mvr().env("DATABASE_URL", &url);

    let mut first = mvr().args(["refresh", "m_slow"]).spawn();
    refresh_backend(&mut first, &db, "m_slow");
    mvr()
        .args(["refresh", "m_slow"])
        .run()
        .code(0)
        .stdout_has("skipped")
        .stdout_has("another refresher is refreshing this view");
    first.wait().code(0).stdout_has("1 refreshed");

    // The lock went with the transaction: nothing is left on a pooled server
    // connection to make the next refresher skip.
    mvr()
        .args(["refresh", "m_slow"])
        .run()
        .code(0)
        .stdout_has("1 refreshed");
    assert_eq!(
        statuses(&db, "m_slow"),
        ["skipped", "success", "success"],
        "{}",
        bouncer.log()
    );
}

/// The statements a refresh runs for every view are prepared on the server
/// backend (issue 20), which a transaction pooler may change between two
/// transactions: a connection's guess that the backend has them, or has not,
/// is checked by the server and corrected. Through one pooled server
/// connection: a second refresher finds them prepared by the first (`PREPARE`
/// refused, `EXECUTE` instead), and a third has them taken away between its
/// transactions (`DEALLOCATE ALL` from another client: `EXECUTE` refused,
/// prepared again). Every view is refreshed and recorded all the same.
#[test]
fn statements_prepared_on_a_pooled_backend_are_found_there_or_prepared_again() {
    let db = TestDb::empty("bouncer_prepared");
    db.execute(
        "CREATE TABLE src (id int PRIMARY KEY, v int); \
         INSERT INTO src SELECT i, i FROM generate_series(1, 200) AS i;",
    );
    let views: Vec<String> = (1..=20).map(|i| format!("p_{i:02}")).collect();
    for (i, view) in views.iter().enumerate() {
        db.execute(&format!(
            "CREATE MATERIALIZED VIEW {view} AS SELECT id, v FROM src WHERE id % 20 = {i}; \
             CREATE UNIQUE INDEX ON {view} (id);"
        ));
    }
    let toml: String = views
        .iter()
        .map(|view| format!("[[view]]\nname = \"{view}\"\n\n"))
        .collect();
    let registry = db.registry(&toml);
    let bouncer = PgBouncer::start(db.cluster, "transaction", 1);
    let proxy = CountingProxy::start(bouncer.port);
    let refresh = || {
        db.mvr_with(&registry)
            .env("DATABASE_URL", &proxy.url(&db.name))
            .arg("refresh")
            .run()
            .code(0)
            .stdout_has("20 refreshed, 0 skipped, 0 failed");
        proxy.take_sessions()
    };
    // The statements sent again after a wrong guess: the first round trip
    // after its ROLLBACK, the success row after its ROLLBACK TO SAVEPOINT.
    let again = |sessions: &[common::counting::Session], prepared: bool| {
        let prepare = |m: &str| m.contains("PREPARE mv_refresher_");
        sessions
            .iter()
            .flat_map(|s| s.round_trips.iter().flatten())
            .filter(|m| {
                (m.starts_with("Q: ROLLBACK; BEGIN")
                    || m.starts_with("Q: ROLLBACK TO SAVEPOINT mv_refresher_log; "))
                    && prepare(m) == prepared
            })
            .count()
    };

    let first = refresh();
    assert_eq!((again(&first, true), again(&first, false)), (0, 0));
    let second = refresh();
    assert_eq!(
        again(&second, false),
        2,
        "the state's and the success row's statements found prepared:\n{}",
        describe(&second)
    );

    // Another client takes them away whenever it gets the server connection:
    // PgBouncer gives it the connection between two of the refresher's
    // transactions.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deallocating = {
        let (stop, url) = (stop.clone(), bouncer.url(&db.name));
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut times = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.batch_execute("DEALLOCATE ALL").unwrap();
                times += 1;
            }
            times
        })
    };
    let third = refresh();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(deallocating.join().unwrap() > 0);
    assert!(
        again(&third, true) > 0,
        "prepared again after DEALLOCATE ALL:\n{}",
        describe(&third)
    );
    let recorded: i64 = db
        .scalar("SELECT count(*) FROM materialized_views_refresh_history WHERE status = 'success'");
    assert_eq!(recorded, 60, "every refresh recorded");
    bouncer.assert_running("at the end");
}

/// SIGTERM during a REFRESH through a PgBouncer in `mode`, ten times (a cancel
/// connection closed before PgBouncer is done with it crashes 1.18, a race
/// lost about one time in five): the cancel must reach the server, which ends
/// the REFRESH at once rather than after its 30 s, and PgBouncer must live on.
fn sigterm_cancels_on_the_server_through(mode: &str) {
    let db = TestDb::platform(&format!("bouncer_cancel_{mode}"));
    db.slow_view("m_slow", 30.0);
    let bouncer = PgBouncer::start(db.cluster, mode, 5);
    let url = bouncer.url(&db.name);

    for round in 1..=10 {
        let mut run = db
            .mvr()
            .env("DATABASE_URL", &url)
            .args(["refresh", "m_slow"])
            .spawn();
        refresh_backend(&mut run, &db, "m_slow");
        run.signal("TERM");
        let out = run.wait();
        bouncer.assert_running(&format!("after the cancel of round {round}\n{out}"));
        out.code(143).stdout_has("cancelled");

        // Bounded by the view's own 30 s (plus margin): a lost cancel shows as
        // the REFRESH running on to its end; a delivered one ends it at once.
        let exited = Instant::now();
        while db.running_refreshes() > 0 && exited.elapsed() < Duration::from_secs(40) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let lingered = exited.elapsed();
        assert_eq!(
            db.running_refreshes(),
            0,
            "round {round}: the REFRESH still runs\n{out}"
        );
        assert!(
            lingered < Duration::from_secs(10),
            "round {round}: the REFRESH ran on for {lingered:?} after the process exited: \
             the cancel request was lost in PgBouncer ({mode})\n{out}\n{}",
            bouncer.log()
        );
        assert_eq!(
            statuses(&db, "m_slow").last().map(String::as_str),
            Some("cancelled"),
            "round {round}\n{out}"
        );
    }
}

#[test]
fn sigterm_cancels_on_the_server_through_pgbouncer_in_transaction_pooling() {
    sigterm_cancels_on_the_server_through("transaction");
}

#[test]
fn sigterm_cancels_on_the_server_through_pgbouncer_in_session_pooling() {
    sigterm_cancels_on_the_server_through("session");
}

#[test]
fn refreshers_sharing_a_small_session_pool_wait_their_turn_and_never_starve() {
    let db = TestDb::platform("bouncer_small_pool");
    for view in ["m_slow_a", "m_slow_b", "m_slow_c"] {
        db.slow_view(view, 1.0);
    }
    let registry = db.registry(
        "[[view]]\nname = \"tenants_summary_view\"\n[[view]]\nname = \"user_activity_view\"\n\
         [[view]]\nname = \"top_bets_today\"\n[[view]]\nname = \"m_slow_a\"\n\
         [[view]]\nname = \"m_slow_b\"\n[[view]]\nname = \"m_slow_c\"\n",
    );
    // Three server connections for three refreshers of three jobs each: a
    // client that waits 15 s for one gets an error instead.
    let bouncer = PgBouncer::start_with(db.cluster, "session", 3, &[("query_wait_timeout", "15")]);
    let url = bouncer.url(&db.name);

    let runs: Vec<Running> = (0..3)
        .map(|_| {
            db.mvr()
                .env("DATABASE_URL", &url)
                .args(["refresh", "--jobs", "3", "--registry"])
                .arg(&registry)
                .spawn()
        })
        .collect();
    let outs: Vec<_> = runs.into_iter().map(Running::wait).collect();
    bouncer.assert_running("after the three refreshers");
    for out in &outs {
        out.code(0).stdout_has("0 failed");
    }
    let rows = history_since(&db, 0);
    for (view, status, error) in &rows {
        assert!(
            status == "success" || status == "skipped",
            "{view}: {status} {error:?}"
        );
    }
    for view in ["m_slow_a", "m_slow_b", "m_slow_c"] {
        assert!(
            statuses(&db, view).iter().any(|s| s == "success"),
            "{view} refreshed by someone: {rows:?}"
        );
    }
}

#[test]
fn a_network_gone_silent_mid_refresh_does_not_outlast_the_deadline() {
    let db = TestDb::platform("silent_network");
    db.slow_view("m_slow", 10.0);
    // Four views after it, never started: recording them must not cost a
    // connect timeout each.
    let registry = db.registry(
        "[[view]]\nname = \"m_slow\"\n[[view]]\nname = \"tenants_summary_view\"\n\
         [[view]]\nname = \"user_activity_view\"\n[[view]]\nname = \"top_bets_today\"\n\
         [[view]]\nname = \"m_other\"\n",
    );
    db.execute(
        "CREATE MATERIALIZED VIEW m_other AS SELECT 1 AS id; CREATE UNIQUE INDEX ON m_other (id);",
    );
    let proxy = StallingProxy::start(db.cluster.port);

    let started = Instant::now();
    let mut run = db
        .mvr()
        .env("DATABASE_URL", &proxy.url(&db.name))
        .args(["refresh", "--deadline", "5s", "--registry"])
        .arg(&registry)
        .spawn();
    refresh_backend(&mut run, &db, "m_slow");
    proxy.stall();
    let stalled_at = proxy.connections();

    // The run's own guard kills it after 180 s; a hang would be hours. The
    // bound: the deadline (5 s), a cancel that never gets through (given up
    // after 10 s), one connect timeout (10 s) to record the abandoned view and
    // one for the views never started: about 35 s.
    let out = run.wait();
    let took = started.elapsed();
    out.code(1);
    assert!(
        took < Duration::from_secs(60),
        "the run took {took:?} with a 5 s deadline\n{out}\n{proxy:?}"
    );
    // Two cancel requests, one connection for the abandoned view's record, one
    // for all the views never started.
    let tries = proxy.connections() - stalled_at;
    assert!(
        tries <= 5,
        "{tries} connections after the network went silent\n{out}"
    );
    // Its log writes are lost with the network: no success is recorded.
    let rows = statuses(&db, "m_slow");
    assert!(
        rows.iter().all(|s| s == "failed" || s == "cancelled"),
        "{rows:?}\n{out}"
    );
    // Nobody terminates the abandoned backend: its REFRESH ends, and the
    // transaction left idle is ended by the server
    // (idle_in_transaction_session_timeout), releasing the view's locks.
    common::wait_until("the abandoned transaction to end on the server", || {
        let locks: i64 = db.scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'm_slow' AND l.pid <> pg_backend_pid()",
        );
        (locks == 0 && db.running_refreshes() == 0).then_some(())
    });
}

/// The keepalive timer (`ss -o`) of `pid`'s TCP connections to `port`, in
/// seconds: how long until the kernel probes a silent peer.
fn keepalive_timers(pid: u32, port: u16) -> Vec<f64> {
    let out = std::process::Command::new("ss")
        .args(["-tnopH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("ss runs (apt-get install iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .filter_map(|line| {
            // timer:(keepalive,29sec,0), timer:(keepalive,1min59sec,0), ...(ms)
            let rest = line.split("timer:(keepalive,").nth(1)?;
            let mut text = rest.split(',').next()?;
            let mut seconds = 0.0;
            for (unit, factor) in [("min", 60.0), ("sec", 1.0), ("ms", 0.001)] {
                if let Some((number, after)) = text.split_once(unit) {
                    seconds += number.parse::<f64>().ok()? * factor;
                    text = after;
                }
            }
            Some(seconds)
        })
        .collect()
}

#[test]
fn the_refreshers_connections_probe_a_silent_server_within_a_minute() {
    let db = TestDb::platform("keepalives");
    db.slow_view("m_slow", 2.0);
    // The default, then libpq's parameter in the URL. Without keepalives set,
    // the kernel's default first probe comes after two hours.
    for (params, first_probe) in [("", 30.0), ("?keepalives_idle=7", 7.0)] {
        let mut run = db
            .mvr()
            .env("DATABASE_URL", &format!("{}{params}", db.url()))
            .args(["refresh", "m_slow"])
            .spawn();
        refresh_backend(&mut run, &db, "m_slow");
        // While data is in flight the socket shows its retransmission timer.
        let pid = run.pid();
        let timers = run.wait_until("the connection's keepalive timer", || {
            Some(keepalive_timers(pid, db.cluster.port)).filter(|t| !t.is_empty())
        });
        let out = run.wait();
        out.code(0);
        assert!(
            timers.iter().all(|&t| t <= first_probe),
            "keepalive timers {timers:?} with {params:?}: the first probe must come within {first_probe} s\n{out}"
        );
    }
}
