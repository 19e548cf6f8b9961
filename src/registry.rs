//! The view registry: which materialized views to refresh and with what settings.
//!
//! The registry is a TOML file (or the embedded default listing the seeds' three
//! aggregate views and their two incremental twins). Everything in it is checked here, before any connection is
//! made: unknown keys, malformed or out-of-range values, duplicate views and an
//! empty list are errors naming the file, line and key. What the names refer to in
//! the database is checked later, by `catalog`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use crate::incremental::Template;
use crate::quote::display_ident;
use crate::units::{Memory, PgDuration};

/// The registry used when none is given: the seeds' three aggregate views and
/// the reference platform's two incremental read models.
pub const EMBEDDED_REGISTRY: &str = include_str!("default_registry.toml");

/// What `source` says when the embedded default is in use.
const EMBEDDED_SOURCE: &str = "<embedded default registry>";

/// The validated list of views to refresh.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The file the registry was read from, or a marker for the embedded default.
    pub source: String,
    /// The views, in the order the file lists them.
    pub views: Vec<ViewSpec>,
    /// The settings of `[defaults]`, used for views named on the command line only.
    pub defaults: ViewSettings,
}

/// One view of the registry and the settings its refresh runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewSpec {
    pub name: ViewName,
    pub settings: ViewSettings,
    /// Set for an incremental view: a table kept equal to a query.
    pub incremental: Option<Incremental>,
}

/// An incremental view (SPEC §2.5): a table the refresher keeps equal to
/// `query`, recomputing only the keys whose inputs changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Incremental {
    /// The table's key columns, as the catalog spells them.
    pub key: Vec<String>,
    pub query: Template,
    /// The tables whose changes matter, each with its marker.
    pub changes: Vec<Source>,
    /// Whether a missing table is created (and loaded); `false`: the view is
    /// skipped where its table does not exist.
    pub create: bool,
    /// Columns whose value is the time (or a draw) of the cycle that wrote
    /// the row (`now() AS last_refreshed_at`): written as computed, left out
    /// when `verify` and the proofs compare rows, and named there.
    pub volatile: Vec<String>,
}

impl Incremental {
    /// What the table's rows and watermarks depend on: the query, the key,
    /// and each source's table, key and marker. A cycle under another
    /// definition than the last one's reconciles in full.
    pub fn definition(&self) -> String {
        let mut text = format!("{}\n{:?}", self.query, self.key);
        for source in &self.changes {
            text.push_str(&format!(
                "\n{} {:?} {}",
                source.table, source.key, source.marker
            ));
        }
        text
    }
}

/// One `[[view.changes]]`: a source table and how its changed keys are found.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub table: ViewName,
    /// SQL expressions over the table giving the view's key, in key order.
    pub key: Vec<String>,
    /// A column that grows with every insert and update of a row.
    pub marker: String,
    /// How far below the watermark each cycle looks again, for late commits.
    pub lag: Lag,
}

/// A source's `lag`, in the marker's own units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// For numeric markers (a sequence, a version).
    Units(i64),
    /// For timestamp markers.
    Duration(PgDuration),
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Units(n) => write!(f, "{n}"),
            Self::Duration(d) => write!(f, "{d}"),
        }
    }
}

/// Per-view settings, with `[defaults]` and the built-in defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewSettings {
    /// The server's own, a fixed value, or measured (see docs/BENCHMARKS.md
    /// for why more is not always faster).
    pub work_mem: WorkMem,
    /// The most `work_mem = "auto"` tries, shared by the `--jobs` views that
    /// run at once.
    pub work_mem_max: Memory,
    pub statement_timeout: PgDuration,
    pub lock_timeout: PgDuration,
    /// How long a plain refresh of a populated view waits for its lock: it
    /// takes an ACCESS EXCLUSIVE lock, and every new reader queues behind it
    /// while it waits.
    pub plain_lock_timeout: PgDuration,
    pub concurrently: Concurrently,
    pub retries: u32,
    /// Skip the view when it was refreshed successfully more recently than this.
    pub min_interval: Option<PgDuration>,
    /// Whether a concurrent refresh that leaves many dead rows is followed by
    /// `VACUUM (ANALYZE)`.
    pub vacuum: Vacuum,
    /// How often an incremental view is fully reconciled; `None`: never.
    pub full_every: Option<PgDuration>,
}

