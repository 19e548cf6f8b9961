//! Where the database is and how to reach it: connection settings, the pool,
//! and the wording of PostgreSQL errors.
//!
//! Settings come from `--database-url`/`DATABASE_URL` with libpq's `PG*`
//! variables filling in what the URL leaves out, as libpq does. Nothing here prints
//! a password: [`DbTarget`]'s `Debug` and `Display` show host, port, database and
//! user only.
//!
//! Several hosts (`postgres://h1:5432,h2:5432/db`, `host=h1,h2 port=5432,5433`)
//! are tried in turn for every connection, as libpq tries them, each at its
//! `hostaddr` when one is given (the name then only checks the certificate and
//! picks the password file's line). Every connection remembers which one it
//! reached (an [`Endpoint`]): `check` names it, and a cancel request goes there.
//!
//! What the server says on the side (notices) is logged at its own severity
//! by the task that drives the connection: a `WARNING` is a warning naming
//! the view whose task opened the connection ([`working_on`]), or took it
//! over from a view that ended ([`Conn::adopt`]), and, from a Citus worker,
//! the node; `NOTICE` and `INFO` go to debug unless they name it.
//!
//! A connection is held only while it is in use: dropping a [`Conn`] closes it
//! instead of keeping it idle, so a session-pooling PgBouncer's server
//! connections go to whoever needs them. Whoever holds one may hand it on to
//! work that starts at once (the refresh of the next view): nothing of a
//! session is relied on across transactions, so a transaction pooler may
//! route each of them anywhere. TCP keepalives are on by default, so a
//! server that vanishes without a word is noticed within about a minute, and a
//! cancel request waits for the server to act on it, but never for long.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::{ClientWrapper, RecyclingMethod};
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Config as PgConfig, Host, LoadBalanceHosts, SslMode as PgSslMode};
use tokio_postgres::error::{DbError, Severity, SqlState};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{
    AsyncMessage, CancelToken, Client, GenericClient, SimpleQueryMessage, SimpleQueryRow,
};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::Instrument;

use crate::tls::{self, SslMode, TlsSettings};

/// How long a connection attempt may take when neither the URL nor
/// `PGCONNECT_TIMEOUT` says.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalives unless the URL says otherwise: the first probe after 30 s of
/// silence, then every 10 s, the connection dropped after 3 unanswered probes,
/// and unacknowledged data given up on after 60 s (`tcp_user_timeout`). A peer
/// that vanished is noticed within about a minute; libpq's defaults leave it to
/// the kernel's two hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVES_COUNT: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection whose client was dropped may take to close
/// politely before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long one cancel request may take, from connecting to the server closing
/// the cancel connection.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection parameters read here rather than by tokio-postgres: the TLS ones
/// it does not know, and the keepalive ones whose names or units differ from
/// libpq's (`keepalives_count`; `tcp_user_timeout` in milliseconds).
const OWN_PARAMS: [&str; 7] = [
    "sslmode",
    "sslrootcert",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
];

/// The database to connect to. Holds the password but never shows it.
#[derive(Clone)]
pub struct DbTarget {
    /// Everything but where: each connection is made with one endpoint's
    /// copy of it ([`DbTarget::config_for`]).
    config: PgConfig,
    /// The hosts of the list, in order; never empty.
    endpoints: Vec<Endpoint>,
    /// The password file's password for each endpoint, when neither the URL
    /// nor `PGPASSWORD` gives one.
    passwords: Vec<Option<String>>,
    tls: TlsSettings,
    connector: MakeRustlsConnect,
}

/// Where a connection goes: one host of the list (a name, an address, or a
/// Unix socket directory), the numeric address to reach it at when `hostaddr`
/// gives one, and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: Option<Host>,
    hostaddr: Option<IpAddr>,
    port: u16,
}

impl Endpoint {
    /// The name the server's certificate is checked against: the host name,
    /// never `hostaddr` (libpq's rule); none with `hostaddr` alone or over a
    /// Unix socket.
    fn tls_name(&self) -> &str {
        match &self.host {
            Some(Host::Tcp(name)) => name,
            _ => "",
        }
    }

    /// The host as libpq's password file names it: the host, `hostaddr` when
    /// there is no host, `localhost` for a Unix socket.
    fn passfile_host(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Some(Host::Tcp(name)), _) => name.clone(),
            (None, Some(addr)) => addr.to_string(),
            _ => "localhost".to_owned(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.hostaddr) {
            (Some(host), Some(addr)) => {
                write!(f, "host {} (address {addr})", host_text(host))?;
            }
            (Some(host), None) => write!(f, "host {}", host_text(host))?,
            (None, Some(addr)) => write!(f, "host {addr}")?,
            (None, None) => f.write_str("no host")?,
        }
        write!(f, " port {}", self.port)
    }
}

/// A host as the connection string spells it: a name or a socket directory.
fn host_text(host: &Host) -> String {
    match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(path) => path.display().to_string(),
    }
}

/// What a cancel request for a connection's statement needs: the server's key
/// for the session, and where the session is (not the first host of the list:
/// the one the connection reached).
#[derive(Clone)]
pub struct CancelKey {
    token: CancelToken,
    endpoint: Endpoint,
}

/// A connection string that cannot be used (exit code 2: nothing was tried).
#[derive(Debug, thiserror::Error)]
#[error("invalid database URL (--database-url or DATABASE_URL): {0}")]
pub struct InvalidUrl(String);

/// The database could not be reached (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("could not connect to {target}: {reason}")]
pub struct ConnectError {
    pub target: String,
    pub reason: String,
}

