//! The test harness: a throwaway PostgreSQL cluster per test binary (started by
//! `scripts/pg-throwaway`, the same script the demo uses), one database per test
//! copied from a template holding the reference platform, and a runner for the
//! real `mv-refresher` binary that prints everything when an expectation fails.
//!
//! The cluster is stopped and removed by a watchdog process when the test binary
//! exits, however it exits.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod counting;
pub mod middlebox;
pub mod pushgateway;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long any run of the binary may take before the test gives up on it: a
/// guard against hangs, not a timing assertion.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// A role that must give its password (a member of `password_login`, see
/// `scripts/pg-throwaway`).
pub const PASSWORD_ROLE: &str = "pw_refresher";
/// Its password: tests check it never appears in any output.
pub const PASSWORD: &str = "S3cret-Pa55-word";

const TEMPLATE: &str = "mvr_platform_template";

/// A database built from the seeds' documents as they are written, not from
/// the reference platform: the embedded default registry meets it as a user's
/// database (`tests/fixtures/seeds_*.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeds {
    /// Seed 000's words: `bets_view.amount`, `user_balances_view.balance_amount`.
    S000,
    /// Seed 001's words: `bets_view.stake`, `user_balances_view.balance`.
    S001,
}

impl Seeds {
    pub const BOTH: [Self; 2] = [Self::S000, Self::S001];

    fn fixture(self) -> &'static str {
        match self {
            Self::S000 => "seeds_000",
            Self::S001 => "seeds_001",
        }
    }

    fn template(self) -> String {
        format!("mvr_{}_template", self.fixture())
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// The seeds' templates, made on first use (most clusters never need them).
    seeds: OnceLock<()>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
/// `CREATE DATABASE ... TEMPLATE` fails while another copy is being made.
static CREATE_DB: Mutex<()> = Mutex::new(());
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo().join("scripts/pg-throwaway")
}

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| Cluster::start("shared"))
}

/// A cluster for one test alone, for tests that stop the server. Removed when
/// the test binary exits.
pub fn private_cluster(test: &str) -> &'static Cluster {
    Box::leak(Box::new(Cluster::start(test)))
}

/// Runs the shell `script` in the background, in a process group of its own
/// (a Ctrl-C to `cargo test` does not end it first), never waited for: it
/// cleans up after this process, however this process ends.
pub fn spawn_watchdog(script: &str) {
    use std::os::unix::process::CommandExt;
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("the watchdog starts");
}

/// Whether the tests run as root (servers then run as the postgres OS user).
/// Kills `child` (with SIGKILL) once this test process is gone, even after a
/// panic or a kill, unless `dir` was removed first: removing it in `Drop` is the
/// sign that the child was stopped properly and the watchdog may leave.
pub fn kill_when_tests_end(child: u32, dir: &Path) {
    spawn_watchdog(&format!(
        "while kill -0 {pid} 2>/dev/null && [ -d '{dir}' ]; do sleep 0.5; done; \
         if [ -d '{dir}' ]; then kill -9 {child} 2>/dev/null; rm -rf '{dir}'; fi",
        pid = std::process::id(),
        dir = dir.display()
    ));
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().unwrap().stdout == b"0\n"
}

