//! Incremental views (SPEC §2.5): plain tables kept equal to a query by
//! recomputing only the keys whose inputs changed since the last cycle.
//!
//! * [`template`] finds the query's `$changed(...)` marks with a tokenizer
//!   that respects strings, comments and dollar quotes.
//! * [`derive`] derives a materialized view's incremental form from its
//!   parse tree (`twin`).
//! * [`catalog`] reads, while planning, the query's columns and what it reads,
//!   the table's keys, and each source's marker and indexes.
//! * [`markers`] bounds time-like markers by the server's clock and counts
//!   the rows ahead of it.
//! * [`sql`] makes the statements of a cycle; `refresh::incremental` runs them.
//! * [`nodes`] takes each Citus node's snapshot, by which a cycle there skips
//!   the rows the last one read.
//! * [`proof`] proves a query's `$changed` on a sample of keys: restricted,
//!   it returns the full query's rows of those keys.
//! * [`identity`] reads and compares what ties a view's state to its table,
//!   its sources and this cluster.

pub mod catalog;
pub mod derive;
pub mod identity;
pub mod markers;
pub mod nodes;
pub mod proof;
pub mod sql;
mod template;

pub use template::Template;