impl DbTarget {
    /// Builds the target from an optional URL and the `PG*` variables `env`
    /// returns (a function, so tests need not touch the process environment).
    pub fn new(
        url: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, InvalidUrl> {
        let (url, mut own) = match url {
            Some(url) => {
                let (rest, own) = take_params(url, &OWN_PARAMS);
                (Some(rest), own)
            }
            None => (None, HashMap::new()),
        };
        let (url_mode, url_root) = (own.remove("sslmode"), own.remove("sslrootcert"));
        let mut config = match &url {
            Some(url) => PgConfig::from_str(url).map_err(|err| InvalidUrl(error_chain(&err)))?,
            None => PgConfig::new(),
        };
        fill_from_env(&mut config, &env)?;
        // The URL's sslmode and sslrootcert win; the variables fill in defaults.
        let mode = url_mode
            .or_else(|| env("PGSSLMODE"))
            .map(|m| m.parse::<SslMode>())
            .transpose()
            .map_err(InvalidUrl)?
            .unwrap_or(SslMode::Prefer);
        config.ssl_mode(mode.for_tokio_postgres());
        let tls = TlsSettings {
            mode,
            root_cert: url_root.or_else(|| env("PGSSLROOTCERT")),
        };
        let connector = tls::connector(&tls).map_err(InvalidUrl)?;
        let endpoints = endpoints(&config)?;
        let passfile = match config.get_password() {
            Some(_) => None,
            None => env("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".pgpass")))
                .and_then(|file| std::fs::read_to_string(file).ok()),
        };
        let passwords = endpoints
            .iter()
            .map(|endpoint| {
                let text = passfile.as_deref()?;
                passfile_password(text, endpoint, &config)
            })
            .collect();
        apply_keepalives(&mut config, &own)?;
        Ok(Self {
            config,
            endpoints,
            passwords,
            tls,
            connector,
        })
    }

    /// A pool of up to `size` connections; nothing connects until first use, and
    /// no connection attempt outlives the connect timeout (once per host).
    pub fn pool(&self, size: usize) -> Pool {
        // The connect timeout of tokio-postgres covers each TCP connect only; the
        // pool's create timeout also covers a server that accepts and never
        // answers. Each host of the list may take the connect timeout, as with
        // libpq: a first host that drops packets does not keep the pool from
        // the second.
        let hosts = u32::try_from(self.endpoints.len()).unwrap_or(u32::MAX);
        let timeout = self
            .config
            .get_connect_timeout()
            .map(|timeout| timeout.saturating_mul(hosts));
        Pool::builder(Manager {
            target: self.clone(),
        })
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .create_timeout(timeout)
        .build()
        .expect("a tokio runtime is configured")
    }

    /// Takes a connection from `pool`, turning a failure into [`ConnectError`].
    pub async fn connect(&self, pool: &Pool) -> Result<Conn, ConnectError> {
        Conn::get(pool).await.map_err(|err| ConnectError {
            target: self.to_string(),
            reason: describe_pool_error(&err),
        })
    }

    /// Asks the server to cancel what `client` runs, the way libpq does: on a
    /// connection of its own, over TLS when the client's is, and waiting until
    /// the server closes that connection, which it does after acting on the
    /// request (a pooler such as PgBouncer forwards it first: closing early loses
    /// it). Never takes longer than [`CANCEL_TIMEOUT`].
    ///
    /// The request goes where `key`'s connection went: the host of the list it
    /// reached, at its `hostaddr` when one is given.
    pub async fn cancel(&self, key: &CancelKey) -> Result<(), String> {
        let CancelKey { token, endpoint } = key;
        let port = endpoint.port;
        let sent = tokio::time::timeout(CANCEL_TIMEOUT, async {
            match (&endpoint.host, endpoint.hostaddr) {
                (_, Some(addr)) => {
                    let stream = tokio::net::TcpStream::connect((addr, port)).await?;
                    self.send_cancel(token, stream, endpoint.tls_name()).await
                }
                (Some(Host::Tcp(name)), None) => {
                    let stream = tokio::net::TcpStream::connect((name.as_str(), port)).await?;
                    self.send_cancel(token, stream, name).await
                }
                (Some(Host::Unix(dir)), None) => {
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    self.send_cancel(token, stream, "").await
                }
                (None, None) => Err(io::Error::other("no host to send the cancel request to")),
            }
        })
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("cancel request to {endpoint}: {err}")),
            Err(_) => Err(format!(
                "cancel request to {endpoint}: no answer within {}s",
                CANCEL_TIMEOUT.as_secs()
            )),
        }
    }

    /// This target as reached at `endpoint`: its host and port, database and
    /// user, as `Display` shows the whole list.
    pub fn at<'a>(&'a self, endpoint: &'a Endpoint) -> impl fmt::Display + 'a {
        struct At<'a>(&'a DbTarget, &'a Endpoint);
        impl fmt::Display for At<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.1)?;
                self.0.fmt_rest(f)
            }
        }
        At(self, endpoint)
    }
}