/// The `work_mem` a view's refresh runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkMem {
    /// The server's (the role's, the database's) own.
    Server,
    Fixed(Memory),
    /// Measured: the setting with the lowest median duration (see `tuner`).
    Auto,
}

impl fmt::Display for WorkMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server => f.write_str("server"),
            Self::Fixed(memory) => write!(f, "{memory}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

/// Bloat care after `REFRESH ... CONCURRENTLY`, which leaves a dead row for
/// every row it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vacuum {
    /// Vacuum when dead rows pass autovacuum's default threshold:
    /// 50 + 20% of the live rows.
    Auto,
    /// Leave it to autovacuum.
    Never,
}

impl FromStr for Vacuum {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "invalid value {other:?}: expected \"auto\" or \"never\""
            )),
        }
    }
}

/// When to use `REFRESH MATERIALIZED VIEW CONCURRENTLY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrently {
    /// Concurrently when the view is populated and has a usable unique index.
    Auto,
    /// Concurrently or not at all: a view that cannot be is a failure.
    Always,
    /// Always a plain refresh.
    Never,
}

/// A view name as written: optionally schema-qualified, with SQL identifier rules
/// (unquoted parts fold to lower case, `"Quoted"` parts are kept as written).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewName {
    pub schema: Option<String>,
    pub name: String,
}

/// A registry that cannot be loaded: a file that cannot be read, or one that
/// is wrong somewhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read at all: there is no line to point at.
    #[error("cannot read registry {file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error(transparent)]
    Invalid(#[from] RegistryError),
}

/// A registry that cannot be used, with the place that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct RegistryError {
    /// The registry file, or a marker for the embedded default.
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Default for ViewSettings {
    fn default() -> Self {
        Self {
            work_mem: WorkMem::Server,
            work_mem_max: "1GB".parse().expect("valid constant"),
            statement_timeout: "10min".parse().expect("valid constant"),
            lock_timeout: "30s".parse().expect("valid constant"),
            plain_lock_timeout: "2s".parse().expect("valid constant"),
            concurrently: Concurrently::Auto,
            retries: 2,
            min_interval: None,
            vacuum: Vacuum::Auto,
            full_every: Some("24h".parse().expect("valid constant")),
        }
    }
}

impl Concurrently {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

impl FromStr for Concurrently {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "invalid value {other:?}: expected \"auto\", \"always\" or \"never\""
            )),
        }
    }
}

impl ViewName {
    /// Whether `other` may name the same view: equal, or equal once the schema
    /// one of them leaves out is ignored.
    pub fn matches(&self, other: &ViewName) -> bool {
        self.name == other.name
            && (self.schema.is_none() || other.schema.is_none() || self.schema == other.schema)
    }
}

impl FromStr for ViewName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = split_identifiers(text, "view name")?;
        match parts.len() {
            1 => Ok(Self {
                schema: None,
                name: parts.remove(0),
            }),
            2 => Ok(Self {
                name: parts.remove(1),
                schema: Some(parts.remove(0)),
            }),
            _ => Err(format!(
                "invalid view name {text:?}: expected \"view\" or \"schema.view\""
            )),
        }
    }
}

impl fmt::Display for ViewName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{}.", display_ident(schema))?;
        }
        write!(f, "{}", display_ident(&self.name))
    }
}

/// The longest identifier PostgreSQL keeps, in bytes (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Splits `schema."View"` into identifiers, applying SQL's case folding.
fn split_identifiers(text: &str, what: &str) -> Result<Vec<String>, String> {
    let invalid = |why: &str| format!("invalid {what} {text:?}: {why}");
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(invalid("unterminated quoted identifier")),
                }
            }
            if !matches!(chars.peek(), None | Some('.')) {
                return Err(invalid("unexpected text after a quoted identifier"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(invalid("quote inside an unquoted identifier"));
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(invalid("empty identifier"));
        }
        if part.len() > MAX_IDENTIFIER_BYTES {
            return Err(invalid(&format!(
                "{:?} is {} bytes long, and PostgreSQL keeps {MAX_IDENTIFIER_BYTES} at most \
                 (it would be truncated, so no relation can have this name)",
                part,
                part.len()
            )));
        }
        parts.push(part);
        match chars.next() {
            Some('.') => continue,
            None => return Ok(parts),
            Some(_) => unreachable!("parts end at a dot or at the end"),
        }
    }
}

