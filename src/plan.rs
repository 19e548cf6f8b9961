//! The plan: which views run, in which order, and how each can be refreshed.
//!
//! A plan is built from the registry's selection and the catalog, before anything
//! is refreshed. Order comes from the catalog's dependencies (a view that reads
//! another registry view runs after it), never from the order of the file. `check`
//! prints a plan; `refresh` executes one (see `refresh`).

use std::collections::HashMap;

use tokio_postgres::GenericClient;

use crate::catalog::{self, Lookup, ViewState};
use crate::incremental::catalog::{Target, Wanted, describe};
use crate::outcome::{LockWait, Method};
use crate::refresh_log::RefreshLog;
use crate::registry::{Concurrently, ViewSettings, ViewSpec, WorkMem};
use crate::tuner;
use crate::units::Memory;

/// The views of one run, in a dependency-respecting order.
#[derive(Debug)]
pub struct Plan {
    /// In execution order: every view comes after the views it depends on.
    pub steps: Vec<Step>,
    /// The database has the `citus` extension.
    pub citus: bool,
}

/// One view of the plan.
#[derive(Debug)]
pub struct Step {
    pub spec: ViewSpec,
    pub lookup: Lookup,
    /// Indexes into [`Plan::steps`] of the views this one reads from.
    pub depends_on: Vec<usize>,
    /// Set when the catalog shows the view cannot be refreshed as configured.
    pub problem: Option<String>,
    /// The method it will get, when there is no problem.
    pub method: Option<(Method, &'static str)>,
    /// The `work_mem` its refresh sets.
    pub work_mem: WorkMemChoice,
    /// The view holds rows (readers read it): a plain refresh blocks them.
    pub populated: bool,
    /// An incremental view's table, query and sources, as the catalog shows them.
    pub incremental: Option<Target>,
    /// Why the view is skipped on purpose, when it is: an incremental view
    /// whose table does not exist here and may not be created.
    pub skip: Option<String>,
}

/// The `work_mem` a refresh sets, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkMemChoice {
    /// `None`: none is set, the server's applies.
    pub value: Option<Memory>,
    /// For people: `server`, `fixed`, or the tuner's reason.
    pub reason: String,
}

impl Step {
    /// The schema-qualified name this view is reported and logged under.
    pub fn view_name(&self) -> String {
        self.lookup.qualified_name()
    }

    pub fn settings(&self) -> &ViewSettings {
        &self.spec.settings
    }

    /// Whether `concurrently = "auto"` resolved to a plain refresh of a view
    /// people read: it takes an ACCESS EXCLUSIVE lock, and readers queue.
    pub fn auto_blocks_readers(&self) -> bool {
        self.settings().concurrently == Concurrently::Auto
            && self.populated
            && matches!(self.method, Some((Method::Full, _)))
    }

    /// Whether the name is a materialized view at all; anything else (a typo,
    /// a table) is reported but never written to the log tables.
    pub fn is_matview(&self) -> bool {
        matches!(self.lookup, Lookup::MatView(_))
    }

    /// Whether its outcomes belong in the log tables: a materialized view, or
    /// an incremental view (whose table may not exist yet).
    pub fn is_recorded(&self) -> bool {
        self.skip.is_none() && self.lookup.fits(self.spec.incremental.is_some())
    }
}

impl Step {
    /// The step of `spec`, from what the catalog `found`; an incremental view
    /// is described further by [`describe_incremental`].
    fn new(spec: ViewSpec, found: catalog::Found, server_work_mem: Memory) -> Self {
        let (method, problem) = match &spec.incremental {
            Some(_) => (
                Some((Method::Incremental, "the keys whose inputs changed")),
                None,
            ),
            None => {
                let problem = lookup_problem(&found.lookup).or(found.denied);
                match found
                    .state
                    .map(|s| choose_method(spec.settings.concurrently, s))
                {
                    Some(Ok(chosen)) => (Some(chosen), problem),
                    Some(Err(why)) => (None, problem.or(Some(why))),
                    None => (None, problem),
                }
            }
        };
        Self {
            work_mem: WorkMemChoice::untuned(spec.settings.work_mem, server_work_mem),
            lookup: found.lookup,
            depends_on: Vec::new(),
            problem,
            method,
            populated: found.state.is_some_and(|state| state.populated),
            incremental: None,
            skip: None,
            spec,
        }
    }
}

