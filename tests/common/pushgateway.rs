//! A Prometheus Pushgateway, where the CronJob's `refresh --pushgateway`
//! sends its metrics: Debian's `prometheus-pushgateway` on a free local port,
//! keeping what it is pushed in memory only, started by the test like the
//! throwaway cluster and stopped when dropped (or by a watchdog process when
//! the test binary exits, however it exits).
//!
//! It reads what the gateway serves the way Prometheus would, `/metrics` (the
//! pushed series with the grouping labels and `push_time_seconds` added), and
//! the groups through the API; it pushes nothing itself.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{free_port, kill_when_tests_end};

/// Where Debian's package puts the binary.
const PROGRAM: &str = "/usr/bin/prometheus-pushgateway";

/// How long a Pushgateway may take to answer.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long one request to it may take: a guard against hangs.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

static NEXT_GATEWAY: AtomicUsize = AtomicUsize::new(0);

/// A Pushgateway on 127.0.0.1, empty when started.
pub struct Pushgateway {
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Child>,
}

/// One sample of a metrics page: its labels (`job`, `instance` and the
/// grouping labels included) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One group of pushed metrics, as `/api/v1/metrics` shows it.
#[derive(Debug, Clone)]
pub struct Group {
    /// The grouping key: `job` and the grouping labels of the push's URL.
    pub labels: BTreeMap<String, String>,
    /// Whether the latest push to the group was accepted.
    pub last_push_successful: bool,
    /// The group's metric families by name (`push_time_seconds` and
    /// `push_failure_time_seconds` among them), as the API gives them:
    /// `{"type": .., "metrics": [{"labels": {..}, "value": ".."}, ..], ..}`.
    pub families: serde_json::Map<String, serde_json::Value>,
}

impl Group {
    /// When the group was last pushed to successfully, Unix seconds.
    pub fn push_time_seconds(&self) -> f64 {
        let value = &self.families["push_time_seconds"]["metrics"][0]["value"];
        value
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("push_time_seconds of group {:?}: {value}", self.labels))
    }
}

impl Pushgateway {
    /// Starts one and waits until it answers. Panics, saying what to
    /// install, when Debian's `prometheus-pushgateway` is not installed.
    pub fn start() -> Self {
        assert!(
            Path::new(PROGRAM).is_file(),
            "{PROGRAM} is not installed (Debian/Ubuntu: apt-get install prometheus-pushgateway)"
        );
        let n = NEXT_GATEWAY.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "mv-refresher-pushgateway-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log = File::create(dir.join("pushgateway.log")).unwrap();
        let child = Command::new(PROGRAM)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // In memory only: the package's default file is shared by all.
            .arg("--persistence.file=")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{PROGRAM} does not start: {e}"));

        kill_when_tests_end(child.id(), &dir);

        let gateway = Self {
            port,
            dir,
            child: Mutex::new(child),
        };
        gateway.wait_ready();
        gateway
    }

    /// Waits until `/-/ready` answers 200, failing with the log when the
    /// process ends or takes too long.
    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            self.assert_running("before answering");
            if self
                .get("/-/ready")
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "the pushgateway does not answer after {START_LIMIT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log when the Pushgateway is no longer running (`when`
    /// says at which point of the test).
    #[track_caller]
    pub fn assert_running(&self, when: &str) {
        let status = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .unwrap();
        if let Some(status) = status {
            panic!("the pushgateway exited ({status}) {when}\n{}", self.log());
        }
    }

    /// Its base URL, `http://127.0.0.1:PORT`, what `--pushgateway` takes.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its `/metrics` page, what Prometheus scrapes: every pushed series with
    /// its group's labels, `push_time_seconds` and
    /// `push_failure_time_seconds` per group, and the gateway's own metrics.
    #[track_caller]
    pub fn metrics(&self) -> String {
        self.get_ok("/metrics")
    }

    /// The samples of the metric `name` on `/metrics` (for a histogram, ask
    /// for `NAME_bucket`, `NAME_sum` or `NAME_count`).
    #[track_caller]
    pub fn samples(&self, name: &str) -> Vec<Sample> {
        samples_in(&self.metrics(), name)
    }

    /// The value of the one sample of `name` on `/metrics` whose labels
    /// include `labels`; `None` when there is none, a panic when several match.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<Sample> = self
            .samples(name)
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|l| l == v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{} samples of {name} with labels {labels:?}: {matching:?}",
            matching.len()
        );
        matching.first().map(|s| s.value)
    }

    /// The groups pushed so far, from `/api/v1/metrics`.
    #[track_caller]
    pub fn groups(&self) -> Vec<Group> {
        let body = self.get_ok("/api/v1/metrics");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/api/v1/metrics is not JSON ({e}): {body}"));
        let groups = json["data"]
            .as_array()
            .unwrap_or_else(|| panic!("/api/v1/metrics has no data: {body}"));
        groups
            .iter()
            .map(|group| {
                let mut families = group.as_object().cloned().unwrap_or_default();
                let labels = families
                    .remove("labels")
                    .and_then(|l| serde_json::from_value(l).ok())
                    .unwrap_or_else(|| panic!("a group without labels: {group}"));
                let last_push_successful = families
                    .remove("last_push_successful")
                    .and_then(|v| v.as_bool())
                    .unwrap_or_else(|| panic!("a group without last_push_successful: {group}"));
                Group {
                    labels,
                    last_push_successful,
                    families,
                }
            })
            .collect()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("pushgateway.log")).unwrap_or_default();
        format!("--- pushgateway.log ({}) ---\n{log}", self.dir.display())
    }

    /// GET `path`: the body, or a panic with the status, the body and the log
    /// unless the status is 200.
    #[track_caller]
    fn get_ok(&self, path: &str) -> String {
        match self.get(path) {
            Some((200, body)) => body,
            Some((status, body)) => panic!(
                "GET {}{path}: status {status}\n{body}\n{}",
                self.url(),
                self.log()
            ),
            None => panic!("GET {}{path}: no answer\n{}", self.url(), self.log()),
        }
    }

    /// GET `path`: `(status code, body)`; `None` while nothing answers.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_LIMIT))
            .build()
            .into();
        let mut response = agent.get(format!("{}{path}", self.url())).call().ok()?;
        let status = response.status().as_u16();
        Some((status, response.body_mut().read_to_string().ok()?))
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The samples of the metric `name` in a page of the Prometheus text format
/// (a gateway's, or `run`'s `/metrics`): matched by name and parsed labels,
/// never by the line's text, as label order is the writer's choice.
pub fn samples_in(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, rest) = match rest.strip_prefix('{') {
                Some(inner) => parse_labels(inner)
                    .unwrap_or_else(|| panic!("unreadable labels in the line {line:?}")),
                None if rest.starts_with(' ') => (BTreeMap::new(), rest),
                None => return None, // another metric whose name starts with `name`
            };
            // The value, then an optional timestamp.
            let value = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no value in the line {line:?}"));
            Some(Sample { labels, value })
        })
        .collect()
}

/// `a="x",b="y\"z"} rest` → the labels and ` rest`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (name, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c), // `\\` and `\"`
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        s = &rest[end + 1..];
    }
}
