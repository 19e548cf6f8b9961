//! What sits between the refresher and the server in a real deployment: a
//! PgBouncer in transaction or session pooling, and a TCP proxy that can go
//! silent the way a node that vanished from the network does (no FIN, no RST,
//! nothing).
//!
//! Both are stopped when dropped; a PgBouncer is also killed by a watchdog
//! process when the test binary exits, however it exits.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Cluster, free_port, is_root, kill_when_tests_end, text_rows};

/// How long a PgBouncer may take to accept connections.
const BOUNCER_START_LIMIT: Duration = Duration::from_secs(30);

static NEXT_BOUNCER: AtomicUsize = AtomicUsize::new(0);

/// A PgBouncer on 127.0.0.1 in front of a [`Cluster`], every database of the
/// cluster reachable through it as `postgres` (trusted, as on the cluster).
pub struct PgBouncer {
    pub port: u16,
    pub dir: PathBuf,
    child: Mutex<Child>,
}

impl PgBouncer {
    /// Starts one in `mode` (`transaction` or `session`) with `pool_size`
    /// server connections per database and user, and waits until it accepts
    /// connections.
    pub fn start(cluster: &'static Cluster, mode: &str, pool_size: u32) -> Self {
        Self::start_with(cluster, mode, pool_size, &[])
    }

    /// The same, with more `[pgbouncer]` settings (a setting given here wins
    /// over the default below), e.g. `[("query_wait_timeout", "15")]`.
    pub fn start_with(
        cluster: &'static Cluster,
        mode: &str,
        pool_size: u32,
        settings: &[(&str, &str)],
    ) -> Self {
        assert!(
            matches!(mode, "transaction" | "session"),
            "pool mode {mode:?}: transaction or session"
        );
        let program = pgbouncer_program();
        let n = NEXT_BOUNCER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("mv-refresher-pgbouncer-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();

        let mut config: Vec<(String, String)> = [
            ("listen_addr", "127.0.0.1".to_owned()),
            ("listen_port", port.to_string()),
            // No Unix socket: /tmp/.s.PGSQL.PORT would be shared by all.
            ("unix_socket_dir", String::new()),
            ("auth_type", "trust".to_owned()),
            // 1.18 wants even a trusted user listed in the auth file.
            ("auth_file", dir.join("userlist.txt").display().to_string()),
            ("admin_users", "postgres".to_owned()),
            ("pool_mode", mode.to_owned()),
            ("default_pool_size", pool_size.to_string()),
            ("min_pool_size", "0".to_owned()),
            ("reserve_pool_size", "0".to_owned()),
            ("max_client_conn", "200".to_owned()),
            // A client that waits this long for a server connection gets an
            // error: a stall shows up as a failure, not a hang.
            ("query_wait_timeout", "20".to_owned()),
            ("server_reset_query", "DISCARD ALL".to_owned()),
            ("server_login_retry", "1".to_owned()),
            // Startup parameters PgBouncer does not track itself would make
            // it refuse the client.
            (
                "ignore_startup_parameters",
                "extra_float_digits,options".to_owned(),
            ),
            ("logfile", dir.join("pgbouncer.log").display().to_string()),
            ("pidfile", dir.join("pgbouncer.pid").display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (key, value) in settings {
            config.retain(|(k, _)| k != key);
            config.push(((*key).to_owned(), (*value).to_owned()));
        }
        let mut ini = format!(
            "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\n",
            cluster.port
        );
        for (key, value) in &config {
            ini.push_str(&format!("{key} = {value}\n"));
        }
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).unwrap();
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();

        // PgBouncer refuses to run as root: as root it runs as the postgres OS
        // user (the one the cluster runs as), which must own its files.
        let mut cmd = Command::new(&program);
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown {} failed", dir.display());
            cmd.uid(id_of("-u")).gid(id_of("-g"));
        }
        let child = cmd
            .arg(&ini_path)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));

        kill_when_tests_end(child.id(), &dir);