impl DbTarget {
    /// Sends `token`'s cancel request on `stream`, with TLS when the
    /// connection being cancelled has it, and waits for the server to close.
    async fn send_cancel<S>(&self, token: &CancelToken, stream: S, host: &str) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut tls = self.connector.clone();
        let tls = MakeTlsConnect::<WaitForClose<S>>::make_tls_connect(&mut tls, host)
            .map_err(io::Error::other)?;
        token
            .cancel_query_raw(WaitForClose(stream), tls)
            .await
            .map_err(io::Error::other)
    }

    /// The settings of a connection to endpoint `i` alone, with its password
    /// from the password file when that is where the password comes from.
    fn config_for(&self, i: usize) -> PgConfig {
        let mut config = with_one_host(&self.config, &self.endpoints[i]);
        if let Some(password) = &self.passwords[i] {
            config.password(password);
        }
        config
    }

    /// Connects as libpq does: the hosts of the list in turn (in a random
    /// order with `load_balance_hosts=random`) until one accepts; each, for
    /// `sslmode=prefer`, again without TLS when the TLS handshake fails. The
    /// session knows which host it reached.
    async fn open(&self) -> Result<Session, tokio_postgres::Error> {
        let mut order: Vec<usize> = (0..self.endpoints.len()).collect();
        if self.config.get_load_balance_hosts() == LoadBalanceHosts::Random {
            fastrand::shuffle(&mut order);
        }
        let mut failed = None;
        for i in order {
            match self.open_at(i).await {
                Ok(session) => return Ok(session),
                Err(err) => {
                    tracing::debug!(endpoint = %self.endpoints[i], error = %error_chain(&err), "could not connect; trying the next host");
                    failed = Some(err);
                }
            }
        }
        // The last host's reason, as libpq and tokio-postgres report it.
        Err(failed.expect("a target has at least one host"))
    }

    /// One connection to endpoint `i`.
    async fn open_at(&self, i: usize) -> Result<Session, tokio_postgres::Error> {
        let config = self.config_for(i);
        let (client, connection) = match config.connect(self.connector.clone()).await {
            Err(err) if self.tls.mode == SslMode::Prefer && rustls_error(&err).is_some() => {
                tracing::debug!(error = %error_chain(&err), "TLS handshake failed; connecting without TLS (sslmode=prefer)");
                let mut plain = config.clone();
                plain.ssl_mode(PgSslMode::Disable);
                plain.connect(self.connector.clone()).await?
            }
            connected => connected?,
        };
        // Dropping a ClientWrapper aborts the task it is given, which would
        // close the socket without a word (PgBouncer logs every such close as
        // "client unexpected eof"). So the connection runs in a task of its
        // own, which says goodbye (Terminate) once the client is gone, and the
        // wrapper is given a task that only holds `closing`: its abort gives
        // the connection CLOSE_GRACE to finish, then ends it (a server that
        // stopped answering is not waited for).
        let (closing, closed) = tokio::sync::oneshot::channel::<()>();
        // What the server says on the side is reported in the span (a run's)
        // and for the view of whoever connected, or took the connection over.
        let about = About::default();
        about.set(VIEW.try_with(Clone::clone).ok());
        let connected = {
            let about = about.clone();
            async move {
                let abandoned = async {
                    let _ = closed.await;
                    tokio::time::sleep(CLOSE_GRACE).await;
                };
                tokio::select! {
                    () = drive(connection, about) => {},
                    () = abandoned => {}
                }
            }
        };
        tokio::spawn(connected.in_current_span());
        let held = tokio::spawn(async move {
            let _closing = closing;
            std::future::pending::<()>().await
        });
        Ok(Session {
            client: ClientWrapper::new(client, held),
            endpoint: self.endpoints[i].clone(),
            about,
            opened: Instant::now(),
            prepared: Mutex::default(),
        })
    }
}

/// The hosts of `config`'s list, each with its `hostaddr` and port, checked as
/// libpq checks them: as many addresses as hosts (when both are given), and
/// one port for all or one per host.
fn endpoints(config: &PgConfig) -> Result<Vec<Endpoint>, InvalidUrl> {
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    let count = hosts.len().max(addrs.len());
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(InvalidUrl(format!(
            "{} hosts but {} hostaddrs: give one hostaddr per host",
            hosts.len(),
            addrs.len()
        )));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(InvalidUrl(format!(
            "{count} hosts but {} ports: give one port for all, or one per host",
            ports.len()
        )));
    }
    if count == 0 {
        return Err(InvalidUrl("no host to connect to".into()));
    }
    Ok((0..count)
        .map(|i| Endpoint {
            host: hosts.get(i).cloned(),
            hostaddr: addrs.get(i).copied(),
            port: ports.get(i).or(ports.first()).copied().unwrap_or(5432),
        })
        .collect())
}

/// `config` with `endpoint` as its only host: every other setting copied.
fn with_one_host(config: &PgConfig, endpoint: &Endpoint) -> PgConfig {
    let mut one = PgConfig::new();
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        one.options(options);
    }
    if let Some(name) = config.get_application_name() {
        one.application_name(name);
    }
    one.ssl_mode(config.get_ssl_mode());
    one.ssl_negotiation(config.get_ssl_negotiation());
    match &endpoint.host {
        Some(Host::Tcp(name)) => {
            one.host(name);
        }
        Some(Host::Unix(dir)) => {
            one.host_path(dir);
        }
        None => {}
    }
    if let Some(addr) = endpoint.hostaddr {
        one.hostaddr(addr);
    }
    one.port(endpoint.port);
    if let Some(timeout) = config.get_connect_timeout() {
        one.connect_timeout(*timeout);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        one.tcp_user_timeout(*timeout);
    }
    one.keepalives(config.get_keepalives());
    one.keepalives_idle(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        one.keepalives_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        one.keepalives_retries(retries);
    }
    one.target_session_attrs(config.get_target_session_attrs());
    one.channel_binding(config.get_channel_binding());
    one.load_balance_hosts(config.get_load_balance_hosts());
    one
}