/// The rows of a simple-protocol result, every column as the server's text.
pub fn text_rows(messages: Vec<postgres::SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A local port nothing listens on (until someone binds it): a connection
/// to it is refused at once.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

impl Cluster {
    fn start(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("mv-refresher-test-{}-{tag}", std::process::id()));
        let _ = Command::new(script()).arg("stop").arg(&dir).status();
        let port = free_port();
        let status = Command::new(script())
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .status()
            .expect("scripts/pg-throwaway runs");
        assert!(status.success(), "scripts/pg-throwaway start failed");

        // Stops the cluster when this process is gone, even after a panic or a kill.
        spawn_watchdog(&format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; exec '{script}' stop '{dir}'",
            pid = std::process::id(),
            script = script().display(),
            dir = dir.display()
        ));

        let cluster = Self {
            dir,
            port,
            seeds: OnceLock::new(),
        };
        cluster.load_template();
        cluster
    }

    /// A `postgres://` URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn connect(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {database}: {e}"))
    }

    /// Writes `contents` to `name` in the data directory, readable by the
    /// server only (as a TLS key must be).
    pub fn install_file(&self, name: &str, contents: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join("data").join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Stops the server, keeping its data (`resume` starts it again).
    pub fn halt(&self) {
        let status = Command::new(script())
            .arg("halt")
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "pg-throwaway halt failed");
    }

    pub fn resume(&self) {
        let status = Command::new(script())
            .arg("resume")
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "pg-throwaway resume failed");
    }

    /// Makes the templates of the seeds' databases, once.
    fn load_seeds(&self) {
        self.seeds.get_or_init(|| {
            let mut admin = self.connect("postgres");
            for seeds in Seeds::BOTH {
                admin
                    .batch_execute(&format!("CREATE DATABASE {}", seeds.template()))
                    .unwrap();
                let path = repo().join(format!("tests/fixtures/{}.sql", seeds.fixture()));
                self.connect(&seeds.template())
                    .batch_execute(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{} loads: {e}", path.display()));
            }
        });
    }

    fn load_template(&self) {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
            .unwrap();
        admin
            .batch_execute(&format!(
                "CREATE ROLE password_login NOLOGIN; \
                 CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}' IN ROLE password_login"
            ))
            .unwrap();
        let mut db = self.connect(TEMPLATE);
        let sql = |file: &str| std::fs::read_to_string(repo().join("sql").join(file)).unwrap();
        db.batch_execute(&sql("platform.sql"))
            .expect("sql/platform.sql loads");
        db.batch_execute("SET demo.bets = '3000'; SET demo.users = '400'; SET demo.tenants = '3';")
            .unwrap();
        // The parts of sql/sample_data.sql, one after the other.
        for part in [
            "1_prepare",
            "2_bets",
            "2_views",
            "2_balances",
            "3_balances",
            "3_keys_bets",
            "3_keys_others",
            "4_finish",
        ] {
            db.batch_execute(&sql(&format!("sample_data/{part}.sql")))
                .unwrap_or_else(|e| panic!("sql/sample_data/{part}.sql loads: {e}"));
        }
    }
}

/// A database of its own for one test, dropped at the end of the test.
pub struct TestDb {
    pub name: String,
    pub cluster: &'static Cluster,
}

impl TestDb {
    /// A copy of the reference platform with sample data.
    pub fn platform(test: &str) -> Self {
        Self::create(cluster(), test, &format!("TEMPLATE {TEMPLATE}"))
    }

    /// The same, on `cluster`.
    pub fn platform_on(cluster: &'static Cluster, test: &str) -> Self {
        Self::create(cluster, test, &format!("TEMPLATE {TEMPLATE}"))
    }

    /// A database built from the seeds' documents in the dialect of `seeds`.
    pub fn seeds(seeds: Seeds, test: &str) -> Self {
        let test = format!("{test}_{}", seeds.fixture());
        let cluster = cluster();
        {
            // No copy is made while the templates are being loaded.
            let _guard = CREATE_DB.lock().unwrap_or_else(|e| e.into_inner());
            cluster.load_seeds();
        }
        Self::create(cluster, &test, &format!("TEMPLATE {}", seeds.template()))
    }

    /// An empty database.
    pub fn empty(test: &str) -> Self {
        Self::create(cluster(), test, "")
    }

    fn create(cluster: &'static Cluster, test: &str, options: &str) -> Self {
        let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
        let name: String = format!("t{n}_{test}").chars().take(60).collect();
        let _guard = CREATE_DB.lock().unwrap_or_else(|e| e.into_inner());
        cluster
            .connect("postgres")
            .batch_execute(&format!("CREATE DATABASE \"{name}\" {options}"))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        Self { name, cluster }
    }

    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    pub fn client(&self) -> postgres::Client {
        self.cluster.connect(&self.name)
    }