impl Step {
    /// The lock wait of a refresh of this view by `method`, `populated` or not.
    pub fn lock_wait(&self, method: Method, populated: bool) -> LockWait {
        let settings = self.settings();
        let blocks_readers = method == Method::Full && populated;
        let plain = settings.plain_lock_timeout;
        let timeout = match blocks_readers {
            // Zero is no timeout at all.
            true if settings.lock_timeout.as_millis() == 0 => plain,
            true if plain.as_millis() == 0 => settings.lock_timeout,
            true => settings.lock_timeout.min(plain),
            false => settings.lock_timeout,
        };
        LockWait {
            timeout,
            blocks_readers,
        }
    }
}

/// Chooses the `REFRESH` for a view in `state` under `mode`, with the reason; an
/// error says why the view cannot be refreshed as configured.
pub fn choose_method(
    mode: Concurrently,
    state: ViewState,
) -> Result<(Method, &'static str), String> {
    match mode {
        Concurrently::Never => Ok((Method::Full, "concurrently = never")),
        _ if !state.populated => match mode {
            Concurrently::Always => Err("is not populated (created WITH NO DATA), and CONCURRENTLY \
                 cannot populate it: refresh it once without CONCURRENTLY or set concurrently = \"auto\""
                .into()),
            _ => Ok((Method::Full, "not populated yet")),
        },
        _ if !state.has_usable_unique_index => match mode {
            Concurrently::Always => Err("has no unique index usable by CONCURRENTLY (it must be \
                 unique, valid, on plain columns and without a WHERE clause)"
                .into()),
            _ => Ok((Method::Full, "no unique index usable by CONCURRENTLY")),
        },
        _ => Ok((Method::Concurrently, "populated, with a unique index")),
    }
}

/// Why a registry name cannot be refreshed at all, if it cannot.
fn lookup_problem(lookup: &Lookup) -> Option<String> {
    match lookup {
        Lookup::MatView(_) => None,
        Lookup::Table(_) => Some("is a table, not a materialized view".into()),
        Lookup::Other { kind, .. } => Some(format!("is {kind}, not a materialized view")),
        Lookup::Missing { .. } => Some("does not exist (no relation of that name)".into()),
    }
}

impl Plan {
    /// Looks up `specs` in the catalog and orders them by their dependencies: a
    /// constant number of statements, however many views.
    pub async fn build(
        client: &impl GenericClient,
        specs: Vec<ViewSpec>,
        tuning: Tuning<'_>,
    ) -> Result<Self, tokio_postgres::Error> {
        let names: Vec<_> = specs.iter().map(|spec| spec.name.clone()).collect();
        let catalog = catalog::find(client, &names).await?;
        let server_work_mem = catalog.work_mem;
        let mut steps: Vec<Step> = specs
            .into_iter()
            .zip(catalog.views)
            .map(|(spec, found)| Step::new(spec, found, server_work_mem))
            .collect();

        if steps.iter().any(|s| !s.is_recorded()) {
            suggest_names(client, &mut steps).await?;
        }

        let index_of: HashMap<u32, usize> = steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| match (&step.lookup, &step.spec.incremental) {
                (Lookup::MatView(relation), None) | (Lookup::Table(relation), Some(_)) => {
                    Some((relation.oid, i))
                }
                _ => None,
            })
            .collect();
        let oids: Vec<u32> = index_of.keys().copied().collect();
        if steps.iter().any(|s| s.spec.incremental.is_some()) {
            describe_incremental(client, &mut steps, &index_of).await?;
        }
        for (viewer, source) in catalog::dependencies(client, &oids).await? {
            if let (Some(&v), Some(&s)) = (index_of.get(&viewer), index_of.get(&source)) {
                steps[v].depends_on.push(s);
            }
        }
        if let Some(log) = tuning.log {
            tune(client, log, &mut steps, server_work_mem, tuning.jobs).await?;
        }
        Ok(Self {
            steps: ordered(steps),
            citus: catalog.citus,
        })
    }
}

