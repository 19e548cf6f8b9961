//! Where the database is and how to reach it: connection settings, the pool,
//! and the wording of PostgreSQL errors.
//!
//! Settings come from `--database-url`/`DATABASE_URL` with libpq's `PG*`
//! variables filling in what the URL leaves out, as libpq does. Nothing here prints
//! a password: [`DbTarget`]'s `Debug` and `Display` show host, port, database and
//! user only. TLS is not negotiated yet (`sslmode=require` fails to connect).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, SslMode, TlsSettings};
use tokio_postgres::config::{Config as PgConfig, Host};
use tokio_postgres::error::SqlState;

/// How long a connection attempt may take when neither the URL nor
/// `PGCONNECT_TIMEOUT` says.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The database to connect to. Holds the password but never shows it.
#[derive(Clone)]
pub struct DbTarget {
    config: PgConfig,
    tls: TlsSettings,
    connector: MakeRustlsConnect,
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
        let (url, url_mode, url_root) = match url {
            Some(url) => {
                let (rest, mode, root) = tls::take_tls_params(url);
                (Some(rest), mode, root)
            }
            None => (None, None, None),
        };
        let mut config = match &url {
            Some(url) => PgConfig::from_str(url).map_err(|err| InvalidUrl(error_chain(&err)))?,
            None => PgConfig::new(),
        };
        if config.get_hosts().is_empty() {
            for host in env("PGHOST").as_deref().unwrap_or("localhost").split(',') {
                config.host(host);
            }
        }
        if let (true, Some(port)) = (config.get_ports().is_empty(), env("PGPORT")) {
            let port = port
                .parse()
                .map_err(|_| InvalidUrl(format!("PGPORT {port:?} is not a port number")))?;
            config.port(port);
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
            let dbname = env("PGDATABASE")
                .unwrap_or_else(|| config.get_user().unwrap_or_default().to_owned());
            config.dbname(dbname);
        }
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
        if config.get_password().is_none() {
            let passfile = env("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".pgpass")));
            if let Some(password) = passfile.and_then(|file| passfile_password(&file, &config)) {
                config.password(password);
            }
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
        Ok(Self {
            config,
            tls,
            connector,
        })
    }

    /// A pool of up to `size` connections; nothing connects until first use, and
    /// no connection attempt outlives the connect timeout.
    pub fn pool(&self, size: usize) -> Pool {
        let manager = Manager::from_config(
            self.config.clone(),
            self.connector.clone(),
            // Verified: a connection whose backend was terminated is noticed on
            // checkout, not on the next statement (which may be a log write).
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        // The connect timeout of tokio-postgres covers the TCP connect only; the
        // pool's create timeout also covers a server that accepts and never answers.
        Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(self.config.get_connect_timeout().copied())
            .build()
            .expect("a tokio runtime is configured")
    }

    /// Takes a connection from `pool`, turning a failure into [`ConnectError`].
    pub async fn connect(&self, pool: &Pool) -> Result<deadpool_postgres::Object, ConnectError> {
        pool.get().await.map_err(|err| ConnectError {
            target: self.to_string(),
            reason: describe_pool_error(&err),
        })
    }
}

impl DbTarget {
    /// The TLS connector, for cancel requests, which open a connection of their own.
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }
}

/// The password for `config`'s first host, port, database and user in a
/// libpq password file (`host:port:database:user:password`, `*` matching
/// anything, `\:` and `\\` escaped).
fn passfile_password(file: &Path, config: &PgConfig) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first()? {
        Host::Tcp(name) => name.clone(),
        Host::Unix(_) => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
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

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        write!(
            f,
            "host {} port {port} database {:?} as user {:?}",
            hosts.join(","),
            self.config.get_dbname().unwrap_or_default(),
            self.config.get_user().unwrap_or_default(),
        )?;
        match self.tls.mode {
            SslMode::Prefer => Ok(()),
            mode => write!(f, " (sslmode {mode})"),
        }
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
        None => true,
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

/// One line for a failure to get a pooled connection.
pub fn describe_pool_error(err: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
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
        None => error_chain(err),
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
                .config
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
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn password_never_shows() {
        let target = DbTarget::new(Some("postgres://u:s3cret@h/d"), env(&[])).unwrap();
        assert!(!format!("{target} {target:?}").contains("s3cret"));
        let target = DbTarget::new(None, env(&[("PGPASSWORD", "s3cret")])).unwrap();
        assert!(!format!("{target} {target:?}").contains("s3cret"));
    }
}