/// One table of the file: `[defaults]` or a `[[view]]`. Both share the keys, so
/// one struct with `deny_unknown_fields` catches misspellings in either.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: Option<Spanned<String>>,
    work_mem: Option<Spanned<String>>,
    work_mem_max: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    lock_timeout: Option<Spanned<String>>,
    plain_lock_timeout: Option<Spanned<String>>,
    concurrently: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    min_interval: Option<Spanned<String>>,
    vacuum: Option<Spanned<String>>,
    full_every: Option<Spanned<String>>,
    key: Option<Spanned<Vec<String>>>,
    query: Option<Spanned<String>>,
    query_file: Option<Spanned<String>>,
    changes: Option<Vec<Spanned<RawChange>>>,
    create: Option<Spanned<bool>>,
    volatile: Option<Spanned<Vec<String>>>,
}

/// One `[[view.changes]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChange {
    table: Option<Spanned<String>>,
    key: Option<Spanned<Vec<String>>>,
    marker: Option<Spanned<String>>,
    lag: Option<Spanned<RawLag>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLag {
    Units(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    defaults: Option<Spanned<RawTable>>,
    #[serde(default)]
    view: Vec<Spanned<RawTable>>,
}

/// Largest `work_mem` and timeouts PostgreSQL accepts (INT_MAX kB and ms).
const PG_INT_MAX: u64 = i32::MAX as u64;
const MIN_WORK_MEM_KB: u64 = 64;
const MAX_RETRIES: i64 = 10;
const MAX_MIN_INTERVAL_MS: u64 = 366 * 86_400_000;

impl Registry {
    /// Whether this is the embedded default, not a file the user gave.
    pub fn is_embedded(&self) -> bool {
        self.source == EMBEDDED_SOURCE
    }

    /// Reads the registry at `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, LoadError> {
        match path {
            None => Ok(Self::parse(EMBEDDED_REGISTRY, EMBEDDED_SOURCE)?),
            Some(path) => {
                let source = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|err| LoadError::Unreadable {
                    reason: io_reason(&err),
                    file: source.clone(),
                })?;
                Ok(Self::parse(&text, &source)?)
            }
        }
    }

    /// Parses and validates registry `text`; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, RegistryError> {
        let error_at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = line_column(text, span.map_or(0, |s| s.start));
            RegistryError {
                file: source.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawRegistry = toml::from_str(text)
            .map_err(|err| error_at(err.span(), suggest_key(err.message().trim_end())))?;

        let builtin = ViewSettings::default();
        let dir = (source != EMBEDDED_SOURCE)
            .then(|| Path::new(source).parent())
            .flatten();
        let defaults = match &raw.defaults {
            Some(table) => {
                let t = table.get_ref();
                let view_only = [
                    ("name", t.name.as_ref().map(Spanned::span)),
                    ("key", t.key.as_ref().map(Spanned::span)),
                    ("query", t.query.as_ref().map(Spanned::span)),
                    ("query_file", t.query_file.as_ref().map(Spanned::span)),
                    (
                        "changes",
                        t.changes
                            .as_ref()
                            .and_then(|c| c.first())
                            .map(Spanned::span),
                    ),
                    ("create", t.create.as_ref().map(Spanned::span)),
                    ("volatile", t.volatile.as_ref().map(Spanned::span)),
                ];
                if let Some((key, span)) = view_only.into_iter().find(|(_, s)| s.is_some()) {
                    return Err(error_at(
                        span,
                        format!("key {key:?} belongs in a [[view]] table, not in [defaults]"),
                    ));
                }
                apply(table.get_ref(), &builtin).map_err(|(span, msg)| error_at(span, msg))?
            }
            None => builtin,
        };

        if raw.view.is_empty() {
            return Err(error_at(
                None,
                "the registry lists no views: add at least one [[view]] table with a name".into(),
            ));
        }

        let mut views: Vec<ViewSpec> = Vec::with_capacity(raw.view.len());
        for table in &raw.view {
            let view = view_spec(table, &defaults, &views, dir).map_err(|(s, m)| error_at(s, m))?;
            views.push(view);
        }

        Ok(Self {
            source: source.to_owned(),
            views,
            defaults,
        })
    }

    /// The views to refresh: all of them, or those `names` picks. A name the
    /// registry does not list is refreshed with the `[defaults]` settings.
    pub fn select(&self, names: &[String]) -> Result<Vec<ViewSpec>, String> {
        if names.is_empty() {
            return Ok(self.views.clone());
        }
        let mut picked: Vec<ViewSpec> = Vec::new();
        for text in names {
            let name: ViewName = text.parse()?;
            if picked.iter().any(|v| v.name == name) {
                continue;
            }
            // The registry's settings; the more specific of the two names, so
            // `refresh reporting.daily` never refreshes another schema's `daily`.
            let spec = match self.views.iter().find(|v| v.name.matches(&name)) {
                Some(listed) if name.schema.is_some() => ViewSpec {
                    name,
                    ..listed.clone()
                },
                Some(listed) => listed.clone(),
                None => ViewSpec {
                    name,
                    settings: self.defaults.clone(),
                    incremental: None,
                },
            };
            picked.push(spec);
        }
        Ok(picked)
    }
}

