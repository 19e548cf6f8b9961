//! Everything a command needs, checked before anything connects: the command
//! line (clap's types end here), the environment and the registry become one
//! [`Config`]. A bad value is exit code 2 with the option, variable, file, line
//! or key named, and nothing was executed.

use std::net::SocketAddr;

use crate::cli::{CheckArgs, Cli, Command, CycleArgs, GlobalArgs, RefreshArgs, RunArgs};
use crate::db::DbTarget;
use crate::error::Error;
use crate::output::{ResultsFormat, StatusFormat};
use crate::push::Pushgateway;
use crate::refresh_log::RefreshLog;
use crate::registry::{Registry, ViewSpec};
use crate::schedule::{Cadence, Schedule};

use crate::telemetry::LogFormat;
use crate::units::PgDuration;

/// The libpq variables that say which database to reach (the others say how).
const WHERE_VARIABLES: [&str; 5] = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"];

/// A command, validated.
#[derive(Debug)]
pub struct Config {
    pub target: DbTarget,
    /// Neither a URL nor a `PG*` variable said where the database is: the
    /// target is libpq's default, `localhost:5432`.
    pub default_target: bool,
    pub log: RefreshLog,
    pub log_format: LogFormat,
    pub command: CommandConfig,
}

/// What each command was asked to do.
#[derive(Debug)]
pub enum CommandConfig {
    Refresh(RefreshConfig),
    Run(RunConfig),
    Status(StatusConfig),
    Check(CheckConfig),
    Init,
    Forget {
        views: Vec<String>,
    },
    /// The incremental views to compare with their queries.
    Verify {
        views: Vec<ViewSpec>,
    },
    Twin(TwinConfig),
}

/// What `twin` was asked.
#[derive(Debug, Clone)]
pub struct TwinConfig {
    pub view: String,
    /// The twin's name (`--as`).
    pub name: Option<String>,
    /// `TABLE.COLUMN`: a source's marker where the catalog offers none.
    pub markers: Vec<String>,
}

/// Options of every refresh cycle, `refresh` and `run` alike.
#[derive(Debug, Clone, Copy)]
pub struct CycleConfig {
    /// Views refreshed at once.
    pub jobs: usize,
    /// History older than this is pruned after each cycle; zero keeps it all.
    pub history_retention: PgDuration,
}

#[derive(Debug)]
pub struct RefreshConfig {
    pub registry: Registry,
    /// The views to refresh: the registry's, or those named.
    pub views: Vec<ViewSpec>,
    /// The views were named on the command line.
    pub named: bool,
    pub cycle: CycleConfig,
    pub deadline: Option<PgDuration>,
    /// Incremental views are fully reconciled.
    pub full: bool,
    /// The results on stdout; `None`: none (JSON logs are the results).
    pub format: Option<ResultsFormat>,
    pub pushgateway: Option<Pushgateway>,
}

#[derive(Debug)]
pub struct RunConfig {
    pub registry: Registry,
    pub cycle: CycleConfig,
    /// When cycles start: `--schedule` or `--every`.
    pub cadence: Cadence,
    pub listen: Option<SocketAddr>,
    /// How long running refreshes may go on after the shutdown began.
    pub shutdown_grace: PgDuration,
}

#[derive(Debug)]
pub struct StatusConfig {
    pub registry: Registry,
    pub format: StatusFormat,
    pub max_age: Option<PgDuration>,
}

#[derive(Debug)]
pub struct CheckConfig {
    pub registry: Registry,
    pub schedule: Option<Schedule>,
}

/// The incremental views of `registry` that `names` pick (all when empty); a
/// name of anything else is a bad invocation.
fn incremental_views(registry: &Registry, names: &[String]) -> Result<Vec<ViewSpec>, Error> {
    let picked = registry.select(names).map_err(Error::Usage)?;
    if let Some(other) = picked
        .iter()
        .find(|v| v.incremental.is_none() && !names.is_empty())
    {
        return Err(Error::Usage(format!(
            "{} is not an incremental view of the registry {} (verify compares incremental \
             views with their queries)",
            other.name, registry.source
        )));
    }
    let views: Vec<ViewSpec> = picked
        .into_iter()
        .filter(|v| v.incremental.is_some())
        .collect();
    if views.is_empty() {
        return Err(Error::Usage(format!(
            "the registry {} lists no incremental view to verify",
            registry.source
        )));
    }
    Ok(views)
}