    /// A materialized view whose refresh takes `seconds` (its query sleeps),
    /// unpopulated, with a unique index.
    pub fn slow_view(&self, name: &str, seconds: f64) {
        self.execute(&format!(
            "CREATE MATERIALIZED VIEW {name} AS \
                 SELECT 1 AS id, pg_sleep({seconds})::text AS slept WITH NO DATA; \
             CREATE UNIQUE INDEX ON {name} (id);"
        ));
    }

    /// An unpopulated materialized view whose every refresh fails with a
    /// division by zero (SQLSTATE 22012).
    pub fn failing_view(&self, name: &str) {
        self.execute(&format!(
            "CREATE MATERIALIZED VIEW {name} AS \
                 SELECT 1 / (SELECT count(*) FROM tenants WHERE id < 0) AS x WITH NO DATA;"
        ));
    }

    /// Waits until a backend runs a REFRESH of `view`, and returns its pid.
    pub fn wait_for_refresh(&self, view: &str) -> i32 {
        wait_until(&format!("a REFRESH of {view} running"), || {
            self.refresh_pid(view)
        })
    }

    /// The pid of a backend running a REFRESH of `view`, if one does.
    pub fn refresh_pid(&self, view: &str) -> Option<i32> {
        let sql = format!(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' \
             AND datname = current_database() AND query ILIKE 'REFRESH MATERIALIZED VIEW%\"{view}\"%' LIMIT 1"
        );
        self.client()
            .query_opt(&sql, &[])
            .unwrap()
            .map(|row| row.get(0))
    }

    /// `(status, method, attempt, sqlstate, note, error)` of every attempt at
    /// `public.{view}`, in order.
    pub fn history(&self, view: &str) -> Vec<Vec<Option<String>>> {
        self.rows(&format!(
            "SELECT status, method, attempt::text, sqlstate, note, error \
             FROM materialized_views_refresh_history WHERE view_name = 'public.{view}' ORDER BY id"
        ))
    }

    /// How many backends are running a REFRESH right now.
    pub fn running_refreshes(&self) -> i64 {
        self.scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND datname = current_database() \
               AND query ILIKE 'REFRESH MATERIALIZED VIEW%'",
        )
    }

    /// Runs `sql` (several statements allowed).
    pub fn execute(&self, sql: &str) {
        self.client()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The first column of the first row of `sql`.
    pub fn scalar<T: for<'a> postgres::types::FromSql<'a>>(&self, sql: &str) -> T {
        self.client()
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0)
    }

    /// The rows of `sql`, every column rendered as text by the server.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        text_rows(
            self.client()
                .simple_query(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e:?}")),
        )
    }

    /// A registry file in a temporary directory, removed with the database.
    pub fn registry(&self, toml: &str) -> PathBuf {
        let path = self.cluster.dir.join(format!("{}.toml", self.name));
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// The binary, pointed at this database.
    pub fn mvr(&self) -> Mvr {
        Mvr::new().env("DATABASE_URL", &self.url())
    }

    /// The binary, pointed at this database and at `registry`.
    pub fn mvr_with(&self, registry: &Path) -> Mvr {
        self.mvr().arg("--registry").arg(registry)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A test that failed between PREPARE TRANSACTION and COMMIT PREPARED
        // leaves a prepared transaction behind: it would keep the database
        // from being dropped, and the cluster's xmin where it was.
        if let Ok(mut client) = postgres::Client::connect(&self.url(), postgres::NoTls) {
            let gids: Vec<String> = client
                .query(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
                    &[],
                )
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .unwrap_or_default();
            for gid in gids {
                let _ = client
                    .batch_execute(&format!("ROLLBACK PREPARED '{}'", gid.replace('\'', "''")));
            }
        }
        if let Ok(mut admin) =
            postgres::Client::connect(&self.cluster.url("postgres"), postgres::NoTls)
        {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
        let _ = std::fs::remove_file(self.cluster.dir.join(format!("{}.toml", self.name)));
    }
}

/// The size of the terminal `Mvr::in_terminal` runs in: rows, columns.
pub const TERMINAL: (u16, u16) = (50, 200);

/// The `mv-refresher` binary with a clean environment.
pub struct Mvr {
    cmd: Command,
}

/// What a run of the binary did.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    command: String,
}

