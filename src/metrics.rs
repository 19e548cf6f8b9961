//! Prometheus metrics: what `run` serves on `/metrics`, and what
//! `status --format prometheus` prints from the log tables, under the same names
//! so one dashboard and one set of alerts serve a sidecar and a CronJob alike.
//!
//! Per view: `mv_refresher_view_last_success_timestamp_seconds`,
//! `mv_refresher_view_last_duration_seconds`, `mv_refresher_view_staleness_seconds`
//! (+Inf for a view never refreshed), `mv_refresher_view_refreshes_total{status}`
//! and `mv_refresher_view_refresh_duration_seconds` (a histogram, `run` only).
//! Per process (`run` only): `mv_refresher_cycles_total{outcome}` and
//! `mv_refresher_next_run_timestamp_seconds`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::refresh::Outcome;
use crate::refresh_log::{LogRow, Status};

/// Refresh duration buckets, in seconds: 10 ms to 10 min.
const DURATION_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViewLabels {
    view: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViewStatusLabels {
    view: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CycleLabels {
    outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The metric families and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    last_success: Family<ViewLabels, FloatGauge>,
    last_duration: Family<ViewLabels, FloatGauge>,
    staleness: Family<ViewLabels, FloatGauge>,
    refreshes: Family<ViewStatusLabels, Counter>,
    durations: Family<ViewLabels, Histogram, fn() -> Histogram>,
    cycles: Family<CycleLabels, Counter>,
    next_run: FloatGauge,
    /// Last success per view (epoch seconds; `None`: never), for staleness at
    /// scrape time.
    known: Mutex<BTreeMap<String, Option<f64>>>,
}

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
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Unreachable => "unreachable",
            Self::Overlapped => "overlapped",
        }
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let last_success = Family::<ViewLabels, FloatGauge>::default();
        let last_duration = Family::<ViewLabels, FloatGauge>::default();
        let staleness = Family::<ViewLabels, FloatGauge>::default();
        let refreshes = Family::<ViewStatusLabels, Counter>::default();
        let durations = Family::<ViewLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let cycles = Family::<CycleLabels, Counter>::default();
        let next_run = FloatGauge::default();
        registry.register(
            "mv_refresher_view_last_success_timestamp_seconds",
            "End of the view's last successful refresh, Unix time",
            last_success.clone(),
        );
        registry.register(
            "mv_refresher_view_last_duration_seconds",
            "Duration of the view's last successful refresh",
            last_duration.clone(),
        );
        registry.register(
            "mv_refresher_view_staleness_seconds",
            "Seconds since the view's last successful refresh (+Inf: never)",
            staleness.clone(),
        );
        registry.register(
            "mv_refresher_view_refreshes",
            "Refresh attempts by final status (success, failed, skipped, cancelled)",
            refreshes.clone(),
        );
        registry.register(
            "mv_refresher_view_refresh_duration_seconds",
            "Duration of successful refreshes",
            durations.clone(),
        );
        registry.register(
            "mv_refresher_cycles",
            "Scheduled cycles by outcome (ok, failed, unreachable, overlapped)",
            cycles.clone(),
        );
        registry.register(
            "mv_refresher_next_run_timestamp_seconds",
            "When the next scheduled cycle starts, Unix time",
            next_run.clone(),
        );
        Self {
            registry,
            last_success,
            last_duration,
            staleness,
            refreshes,
            durations,
            cycles,
            next_run,
            known: Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes `view` known, so its staleness shows (+Inf) before its first success.
    pub fn register_view(&self, view: &str) {
        let mut known = self.known.lock().expect("metrics lock");
        known.entry(view.to_owned()).or_insert(None);
    }

    /// Counts one view's outcome.
    pub fn observe(&self, outcome: &Outcome) {
        let view = ViewLabels {
            view: outcome.view_name.clone(),
        };
        self.refreshes
            .get_or_create(&ViewStatusLabels {
                view: view.view.clone(),
                status: outcome.status.as_str().to_owned(),
            })
            .inc();
        if outcome.status == Status::Success {
            let seconds = outcome.duration_ms / 1000.0;
            let now = now_seconds();
            self.last_success.get_or_create(&view).set(now);
            self.last_duration.get_or_create(&view).set(seconds);
            self.durations.get_or_create(&view).observe(seconds);
            self.known
                .lock()
                .expect("metrics lock")
                .insert(view.view, Some(now));
        }
    }

    /// Counts one cycle.
    pub fn cycle(&self, outcome: CycleOutcome) {
        self.cycles
            .get_or_create(&CycleLabels {
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    /// Sets when the next cycle starts (Unix seconds).
    pub fn next_run(&self, at_seconds: f64) {
        self.next_run.set(at_seconds);
    }

    /// Fills the per-view metrics from the log tables (for `status`).
    pub fn from_log(rows: &[LogRow]) -> Self {
        let metrics = Self::new();
        for row in rows {
            let view = ViewLabels {
                view: row.view_name.clone(),
            };
            for (status, count) in [
                ("success", row.refresh_count),
                ("failed", row.failure_count),
            ] {
                metrics
                    .refreshes
                    .get_or_create(&ViewStatusLabels {
                        view: view.view.clone(),
                        status: status.to_owned(),
                    })
                    .inc_by(u64::try_from(count).unwrap_or(0));
            }
            if let Some(ms) = row.last_refresh_time_ms {
                metrics.last_duration.get_or_create(&view).set(ms / 1000.0);
            }
            let last = row.age_seconds.map(|age| now_seconds() - age);
            if let Some(at) = last {
                metrics.last_success.get_or_create(&view).set(at);
            }
            metrics
                .known
                .lock()
                .expect("metrics lock")
                .insert(view.view, last);
        }
        metrics
    }

    /// The metrics in the text exposition format, staleness as of now.
    pub fn encode(&self) -> String {
        let now = now_seconds();
        for (view, last) in self.known.lock().expect("metrics lock").iter() {
            let staleness = last.map_or(f64::INFINITY, |at| (now - at).max(0.0));
            self.staleness
                .get_or_create(&ViewLabels { view: view.clone() })
                .set(staleness);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
