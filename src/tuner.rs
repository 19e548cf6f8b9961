//! `work_mem = "auto"`: a view's `work_mem` found by measuring it.
//!
//! Nobody can guess the right `work_mem` for a refresh: at 1M bets more of it
//! made `user_activity_view`'s plain refresh faster and its concurrent refresh
//! slower (docs/BENCHMARKS.md). So the refresher tries settings over successive
//! refreshes and keeps what is fastest, using the history it writes anyway:
//! every success row holds the `work_mem` it ran with and its duration.
//!
//! * The candidates are the server's value and its powers of two up and down,
//!   from 64kB to the cap, `work_mem_max / jobs` (the views refreshed at once
//!   stay within `work_mem_max` together).
//! * A candidate's measure is the median of its last [`RECENT`] durations, and
//!   it is measured [`RUNS`] times before it counts.
//! * First a survey, a factor of 4 apart: the server's value, then larger
//!   values up to the cap, then a quarter of the server's (a concurrent
//!   refresh can be faster with less). Then a local search around the fastest:
//!   its neighbours (×2, ÷2) are measured, the search moves to one that is
//!   faster, and settles where both neighbours are not. Medians within [`TIE`]
//!   of the fastest are a tie, won by the server's value when it is among them
//!   (no change without a measured gain), else by the smallest (memory is
//!   shared).
//! * Data grows: every [`REEXPLORE_EVERY`]th refresh re-measures the neighbour
//!   measured longest ago, so a change of the best setting is found.
//!
//! From a 4MB server with the default cap (1GB), the survey takes 6 settings ×
//! 3 runs, the refinement 6 more: settled after about 24 refreshes, wherever
//! the best setting is. (A pure local search from the server's value stopped
//! on plateaus: at a million bets, `user_activity_view` is as slow at 8MB as
//! at 4MB and 15% faster at 16-32MB.) This module decides; it reads nothing
//! and runs nothing (`plan` reads the history, in one statement for all
//! views).

use std::collections::HashMap;

use crate::units::Memory;

/// Runs a candidate is measured before its median counts.
pub const RUNS: usize = 3;

/// The durations of a candidate that count: the latest.
pub const RECENT: usize = 5;

/// Medians closer than this fraction are a tie.
pub const TIE: f64 = 0.05;

/// Every this many refreshes after settling, one neighbour is measured again.
pub const REEXPLORE_EVERY: usize = 10;

/// The smallest `work_mem` PostgreSQL accepts, in kB.
const MIN_KB: u64 = 64;

/// One successful refresh: the `work_mem` it ran with and how long it took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub work_mem: Memory,
    pub duration_ms: f64,
}

/// The setting for the next refresh, and why, for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub work_mem: Memory,
    pub reason: String,
}

/// What is known of one candidate.
#[derive(Debug, Clone, Default)]
struct Measured {
    /// The latest durations, oldest first.
    durations: Vec<f64>,
    /// Index in the history of its latest run.
    last_seen: usize,
}

impl Measured {
    fn median(&self) -> Option<f64> {
        (self.durations.len() >= RUNS).then(|| median(&self.durations))
    }
}

/// The median of `values` (not empty).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() % 2 {
        1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}

/// The per-view cap: `work_mem_max` shared by `jobs` views at once.
pub fn cap(work_mem_max: Memory, jobs: usize) -> Memory {
    let kb = (work_mem_max.as_kilobytes() / jobs.max(1) as u64).max(MIN_KB);
    Memory::from_kilobytes(kb)
}

/// The candidates: `server` and its powers of two within 64kB and `cap`,
/// smallest first. A server value above the cap is replaced by the cap.
fn ladder(server: Memory, cap: Memory) -> Vec<Memory> {
    let start = server.as_kilobytes().clamp(MIN_KB, cap.as_kilobytes());
    let mut kb = start;
    while kb / 2 >= MIN_KB {
        kb /= 2;
    }
    let mut rungs = Vec::new();
    while kb <= cap.as_kilobytes() {
        rungs.push(Memory::from_kilobytes(kb));
        kb *= 2;
    }
    rungs
}