impl Mvr {
    pub fn new() -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mv-refresher"));
        cmd.env_clear().env("RUST_LOG", "info");
        Self { cmd }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.cmd.env_remove(key);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Self {
        self.cmd.args(args);
        self
    }

    /// Runs the binary with its stdout on a pseudo-terminal (util-linux
    /// `script`), as a person at a terminal would.
    pub fn in_terminal(self) -> Self {
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
        // A person's terminal has a size: 50 rows of 200 columns (see
        // `TERMINAL`), which the progress display draws within.
        let mut line = format!(
            "stty rows {} cols {}; exec {}",
            TERMINAL.0,
            TERMINAL.1,
            quote(self.cmd.get_program())
        );
        for arg in self.cmd.get_args() {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        let mut cmd = Command::new("script");
        cmd.env_clear();
        for (key, value) in self.cmd.get_envs() {
            if let Some(value) = value {
                cmd.env(key, value);
            }
        }
        // A person's terminal has a TERM; without one nothing draws.
        cmd.env("TERM", "xterm").args(["-qec", &line, "/dev/null"]);
        Self { cmd }
    }

    /// Runs the binary to the end.
    pub fn run(self) -> Output {
        self.spawn().wait()
    }

    /// Starts the binary; `Running::wait` collects its output.
    pub fn spawn(mut self) -> Running {
        let command = format!("{:?}", self.cmd);
        let mut child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let read = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = Some(read(Box::new(child.stdout.take().unwrap())));
        let stderr = Some(read(Box::new(child.stderr.take().unwrap())));
        Running {
            child,
            stdout,
            stderr,
            command,
        }
    }
}

/// A binary started by [`Mvr::spawn`].
pub struct Running {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    command: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `probe` like [`wait_until`], failing at once (with the output) if
    /// the process ends first.
    pub fn wait_until<T>(&mut self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        wait_until(what, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                let stdout = self
                    .stdout
                    .take()
                    .map(|h| h.join().unwrap())
                    .unwrap_or_default();
                let stderr = self
                    .stderr
                    .take()
                    .map(|h| h.join().unwrap())
                    .unwrap_or_default();
                panic!(
                    "{} ended ({status}) while waiting for {what}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                    self.command
                );
            }
            probe()
        })
    }

    /// Sends `signal` ("TERM", "INT", ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the end (killing it past [`RUN_LIMIT`]) and collects the output.
    pub fn wait(mut self) -> Output {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > RUN_LIMIT {
                let _ = self.child.kill();
                panic!("{} still running after {RUN_LIMIT:?}: killed", self.command);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            code: status.code(),
            stdout: self
                .stdout
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
            stderr: self
                .stderr
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
            command: self.command,
        }
    }
}

/// Polls `probe` until it returns something (a wait for a state, bounded by
/// [`RUN_LIMIT`]; never a timing assertion).
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(started.elapsed() < RUN_LIMIT, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Output {
    /// Asserts the exit code, printing the whole run when it differs.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(self.code, Some(expected), "unexpected exit code\n{self}");
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// The first line of stdout holding `needle`; fails with the whole run
    /// when none does.
    #[track_caller]
    pub fn line_with(&self, needle: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line of stdout holds {needle:?}\n{self}"))
    }

    /// The first line of stderr (the logs) holding `needle`.
    #[track_caller]
    pub fn log_line_with(&self, needle: &str) -> &str {
        self.stderr
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line of stderr holds {needle:?}\n{self}"))
    }

    /// Asserts `needle` appears nowhere in the output.
    #[track_caller]
    pub fn never_shows(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout.contains(needle) && !self.stderr.contains(needle),
            "output shows {needle:?}\n{self}"
        );
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}