/// Fills in what the URL left out from libpq's variables (`env`), as libpq does:
/// host, port, user, password, database, connect timeout, application name.
fn fill_from_env(
    config: &mut PgConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), InvalidUrl> {
    if let (true, Some(addrs)) = (config.get_hostaddrs().is_empty(), env("PGHOSTADDR")) {
        for addr in addrs.split(',') {
            let addr = addr
                .parse()
                .map_err(|_| InvalidUrl(format!("PGHOSTADDR {addr:?} is not an IP address")))?;
            config.hostaddr(addr);
        }
    }
    // Without a host, hostaddr alone says where (libpq's rule); without
    // either, localhost.
    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(hosts) => {
                for host in hosts.split(',') {
                    config.host(host);
                }
            }
            None if config.get_hostaddrs().is_empty() => {
                config.host("localhost");
            }
            None => {}
        }
    }
    if let (true, Some(ports)) = (config.get_ports().is_empty(), env("PGPORT")) {
        for port in ports.split(',') {
            // An empty entry is the default port, as in the URL's list.
            let port = match port {
                "" => 5432,
                port => port
                    .parse()
                    .map_err(|_| InvalidUrl(format!("PGPORT {port:?} is not a port number")))?,
            };
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".into());
        config.user(user);
    }
    if let (true, Some(password)) = (config.get_password().is_none(), env("PGPASSWORD")) {
        config.password(password);
    }
    if config.get_dbname().is_none() {
        let dbname =
            env("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap_or_default().to_owned());
        config.dbname(dbname);
    }
    if config.get_connect_timeout().is_none() {
        let timeout = env("PGCONNECT_TIMEOUT")
            .and_then(|t| t.parse().ok())
            .filter(|&secs| secs > 0)
            .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs);
        config.connect_timeout(timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name(env("PGAPPNAME").as_deref().unwrap_or("mv-refresher"));
    }
    Ok(())
}

/// How every transaction that writes begins: `READ COMMITTED` whatever the
/// database or role makes the default. A refresh reads what others
/// committed before its lock and while it waited for their writers (under
/// `REPEATABLE READ` its first statement would fix the snapshot before
/// either), and rows written by another refresher at the same moment are
/// waited for, not a serialization failure.
pub const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// The statement timeout of housekeeping: planning, failure rows, pruning, the
/// log tables' upgrade. Each of its statements is short; one that is not is
/// stuck, and must not hold up a run.
pub const HOUSEKEEPING_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The lock timeout of housekeeping: a log table locked by someone else's long
/// transaction is waited for this long, not for ever.
pub const HOUSEKEEPING_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The `SET LOCAL`s of a housekeeping transaction.
pub fn housekeeping_timeouts() -> [String; 2] {
    [
        format!(
            "SET LOCAL statement_timeout = '{}ms'",
            HOUSEKEEPING_STATEMENT_TIMEOUT.as_millis()
        ),
        format!(
            "SET LOCAL lock_timeout = '{}ms'",
            HOUSEKEEPING_LOCK_TIMEOUT.as_millis()
        ),
    ]
}

/// One row of `sql` (or none), read behind a savepoint so that a refusal
/// (a function this role may not call, one a server lacks) does not end the
/// caller's transaction: the inner result is the query's, the outer one the
/// savepoint's. The four statements go in one write.
pub async fn query_opt_or_refusal(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[(
        &(dyn tokio_postgres::types::ToSql + Sync),
        tokio_postgres::types::Type,
    )],
) -> Result<Result<Option<tokio_postgres::Row>, tokio_postgres::Error>, tokio_postgres::Error> {
    let (saved, read, undone, released) = tokio::join!(
        biased;
        client.batch_execute("SAVEPOINT mv_refresher_refusal"),
        client.query_typed_opt(sql, params),
        client.batch_execute("ROLLBACK TO SAVEPOINT mv_refresher_refusal"),
        client.batch_execute("RELEASE SAVEPOINT mv_refresher_refusal"),
    );
    saved?;
    undone?;
    released?;
    Ok(read)
}

/// Sends `statements`, one message each, all in one write, and waits for
/// their answers; the first error is returned. One message each because a
/// Citus coordinator forwards the whole text of a message holding a
/// propagated `SET` to its workers, whatever else the text holds.
pub async fn execute_each<S: AsRef<str>>(
    client: &impl GenericClient,
    statements: &[S],
) -> Result<(), tokio_postgres::Error> {
    try_join_all(
        statements
            .iter()
            .map(|sql| client.batch_execute(sql.as_ref())),
    )
    .await?;
    Ok(())
}

/// What the statements of one simple-query message did: the rows of each
/// that ran, in order, and the error of the one after them, which failed (the
/// server runs none after it).
pub struct Ran {
    pub rows: Vec<Vec<SimpleQueryRow>>,
    pub error: Option<tokio_postgres::Error>,
}

/// Sends `statements` as one simple-query message: one answer, one round
/// trip, where each statement of its own would be a message and an answer.
/// In a transaction, a statement that fails aborts it.
pub async fn run_statements<S: AsRef<str>>(client: &Client, statements: &[S]) -> Ran {
    let sql = statements
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join("; ");
    let mut ran = Ran {
        rows: Vec::with_capacity(statements.len()),
        error: None,
    };
    let stream = match client.simple_query_raw(&sql).await {
        Ok(stream) => stream,
        Err(err) => {
            ran.error = Some(err);
            return ran;
        }
    };
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while let Some(message) = stream.next().await {
        match message {
            Ok(SimpleQueryMessage::Row(row)) => rows.push(row),
            Ok(SimpleQueryMessage::CommandComplete(_)) => ran.rows.push(std::mem::take(&mut rows)),
            Ok(_) => {}
            Err(err) => {
                ran.error = Some(err);
                break;
            }
        }
    }
    ran
}

/// Column `i` of a row of text ([`run_statements`]), `None` for `NULL`;
/// an error names what could not be read.
pub fn text_column<T: FromStr>(row: &SimpleQueryRow, i: usize) -> Result<Option<T>, String> {
    let text = row
        .try_get(i)
        .map_err(|err| format!("column {i} of the server's answer: {err}"))?;
    text.map(|text| {
        text.parse()
            .map_err(|_| format!("column {i} of the server's answer: {text:?}"))
    })
    .transpose()
}

/// A `boolean` column of a row of text: `t` or `f`.
pub fn bool_column(row: &SimpleQueryRow, i: usize) -> Result<Option<bool>, String> {
    match text_column::<String>(row, i)?.as_deref() {
        None => Ok(None),
        Some("t") => Ok(Some(true)),
        Some("f") => Ok(Some(false)),
        Some(other) => Err(format!("column {i} of the server's answer: {other:?}")),
    }
}

/// Begins a housekeeping transaction: `BEGIN` and its timeouts, in one write
/// (with a `ROLLBACK` first when `rollback_first`).
pub async fn begin_housekeeping(
    client: &impl GenericClient,
    rollback_first: bool,
) -> Result<(), tokio_postgres::Error> {
    let mut statements: Vec<String> = Vec::with_capacity(4);
    if rollback_first {
        statements.push("ROLLBACK".into());
    }
    statements.push(BEGIN.into());
    statements.extend(housekeeping_timeouts());
    execute_each(client, &statements).await
}

/// Runs `work` (one statement on `client`, which sends itself when first polled)
/// in a transaction of its own under the housekeeping timeouts, sent together
/// with its `BEGIN` and `COMMIT` in one round trip. `rollback_first`: end the
/// transaction a failed attempt left open before.
pub async fn housekeeping<T>(
    client: &Client,
    rollback_first: bool,
    work: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    // A failed `work` leaves the transaction aborted: its COMMIT rolls back.
    let (began, value, committed) = tokio::join!(
        biased;
        begin_housekeeping(client, rollback_first),
        work,
        client.batch_execute("COMMIT")
    );
    began?;
    let value = value?;
    committed?;
    Ok(value)
}

/// A pooled connection that is closed, not kept idle, when dropped: a process
/// holds no more server connections than it uses (a session-pooling PgBouncer
/// gives each client connection a server connection for its whole life, and
/// idle ones held by one refresher starve another).
pub struct Conn(Option<managed::Object<Manager>>);

impl Conn {
    /// A connection from `pool`: waits for a free slot, then connects.
    pub async fn get(pool: &Pool) -> Result<Self, PoolError> {
        pool.get().await.map(|object| Self(Some(object)))
    }

    /// Where this connection went: the host of the list it reached.
    pub fn endpoint(&self) -> &Endpoint {
        &self.session().endpoint
    }

    /// Makes the view the current task works on ([`working_on`]) the one the
    /// server's notices on this connection are about: for a connection taken
    /// over from a view that ended.
    pub fn adopt(&self) {
        self.session().about.set(VIEW.try_with(Clone::clone).ok());
    }

    /// How long ago the connection was opened.
    pub fn age(&self) -> Duration {
        self.session().opened.elapsed()
    }

    /// What a cancel request for this connection's statement needs.
    pub fn cancel_key(&self) -> CancelKey {
        CancelKey {
            token: self.cancel_token(),
            endpoint: self.endpoint().clone(),
        }
    }

    /// Whether this connection prepared the statement `name`: the guess that
    /// its server backend has it (`prepared`).
    pub fn has_prepared(&self, name: &str) -> bool {
        self.prepared().contains(name)
    }

    /// Notes that the server backend has the statement `name`.
    pub fn note_prepared(&self, name: &str) {
        let mut prepared = self.prepared();
        if !prepared.contains(name) {
            prepared.insert(name.to_owned());
        }
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.session()
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn session(&self) -> &Session {
        self.0.as_ref().expect("a connection until dropped")
    }
}

impl Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.session()
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("a connection until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Taken out of the pool, the client is dropped and its connection closed.
        if let Some(object) = self.0.take() {
            drop(managed::Object::take(object));
        }
    }
}

/// A pool of connections to a [`DbTarget`], each knowing where it went.
pub type Pool = managed::Pool<Manager>;

/// A connection the pool could not give.
pub type PoolError = managed::PoolError<tokio_postgres::Error>;

/// Makes the pool's connections ([`DbTarget::open`]) and checks an idle one
/// before it is used again.
#[derive(Debug)]
pub struct Manager {
    target: DbTarget,
}

/// A pooled connection: the client, with the task that drives its connection,
/// the host of the list it reached, and the view its notices are about.
#[derive(Debug)]
pub struct Session {
    client: ClientWrapper,
    endpoint: Endpoint,
    about: About,
    opened: Instant,
    /// The statements this connection prepared (`prepared`).
    prepared: Mutex<HashSet<String>>,
}

/// The view a connection's notices are about, shared by its holder and the
/// task that drives it.
#[derive(Debug, Clone, Default)]
struct About(Arc<Mutex<Option<String>>>);

impl About {
    fn set(&self, view: Option<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = view;
    }

    fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl managed::Manager for Manager {
    type Type = Session;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<Session, tokio_postgres::Error> {
        self.target.open().await
    }

    async fn recycle(
        &self,
        session: &mut Session,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        // Verified: a connection whose backend was terminated is noticed on
        // checkout, not on the next statement (which may be a log write).
        if session.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        let verify = RecyclingMethod::Verified.query().unwrap_or_default();
        session.simple_query(verify).await?;
        Ok(())
    }
}

tokio::task_local! {
    /// The view the current task works on: the server's notices on the
    /// connections it opens are reported as about that view.
    static VIEW: String;
}

/// Runs `work` as work on `view` (see [`VIEW`]).
pub async fn working_on<F: Future>(view: String, work: F) -> F::Output {
    VIEW.scope(view, work).await
}

/// Runs `connection` until it closes, reporting what the server says on the
/// side (notices) for the view it is `about` at the time.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, about: About)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notice(notice))) => {
                report_notice(&notice, about.get().as_deref());
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                tracing::debug!(error = %error_chain(&err), "connection closed");
                return;
            }
            None => return,
        }
    }
}

