//! What a refresh costs in client–server round trips, counted on the wire by a
//! proxy that reads the protocol: every round trip is a wait for the network
//! and for the server, which a pooler or a remote Citus coordinator makes
//! expensive. A view's successful refresh takes 3; planning takes the
//! same number however many views the registry lists; views refreshed one
//! after another share their job's connection.

mod common;

use common::TestDb;
use common::counting::{CountingProxy, Session, describe};

/// The most round trips a successful refresh of one view may take.
const PER_VIEW: usize = 3;

/// Refreshes `views` once at `--jobs` through a counting proxy; returns its
/// sessions.
fn refresh_through(
    db: &TestDb,
    proxy: &CountingProxy,
    views: &[String],
    jobs: usize,
) -> Vec<Session> {
    let toml: String = views
        .iter()
        .map(|view| format!("[[view]]\nname = \"{view}\"\nwork_mem = \"auto\"\n\n"))
        .collect();
    let registry = db.registry(&toml);
    let out = db
        .mvr()
        .env("DATABASE_URL", &proxy.url(&db.name))
        .arg("--registry")
        .arg(&registry)
        .args(["refresh", "--jobs", &jobs.to_string()])
        .run();
    out.code(0)
        .stdout_has(&format!("{} refreshed, 0 skipped, 0 failed", views.len()));
    proxy.take_sessions()
}

/// The round trips of `sessions`: those of each view's refresh, from the one
/// that takes its advisory lock to the one that commits, and how many others
/// (planning, housekeeping) there were.
fn split(sessions: &[Session]) -> (Vec<Vec<Vec<String>>>, usize) {
    let (mut views, mut others) = (Vec::new(), 0);
    for session in sessions {
        let mut current: Option<Vec<Vec<String>>> = None;
        for round_trip in &session.round_trips {
            let has = |text: &str| round_trip.iter().any(|s| s.contains(text));
            let commits = round_trip
                .iter()
                .any(|s| s == "Q: COMMIT" || s.ends_with("; COMMIT"));
            if has("pg_try_advisory_xact_lock") {
                views.extend(current.take());
                current = Some(Vec::new());
            }
            match &mut current {
                Some(view) => view.push(round_trip.clone()),
                None => others += 1,
            }
            if commits {
                views.extend(current.take());
            }
        }
        views.extend(current);
    }
    (views, others)
}

/// `count` small views with a unique index each, every tenth reading the one
/// before it (so the plan has dependencies), each refreshed once already.
fn small_views(db: &TestDb, count: usize) -> Vec<String> {
    db.execute(
        "CREATE TABLE src (id int PRIMARY KEY, v int); \
         INSERT INTO src SELECT i, i * 7 FROM generate_series(1, 400) AS i;",
    );
    let views: Vec<String> = (1..=count).map(|i| format!("rt_{i:02}")).collect();
    for (i, view) in views.iter().enumerate() {
        let query = match i {
            i if i % 10 == 9 => format!("SELECT id, v + 1 AS v FROM {}", views[i - 1]),
            i => format!("SELECT id, v FROM src WHERE id % {count} = {i}"),
        };
        db.execute(&format!(
            "CREATE MATERIALIZED VIEW {view} AS {query}; CREATE UNIQUE INDEX ON {view} (id);"
        ));
    }
    db.mvr().args(["init"]).run().code(0);
    // The first refresh of each view writes its first summary row.
    let toml: String = views
        .iter()
        .map(|view| format!("[[view]]\nname = \"{view}\"\n\n"))
        .collect();
    db.mvr_with(&db.registry(&toml))
        .args(["refresh"])
        .run()
        .code(0);
    views
}

#[test]
fn a_views_refresh_takes_three_round_trips_and_planning_a_constant_number() {
    let db = TestDb::empty("round_trips");
    let views = small_views(&db, 30);
    let proxy = CountingProxy::start(db.cluster.port);
    let three = refresh_through(&db, &proxy, &views[..3], 1);
    let thirty = refresh_through(&db, &proxy, &views, 1);

    let (three_views, three_planning) = split(&three);
    let (thirty_views, thirty_planning) = split(&thirty);
    for (sessions, refreshes, n) in [(&three, &three_views, 3), (&thirty, &thirty_views, 30)] {
        assert_eq!(
            refreshes.len(),
            n,
            "each view refreshed once:\n{}",
            describe(sessions)
        );
        for refresh in refreshes.iter() {
            assert!(
                refresh.len() <= PER_VIEW,
                "a view's refresh took {} round trips, at most {PER_VIEW} expected:\n{}",
                refresh.len(),
                describe(sessions)
            );
        }
    }
    assert_eq!(
        three_planning,
        thirty_planning,
        "planning must not grow with the registry:\nthree views:\n{}\nthirty views:\n{}",
        describe(&three),
        describe(&thirty)
    );
    // Printed for the record (cargo test -- --nocapture).
    println!(
        "per view: {:?} round trips; planning and housekeeping: {three_planning} for 3 views, \
         {thirty_planning} for 30\n{}",
        thirty_views.iter().map(Vec::len).collect::<Vec<_>>(),
        describe(&three),
    );
    let successes: i64 = db
        .scalar("SELECT count(*) FROM materialized_views_refresh_history WHERE status = 'success'");
    assert_eq!(successes, 30 + 3 + 30, "every refresh recorded");
}