/// Describes the incremental steps: their tables, queries and sources, and
/// the registry views their queries read (dependencies).
async fn describe_incremental(
    client: &impl GenericClient,
    steps: &mut [Step],
    index_of: &HashMap<u32, usize>,
) -> Result<(), tokio_postgres::Error> {
    // A table that is not here and may not be created is decided first: its
    // query and sources are not probed (they may name what this database
    // lacks).
    for step in steps.iter_mut() {
        if let Some(spec) = &step.spec.incremental {
            step.skip = step.lookup.not_here(spec.create);
        }
    }
    let which: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].spec.incremental.is_some() && steps[i].skip.is_none())
        .collect();
    if which.is_empty() {
        return Ok(());
    }
    let wanted: Vec<Wanted<'_>> = which
        .iter()
        .map(|&i| Wanted {
            spec: steps[i].spec.incremental.as_ref().expect("filtered"),
            lookup: &steps[i].lookup,
        })
        .collect();
    let known: Vec<u32> = index_of.keys().copied().collect();
    let described = describe(client, &wanted, &known).await?;
    for (i, found) in which.into_iter().zip(described) {
        let mut reads: Vec<u32> = found.reads;
        if let Ok(target) = &found.target {
            reads.extend(target.sources.iter().map(|s| s.relation.oid));
        }
        let step = &mut steps[i];
        for oid in reads {
            if let Some(&d) = index_of.get(&oid)
                && d != i
                && !step.depends_on.contains(&d)
            {
                step.depends_on.push(d);
            }
        }
        match found.target {
            Ok(target) => step.incremental = Some(target),
            Err(problem) => {
                step.problem = Some(problem);
                step.method = None;
            }
        }
    }
    Ok(())
}

/// What `work_mem = "auto"` is tuned with.
#[derive(Debug, Clone, Copy)]
pub struct Tuning<'a> {
    /// The log tables, whose history it is tuned from; `None`: no history.
    pub log: Option<&'a RefreshLog>,
    /// Views refreshed at once, who share `work_mem_max`.
    pub jobs: usize,
}

impl WorkMemChoice {
    /// The choice before any history is read: `auto` starts from the server's.
    fn untuned(setting: WorkMem, server: Memory) -> Self {
        match setting {
            WorkMem::Server => Self {
                value: None,
                reason: format!("{server} (server)"),
            },
            WorkMem::Fixed(memory) => Self {
                value: Some(memory),
                reason: memory.to_string(),
            },
            WorkMem::Auto => Self {
                value: None,
                reason: format!("{server} (server; auto without history to tune from)"),
            },
        }
    }
}

/// Chooses the `work_mem` of the steps set to `auto`, from their history,
/// read in one statement.
async fn tune(
    client: &impl GenericClient,
    log: &RefreshLog,
    steps: &mut [Step],
    server: Memory,
    jobs: usize,
) -> Result<(), tokio_postgres::Error> {
    let auto: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].settings().work_mem == WorkMem::Auto && steps[i].method.is_some())
        .collect();
    if auto.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = auto.iter().map(|&i| steps[i].view_name()).collect();
    let history = log.tuning_history(client, &names).await?;
    for i in auto {
        let step = &mut steps[i];
        let (method, _) = step.method.expect("filtered above");
        let past = history.get(&step.view_name());
        let runs: Vec<tuner::Run> = past
            .iter()
            .flat_map(|h| &h.runs)
            .filter(|(m, _)| m == method.as_str())
            .map(|(_, run)| *run)
            .collect();
        let total = past.map_or(0, |h| h.total);
        let cap = tuner::cap(step.settings().work_mem_max, jobs);
        let choice = tuner::choose(&runs, total, server, cap);
        step.work_mem = WorkMemChoice {
            value: Some(choice.work_mem),
            reason: choice.reason,
        };
    }
    Ok(())
}