/// Logs a server notice at its own severity: a `WARNING` as a warning naming
/// the view (and, from a Citus worker, the node: the detail says `from
/// host:port`); `NOTICE` and `INFO` at debug, unless they name the view.
/// The warning a `ROLLBACK` gets when a failed `COMMIT` already ended the
/// transaction (25P01) is the refresher's own doing, and goes to debug.
fn report_notice(notice: &DbError, view: Option<&str>) {
    let severity = notice.severity();
    let message = notice.message();
    let detail = notice.detail();
    let about_view = view.is_some_and(|view| names(message, view));
    match notice.parsed_severity() {
        Some(Severity::Warning) if *notice.code() != SqlState::NO_ACTIVE_SQL_TRANSACTION => {
            tracing::warn!(view, severity, detail, "server warning: {message}");
        }
        Some(Severity::Notice | Severity::Info) if about_view => {
            tracing::info!(view, severity, detail, "server notice: {message}");
        }
        _ => tracing::debug!(view, severity, detail, "server notice: {message}"),
    }
}

/// Whether `message` names `view` (`schema.name`): its name as a word of its
/// own, not a part of a longer identifier (`bets` is not in `bets_view`).
fn names(message: &str, view: &str) -> bool {
    let name = view.rsplit('.').next().unwrap_or(view).trim_matches('"');
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    !name.is_empty()
        && message.match_indices(name).any(|(at, _)| {
            let before = message[..at].chars().next_back();
            let after = message[at + name.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
}

/// The rustls error behind `err`, when a TLS handshake failed (as opposed to
/// a connection that could not be made at all). tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips it, so each cause is unwrapped too.
fn rustls_error(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let found = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if found.is_some() {
            return found;
        }
        source = cause.source();
    }
    None
}

/// A stream whose shutdown first waits for the peer to close: what a cancel
/// request needs, since the server acts on it only after reading it.
struct WaitForClose<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for WaitForClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WaitForClose<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Read (and drop) whatever comes until the peer closes: end of stream or
        // a reset both mean it is done with the request.
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => break,
                Ok(()) => continue,
                Err(_) => break,
            }
        }
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Takes the parameters `keys` out of a connection string, a URL
/// (`postgres://...?sslmode=verify-full`) or key=value pairs; returns the rest
/// and the values taken.
fn take_params(conn: &str, keys: &[&str]) -> (String, HashMap<String, String>) {
    let mut taken = HashMap::new();
    let mut keep = |key: &str, value: String| {
        if keys.contains(&key) {
            taken.insert(key.to_owned(), value);
            false
        } else {
            true
        }
    };
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        match conn.split_once('?') {
            None => conn.to_owned(),
            Some((base, query)) => {
                let params: Vec<&str> = query
                    .split('&')
                    .filter(|param| {
                        let (key, value) = param.split_once('=').unwrap_or((param, ""));
                        keep(
                            key,
                            percent_decode_str(value).decode_utf8_lossy().into_owned(),
                        )
                    })
                    .collect();
                if params.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", params.join("&"))
                }
            }
        }
    } else {
        // key=value pairs: cut the taken ones out and leave every other byte as
        // it was (quoted values may hold spaces).
        let mut rest = String::with_capacity(conn.len());
        let mut copied = 0;
        for token in conn.split_whitespace() {
            let start = token.as_ptr() as usize - conn.as_ptr() as usize;
            let (key, value) = token.split_once('=').unwrap_or((token, ""));
            if !keep(key, value.trim_matches('\'').to_owned()) {
                rest.push_str(&conn[copied..start]);
                copied = start + token.len();
            }
        }
        rest.push_str(&conn[copied..]);
        rest.trim().to_owned()
    };
    (rest, taken)
}