/// What the system says of `err`, without the `(os error 2)` it appends.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match err.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map_or(text.clone(), str::to_owned),
        None => text,
    }
}

/// serde's `unknown field `x`, expected one of `a`, `b`` with the closest
/// known key put first, when one is close enough to be a likely typo; any
/// other message as it is.
fn suggest_key(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    // The names serde quotes in backticks: the unknown one, then those expected.
    let mut names = rest.split('`').step_by(2);
    let Some(unknown) = names.next() else {
        return message.to_owned();
    };
    let closest = names
        .map(|known| (strsim::jaro_winkler(unknown, known), known))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, known)) => {
            let expected = rest.split_once(", ").map_or("", |(_, expected)| expected);
            format!("unknown field `{unknown}`: did you mean `{known}`? ({expected})")
        }
        None => message.to_owned(),
    }
}

type Span = Option<std::ops::Range<usize>>;

/// What is wrong, and where.
type Invalid = (Span, String);

/// One `[[view]]` table over `defaults`; a name already among `earlier` is an
/// error.
fn view_spec(
    table: &Spanned<RawTable>,
    defaults: &ViewSettings,
    earlier: &[ViewSpec],
    dir: Option<&Path>,
) -> Result<ViewSpec, (Span, String)> {
    let Some(name) = &table.get_ref().name else {
        return Err((
            Some(table.span()),
            "[[view]] table has no key \"name\"".into(),
        ));
    };
    let parsed: ViewName = name
        .get_ref()
        .parse()
        .map_err(|msg| (Some(name.span()), format!("key \"name\": {msg}")))?;
    if let Some(earlier) = earlier.iter().find(|v| v.name.matches(&parsed)) {
        return Err((
            Some(name.span()),
            format!(
                "key \"name\": view {parsed} is listed twice (also as {})",
                earlier.name
            ),
        ));
    }
    Ok(ViewSpec {
        name: parsed,
        settings: apply(table.get_ref(), defaults)?,
        incremental: incremental(table, dir)?,
    })
}

