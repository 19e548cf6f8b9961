//! What a refresh costs in client–server round trips, counted on the wire by a
//! proxy that reads the protocol: every round trip is a wait for the network
//! and for the server, which a pooler or a remote Citus coordinator makes
//! expensive. A view's successful refresh takes at most 6; planning takes the
//! same number however many views the registry lists.

mod common;

use common::TestDb;
use common::counting::{CountingProxy, Session};

/// The most round trips a successful refresh of one view may take.
const PER_VIEW: usize = 6;

/// Refreshes `views` once through a counting proxy; returns the sessions that
/// refreshed a view and the others (planning, housekeeping).
fn refresh_through(
    db: &TestDb,
    proxy: &CountingProxy,
    views: &[&str],
) -> (Vec<Session>, Vec<Session>) {
    let toml: String = views
        .iter()
        .map(|view| format!("[[view]]\nname = \"{view}\"\n\n"))
        .collect();
    let registry = db.registry(&toml);
    let out = db
        .mvr()
        .env("DATABASE_URL", &proxy.url(&db.name))
        .arg("--registry")
        .arg(&registry)
        .args(["refresh", "--jobs", "1"])
        .run();
    out.code(0)
        .stdout_has(&format!("{} refreshed, 0 skipped, 0 failed", views.len()));
    proxy
        .take_sessions()
        .into_iter()
        .partition(|session| session.ran("REFRESH MATERIALIZED VIEW"))
}

fn describe(sessions: &[Session]) -> String {
    sessions
        .iter()
        .enumerate()
        .map(|(i, s)| format!("session {}:\n{}", i + 1, s.describe()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_views_refresh_takes_at_most_six_round_trips_and_planning_a_constant_number() {
    let db = TestDb::empty("round_trips");
    db.execute(
        "CREATE TABLE src (id int PRIMARY KEY, v int); \
                INSERT INTO src SELECT i, i * 7 FROM generate_series(1, 400) AS i;",
    );
    let views = ["rt_a", "rt_b", "rt_c", "rt_d"];
    for (i, view) in views.iter().enumerate() {
        db.execute(&format!(
            "CREATE MATERIALIZED VIEW {view} AS SELECT id, v FROM src WHERE id % 4 = {i}; \
             CREATE UNIQUE INDEX ON {view} (id);"
        ));
    }
    db.mvr().args(["init"]).run().code(0);
    // The first refresh of each view writes its first summary row.
    let registry = db.registry("[[view]]\nname = \"rt_a\"\n");
    db.mvr_with(&registry).args(["refresh"]).run().code(0);

    let proxy = CountingProxy::start(db.cluster.port);
    let (one_view, one_planning) = refresh_through(&db, &proxy, &views[..1]);
    let (four_views, four_planning) = refresh_through(&db, &proxy, &views);

    assert_eq!(
        one_view.len(),
        1,
        "one session per view:\n{}",
        describe(&one_view)
    );
    assert_eq!(
        four_views.len(),
        4,
        "one session per view:\n{}",
        describe(&four_views)
    );
    for session in one_view.iter().chain(&four_views) {
        assert!(
            session.round_trips.len() <= PER_VIEW,
            "a view's refresh took {} round trips, at most {PER_VIEW} expected:\n{}",
            session.round_trips.len(),
            session.describe()
        );
    }
    let count = |sessions: &[Session]| sessions.iter().map(|s| s.round_trips.len()).sum::<usize>();
    assert_eq!(
        count(&one_planning),
        count(&four_planning),
        "planning must not grow with the registry:\none view:\n{}\nfour views:\n{}",
        describe(&one_planning),
        describe(&four_planning)
    );
    // Printed for the record (cargo test -- --nocapture).
    println!(
        "per view: {:?} round trips; planning: {} for 1 view, {} for 4\n{}\n{}",
        four_views
            .iter()
            .map(|s| s.round_trips.len())
            .collect::<Vec<_>>(),
        count(&one_planning),
        count(&four_planning),
        describe(&four_views[..1]),
        describe(&four_planning)
    );
    let successes: i64 = db
        .scalar("SELECT count(*) FROM materialized_views_refresh_history WHERE status = 'success'");
    assert_eq!(successes, 1 + 1 + 4, "every refresh recorded");
}

/// A Citus coordinator forwards the whole text of a message holding a
/// propagated `SET` to every worker connection of the transaction: sent with
/// `BEGIN` in one string, the workers warned "there is already a transaction
/// in progress" dozens of times a run. So every `SET` the refresher sends is
/// a message of its own, whatever the view and the method.
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
            let m = m.to_uppercase();
            m.contains("SET ") || m.contains("SET_CONFIG")
        })
        .collect();
    assert!(
        sets.iter().any(|m| m.contains("work_mem")),
        "the registry's work_mem is set: {sets:#?}"
    );
    let joined: Vec<&&String> = sets.iter().filter(|m| m.contains(';')).collect();
    assert!(
        joined.is_empty(),
        "SETs sent with other statements in one message: {joined:#?}\n{}",
        describe(&sessions)
    );
}
