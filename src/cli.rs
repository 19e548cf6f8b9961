//! The command line: clap types only, as other tools and scripts drive them.
//!
//! Every option can also come from the environment. Nothing here validates beyond
//! what clap does; `config` turns these raw values into a checked
//! [`Config`](crate::config::Config), and no clap type goes further.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::output::{ResultsFormat, StatusFormat};
pub use crate::telemetry::LogFormat;

use crate::units::PgDuration;

/// Keeps PostgreSQL and Citus materialized views fresh.
///
/// Exit codes: 0 all views refreshed or skipped on purpose; 1 at least one view
/// failed (or its outcome could not be recorded); 2 bad invocation or registry,
/// nothing was executed; 3 the database could not be reached; 128+N ended by
/// signal N (SIGTERM: 143) after cancelling the running statements.
#[derive(Debug, Parser)]
#[command(name = "mv-refresher", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// libpq-style URL or key=value string; when absent the standard PGHOST,
    /// PGPORT, PGUSER, PGPASSWORD, PGDATABASE and PGSSLMODE variables apply.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<ConnString>,

    /// A file holding the database URL (a mounted Secret), so the password sits
    /// in no environment variable; instead of --database-url.
    #[arg(
        long,
        env = "MV_REFRESHER_DATABASE_URL_FILE",
        global = true,
        value_name = "PATH"
    )]
    pub database_url_file: Option<PathBuf>,

    /// View registry (TOML); absent: the embedded default, which lists the
    /// reference platform's five views: its three materialized views
    /// (tenants_summary_view, user_activity_view, top_bets_today) and two
    /// incremental read models (user_activity, bets_latest, skipped where
    /// their tables do not exist).
    #[arg(long, env = "MV_REFRESHER_REGISTRY", global = true)]
    pub registry: Option<PathBuf>,

    /// Log format on stderr: json for machines (Kubernetes), text for people.
    #[arg(
        long,
        env = "MV_REFRESHER_LOG_FORMAT",
        global = true,
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// Views refreshed in parallel by refresh and run, given before the command
    /// or after it; other commands refuse it.
    #[arg(long, value_name = "N", value_parser = parse_jobs)]
    pub jobs: Option<NonZeroUsize>,

    /// Schema of the log tables materialized_views_refresh_log and
    /// materialized_views_refresh_history.
    #[arg(
        long,
        env = "MV_REFRESHER_LOG_SCHEMA",
        global = true,
        default_value = "public"
    )]
    pub log_schema: String,
}

/// A connection string as given; its `Debug` hides it, since it may hold a
/// password.
#[derive(Clone)]
pub struct ConnString(pub String);

impl std::str::FromStr for ConnString {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl std::fmt::Debug for ConnString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnString(<hidden>)")
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Refresh all registry views, or the named ones, once.
    Refresh(RefreshArgs),
    /// Refresh on a cron schedule (or --every DURATION) until SIGTERM: a
    /// sidecar or a Deployment.
    Run(RunArgs),
    /// Freshness report from the log tables.
    Status(StatusArgs),
    /// Validate the registry against the database and print the plan.
    Check(CheckArgs),
    /// Create or upgrade the log tables (idempotent).
    Init,
    /// Remove views' rows from the log tables (views dropped or renamed).
    Forget(ForgetArgs),
    /// Incremental views: compare each table with its full query and print
    /// the keys that differ (exit 1 when any do).
    Verify(VerifyArgs),
    /// Print the registry entry of a materialized view's incremental twin,
    /// derived from its definition and proven.
    Twin(TwinArgs),
}

#[derive(Debug, Args)]
pub struct TwinArgs {
    /// The materialized view (may be schema-qualified).
    #[arg(value_name = "VIEW")]
    pub view: String,

    /// The twin's name (default: the view's without `_view`, or with
    /// `_incremental`).
    #[arg(long = "as", value_name = "TABLE")]
    pub name: Option<String>,

    /// A source's marker where the catalog offers none (repeatable).
    #[arg(long, value_name = "TABLE.COLUMN")]
    pub marker: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Views to refresh (default: every registry view). A view the registry does
    /// not list is refreshed with the registry's [defaults].
    #[arg(value_name = "VIEW")]
    pub views: Vec<String>,

    /// Cancel what still runs after this long, like "4min" for a CronJob every
    /// five minutes; cancelled views count as failed.
    #[arg(long, env = "MV_REFRESHER_DEADLINE", value_name = "DURATION")]
    pub deadline: Option<PgDuration>,

    /// Incremental views: a full reconcile (every key recomputed, only the
    /// differences written) instead of the changed keys.
    #[arg(long)]
    pub full: bool,