/// The setting for the next refresh of a view whose latest successful
/// refreshes (by the method it will use now) were `history`, oldest first, of
/// `total` successful refreshes in all.
pub fn choose(history: &[Run], total: usize, server: Memory, cap: Memory) -> Choice {
    let rungs = ladder(server, cap);
    let start = rungs
        .iter()
        .position(|&m| m.as_kilobytes() >= server.as_kilobytes())
        .unwrap_or(rungs.len() - 1);
    let measured = measure(history, &rungs);
    let median_of = |i: usize| measured.get(&i).and_then(Measured::median);
    let exploring = |i: usize, why: &str| {
        let runs = measured.get(&i).map_or(0, |m| m.durations.len().min(RUNS));
        Choice {
            work_mem: rungs[i],
            reason: format!("{}, {why} ({} of {RUNS} runs)", rungs[i], runs + 1),
        }
    };
    if let Some(&next) = survey(start, rungs.len())
        .iter()
        .find(|&&i| median_of(i).is_none())
    {
        return exploring(next, "surveying");
    }
    let medians: Vec<(usize, f64)> = (0..rungs.len())
        .filter_map(|i| median_of(i).map(|m| (i, m)))
        .collect();
    let best = fastest(&medians, start);
    let neighbours: Vec<usize> = [best + 1, best.wrapping_sub(1)]
        .into_iter()
        .filter(|&i| i < rungs.len())
        .collect();
    if let Some(&next) = neighbours.iter().find(|&&i| median_of(i).is_none()) {
        return exploring(next, "refining");
    }
    let best_ms = median_of(best).expect("measured");
    if total.is_multiple_of(REEXPLORE_EVERY)
        && let Some(&stale) = neighbours.iter().min_by_key(|&&i| measured[&i].last_seen)
    {
        return Choice {
            work_mem: rungs[stale],
            reason: format!(
                "{}, re-measuring once (tuned: {} with a median of {})",
                rungs[stale],
                rungs[best],
                seconds(best_ms)
            ),
        };
    }
    let others: Vec<String> = neighbours
        .iter()
        .map(|&i| format!("{}: {}", rungs[i], seconds(median_of(i).expect("measured"))))
        .collect();
    Choice {
        work_mem: rungs[best],
        reason: format!(
            "{}, tuned: median {} over {} runs; {}",
            rungs[best],
            seconds(best_ms),
            measured[&best].durations.len(),
            others.join(", ")
        ),
    }
}

/// The rungs measured first, a factor of 4 apart: the server's value
/// (`start`), then larger ones up to the cap, then a quarter of the server's.
fn survey(start: usize, rungs: usize) -> Vec<usize> {
    let up = (start..rungs).step_by(2);
    up.chain(start.checked_sub(2)).collect()
}

/// The fastest of `medians`: among those within [`TIE`] of the fastest, the
/// server's value (`start`) when it is one of them, else the smallest.
fn fastest(medians: &[(usize, f64)], start: usize) -> usize {
    let min = medians
        .iter()
        .map(|&(_, m)| m)
        .fold(f64::INFINITY, f64::min);
    let tied: Vec<usize> = medians
        .iter()
        .filter(|&&(_, m)| m <= min * (1.0 + TIE))
        .map(|&(i, _)| i)
        .collect();
    match tied.contains(&start) {
        true => start,
        false => tied[0],
    }
}

/// The latest durations of each rung, by its index; runs at other settings
/// (a fixed `work_mem` before, another server value) are left out.
fn measure(history: &[Run], rungs: &[Memory]) -> HashMap<usize, Measured> {
    let mut measured: HashMap<usize, Measured> = HashMap::new();
    for (seen, run) in history.iter().enumerate() {
        if let Some(i) = rungs.iter().position(|&m| m == run.work_mem) {
            let entry = measured.entry(i).or_default();
            entry.durations.push(run.duration_ms);
            if entry.durations.len() > RECENT {
                entry.durations.remove(0);
            }
            entry.last_seen = seen;
        }
    }
    measured
}

