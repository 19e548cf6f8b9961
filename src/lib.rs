//! mv-refresher keeps PostgreSQL and Citus materialized views fresh.
//!
//! The binary (`main.rs`) parses the command line into a [`config::Config`]
//! and runs it with [`commands::run`]. The modules, by what they hold
//! (docs/ARCHITECTURE.md shows how one refresh flows through them):
//!
//! * the commands: `commands` (one module each), `cli` (clap's types),
//!   `config` (everything validated before anything connects);
//! * what to refresh: `registry` (the view list and its TOML), `units`
//!   (durations, memory), `schedule` (cron, as Kubernetes reads it, or a
//!   fixed period);
//! * the server: `db` (connecting, housekeeping transactions), `tls`,
//!   `catalog` (what the server says about the views), `quote` (SQL text),
//!   `prepared` (statements run for every view, planned once per backend);
//! * refreshing: `plan` (order, method, work_mem), `tuner` (work_mem =
//!   "auto"), `cycle` (one run of the plan), `refresh` (one view, one
//!   transaction; the executor; the recording), `refresh_log` (the log
//!   tables), `runner` (cycles on a schedule or every period), `shutdown`
//!   (signals, deadline);
//! * telling people and machines: `output`, `progress`, `telemetry`,
//!   `metrics`, `http`, `push`, `error`.

#![forbid(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cycle;
pub mod db;
pub mod error;
pub mod http;
pub mod incremental;
pub mod metrics;
pub mod outcome;
pub mod output;
pub mod plan;
pub mod prepared;
pub mod progress;
pub mod push;
pub mod quote;
pub mod refresh;
pub mod refresh_log;
pub mod registry;
pub mod runner;
pub mod schedule;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod tuner;
pub mod units;
