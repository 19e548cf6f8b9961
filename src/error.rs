//! The errors that end a command before or instead of refreshing, and the exit
//! code each maps to. A view that fails is not an error here: it is an outcome
//! (`refresh::Outcome`) and exit code 1.

use std::process::ExitCode;

use crate::db::{ConnectError, InvalidUrl, describe_error, is_connection_error};
use crate::registry::LoadError;

/// Exit codes, part of the interface (README: Exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: all views refreshed or skipped on purpose.
    Success,
    /// 1: at least one view failed, or an outcome could not be recorded.
    ViewsFailed,
    /// 2: bad invocation or registry: nothing was executed.
    Usage,
    /// 3: the database could not be reached.
    Unreachable,
    /// 128 + N: ended by signal N, after cancelling the running statements.
    Signal(i32),
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::ViewsFailed => 1,
            Self::Usage => 2,
            Self::Unreachable => 3,
            Self::Signal(n) => u8::try_from(128 + n).unwrap_or(u8::MAX),
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] LoadError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    InvalidUrl(#[from] InvalidUrl),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A statement failed on a working connection; the server's error is the
    /// source.
    #[error("{context}")]
    Database {
        context: String,
        #[source]
        source: PgError,
    },
}

/// A PostgreSQL error as people read it: the server's message, detail and
/// hint, or what happened to the connection. Printed whole, so it has no
/// `source()` of its own (tokio-postgres's errors print their cause and
/// return it too); [`PgError::code`] keeps the SQLSTATE to branch on.
#[derive(Debug)]
pub struct PgError(pub tokio_postgres::Error);

impl PgError {
    /// The SQLSTATE, when the server sent an error.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.0.code()
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe_error(&self.0))
    }
}

impl std::error::Error for PgError {}

/// An error and its causes on one line, `outer: inner: innermost`, as the
/// binary prints what ended a command.
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// How to say where the database is, for one that was not reached where
/// nothing said it was.
const WHERE_HINT: &str = "set DATABASE_URL (or --database-url, --database-url-file) or the PG* \
     variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)";

impl Error {
    /// An unreachable database also says how to name the right one: for a
    /// target that neither a URL nor a `PG*` variable gave (libpq's default,
    /// `localhost:5432`), which a newcomer may not know was tried.
    pub fn with_where_hint(self) -> Self {
        match self {
            Self::Connect(mut err) => {
                err.reason = format!("{}; {WHERE_HINT}", err.reason);
                Self::Connect(err)
            }
            other => other,
        }
    }

    /// Wraps a PostgreSQL error met while doing `context`; a lost connection
    /// counts as unreachable.
    pub fn database(
        context: &str,
        target: &impl std::fmt::Display,
        err: tokio_postgres::Error,
    ) -> Self {
        if is_connection_error(&err) {
            Self::Connect(ConnectError {
                target: target.to_string(),
                reason: format!("{context}: {}", describe_error(&err)),
            })
        } else {
            Self::Database {
                context: context.to_owned(),
                source: PgError(err),
            }
        }
    }

    /// For `map_err`: wraps a PostgreSQL error met while doing `context`.
    pub fn in_context<'a>(
        context: &'a str,
        target: &'a impl std::fmt::Display,
    ) -> impl FnOnce(tokio_postgres::Error) -> Self + 'a {
        move |err| Self::database(context, target, err)
    }

    pub fn exit(&self) -> Exit {
        match self {
            Self::Registry(_) | Self::Usage(_) | Self::InvalidUrl(_) => Exit::Usage,
            Self::Connect(_) => Exit::Unreachable,
            Self::Database { .. } => Exit::ViewsFailed,
        }
    }
}