/// A duration as people read it: `3.1 s`, `87 ms`.
fn seconds(ms: f64) -> String {
    crate::units::millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(n: u64) -> Memory {
        Memory::from_kilobytes(n * 1024)
    }

    /// Runs the tuner `runs` times on a view whose refresh takes `cost(work_mem)`
    /// plus a little deterministic noise; returns the settings it chose.
    fn simulate(
        runs: usize,
        server: Memory,
        cap: Memory,
        cost: impl Fn(u64) -> f64,
    ) -> Vec<Memory> {
        let mut history = Vec::new();
        let mut chosen = Vec::new();
        for n in 0..runs {
            let choice = choose(&history, history.len(), server, cap);
            let noise = 1.0 + 0.01 * ((n * 7 % 5) as f64 - 2.0);
            history.push(Run {
                work_mem: choice.work_mem,
                duration_ms: cost(choice.work_mem.as_kilobytes()) * noise,
            });
            chosen.push(choice.work_mem);
        }
        chosen
    }

    #[test]
    fn climbs_to_the_knee_of_a_sort_that_spills_and_stays() {
        // Spills below 64MB, in memory from there on.
        let cost = |kb: u64| {
            if kb >= 64 * 1024 {
                300.0
            } else {
                300.0 + 2e7 / kb as f64
            }
        };
        let chosen = simulate(40, mb(4), mb(1024), cost);
        assert_eq!(chosen[..3], [mb(4); 3], "the server's value first");
        // Survey (6 settings) and refinement (2) take 24 runs.
        let settled = &chosen[24..];
        let at_best = settled.iter().filter(|&&m| m == mb(64)).count();
        assert!(at_best >= settled.len() - 3, "settled on 64MB: {chosen:?}");
    }

    #[test]
    fn stays_small_when_more_memory_is_slower() {
        // A concurrent refresh: its diff's sort is slower in memory.
        let cost = |kb: u64| 1000.0 + kb as f64 / 10.0;
        let chosen = simulate(40, mb(4), mb(1024), cost);
        let settled = &chosen[24..];
        assert!(settled.iter().all(|&m| m <= mb(4)), "{chosen:?}");
    }

    #[test]
    fn never_above_the_cap_nor_below_64kb() {
        let chosen = simulate(60, mb(4), mb(16), |kb| 1e9 / kb as f64);
        assert!(chosen.iter().all(|&m| m <= mb(16)), "{chosen:?}");
        assert_eq!(*chosen.last().unwrap(), mb(16));
        let chosen = simulate(60, Memory::from_kilobytes(64), mb(4), |kb| kb as f64);
        assert!(chosen.iter().all(|&m| m.as_kilobytes() >= 64), "{chosen:?}");
    }

    #[test]
    fn the_cap_shares_work_mem_max_among_the_jobs() {
        assert_eq!(cap(mb(1024), 4), mb(256));
        assert_eq!(cap(mb(1024), 3).as_kilobytes(), 1024 * 1024 / 3);
        assert_eq!(cap(Memory::from_kilobytes(64), 8).as_kilobytes(), 64);
    }

    #[test]
    fn says_why() {
        let runs = |m: u64, ms: f64, n: usize| {
            vec![
                Run {
                    work_mem: mb(m),
                    duration_ms: ms
                };
                n
            ]
        };
        let survey = [
            runs(1, 4200.0, 3),
            runs(64, 5000.0, 3),
            runs(256, 5000.0, 3),
            runs(1024, 5000.0, 3),
        ];
        let refined = [runs(4, 4000.0, 3), runs(8, 3100.0, 5), runs(16, 3300.0, 3)];
        let history: Vec<Run> = [survey.concat(), refined.concat()].concat();
        let choice = choose(&history, 23, mb(4), mb(1024));
        assert_eq!(
            choice.reason,
            "8MB, tuned: median 3.1 s over 5 runs; 16MB: 3.3 s, 4MB: 4.0 s"
        );
        assert_eq!(
            choose(&[], 0, mb(4), mb(1024)).reason,
            "4MB, surveying (1 of 3 runs)"
        );
    }
}