/// The incremental form of a `[[view]]`, when it has one: `key`, the query
/// and its `[[view.changes]]`, all or none.
fn incremental(
    table: &Spanned<RawTable>,
    dir: Option<&Path>,
) -> Result<Option<Incremental>, (Span, String)> {
    let raw = table.get_ref();
    let query = query_text(raw, dir)?;
    let (Some(key), Some((query, query_span))) = (&raw.key, query) else {
        return match (&raw.key, &raw.query, &raw.query_file, &raw.changes) {
            (None, None, None, None) if raw.create.is_none() && raw.volatile.is_none() => Ok(None),
            (Some(key), ..) => Err((
                Some(key.span()),
                "an incremental view needs \"query\" (or \"query_file\") beside \"key\"".into(),
            )),
            _ => Err((
                Some(table.span()),
                "an incremental view needs \"key\": the columns that identify its rows".into(),
            )),
        };
    };
    let key_columns = identifiers("key", key)?;
    let template = Template::parse(&query)
        .map_err(|msg| (Some(query_span.clone()), format!("key \"query\": {msg}")))?;
    if let Some(n) = template.arities().find(|&n| n != key_columns.len()) {
        return Err((
            Some(query_span),
            format!(
                "key \"query\": $changed(...) has {n} argument(s), and the key has {} column(s): \
                 give one expression per key column, in key order",
                key_columns.len()
            ),
        ));
    }
    let Some(changes) = raw.changes.as_ref().filter(|c| !c.is_empty()) else {
        return Err((
            Some(table.span()),
            "an incremental view needs at least one [[view.changes]]: the tables whose \
             changes matter, each with its marker"
                .into(),
        ));
    };
    let changes = changes
        .iter()
        .map(|change| source(change, key_columns.len()))
        .collect::<Result<_, _>>()?;
    let volatile = match &raw.volatile {
        Some(v) => identifiers("volatile", v)?,
        None => Vec::new(),
    };
    if let Some(c) = volatile.iter().find(|c| key_columns.contains(c)) {
        return Err((
            raw.volatile.as_ref().map(Spanned::span),
            format!("key \"volatile\": {c} is a key column, and a key is compared"),
        ));
    }
    Ok(Some(Incremental {
        key: key_columns,
        query: template,
        changes,
        create: raw.create.as_ref().is_none_or(|c| *c.get_ref()),
        volatile,
    }))
}

/// The query of a `[[view]]`, inline or from `query_file` (relative to the
/// registry's directory), with the span to report its errors at.
fn query_text(
    raw: &RawTable,
    dir: Option<&Path>,
) -> Result<Option<(String, std::ops::Range<usize>)>, Invalid> {
    match (&raw.query, &raw.query_file) {
        (Some(_), Some(file)) => Err((
            Some(file.span()),
            "keys \"query\" and \"query_file\" both give the query: keep one".into(),
        )),
        (Some(query), None) => Ok(Some((query.get_ref().clone(), query.span()))),
        (None, Some(file)) => {
            let path = dir.unwrap_or(Path::new(".")).join(file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|err| {
                (
                    Some(file.span()),
                    format!("key \"query_file\": cannot read {}: {err}", path.display()),
                )
            })?;
            Ok(Some((text, file.span())))
        }
        (None, None) => Ok(None),
    }
}

/// One `[[view.changes]]`; `arity`: the number of key columns.
fn source(change: &Spanned<RawChange>, arity: usize) -> Result<Source, (Span, String)> {
    let raw = change.get_ref();
    let missing = |key: &str, what: &str| {
        (
            Some(change.span()),
            format!("[[view.changes]] has no key {key:?}: {what}"),
        )
    };
    let table = raw
        .table
        .as_ref()
        .ok_or_else(|| missing("table", "the source table"))?;
    let name: ViewName = table.get_ref().parse().map_err(|msg: String| {
        (
            Some(table.span()),
            format!("key \"table\": {}", msg.replace("view name", "table name")),
        )
    })?;
    let key = raw
        .key
        .as_ref()
        .ok_or_else(|| missing("key", "expressions over the table giving the view's key"))?;
    if key.get_ref().len() != arity || key.get_ref().iter().any(|e| e.trim().is_empty()) {
        return Err((
            Some(key.span()),
            format!(
                "key \"key\": {} expression(s), and the view's key has {arity} column(s): give \
                 one non-empty expression per key column, in key order",
                key.get_ref().len()
            ),
        ));
    }
    let marker = raw.marker.as_ref().ok_or_else(|| {
        missing(
            "marker",
            "a column that grows with every insert and update (a sequence, a timestamp)",
        )
    })?;
    let marker_name = identifier("marker", marker)?;
    let lag = match &raw.lag {
        None => Lag::Units(0),
        Some(lag) => match lag.get_ref() {
            RawLag::Units(n) if *n >= 0 => Lag::Units(*n),
            RawLag::Units(n) => {
                return Err((Some(lag.span()), format!("key \"lag\": {n} is negative")));
            }
            RawLag::Text(text) => Lag::Duration(text.parse().map_err(|err| {
                (
                    Some(lag.span()),
                    format!("key \"lag\": {err} (a number in the marker's units, or a duration)"),
                )
            })?),
        },
    };
    Ok(Source {
        table: name,
        key: key.get_ref().iter().map(|e| e.trim().to_owned()).collect(),
        marker: marker_name,
        lag,
    })
}