impl Config {
    /// Validates the command line, with the environment it read and the
    /// registry it names.
    pub fn from_cli(cli: Cli) -> Result<Self, Error> {
        let global = &cli.global;
        if global.jobs.is_some() && !matches!(cli.command, Command::Refresh(_) | Command::Run(_)) {
            return Err(Error::Usage(
                "--jobs applies to refresh and run only".into(),
            ));
        }
        let url = database_url(global)?;
        let target = DbTarget::new(url.as_deref(), |key| std::env::var(key).ok())?;
        let default_target = url.is_none()
            && WHERE_VARIABLES
                .iter()
                .all(|key| std::env::var_os(key).is_none());
        let registry = || Registry::load(global.registry.as_deref());
        let command = match &cli.command {
            Command::Refresh(args) => CommandConfig::Refresh(refresh(global, args, registry()?)?),
            Command::Run(args) => CommandConfig::Run(RunConfig {
                registry: registry()?,
                cycle: cycle(global, &args.cycle),
                cadence: cadence(args)?,
                listen: args.listen,
                shutdown_grace: args.shutdown_grace,
            }),
            Command::Status(args) => CommandConfig::Status(StatusConfig {
                registry: registry()?,
                format: args.format,
                max_age: args.max_age,
            }),
            Command::Check(CheckArgs {
                schedule: s,
                timezone,
            }) => CommandConfig::Check(CheckConfig {
                registry: registry()?,
                schedule: s.as_deref().map(|s| schedule(s, timezone)).transpose()?,
            }),
            Command::Init => CommandConfig::Init,
            Command::Forget(args) => CommandConfig::Forget {
                views: args.views.clone(),
            },
            Command::Verify(args) => CommandConfig::Verify {
                views: incremental_views(&registry()?, &args.views)?,
            },
            Command::Twin(args) => CommandConfig::Twin(TwinConfig {
                view: args.view.clone(),
                name: args.name.clone(),
                markers: args.marker.clone(),
            }),
        };
        Ok(Self {
            target,
            default_target,
            log: RefreshLog::new(&global.log_schema),
            log_format: global.log_format,
            command,
        })
    }
}

fn refresh(
    global: &GlobalArgs,
    args: &RefreshArgs,
    registry: Registry,
) -> Result<RefreshConfig, Error> {
    let views = registry.select(&args.views).map_err(Error::Usage)?;
    let labels: Vec<_> = args
        .pushgateway_labels
        .iter()
        .flat_map(|labels| labels.0.iter().cloned())
        .collect();
    let pushgateway = args
        .pushgateway
        .as_deref()
        .map(|url| Pushgateway::new(url, &labels))
        .transpose()
        .map_err(|e| Error::Usage(format!("--pushgateway: {e}")))?;
    // Without --format, the results follow the logs: a table beside text logs,
    // nothing beside JSON logs, whose events (one per view, then the summary)
    // are the results.
    let format = args.format.or(match global.log_format {
        LogFormat::Text => Some(ResultsFormat::Table),
        LogFormat::Json => None,
    });
    Ok(RefreshConfig {
        registry,
        views,
        named: !args.views.is_empty(),
        cycle: cycle(global, &args.cycle),
        deadline: args.deadline,
        full: args.full,
        format,
        pushgateway,
    })
}

/// `--jobs` before the command (`mv-refresher --jobs 2 refresh`) or after it.
fn cycle(global: &GlobalArgs, args: &CycleArgs) -> CycleConfig {
    CycleConfig {
        jobs: global.jobs.or(args.jobs).map_or(1, |n| n.get()),
        history_retention: args.history_retention,
    }
}

/// What a CronJob runs, when `run` is given neither `--schedule` nor `--every`.
const DEFAULT_SCHEDULE: &str = "*/5 * * * *";

/// `run`'s `--schedule` or `--every`, never both.
fn cadence(args: &RunArgs) -> Result<Cadence, Error> {
    match (&args.schedule, args.every) {
        (Some(_), Some(_)) => Err(Error::Usage(
            "give --schedule (MV_REFRESHER_SCHEDULE) or --every (MV_REFRESHER_EVERY), not both"
                .into(),
        )),
        (None, Some(every)) => Ok(Cadence::Every(every)),
        (expression, None) => Ok(Cadence::Cron(schedule(
            expression.as_deref().unwrap_or(DEFAULT_SCHEDULE),
            &args.timezone,
        )?)),
    }
}

fn schedule(expression: &str, timezone: &str) -> Result<Schedule, Error> {
    Schedule::new(expression, timezone).map_err(|e| Error::Usage(format!("--schedule: {e}")))
}

/// The URL from --database-url, or read from --database-url-file.
fn database_url(global: &GlobalArgs) -> Result<Option<String>, Error> {
    match (&global.database_url, &global.database_url_file) {
        (Some(_), Some(_)) => Err(Error::Usage(
            "give the database URL inline (--database-url, DATABASE_URL) or in a file \
             (--database-url-file, MV_REFRESHER_DATABASE_URL_FILE), not both"
                .into(),
        )),
        (Some(url), None) => Ok(Some(url.0.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim().to_owned()))
            .map_err(|e| {
                Error::Usage(format!(
                    "cannot read --database-url-file {}: {e}",
                    path.display()
                ))
            }),
        (None, None) => Ok(None),
    }
}
