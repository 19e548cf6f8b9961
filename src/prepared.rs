//! The statements a refresh runs for every view (its state under the lock,
//! its success row), prepared by name on the server backend that runs them:
//! parsed, analysed and planned once per backend, not once per view. For a
//! small view that work weighed as much as a third of its `REFRESH`.
//!
//! Prepared with SQL's `PREPARE` and run with `EXECUTE`, under a name made of
//! their text (the same name is the same statement, whichever refresher
//! prepared it), and nothing is assumed of the session: a transaction pooler
//! may run each transaction on another backend. Whether the backend has the
//! statement is a guess (it has once this connection prepared it); the server
//! checks it, `EXECUTE` of a statement it lacks failing with `26000` and
//! `PREPARE` of one it has with `42P05`, and the caller sends the statement
//! again with the other guess. A direct connection, or a session pooler,
//! guesses right every time.
//!
//! `EXECUTE` takes no bind parameters: its arguments are literals, each quoted
//! and typed by the prepared statement's parameters.

use std::fmt::Display;
use std::hash::{DefaultHasher, Hash, Hasher};

use tokio_postgres::error::SqlState;

use crate::db::{Conn, Ran};
use crate::quote::quote_literal;

/// A statement to run prepared.
pub struct Prepared {
    name: String,
    prepare: String,
}

impl Prepared {
    /// `body` with parameters `$1`… of `types`, named `mv_refresher_{kind}_`
    /// and its text's hash.
    pub fn new(kind: &str, types: &[&str], body: &str) -> Self {
        let definition = format!("({}) AS {body}", types.join(", "));
        let mut hasher = DefaultHasher::new();
        definition.hash(&mut hasher);
        let name = format!("mv_refresher_{kind}_{:016x}", hasher.finish());
        Self {
            prepare: format!("PREPARE {name} {definition}"),
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The statements that run it with `arguments` (from [`literal`]): its
    /// `EXECUTE`, after its `PREPARE` when `prepare`.
    fn statements(&self, arguments: &[String], prepare: bool) -> Vec<String> {
        let execute = format!("EXECUTE {}({})", self.name, arguments.join(", "));
        match prepare {
            true => vec![self.prepare.clone(), execute],
            false => vec![execute],
        }
    }
}

/// A prepared statement to run with its arguments on a connection, and the
/// guess that the server backend behind it has the statement: the
/// connection's until the server says otherwise, then the other, once.
pub struct Execution<'a> {
    conn: &'a Conn,
    statement: Prepared,
    arguments: Vec<String>,
    /// The guess: the backend lacks it, `PREPARE` first.
    prepare: bool,
    corrected: bool,
}

impl<'a> Execution<'a> {
    pub fn new(conn: &'a Conn, statement: Prepared, arguments: Vec<String>) -> Self {
        let prepare = !conn.has_prepared(statement.name());
        Self {
            conn,
            statement,
            arguments,
            prepare,
            corrected: false,
        }
    }

    /// Its statements, to send in a message after others.
    pub fn statements(&self) -> Vec<String> {
        self.statement.statements(&self.arguments, self.prepare)
    }

    /// Where the `EXECUTE`'s answer is in [`Ran::rows`] when its statements
    /// were sent from place `at` of their message.
    pub fn answer_at(&self, at: usize) -> usize {
        at + usize::from(self.prepare)
    }

    /// After a message holding its statements from place `at` was answered:
    /// notes that the backend has the statement when it ran there, and
    /// whether to send it again with the other guess (the server said this
    /// one was wrong, and it was not corrected before).
    pub fn again(&mut self, ran: &Ran, at: usize) -> bool {
        if ran.rows.len() > at {
            // Its PREPARE or its EXECUTE ran: the backend has it.
            self.conn.note_prepared(self.statement.name());
        }
        let wrong = !self.corrected
            && ran
                .error
                .as_ref()
                .is_some_and(|err| wrong_guess(err, self.prepare));
        if wrong {
            (self.prepare, self.corrected) = (!self.prepare, true);
        }
        wrong
    }
}

/// An argument of `EXECUTE`: `NULL`, or the value's text quoted.
pub fn literal(value: Option<impl Display>) -> String {
    value.map_or_else(|| "NULL".to_owned(), |v| quote_literal(&v.to_string()))
}

/// Whether `err` says the guess `prepare` was wrong: the statement was
/// prepared on this backend already, or it was not.
fn wrong_guess(err: &tokio_postgres::Error, prepare: bool) -> bool {
    let wrong = match prepare {
        true => SqlState::DUPLICATE_PSTATEMENT,
        false => SqlState::INVALID_SQL_STATEMENT_NAME,
    };
    err.code() == Some(&wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_statements_text_and_the_arguments_are_quoted() {
        let a = Prepared::new("state", &["oid", "text"], "SELECT $1, $2");
        assert!(a.name().starts_with("mv_refresher_state_"), "{}", a.name());
        assert_eq!(a.name().len(), "mv_refresher_state_".len() + 16);
        // The same text, the same name; another text, another name.
        let same = Prepared::new("state", &["oid", "text"], "SELECT $1, $2");
        assert_eq!(a.name(), same.name());
        let other = Prepared::new("state", &["oid", "text"], "SELECT $2, $1");
        assert_ne!(a.name(), other.name());
        let arguments = [literal(Some(42)), literal(None::<&str>)];
        assert_eq!(
            a.statements(&arguments, true),
            [
                format!("PREPARE {} (oid, text) AS SELECT $1, $2", a.name()),
                format!("EXECUTE {}('42', NULL)", a.name())
            ]
        );
        assert_eq!(a.statements(&arguments, false).len(), 1);
        assert_eq!(literal(Some("it's")), "'it''s'");
    }
}