        let bouncer = Self {
            port,
            dir,
            child: Mutex::new(child),
        };
        bouncer.wait_ready();
        bouncer
    }

    /// Waits until the admin console answers, failing with the log when the
    /// process ends or takes too long.
    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            self.assert_running("before accepting connections");
            if self
                .try_admin("SHOW VERSION")
                .is_ok_and(|rows| !rows.is_empty())
            {
                return;
            }
            assert!(
                started.elapsed() < BOUNCER_START_LIMIT,
                "pgbouncer not accepting connections after {BOUNCER_START_LIMIT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log when PgBouncer is no longer running (`when` says
    /// at which point of the test).
    #[track_caller]
    pub fn assert_running(&self, when: &str) {
        let status = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .unwrap();
        if let Some(status) = status {
            panic!("pgbouncer exited ({status}) {when}\n{}", self.log());
        }
    }

    /// A `postgres://` URL for `database` through this PgBouncer.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `command` on the admin console: the rows as text.
    fn try_admin(&self, command: &str) -> Result<Vec<Vec<Option<String>>>, postgres::Error> {
        let mut admin = postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("pgbouncer")
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)?;
        Ok(text_rows(admin.simple_query(command)?))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        format!("--- pgbouncer.log ({}) ---\n{log}", self.dir.display())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pgbouncer_program() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| {
            let sbin = Path::new("/usr/sbin/pgbouncer");
            sbin.is_file().then(|| sbin.to_owned())
        })
        .expect("pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer)")
}

/// `id -u postgres` or `id -g postgres`.
fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    assert!(out.status.success(), "no postgres OS user");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A TCP proxy on 127.0.0.1 that forwards to a local port until told to
/// [`stall`](StallingProxy::stall).
pub struct StallingProxy {
    port: u16,
    target: u16,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyShared {
    stalled: AtomicBool,
    stopping: AtomicBool,
    /// Every socket, client and server side, kept open until the proxy is
    /// dropped.
    sockets: Mutex<Vec<TcpStream>>,
    connections: AtomicUsize,
    to_server: AtomicU64,
    to_client: AtomicU64,
    held: AtomicU64,
}

impl StallingProxy {
    pub fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(ProxyShared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, target_port, shared))
        };
        Self {
            port,
            target: target_port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// A `postgres://` URL for `database` through the proxy.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// From now on no byte goes through in either direction, on the current
    /// connections and on new ones (accepted, never forwarded), and no socket
    /// is closed: the other end vanished without a word.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far: `(to the server, to the client)`.
    pub fn forwarded(&self) -> (u64, u64) {
        (
            self.shared.to_server.load(Ordering::SeqCst),
            self.shared.to_client.load(Ordering::SeqCst),
        )
    }

    /// Bytes read while stalled and never forwarded.
    pub fn held(&self) -> u64 {
        self.shared.held.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for StallingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (up, down) = self.forwarded();
        write!(
            f,
            "StallingProxy(:{} -> :{}, stalled: {}, {} connections, {up} bytes to the server, {down} to the client, {} held)",
            self.port,
            self.target,
            self.shared.stalled.load(Ordering::SeqCst),
            self.connections(),
            self.held()
        )
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Wakes the pumps blocked in a read; they end by themselves.
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, target: u16, shared: Arc<ProxyShared>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        client.set_nonblocking(false).unwrap();
        let _ = client.set_nodelay(true);
        if shared.stalled.load(Ordering::SeqCst) {
            // Accepted by the kernel, then nothing: held open, never read.
            shared.sockets.lock().unwrap().push(client);
            continue;
        }
        let server = match TcpStream::connect(("127.0.0.1", target)) {
            Ok(server) => server,
            Err(_) => continue, // the client sees the connection closed
        };
        let _ = server.set_nodelay(true);
        {
            let mut sockets = shared.sockets.lock().unwrap();
            sockets.push(client.try_clone().unwrap());
            sockets.push(server.try_clone().unwrap());
        }
        for (from, to, up) in [
            (
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                true,
            ),
            (server, client, false),
        ] {
            let shared = shared.clone();
            std::thread::spawn(move || pump(from, to, up, &shared));
        }
    }
}

/// Copies `from` to `to` until end of stream, or until the proxy stalls: then
/// it holds what it read and waits, sockets open, until the proxy is dropped.
fn pump(mut from: TcpStream, mut to: TcpStream, up: bool, shared: &ProxyShared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // An error ends the stream like an end of stream does.
        let n = from.read(&mut buf).unwrap_or(0);
        if shared.stalled.load(Ordering::SeqCst) {
            shared.held.fetch_add(n as u64, Ordering::SeqCst);
            while !shared.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        if n == 0 {
            // Passes the end of stream on, as a FIN.
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Read);
            return;
        }
        let counter = if up {
            &shared.to_server
        } else {
            &shared.to_client
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
}
