//! Prometheus metrics in the text format 0.0.4: what `run` serves on
//! `/metrics`, what `refresh --pushgateway` pushes, and what
//! `status --format prometheus` prints, under the same names so one dashboard
//! and one set of alerts serve a sidecar and a CronJob alike.
//!
//! Per view, from the log tables (the same from every replica, and across
//! restarts): `mv_refresher_view_last_success_timestamp_seconds` (0: never),
//! `mv_refresher_view_last_duration_seconds`, `mv_refresher_view_failing` and
//! `mv_refresher_view_refreshes_total{status}` (every status, from 0). A
//! registry name that is no view that can be refreshed (a typo, a table) has no
//! log row, and is failing: every run fails it.
//!
//! Per process: `mv_refresher_build_info`, `mv_refresher_last_run_timestamp_seconds`,
//! `mv_refresher_last_run_duration_seconds`, `mv_refresher_refreshes_in_progress`,
//! and per view `mv_refresher_view_retries_total`,
//! `mv_refresher_view_lock_skips_total` and the histogram
//! `mv_refresher_view_refresh_duration_seconds`.
//!
//! `run` only (where there is a scheduler): `mv_refresher_cycles_total{outcome}`,
//! `mv_refresher_next_run_timestamp_seconds`, and per view
//! `mv_refresher_view_interval_seconds`, how often it is meant to be refreshed
//! (the alerts' thresholds follow it).
//!
//! Families come out sorted by name and series by label values, so two scrapes
//! list them in the same order. This module neither reads the database nor
//! serves anything: it is handed the log tables' state and the cycles' outcomes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::outcome::{Cycle, Status};
use crate::refresh_log::ViewState;

/// The Content-Type of the text format the metrics are written in.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Refresh duration buckets, in seconds: 10 ms to 10 min.
const DURATION_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
];

/// How a `run` cycle ended, as `mv_refresher_cycles_total{outcome}` says.
#[derive(Debug, Clone, Copy)]
pub enum CycleOutcome {
    /// Every view refreshed or skipped on purpose.
    Ok,
    /// At least one view failed.
    Failed,
    /// The database could not be reached.
    Unreachable,
    /// The previous cycle was still running at the tick.
    Overlapped,
}

impl CycleOutcome {
    const ALL: [Self; 4] = [Self::Ok, Self::Failed, Self::Unreachable, Self::Overlapped];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Unreachable => "unreachable",
            Self::Overlapped => "overlapped",
        }
    }
}

/// The metrics of one process: its own families, and the per-view state last
/// read from the log tables.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The end and the duration of the latest run: registered when the first
    /// run ends, before which there is none to tell of.
    last_run: OnceLock<(Gauge, Gauge)>,
    in_progress: IntGauge,
    /// The refresher's count of running `REFRESH` statements, read at each
    /// encoding.
    running: Arc<AtomicUsize>,
    retries: IntCounterVec,
    lock_skips: IntCounterVec,
    durations: HistogramVec,
    scheduler: Option<Scheduler>,
    /// The per-view families of the latest read of the log tables.
    views: Mutex<Vec<MetricFamily>>,
}

/// The families of `run`'s schedule.
#[derive(Debug)]
struct Scheduler {
    cycles: IntCounterVec,
    next_run: Gauge,
}