/// Sets TCP keepalives and `tcp_user_timeout` from libpq's parameters in
/// `own`, or to defaults that notice a vanished peer within about a minute.
fn apply_keepalives(
    config: &mut PgConfig,
    own: &HashMap<String, String>,
) -> Result<(), InvalidUrl> {
    let number = |key: &str| {
        own.get(key)
            .map(|value| {
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| InvalidUrl(format!("{key} {value:?} is not a whole number")))
            })
            .transpose()
    };
    config.keepalives(number("keepalives")?.is_none_or(|on| on != 0));
    config.keepalives_idle(number("keepalives_idle")?.map_or(KEEPALIVES_IDLE, Duration::from_secs));
    config.keepalives_interval(
        number("keepalives_interval")?.map_or(KEEPALIVES_INTERVAL, Duration::from_secs),
    );
    let count = number("keepalives_count")?.map_or(Ok(KEEPALIVES_COUNT), |n| {
        u32::try_from(n).map_err(|_| InvalidUrl(format!("keepalives_count {n} is too large")))
    })?;
    config.keepalives_retries(count);
    // libpq: milliseconds, 0 for the system's default.
    match number("tcp_user_timeout")? {
        None => {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        Some(0) => {}
        Some(ms) => {
            config.tcp_user_timeout(Duration::from_millis(ms));
        }
    }
    Ok(())
}

/// The password for `endpoint`'s host and port and `config`'s database and
/// user in the text of a libpq password file
/// (`host:port:database:user:password`, `*` matching anything, `\:` and `\\`
/// escaped).
fn passfile_password(text: &str, endpoint: &Endpoint, config: &PgConfig) -> Option<String> {
    let host = endpoint.passfile_host();
    let port = endpoint.port.to_string();
    let wanted = [
        host.as_str(),
        port.as_str(),
        config.get_dbname().unwrap_or_default(),
        config.get_user().unwrap_or_default(),
    ];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(split_passfile_line)
        .find(|fields| {
            fields.len() == 5
                && fields[..4]
                    .iter()
                    .zip(wanted)
                    .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.remove(4))
}

/// Splits a password file line on unescaped colons.
fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

impl DbTarget {
    /// What `Display` shows after the host and port: database, user and a
    /// sslmode other than the default.
    fn fmt_rest(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            " database {:?} as user {:?}",
            self.config.get_dbname().unwrap_or_default(),
            self.config.get_user().unwrap_or_default(),
        )?;
        match self.tls.mode {
            SslMode::Prefer => Ok(()),
            mode => write!(f, " (sslmode {mode})"),
        }
    }
}

