//! Incremental views (SPEC §2.5): plain tables kept equal to a query by
//! recomputing only the keys whose inputs changed since the last cycle.
//!
//! * [`template`] finds the query's `$changed(...)` marks with a tokenizer
//!   that respects strings, comments and dollar quotes.

mod template;

pub use template::Template;
