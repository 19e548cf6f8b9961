//! Live progress of `refresh` on a terminal: a line per running view with its
//! elapsed time against the duration its history leads to expect, and the
//! outcome as each finishes. Only when stdout is a terminal: piped or in a
//! CronJob, `refresh` prints the results table and the logs, nothing else.
//!
//! The display clears itself at the end, so the results table is the one report
//! of each view. Log lines written meanwhile go through [`suspend`], which takes
//! the progress lines off the screen while a line is written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::outcome::Outcome;
use crate::units::millis;

/// What the refresh reports as it goes.
#[derive(Debug)]
pub enum Event {
    Started {
        view: String,
        /// The view's average successful refresh, when it has history.
        expected_ms: Option<f64>,
    },
    Finished(Outcome),
}

/// Where the refresh sends its events.
pub type Sender = mpsc::UnboundedSender<Event>;

/// The display being drawn, if any.
static SHOWN: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Whether a progress display is on the terminal now.
pub fn showing() -> bool {
    SHOWN.lock().map(|shown| shown.is_some()).unwrap_or(false)
}

/// Runs `write` with the progress lines off the screen, if they are on it.
pub fn suspend<R>(write: impl FnOnce() -> R) -> R {
    let shown = SHOWN.lock().ok().and_then(|shown| shown.clone());
    match shown {
        Some(multi) => multi.suspend(write),
        None => write(),
    }
}

/// Starts drawing on stdout; the task ends when every sender is dropped.
pub fn start() -> (Sender, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, tokio::spawn(render(rx)))
}

async fn render(mut events: mpsc::UnboundedReceiver<Event>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    if let Ok(mut shown) = SHOWN.lock() {
        *shown = Some(multi.clone());
    }
    let with_history = ProgressStyle::with_template("{spinner} {prefix:32} [{bar:24}] {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let without_history =
        ProgressStyle::with_template("{spinner} {prefix:32} {msg}").expect("valid template");
    let mut bars: HashMap<String, (ProgressBar, Option<f64>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Started { view, expected_ms }) => {
                    let bar = match expected_ms {
                        Some(ms) => ProgressBar::new(ms.max(1.0) as u64).with_style(with_history.clone()),
                        None => ProgressBar::no_length().with_style(without_history.clone()),
                    };
                    let bar = multi.add(bar.with_prefix(view.clone()));
                    bar.enable_steady_tick(Duration::from_millis(100));
                    bars.insert(view, (bar, expected_ms));
                }
                Some(Event::Finished(outcome)) => {
                    if let Some((bar, _)) = bars.remove(&outcome.view_name) {
                        bar.set_style(without_history.clone());
                        bar.finish_with_message(match outcome.method {
                            Some(_) => format!("{} in {}", outcome.status.as_str(), millis(outcome.duration_ms)),
                            None => outcome.status.as_str().to_owned(),
                        });
                    }
                }
                None => {
                    if let Ok(mut shown) = SHOWN.lock() {
                        *shown = None;
                    }
                    let _ = multi.clear();
                    break;
                }
            },
            _ = tick.tick() => {
                for (bar, expected_ms) in bars.values() {
                    let elapsed = bar.elapsed().as_secs_f64() * 1000.0;
                    bar.set_position(elapsed as u64);
                    bar.set_message(match expected_ms {
                        Some(ms) => format!("{} of ~{} expected", millis(elapsed), millis(*ms)),
                        None => format!("{} (no history yet)", millis(elapsed)),
                    });
                }
            }
        }
    }
}