    /// Results on stdout: a table for people, or one JSON object for scripts
    /// (default: json with --log-format json, else table).
    #[arg(long, value_enum)]
    pub format: Option<ResultsFormat>,

    /// After the run, PUT its metrics to this Prometheus Pushgateway (job
    /// "mv-refresher"), like http://pushgateway.monitoring:9091: a CronJob has
    /// nothing to scrape. A failed push is a warning.
    #[arg(
        long,
        env = "MV_REFRESHER_PUSHGATEWAY",
        value_name = "URL",
        hide_env_values = true
    )]
    pub pushgateway: Option<String>,

    /// A grouping label of the push, NAME=VALUE, so several refreshers share
    /// one Pushgateway. Repeatable; several may also be given in one value
    /// separated by commas, as the variable holds them
    /// (database=platform,team=payments). In a value, \, is a comma and \\ a
    /// backslash.
    #[arg(
        long = "pushgateway-label",
        env = "MV_REFRESHER_PUSHGATEWAY_LABELS",
        value_name = "NAME=VALUE"
    )]
    pub pushgateway_labels: Vec<crate::push::GroupingLabels>,

    #[command(flatten)]
    pub cycle: CycleArgs,
}

/// Options of every refresh cycle, `refresh` and `run` alike.
#[derive(Debug, Args)]
pub struct CycleArgs {
    /// Views refreshed in parallel (default 1); dependency order always holds.
    #[arg(long, env = "MV_REFRESHER_JOBS", value_name = "N", value_parser = parse_jobs)]
    pub jobs: Option<NonZeroUsize>,

    /// Delete history rows older than this after each run ("0" keeps them all).
    #[arg(
        long,
        env = "MV_REFRESHER_HISTORY_RETENTION",
        value_name = "DURATION",
        default_value = "30d"
    )]
    pub history_retention: PgDuration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Cron schedule: 5 fields as in a Kubernetes CronJob ("*/5 * * * *"), or 6
    /// with seconds first ("*/10 * * * * *": every ten seconds on the clock).
    /// Default "*/5 * * * *"; not with --every.
    #[arg(long, env = "MV_REFRESHER_SCHEDULE", value_name = "CRON")]
    pub schedule: Option<String>,

    /// Start a cycle at once, then every DURATION from the previous start,
    /// like "10s" (at least 1s); a cycle still running when the next is due
    /// makes that one skipped, as a schedule's tick is. Not with --schedule.
    #[arg(long, env = "MV_REFRESHER_EVERY", value_name = "DURATION", value_parser = parse_every)]
    pub every: Option<PgDuration>,

    /// Time zone of the schedule (IANA name).
    #[arg(long, env = "MV_REFRESHER_TIMEZONE", default_value = "UTC")]
    pub timezone: String,

    /// Serve /metrics, /healthz and /readyz on this address, like 0.0.0.0:9187.
    #[arg(long, env = "MV_REFRESHER_LISTEN", value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// On SIGTERM, how long running refreshes may finish before they are
    /// cancelled on the server.
    #[arg(
        long,
        env = "MV_REFRESHER_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "20s"
    )]
    pub shutdown_grace: PgDuration,

    #[command(flatten)]
    pub cycle: CycleArgs,
}

/// `--every`: a duration of at least a second (a bare number has no unit,
/// and is refused as every duration is).
fn parse_every(text: &str) -> Result<PgDuration, String> {
    let every: PgDuration = text.parse().map_err(|e| format!("{e}"))?;
    match every.as_millis() < 1000 {
        true => Err(format!(
            "{text:?} is too short: the loop's period must be at least 1s"
        )),
        false => Ok(every),
    }
}

/// `--jobs`: a count of at least one.
fn parse_jobs(text: &str) -> Result<NonZeroUsize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(NonZeroUsize::new(n).expect("not zero")),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also print the next run times of this cron schedule, as `run` reads it.
    #[arg(long, env = "MV_REFRESHER_SCHEDULE", value_name = "EXPR")]
    pub schedule: Option<String>,

    /// Time zone of --schedule (IANA name).
    #[arg(long, env = "MV_REFRESHER_TIMEZONE", default_value = "UTC")]
    pub timezone: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Incremental views to verify (default: every one the registry lists).
    #[arg(value_name = "VIEW")]
    pub views: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Views to forget, as the log tables name them (schema-qualified) or as
    /// the registry does.
    #[arg(value_name = "VIEW", required = true)]
    pub views: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format: a table for people, json for scripts, prometheus for a
    /// textfile collector or a pushgateway.
    #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
    pub format: StatusFormat,

    /// Exit with code 1 when any view is older than this (or was never
    /// refreshed): an alert check or a probe.
    #[arg(long, env = "MV_REFRESHER_MAX_AGE", value_name = "DURATION")]
    pub max_age: Option<PgDuration>,
}