/// Every host of the list and its port (one port when all share it), the
/// database and the user; [`DbTarget::at`] shows the one a connection reached.
impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |part: &dyn Fn(&Endpoint) -> String| {
            self.endpoints
                .iter()
                .map(part)
                .collect::<Vec<_>>()
                .join(",")
        };
        let hosts = list(&|e| match (&e.host, e.hostaddr) {
            (Some(host), _) => host_text(host),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => String::new(),
        });
        write!(f, "host {hosts}")?;
        if self
            .endpoints
            .iter()
            .all(|e| e.host.is_some() && e.hostaddr.is_some())
        {
            write!(
                f,
                " (address {})",
                list(&|e| e.hostaddr.map(|a| a.to_string()).unwrap_or_default())
            )?;
        }
        let port = self.endpoints[0].port;
        match self.endpoints.iter().all(|e| e.port == port) {
            true => write!(f, " port {port}")?,
            false => write!(f, " port {}", list(&|e| e.port.to_string()))?,
        }
        self.fmt_rest(f)
    }
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbTarget({self})")
    }
}

/// Whether an error means the server is unreachable or refuses us, as opposed to
/// a statement failing on a working connection.
pub fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        None => is_connection_lost(err),
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 28: invalid authorization; 57P0x: shutdown.
            class == "08"
                || class == "28"
                || *code == SqlState::INVALID_CATALOG_NAME
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::TOO_MANY_CONNECTIONS
        }
    }
}

/// Whether an error the server did not send (no SQLSTATE) is about the
/// connection: closed, an I/O failure (tokio-postgres gives the `io::Error` as
/// the source), or a TLS failure. Others are about the statement or its result
/// (a value that does not convert, a row count that is not the expected one)
/// on a connection that still works.
fn is_connection_lost(err: &tokio_postgres::Error) -> bool {
    err.is_closed()
        || std::error::Error::source(err).is_some_and(|cause| cause.is::<io::Error>())
        || rustls_error(err).is_some()
}

/// One line for a failure to get a pooled connection.
pub fn describe_pool_error(err: &PoolError) -> String {
    match err {
        PoolError::Backend(pg) => describe_error(pg),
        PoolError::Timeout(_) => "no answer within the connect timeout \
            (connect_timeout in the URL or PGCONNECT_TIMEOUT)"
            .into(),
        other => other.to_string(),
    }
}

/// One line for a PostgreSQL error: the server's message with its detail and
/// hint, or the client-side error and its causes.
pub fn describe_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None if certificate_is_version_1(err) => format!(
            "{}; hint: the server's certificate is X.509 version 1 (as Citus makes them), \
             which cannot be checked against sslrootcert (verify-ca, verify-full, or require \
             with sslrootcert): give the server a version 3 certificate, or use \
             sslmode=require without sslrootcert (encrypted, not verified)",
            error_chain(err)
        ),
        None => error_chain(err),
    }
}

/// Whether a handshake failed because the certificate is X.509 version 1,
/// which webpki does not verify.
fn certificate_is_version_1(err: &tokio_postgres::Error) -> bool {
    match rustls_error(err) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::UnsupportedCertVersion)
            )
        }
        _ => false,
    }
}