/// Issue 20: a connection per view cost more than a small view's refresh
/// (the connection, and a new backend's empty catalog caches). A view that
/// starts as another ends takes its connection over, the first view
/// planning's, and the history is pruned on the last: a run opens one
/// connection per job, however many views (for the first seconds of a
/// connection, which these 30 views take a fraction of).
#[test]
fn a_run_opens_one_connection_per_job_however_many_views() {
    let db = TestDb::empty("shared_connections");
    let views = small_views(&db, 30);
    let proxy = CountingProxy::start(db.cluster.port);
    for jobs in [1, 3] {
        let sessions = refresh_through(&db, &proxy, &views, jobs);
        assert!(
            sessions.len() <= jobs,
            "--jobs {jobs}: the run opened {} connections for 30 views, at most {jobs} expected:\n{}",
            sessions.len(),
            describe(&sessions)
        );
        assert_eq!(split(&sessions).0.len(), 30, "{}", describe(&sessions));
    }
}

/// Issue 20: parsing and planning the statements a refresh runs for every
/// view (its state under the lock, its success row) cost a small view as much
/// as a third of its `REFRESH`. They are prepared once per connection and
/// executed by name; each of a view's round trips is one message, one answer.
/// (On Citus each `SET` stays a message of its own: the unit test
/// `the_first_round_trip_is_one_message_except_each_set_on_citus`.)
#[test]
fn a_views_statements_are_prepared_once_per_connection_and_each_round_trip_is_one_message() {
    let db = TestDb::empty("prepared_once");
    let views = small_views(&db, 30);
    let proxy = CountingProxy::start(db.cluster.port);
    let sessions = refresh_through(&db, &proxy, &views, 1);
    assert_eq!(sessions.len(), 1, "{}", describe(&sessions));
    let (refreshes, _) = split(&sessions);
    assert_eq!(refreshes.len(), 30, "{}", describe(&sessions));
    for refresh in &refreshes {
        let messages: Vec<usize> = refresh.iter().map(Vec::len).collect();
        assert_eq!(messages, [1, 1, 1], "{}", describe(&sessions));
    }
    let count = |text: &str| {
        sessions[0]
            .round_trips
            .iter()
            .flatten()
            .map(|message| message.matches(text).count())
            .sum::<usize>()
    };
    for statement in ["mv_refresher_state_", "mv_refresher_success_"] {
        assert_eq!(
            (
                count(&format!("PREPARE {statement}")),
                count(&format!("EXECUTE {statement}"))
            ),
            (1, 30),
            "{statement}: prepared once, executed for every view\n{}",
            describe(&sessions)
        );
    }
}

/// A Citus coordinator forwards the whole text of a message holding a
/// propagated `SET` to every worker connection of the transaction: sent with
/// `BEGIN` in one string, the workers warned "there is already a transaction
/// in progress" dozens of times a run. So every `SET` the refresher sends is
/// a message of its own, whatever the view and the method, except, on a server
/// without Citus, in the first message of a materialized view's refresh
/// (`BEGIN`, its settings, its lock and its state in one: the unit test
/// `the_first_round_trip_is_one_message_except_each_set_on_citus` shows the
/// settings sent alone on Citus).
#[test]
fn every_set_is_a_message_of_its_own() {
    let db = TestDb::platform("set_messages");
    let registry = db.registry(
        "[defaults]\nwork_mem = \"12MB\"\n\n\
         [[view]]\nname = \"tenants_summary_view\"\n\n\
         [[view]]\nname = \"top_bets_today\"\nconcurrently = \"never\"\n",
    );
    // A first run populates and creates; the counted ones are the usual.
    db.mvr_with(&registry).arg("refresh").run().code(0);
    db.mvr().arg("refresh").run().code(0);
    let proxy = CountingProxy::start(db.cluster.port);
    for registry in [Some(&registry), None] {
        let mut mvr = db.mvr().env("DATABASE_URL", &proxy.url(&db.name));
        if let Some(registry) = registry {
            mvr = mvr.arg("--registry").arg(registry);
        }
        mvr.arg("refresh").run().code(0);
    }
    let sessions = proxy.take_sessions();
    let sets: Vec<&String> = sessions
        .iter()
        .flat_map(|s| s.round_trips.iter().flatten())
        .filter(|m| {
            // A message holding a SET: one of its statements is one.
            m[3..].split("; ").any(|statement| {
                let statement = statement.trim_start().to_uppercase();
                statement.starts_with("SET ") || statement.contains("SET_CONFIG")
            }) && !m.contains("EXECUTE mv_refresher_state_")
        })
        .collect();
    assert!(
        sessions
            .iter()
            .flat_map(|s| s.round_trips.iter().flatten())
            .any(
                |m| m.contains("SET LOCAL work_mem = '12MB'") || m.contains("work_mem = '12288kB'")
            ),
        "the registry's work_mem is set:\n{}",
        describe(&sessions)
    );
    assert!(
        sets.iter()
            .any(|m| m.contains("lock_timeout = '2s'") || m.contains("lock_timeout = '2000ms'")),
        "a plain refresh's lock wait is set, in a message of its own: {sets:#?}"
    );
    let joined: Vec<&&String> = sets.iter().filter(|m| m.contains(';')).collect();
    assert!(
        joined.is_empty(),
        "SETs sent with other statements in one message: {joined:#?}\n{}",
        describe(&sessions)
    );
}