/// A list of column names, each one SQL identifier.
fn identifiers(key: &str, names: &Spanned<Vec<String>>) -> Result<Vec<String>, (Span, String)> {
    let fail = |msg: String| (Some(names.span()), format!("key {key:?}: {msg}"));
    if names.get_ref().is_empty() {
        return Err(fail("names no column".into()));
    }
    let mut columns: Vec<String> = Vec::new();
    for name in names.get_ref() {
        let column = one_identifier(name).map_err(fail)?;
        if columns.contains(&column) {
            return Err(fail(format!("column {column:?} is listed twice")));
        }
        columns.push(column);
    }
    Ok(columns)
}

/// One column name.
fn identifier(key: &str, name: &Spanned<String>) -> Result<String, (Span, String)> {
    one_identifier(name.get_ref()).map_err(|msg| (Some(name.span()), format!("key {key:?}: {msg}")))
}

fn one_identifier(text: &str) -> Result<String, String> {
    let mut parts = split_identifiers(text, "column name")?;
    match parts.len() {
        1 => Ok(parts.remove(0)),
        _ => Err(format!(
            "invalid column name {text:?}: expected a plain column name"
        )),
    }
}

/// The value of `key`, parsed and then checked by `check`.
fn parse<T: FromStr>(
    key: &str,
    value: &Spanned<String>,
    check: impl Fn(&T) -> Option<String>,
) -> Result<T, (Span, String)>
where
    T::Err: fmt::Display,
{
    let fail = |msg: String| (Some(value.span()), format!("key {key:?}: {msg}"));
    let parsed = value
        .get_ref()
        .parse::<T>()
        .map_err(|e| fail(e.to_string()))?;
    match check(&parsed) {
        Some(msg) => Err(fail(msg)),
        None => Ok(parsed),
    }
}

/// A timeout PostgreSQL accepts.
fn timeout_range(d: &PgDuration) -> Option<String> {
    (d.as_millis() > PG_INT_MAX).then(|| {
        format!("{d} is out of range: PostgreSQL accepts at most {PG_INT_MAX}ms (about 24 days)")
    })
}

/// A `work_mem` PostgreSQL accepts.
fn memory_range(m: &Memory) -> Option<String> {
    (!(MIN_WORK_MEM_KB..=PG_INT_MAX).contains(&m.as_kilobytes()))
        .then(|| format!("{m} is out of range: PostgreSQL accepts 64kB to {PG_INT_MAX}kB"))
}