/// Registers `collector` in `registry` and returns it.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are valid and registered once");
    collector
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, Gauge::new(name, help).expect("a valid gauge"))
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter"),
    )
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        registry,
        GaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge"),
    )
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    /// The metrics of a process without a schedule (`refresh`); `running` is
    /// the refresher's count of `REFRESH` statements running now.
    pub fn new(running: Arc<AtomicUsize>) -> Self {
        let registry = Registry::new();
        let build_info = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "mv_refresher_build_info",
                    "The mv-refresher version running, 1",
                ),
                &["version"],
            )
            .expect("a valid gauge"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        Self {
            last_run: OnceLock::new(),
            in_progress: register(
                &registry,
                IntGauge::new(
                    "mv_refresher_refreshes_in_progress",
                    "REFRESH statements this process is running now",
                )
                .expect("a valid gauge"),
            ),
            running,
            retries: counters(
                &registry,
                "mv_refresher_view_retries_total",
                "Refresh attempts retried by this process after a transient failure",
                &["view"],
            ),
            lock_skips: counters(
                &registry,
                "mv_refresher_view_lock_skips_total",
                "Refreshes this process skipped because another refresher held the view",
                &["view"],
            ),
            durations: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "mv_refresher_view_refresh_duration_seconds",
                        "Durations of the successful refreshes of this process",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["view"],
                )
                .expect("a valid histogram"),
            ),
            scheduler: None,
            views: Mutex::default(),
            registry,
        }
    }

    /// The metrics of `run`: those of [`Metrics::new`] and the schedule's.
    pub fn with_scheduler(running: Arc<AtomicUsize>) -> Self {
        let mut metrics = Self::new(running);
        let cycles = counters(
            &metrics.registry,
            "mv_refresher_cycles_total",
            "Scheduled cycles by outcome (ok, failed, unreachable, overlapped)",
            &["outcome"],
        );
        for outcome in CycleOutcome::ALL {
            cycles.with_label_values(&[outcome.as_str()]);
        }
        let next_run = gauge(
            &metrics.registry,
            "mv_refresher_next_run_timestamp_seconds",
            "When the next scheduled cycle starts, Unix time",
        );
        metrics.scheduler = Some(Scheduler { cycles, next_run });
        metrics
    }

    /// Counts what this process did in `cycle`, which has just ended.
    pub fn observe_run(&self, cycle: &Cycle) {
        let (ended, took) = self.last_run.get_or_init(|| {
            (
                gauge(
                    &self.registry,
                    "mv_refresher_last_run_timestamp_seconds",
                    "End of this process's latest refresh run, Unix time",
                ),
                gauge(
                    &self.registry,
                    "mv_refresher_last_run_duration_seconds",
                    "Duration of this process's latest refresh run",
                ),
            )
        });
        ended.set(unix_seconds(SystemTime::now()));
        took.set(cycle.duration.as_secs_f64());
        for outcome in &cycle.outcomes {
            let view = [outcome.view_name.as_str()];
            // A view nothing was tried on (skipped before it began, such as
            // one not in this database) gets no series from this run.
            if outcome.attempts > 0 {
                self.retries
                    .with_label_values(&view)
                    .inc_by(u64::from(outcome.attempts - 1));
            }
            if outcome.lock_skipped {
                self.lock_skips.with_label_values(&view).inc();
            }
            if outcome.status == Status::Success {
                self.durations
                    .with_label_values(&view)
                    .observe(outcome.duration_ms / 1000.0);
            }
        }
    }

    /// Takes the views' state as the log tables have it now; the per-process
    /// series of those views show from now on too, at 0 until something happens.
    pub fn set_views(&self, views: &[ViewState]) {
        for view in views {
            let label = [view.view_name.as_str()];
            self.retries.with_label_values(&label);
            self.lock_skips.with_label_values(&label);
            self.durations.with_label_values(&label);
        }
        *self.views.lock().expect("metrics lock") = view_families(views);
    }

    /// Counts one scheduled cycle (`run` only).
    pub fn cycle(&self, outcome: CycleOutcome) {
        if let Some(scheduler) = &self.scheduler {
            scheduler
                .cycles
                .with_label_values(&[outcome.as_str()])
                .inc();
        }
    }

    /// Sets when the next scheduled cycle starts, Unix seconds (`run` only).
    pub fn next_run(&self, at_seconds: f64) {
        if let Some(scheduler) = &self.scheduler {
            scheduler.next_run.set(at_seconds);
        }
    }

    /// Everything, in the text format.
    pub fn encode(&self) -> String {
        self.in_progress
            .set(i64::try_from(self.running.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let mut families = self.registry.gather();
        families.extend(self.views.lock().expect("metrics lock").iter().cloned());
        encode(families)
    }
}

/// The per-view families of `views` alone, in the text format (`status`).
pub fn encode_views(views: &[ViewState]) -> String {
    encode(view_families(views))
}

/// The per-view families, from the log tables' state.
fn view_families(views: &[ViewState]) -> Vec<MetricFamily> {
    let registry = Registry::new();
    let last_success = gauges(
        &registry,
        "mv_refresher_view_last_success_timestamp_seconds",
        "End of the view's last successful refresh, Unix time; 0 when never refreshed",
        &["view"],
    );
    let last_duration = gauges(
        &registry,
        "mv_refresher_view_last_duration_seconds",
        "Duration of the view's last successful refresh",
        &["view"],
    );
    let failing = gauges(
        &registry,
        "mv_refresher_view_failing",
        "1 when the view's latest refresh failed or was cancelled, or its registry name is \
         not one that can be refreshed (no log row is written for it), else 0",
        &["view"],
    );
    let watermark = gauges(
        &registry,
        "mv_refresher_view_watermark_timestamp_seconds",
        "Incremental views: when the snapshot of the last applied cycle was taken, Unix time \
         (time() minus it: how old a change not yet in the table can be)",
        &["view"],
    );
    let interval = gauges(
        &registry,
        "mv_refresher_view_interval_seconds",
        "How often run means to refresh the view: its longest period (--every, or the longest \
         gap of --schedule), or the view's min_interval when longer",
        &["view"],
    );
    let refreshes = counters(
        &registry,
        "mv_refresher_view_refreshes_total",
        "Refreshes of the view by every refresher, by final status \
         (success, failed, skipped, cancelled), from the log tables",
        &["view", "status"],
    );
    for view in views {
        let name = view.view_name.as_str();
        last_success
            .with_label_values(&[name])
            .set(view.last_success.unwrap_or(0.0));
        if let Some(ms) = view.last_duration_ms {
            last_duration.with_label_values(&[name]).set(ms / 1000.0);
        }
        if let Some(at) = view.watermark_at {
            watermark.with_label_values(&[name]).set(at);
        }
        if let Some(seconds) = view.interval_s {
            interval.with_label_values(&[name]).set(seconds);
        }
        let failed = view.unrefreshable
            || matches!(view.last_status.as_deref(), Some("failed" | "cancelled"));
        failing
            .with_label_values(&[name])
            .set(if failed { 1.0 } else { 0.0 });
        for (status, count) in [
            (Status::Success, view.successes),
            (Status::Failed, view.failures),
            (Status::Skipped, view.skips),
            (Status::Cancelled, view.cancels),
        ] {
            refreshes
                .with_label_values(&[name, status.as_str()])
                .inc_by(count);
        }
    }
    registry.gather()
}

/// `families` in the text format, sorted by name.
fn encode(mut families: Vec<MetricFamily>) -> String {
    families.sort_by(|a, b| a.name().cmp(b.name()));
    TextEncoder::new()
        .encode_to_string(&families)
        .expect("gathered families encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str) -> ViewState {
        ViewState {
            view_name: name.into(),
            ..ViewState::default()
        }
    }

    #[test]
    fn a_view_never_refreshed_has_every_status_at_zero_and_no_duration() {
        let text = encode_views(&[view("public.b"), view("public.a")]);
        for status in ["success", "failed", "skipped", "cancelled"] {
            let line = format!(
                "mv_refresher_view_refreshes_total{{status=\"{status}\",view=\"public.a\"}} 0"
            );
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        assert!(
            text.contains(
                "mv_refresher_view_last_success_timestamp_seconds{view=\"public.a\"} 0\n"
            )
        );
        assert!(
            !text.contains("mv_refresher_view_last_duration_seconds{"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        // Sorted: public.a before public.b whatever the order given.
        let a = text.find("view=\"public.a\"").unwrap();
        let b = text.find("view=\"public.b\"").unwrap();
        assert!(a < b, "{text}");
    }

    #[test]
    fn families_come_out_sorted_and_scheduler_ones_only_with_a_scheduler() {
        let plain = Metrics::new(Arc::default());
        plain.set_views(&[view("public.a")]);
        let text = plain.encode();
        assert!(!text.contains("mv_refresher_cycles_total"), "{text}");
        assert!(!text.contains("mv_refresher_next_run"), "{text}");
        assert!(
            !text.contains("mv_refresher_last_run"),
            "before a run: {text}"
        );
        assert!(text.contains(&format!(
            "mv_refresher_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);

        let scheduled = Metrics::with_scheduler(Arc::default());
        let text = scheduled.encode();
        for outcome in ["ok", "failed", "unreachable", "overlapped"] {
            assert!(
                text.contains(&format!(
                    "mv_refresher_cycles_total{{outcome=\"{outcome}\"}} 0"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn a_registry_name_that_cannot_be_refreshed_is_failing_with_no_log_row() {
        let mut typo = view("public.user_activty_view");
        typo.unrefreshable = true;
        let text = encode_views(&[typo, view("public.fine")]);
        assert!(
            text.contains("mv_refresher_view_failing{view=\"public.user_activty_view\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mv_refresher_view_failing{view=\"public.fine\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_or_cancelled_latest_outcome_is_failing() {
        let mut failed = view("public.f");
        failed.last_status = Some("cancelled".into());
        failed.last_success = Some(1_700_000_000.5);
        failed.last_duration_ms = Some(1500.0);
        failed.successes = 3;
        let text = encode_views(&[failed]);
        assert!(
            text.contains("mv_refresher_view_failing{view=\"public.f\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "mv_refresher_view_last_success_timestamp_seconds{view=\"public.f\"} 1700000000.5\n"
        ));
        assert!(text.contains("mv_refresher_view_last_duration_seconds{view=\"public.f\"} 1.5\n"));
        assert!(text.contains(
            "mv_refresher_view_refreshes_total{status=\"success\",view=\"public.f\"} 3\n"
        ));
    }

    #[test]
    fn the_interval_a_view_is_meant_for_is_there_only_where_run_set_it() {
        let mut fast = view("public.fast");
        fast.interval_s = Some(10.0);
        let text = encode_views(&[fast, view("public.cronjob")]);
        assert!(
            text.contains("mv_refresher_view_interval_seconds{view=\"public.fast\"} 10\n"),
            "{text}"
        );
        assert!(
            !text.contains("mv_refresher_view_interval_seconds{view=\"public.cronjob\"}"),
            "{text}"
        );
    }
}