/// `err` and its sources, joined by ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_names_a_view_by_its_whole_name() {
        assert!(names(
            "refreshing top_bets_today now",
            "public.top_bets_today"
        ));
        assert!(names("\"bets\" is odd", "public.bets"));
        assert!(!names("bets_view is odd", "public.bets"));
        assert!(!names("sidebets are odd", "public.bets"));
        assert!(!names("anything", ""));
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn pg_variables_fill_in_what_the_url_leaves_out() {
        let vars = [
            ("PGHOST", "db"),
            ("PGPORT", "6432"),
            ("PGUSER", "u"),
            ("PGDATABASE", "d"),
        ];
        let target = DbTarget::new(None, env(&vars)).unwrap();
        assert_eq!(
            target.to_string(),
            "host db port 6432 database \"d\" as user \"u\""
        );

        let target = DbTarget::new(Some("postgres://x@h:1/y"), env(&vars)).unwrap();
        assert_eq!(
            target.to_string(),
            "host h port 1 database \"y\" as user \"x\""
        );
    }

    #[test]
    fn every_host_of_the_list_is_an_endpoint_with_its_port_and_hostaddr() {
        let target = DbTarget::new(Some("postgres://u@h1:1,h2:5432/d"), env(&[])).unwrap();
        assert_eq!(
            target.to_string(),
            "host h1,h2 port 1,5432 database \"d\" as user \"u\""
        );
        assert_eq!(
            target.at(&target.endpoints[1]).to_string(),
            "host h2 port 5432 database \"d\" as user \"u\""
        );

        let target = DbTarget::new(
            Some("host=a,b hostaddr=10.0.0.1,10.0.0.2 port=6432 user=u dbname=d"),
            env(&[]),
        )
        .unwrap();
        assert_eq!(
            target.to_string(),
            "host a,b (address 10.0.0.1,10.0.0.2) port 6432 database \"d\" as user \"u\""
        );
        let second = &target.endpoints[1];
        assert_eq!(second.to_string(), "host b (address 10.0.0.2) port 6432");
        // The certificate is checked against the name, the connection goes to
        // the address.
        assert_eq!(second.tls_name(), "b");
        let config = target.config_for(1);
        assert_eq!(config.get_hosts(), [Host::Tcp("b".into())]);
        assert_eq!(
            config.get_hostaddrs(),
            ["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(config.get_ports(), [6432]);

        // hostaddr alone: no host name is made up (libpq's rule), here or from
        // PGHOSTADDR.
        for (url, vars) in [
            (Some("hostaddr=127.0.0.1 user=u"), vec![]),
            (None, vec![("PGHOSTADDR", "127.0.0.1")]),
        ] {
            let target = DbTarget::new(url, env(&vars)).unwrap();
            assert_eq!(target.endpoints[0].host, None);
            assert_eq!(target.endpoints[0].tls_name(), "");
            assert!(
                target.to_string().starts_with("host 127.0.0.1 port 5432 "),
                "{target}"
            );
        }

        // A Unix socket: its directory.
        let target = DbTarget::new(Some("host=/run/postgresql port=5433"), env(&[])).unwrap();
        assert_eq!(
            target.endpoints[0].to_string(),
            "host /run/postgresql port 5433"
        );

        for (url, says) in [
            ("host=a,b hostaddr=10.0.0.1", "2 hosts but 1 hostaddrs"),
            ("host=a,b,c port=1,2", "3 hosts but 2 ports"),
        ] {
            let err = DbTarget::new(Some(url), env(&[])).unwrap_err();
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn a_connection_to_one_host_keeps_every_other_setting() {
        let url = "postgres://u:pw@h:6432/d?options=-c%20x%3D1&application_name=a&connect_timeout=3\
                   &target_session_attrs=read-write&channel_binding=require&keepalives_idle=7";
        let target = DbTarget::new(Some(url), env(&[])).unwrap();
        // One host: its own copy must equal the whole configuration.
        assert_eq!(target.config_for(0), target.config);
    }

    #[test]
    fn a_password_file_fills_in_the_password() {
        let dir = std::env::temp_dir().join(format!("mvr-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:nope\ndb:6432:*:u:pa\\:ss\n*:*:*:*:fallback\n",
        )
        .unwrap();
        let file = file.display().to_string();
        let password = |url: &str| {
            let target = DbTarget::new(Some(url), env(&[("PGPASSFILE", &file)])).unwrap();
            target
                .config_for(0)
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        };
        assert_eq!(password("postgres://u@db:6432/x").as_deref(), Some("pa:ss"));
        assert_eq!(
            password("postgres://v@db:6432/x").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            password("postgres://u:given@db:6432/x").as_deref(),
            Some("given")
        );
        // Each host of a list has its own line.
        let target = DbTarget::new(
            Some("postgres://u@other:1,db:6432/x"),
            env(&[("PGPASSFILE", &file)]),
        )
        .unwrap();
        let passwords: Vec<_> = (0..2)
            .map(|i| {
                let config = target.config_for(i);
                String::from_utf8_lossy(config.get_password().unwrap()).into_owned()
            })
            .collect();
        assert_eq!(passwords, ["nope", "pa:ss"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn own_params_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, taken) = take_params(
            "postgres://u@h/d?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem&keepalives_count=5",
            &OWN_PARAMS,
        );
        assert_eq!(rest, "postgres://u@h/d?application_name=x");
        assert_eq!(taken["sslmode"], "verify-full");
        assert_eq!(taken["sslrootcert"], "/ca.pem");
        assert_eq!(taken["keepalives_count"], "5");

        let (rest, taken) = take_params("postgres://u@h/d?sslmode=require", &OWN_PARAMS);
        assert_eq!(rest, "postgres://u@h/d");
        assert_eq!(taken.len(), 1);

        let (rest, taken) = take_params(
            "host=h dbname=d sslmode=verify-ca sslrootcert='/ca.pem' tcp_user_timeout=1500",
            &OWN_PARAMS,
        );
        assert_eq!(rest, "host=h dbname=d");
        assert_eq!(taken["sslmode"], "verify-ca");
        assert_eq!(taken["sslrootcert"], "/ca.pem");
        assert_eq!(taken["tcp_user_timeout"], "1500");
    }

    #[test]
    fn keepalives_default_to_noticing_a_dead_peer_within_a_minute() {
        let target = DbTarget::new(Some("postgres://u@h/d"), env(&[])).unwrap();
        let c = &target.config;
        assert!(c.get_keepalives());
        let worst = c.get_keepalives_idle()
            + c.get_keepalives_interval().unwrap() * c.get_keepalives_retries().unwrap();
        assert!(worst <= Duration::from_secs(60), "{worst:?}");
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(60)));
    }

    #[test]
    fn keepalives_follow_libpqs_parameters_and_units() {
        let url = "postgres://u@h/d?keepalives_idle=7&keepalives_interval=3&keepalives_count=2&tcp_user_timeout=1500";
        let target = DbTarget::new(Some(url), env(&[])).unwrap();
        let c = &target.config;
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(7));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(3)));
        assert_eq!(c.get_keepalives_retries(), Some(2));
        // libpq's tcp_user_timeout is in milliseconds.
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_millis(1500)));

        let target =
            DbTarget::new(Some("host=h keepalives=0 tcp_user_timeout=0"), env(&[])).unwrap();
        assert!(!target.config.get_keepalives());
        assert_eq!(target.config.get_tcp_user_timeout(), None);

        let err =
            DbTarget::new(Some("postgres://u@h/d?keepalives_idle=soon"), env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("keepalives_idle \"soon\""),
            "{err}"
        );
    }

    /// Issue 18: every error without a SQLSTATE counted as a lost connection.
    #[tokio::test]
    async fn only_errors_about_the_connection_are_connection_errors() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = PgConfig::from_str(&format!("host=127.0.0.1 port={closed} user=u"))
            .unwrap()
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("nothing listens there");
        assert!(refused.code().is_none());
        assert!(is_connection_error(&refused), "{refused:?}");
        // The client's own error, no SQLSTATE either: nothing to do with a
        // connection.
        let own = PgConfig::from_str("port=none").unwrap_err();
        assert!(own.code().is_none());
        assert!(!is_connection_error(&own), "{own:?}");
    }

    #[test]
    fn password_never_shows() {
        let target = DbTarget::new(Some("postgres://u:s3cret@h/d"), env(&[])).unwrap();
        assert!(!format!("{target} {target:?}").contains("s3cret"));
        let target = DbTarget::new(None, env(&[("PGPASSWORD", "s3cret")])).unwrap();
        assert!(!format!("{target} {target:?}").contains("s3cret"));
    }
}