/// Layers the keys of `table` over `base`, checking each value and its range.
fn apply(table: &RawTable, base: &ViewSettings) -> Result<ViewSettings, (Span, String)> {
    let mut settings = base.clone();
    if let Some(v) = &table.work_mem {
        settings.work_mem = match v.get_ref().as_str() {
            "auto" => WorkMem::Auto,
            _ => WorkMem::Fixed(parse("work_mem", v, memory_range).map_err(|(span, msg)| {
                (
                    span,
                    format!("{msg} (or \"auto\": measured, within work_mem_max)"),
                )
            })?),
        };
    }
    if let Some(v) = &table.work_mem_max {
        settings.work_mem_max = parse("work_mem_max", v, memory_range)?;
    }
    if let Some(v) = &table.statement_timeout {
        settings.statement_timeout = parse("statement_timeout", v, timeout_range)?;
    }
    if let Some(v) = &table.lock_timeout {
        settings.lock_timeout = parse("lock_timeout", v, timeout_range)?;
    }
    if let Some(v) = &table.plain_lock_timeout {
        settings.plain_lock_timeout = parse("plain_lock_timeout", v, timeout_range)?;
    }
    if let Some(v) = &table.concurrently {
        settings.concurrently = parse("concurrently", v, |_: &Concurrently| None)?;
    }
    if let Some(v) = &table.vacuum {
        settings.vacuum = parse("vacuum", v, |_: &Vacuum| None)?;
    }
    if let Some(v) = &table.full_every {
        let every = parse("full_every", v, |_: &PgDuration| None)?;
        settings.full_every = (every.as_millis() > 0).then_some(every);
    }
    if let Some(v) = &table.min_interval {
        let interval = parse("min_interval", v, |d: &PgDuration| {
            (d.as_millis() > MAX_MIN_INTERVAL_MS)
                .then(|| format!("{d} is out of range: at most 366 days"))
        })?;
        settings.min_interval = (interval.as_millis() > 0).then_some(interval);
    }
    if let Some(v) = &table.retries {
        let retries = *v.get_ref();
        if !(0..=MAX_RETRIES).contains(&retries) {
            return Err((
                Some(v.span()),
                format!("key \"retries\": {retries} is out of range: expected 0 to {MAX_RETRIES}"),
            ));
        }
        settings.retries = retries as u32;
    }
    Ok(settings)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> RegistryError {
        Registry::parse(text, "r.toml").expect_err("registry should be rejected")
    }

    fn error_free(text: &str) -> bool {
        Registry::parse(text, "r.toml").is_ok()
    }

    #[test]
    fn embedded_default_lists_the_seed_views_and_the_incremental_twins() {
        let registry = Registry::load(None).unwrap();
        let names: Vec<_> = registry.views.iter().map(|v| v.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "tenants_summary_view",
                "user_activity_view",
                "top_bets_today",
                "user_activity",
                "bets_latest"
            ]
        );
        let incremental: Vec<bool> = registry
            .views
            .iter()
            .map(|v| v.incremental.is_some())
            .collect();
        assert_eq!(incremental, [false, false, false, true, true]);
    }

    #[test]
    fn defaults_then_view_keys_apply_in_order() {
        let registry = Registry::parse(
            "[defaults]\nwork_mem = \"32MB\"\nretries = 0\n\n[[view]]\nname = \"a\"\n\n[[view]]\nname = \"Reporting.\\\"Daily\\\"\"\nwork_mem = \"1GB\"\nmin_interval = \"15m\"\n",
            "r.toml",
        )
        .unwrap();
        let [a, b] = &registry.views[..] else {
            panic!("two views")
        };
        assert_eq!(a.settings.work_mem.to_string(), "32MB");
        assert_eq!(a.settings.retries, 0);
        assert_eq!(b.name.schema.as_deref(), Some("reporting"));
        assert_eq!(b.name.name, "Daily");
        assert_eq!(b.name.to_string(), "reporting.\"Daily\"");
        assert_eq!(b.settings.work_mem.to_string(), "1GB");
        assert_eq!(b.settings.min_interval.unwrap().as_millis(), 900_000);
    }

    #[test]
    fn work_mem_auto_with_its_max_and_the_plain_lock_timeout() {
        let registry = Registry::parse(
            "[defaults]\nwork_mem = \"auto\"\nwork_mem_max = \"256MB\"\n\n[[view]]\nname = \"a\"\nplain_lock_timeout = \"500ms\"\n",
            "r.toml",
        )
        .unwrap();
        let a = &registry.views[0].settings;
        assert_eq!(a.work_mem, WorkMem::Auto);
        assert_eq!(a.work_mem_max.to_string(), "256MB");
        assert_eq!(a.plain_lock_timeout.as_millis(), 500);
        let e = error("[[view]]\nname = \"a\"\nwork_mem = \"automatic\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("or \"auto\""), "{e}");
        let e = error("[[view]]\nname = \"a\"\nwork_mem_max = \"32kB\"\n");
        assert!(
            e.message.contains("work_mem_max") && e.message.contains("out of range"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = error("[[view]]\nname = \"a\"\nwork_mem = \"64XB\"\n");
        assert_eq!((e.line, e.file.as_str()), (3, "r.toml"));
        assert!(e.message.contains("work_mem"), "{e}");

        let e = error("[[view]]\nname = \"a\"\nwork_memory = \"64MB\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("work_memory"), "{e}");

        let e = error("[[view]]\nname = \"a\"\n\n[[view]]\nname = \"public.a\"\n");
        assert_eq!(e.line, 5);
        assert!(e.message.contains("listed twice"), "{e}");

        let e = error("[defaults]\nretries = 11\n[[view]]\nname = \"a\"\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("retries"), "{e}");

        let e = error("[defaults]\nwork_mem = \"64MB\"\n");
        assert!(e.message.contains("no views"), "{e}");

        let long = "v".repeat(64);
        let e = error(&format!(
            "[[view]]\nname = \"a\"\n[[view]]\nname = \"s.{long}\"\n"
        ));
        assert_eq!(e.line, 4);
        assert!(e.message.contains("64 bytes long"), "{e}");
        // 63 bytes is the limit; in UTF-8 a name reaches it in fewer characters.
        assert!(error_free(&format!(
            "[[view]]\nname = \"{}\"\n",
            "v".repeat(63)
        )));
        let e = error(&format!("[[view]]\nname = \"{}\"\n", "ж".repeat(32)));
        assert!(e.message.contains("64 bytes long"), "{e}");
    }

    const INCREMENTAL: &str = "[[view]]\nname = \"r.ua\"\nkey = [\"tenant_id\", \"User_Id\"]\n\
        query = \"SELECT 1 WHERE $changed(a, b)\"\nfull_every = \"1h\"\n\
        [[view.changes]]\ntable = \"bets\"\nkey = [\"tenant_id\", \"user_id\"]\nmarker = \"id\"\n\
        [[view.changes]]\ntable = \"s.b\"\nkey = [\"t\", \"u\"]\nmarker = \"ts\"\nlag = \"1min\"\n";

    #[test]
    fn the_incremental_form_reads_and_each_mistake_is_placed() {
        let registry = Registry::parse(INCREMENTAL, "r.toml").unwrap();
        let view = &registry.views[0];
        let inc = view.incremental.as_ref().expect("incremental");
        assert_eq!(inc.key, ["tenant_id", "user_id"]);
        assert_eq!(inc.changes[0].lag, Lag::Units(0));
        assert_eq!(inc.changes[1].lag.to_string(), "1min");
        assert_eq!(inc.changes[1].table.to_string(), "s.b");
        assert_eq!(view.settings.full_every.unwrap().as_millis(), 3_600_000);

        let e = error(&INCREMENTAL.replace("$changed(a, b)", "$changed(a)"));
        assert_eq!(e.line, 4);
        assert!(e.message.contains("1 argument(s)"), "{e}");
        let e = error(&INCREMENTAL.replace("key = [\"t\", \"u\"]", "key = [\"t\"]"));
        assert_eq!(e.line, 12);
        let e = error(&INCREMENTAL.replace("marker = \"ts\"\n", ""));
        assert!(e.message.contains("no key \"marker\""), "{e}");
        let e = error(&INCREMENTAL.replace("lag = \"1min\"", "lag = -5"));
        assert_eq!(e.line, 14);
        let e = error(&INCREMENTAL.replace("marker = \"id\"", "marker = \"id\"\nmarkr = 1"));
        assert!(e.message.contains("markr"), "{e}");
        let e = error(&INCREMENTAL.replace("SELECT 1 WHERE $changed(a, b)", "SELECT 1"));
        assert!(e.message.contains("no $changed"), "{e}");
        let e = error(&INCREMENTAL.replace("query = ", "query_file = \"nope.sql\"\nquery = "));
        assert!(e.message.contains("both"), "{e}");
        let e = error("[defaults]\nkey = [\"a\"]\n[[view]]\nname = \"a\"\n");
        assert!(e.message.contains("not in [defaults]"), "{e}");
    }

    #[test]
    fn names_fold_like_sql_identifiers() {
        let name: ViewName = "Public.Top_Bets".parse().unwrap();
        assert_eq!(name.schema.as_deref(), Some("public"));
        assert_eq!(name.name, "top_bets");
        assert!("a.b.c".parse::<ViewName>().is_err());
        assert!("\"open".parse::<ViewName>().is_err());
        assert!("a.".parse::<ViewName>().is_err());
    }
}