/// Adds "did you mean" to the problem of each step that names no
/// materialized view.
async fn suggest_names(
    client: &impl GenericClient,
    steps: &mut [Step],
) -> Result<(), tokio_postgres::Error> {
    let known = catalog::materialized_views(client).await?;
    for step in steps.iter_mut().filter(|s| !s.is_recorded()) {
        if let (Some(problem), Some(like)) = (
            &mut step.problem,
            catalog::closest(&step.spec.name.to_string(), &known),
        ) {
            problem.push_str(&format!("; did you mean {like}?"));
        }
    }
    Ok(())
}

/// Reorders `steps` so each follows its dependencies, keeping the registry's
/// order otherwise; views caught in a cycle keep their place with a problem.
fn ordered(mut steps: Vec<Step>) -> Vec<Step> {
    let n = steps.len();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&i| !placed[i] && steps[i].depends_on.iter().all(|&d| placed[d]));
        let i = next.unwrap_or_else(|| {
            // Only a cycle leaves nothing ready; break it at the first view left.
            let i = (0..n).find(|&i| !placed[i]).expect("a view is left");
            steps[i].problem = Some("is part of a dependency cycle among registry views".into());
            // Its remaining edges point forward: drop them, or the views of
            // the cycle would wait for each other forever.
            steps[i].depends_on.retain(|&d| placed[d]);
            i
        });
        placed[i] = true;
        order.push(i);
    }
    let mut position = vec![0; n];
    for (pos, &i) in order.iter().enumerate() {
        position[i] = pos;
    }
    for step in &mut steps {
        for d in &mut step.depends_on {
            *d = position[*d];
        }
        step.depends_on.sort_unstable();
    }
    let mut slots: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&i| slots[i].take().expect("each once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(populated: bool, has_usable_unique_index: bool) -> ViewState {
        ViewState {
            populated,
            has_usable_unique_index,
        }
    }

    #[test]
    fn auto_falls_back_to_full_and_always_refuses() {
        use Concurrently::*;
        assert_eq!(
            choose_method(Auto, state(true, true)).unwrap().0,
            Method::Concurrently
        );
        assert_eq!(
            choose_method(Auto, state(false, true)).unwrap().0,
            Method::Full
        );
        assert_eq!(
            choose_method(Auto, state(true, false)).unwrap().0,
            Method::Full
        );
        assert!(choose_method(Always, state(true, false)).is_err());
        assert!(choose_method(Always, state(false, true)).is_err());
        assert_eq!(
            choose_method(Never, state(true, true)).unwrap().0,
            Method::Full
        );
    }

    fn step(name: &str, depends_on: Vec<usize>) -> Step {
        Step {
            spec: ViewSpec {
                name: name.parse().unwrap(),
                settings: ViewSettings::default(),
                incremental: None,
            },
            lookup: Lookup::Missing {
                qualified: format!("public.{name}"),
                schema: "public".into(),
                name: name.into(),
            },
            depends_on,
            problem: None,
            method: None,
            work_mem: WorkMemChoice {
                value: None,
                reason: String::new(),
            },
            populated: false,
            incremental: None,
            skip: None,
        }
    }

    #[test]
    fn dependencies_come_first_and_cycles_are_reported() {
        // c reads b, b reads a; listed in reverse.
        let steps = ordered(vec![
            step("c", vec![1]),
            step("b", vec![2]),
            step("a", vec![]),
        ]);
        let names: Vec<_> = steps.iter().map(Step::view_name).collect();
        assert_eq!(names, ["public.a", "public.b", "public.c"]);
        assert_eq!(steps[2].depends_on, [1]);

        let steps = ordered(vec![step("x", vec![1]), step("y", vec![0])]);
        assert!(steps[0].problem.is_some());
        assert!(steps[0].depends_on.is_empty(), "the cycle is broken");
        assert_eq!(steps[1].depends_on, [0]);
    }
}
