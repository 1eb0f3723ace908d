//! Searcher benchmarks, the drover half of `docs/benchmarks-search.md` (the Optuna half is
//! `bench/optuna_search.py`).
//!
//!   cargo run --release -p drover-search --example search_bench [-- --runs 5 --seeds 10]
//!
//! 1. Throughput: a `tpe` (and, for reference, a `random`) searcher runs 1,000 trials one at
//!    a time over 5 hyperparameters (2 doubles, 1 log, 1 int 1..8, 1 categorical of 3), each
//!    trial reporting one validation and exiting, through the same `Searcher` API the master
//!    uses. "persisted" also serialises the whole searcher snapshot to JSON after every event
//!    and writes it to a file, as the master stores it after every event; "persisted+fsync"
//!    also calls fdatasync after each write.
//! 2. Quality: median (over seeds) best-found regret after 100 sequential evaluations on
//!    Branin (2-d) and Hartmann-6, for `tpe` and `random`.
//!
//! 3. Decisions: an adaptive search of 10,000 trials (ASHA, adaptive ASHA, PBT synchronous and
//!    asynchronous) with every call that decides (a validation, an exit) timed; `--only
//!    decisions` runs only these.
//!
//! Prints a human-readable report and, last, one JSON line with every number.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use drover_core::config::ExperimentConfig;
use drover_search::{Action, Searcher};
use serde_json::{Map, Value, json};

/// The throughput space; `int_max` is 8 in the published runs (`--int-max` widens the int).
fn throughput_space(int_max: i64) -> String {
    format!(
        "  x: {{type: double, minval: -10, maxval: 10}}\n  y: {{type: double, minval: 0, maxval: 1}}\n  lr: {{type: log, minval: -5, maxval: -1}}\n  n: {{type: int, minval: 1, maxval: {int_max}}}\n  opt: {{type: categorical, vals: [sgd, adam, rmsprop]}}\n"
    )
}

fn config(space: &str, searcher: &str, trials: usize) -> ExperimentConfig {
    let text = format!(
        "name: bench\nentrypoint: x\nhyperparameters:\n{space}searcher: {{name: {searcher}, metric: loss, max_trials: {trials}, max_concurrent_trials: 1}}\n"
    );
    ExperimentConfig::parse(&text, None).expect("bench config parses")
}

#[derive(Clone, Copy, PartialEq)]
enum Persist {
    Memory,
    File,
    FileFsync,
}

impl Persist {
    fn name(self) -> &'static str {
        match self {
            Persist::Memory => "in-memory",
            Persist::File => "persisted",
            Persist::FileFsync => "persisted+fsync",
        }
    }
}

/// Where the snapshots go: one file kept open and rewritten in place after every event. (Not
/// `File::create` each time: truncating a file to zero and rewriting it makes ext4 flush it on
/// close, an fsync in all but name.)
struct Store {
    file: Option<File>,
    persist: Persist,
}

impl Store {
    fn open(path: &Path, persist: Persist) -> Store {
        let file = (persist != Persist::Memory)
            .then(|| File::options().create(true).truncate(true).read(true).write(true).open(path).expect("snapshot file"));
        Store { file, persist }
    }

    fn save(&mut self, s: &Searcher) {
        let Some(f) = self.file.as_mut() else { return };
        let snapshot = s.snapshot();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(snapshot.as_bytes()).expect("write snapshot");
        f.set_len(snapshot.len() as u64).expect("truncate");
        if self.persist == Persist::FileFsync {
            f.sync_data().expect("fdatasync");
        }
    }
}

/// CPU time this thread has used, in seconds (from the scheduler's own accounting), so that
/// numbers taken while other jobs share the two cores can be told apart from wall time.
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()))
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

/// Runs a whole search one trial at a time; `f` maps hyperparameters to a loss. Returns the
/// losses in trial order and the seconds each trial took (propose + report + exit + saves).
fn drive(cfg: &ExperimentConfig, seed: u64, persist: Persist, path: &Path, f: &dyn Fn(&Map<String, Value>) -> f64) -> (Vec<f64>, Vec<f64>) {
    let mut s = Searcher::new(cfg, seed).expect("searcher");
    let mut store = Store::open(path, persist);
    let mut losses = Vec::new();
    let mut times = Vec::new();
    let mut started = Instant::now();
    let mut pending = s.initial_trials();
    store.save(&s);
    while let Some(action) = pending.pop() {
        match action {
            Action::Create { request_id, hparams, .. } => {
                let loss = f(&hparams);
                losses.push(loss);
                pending.extend(s.validation_completed(request_id, loss, 1.0));
                store.save(&s);
                pending.extend(s.trial_exited(request_id));
                store.save(&s);
                let now = Instant::now();
                times.push((now - started).as_secs_f64());
                started = now;
            }
            Action::Shutdown { .. } => break,
            Action::Stop { .. } => unreachable!("no stops from tpe or random"),
        }
    }
    assert!(s.is_shut_down());
    (losses, times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

fn quartiles(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    (at(0.25), at(0.75))
}

fn trivial(h: &Map<String, Value>) -> f64 {
    let opt = match h["opt"].as_str() {
        Some("adam") => 0.0,
        Some("sgd") => 1.0,
        _ => 2.0,
    };
    (h["x"].as_f64().unwrap() - 1.0).powi(2)
        + h["y"].as_f64().unwrap()
        + (h["lr"].as_f64().unwrap().log10() + 3.0).abs()
        + h["n"].as_f64().unwrap() * 0.1
        + opt
}

const BRANIN_MIN: f64 = 0.397_887_357_729_738;
const HARTMANN6_MIN: f64 = -3.322_368_011_391_339;

fn branin(h: &Map<String, Value>) -> f64 {
    use std::f64::consts::PI;
    let (x1, x2) = (h["x1"].as_f64().unwrap(), h["x2"].as_f64().unwrap());
    let (b, c, t) = (5.1 / (4.0 * PI * PI), 5.0 / PI, 1.0 / (8.0 * PI));
    (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - t) * x1.cos() + 10.0
}

fn hartmann6(h: &Map<String, Value>) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
        [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
        [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
        [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
    ];
    let x: Vec<f64> = (0..6).map(|j| h[&format!("x{j}")].as_f64().unwrap()).collect();
    -(0..4)
        .map(|i| {
            let inner: f64 = (0..6).map(|j| A[i][j] * (x[j] - P[i][j] * 1e-4).powi(2)).sum();
            ALPHA[i] * (-inner).exp()
        })
        .sum::<f64>()
}

/// Times every searcher call of a whole adaptive search with many trials: validations at
/// doubling times (1, 2, 4, ... up to `max_time`) or, for PBT, at each generation's end; a
/// checkpoint after each; the exit when stopped or done. Returns the microseconds of each call
/// that decides something (validation, exit) and the number of trials.
fn decision_times(yaml_searcher: &str, step_to: &dyn Fn(f64) -> f64, max_time: f64) -> (Vec<f64>, usize) {
    let cfg = config_with(&throughput_space(8), yaml_searcher);
    let mut s = Searcher::new(&cfg, 1).expect("searcher");
    let mut live: std::collections::VecDeque<(u64, f64)> = Default::default();
    let mut stop = std::collections::HashSet::new();
    let mut times = Vec::new();
    let mut created = 0;
    let mut pending: Vec<Action> = s.initial_trials();
    let mut rng = drover_core::SplitMix64::new(7);
    let mut reached = std::collections::HashMap::new();
    loop {
        for a in pending.drain(..) {
            match a {
                Action::Create { request_id, checkpoint_from, .. } => {
                    created += 1;
                    // A PBT member continues its parent's training time.
                    live.push_back((request_id, checkpoint_from.and_then(|p| reached.get(&p).copied()).unwrap_or(0.0)));
                }
                Action::Stop { request_id } => {
                    stop.insert(request_id);
                }
                Action::Shutdown { .. } => {}
            }
        }
        let Some((id, t)) = live.pop_front() else { break };
        if stop.remove(&id) || t >= max_time {
            reached.insert(id, t);
            s.checkpoint_saved(id);
            let started = Instant::now();
            pending = s.trial_exited(id);
            times.push(started.elapsed().as_secs_f64() * 1e6);
            continue;
        }
        let t = step_to(t);
        let loss = rng.next_f64() + 1.0 / (1.0 + t);
        let started = Instant::now();
        pending = s.validation_completed(id, loss, t);
        times.push(started.elapsed().as_secs_f64() * 1e6);
        s.checkpoint_saved(id);
        live.push_back((id, t));
    }
    assert!(s.is_shut_down());
    (times, created)
}

fn config_with(space: &str, searcher: &str) -> ExperimentConfig {
    let text = format!("name: bench\nentrypoint: x\nhyperparameters:\n{space}searcher: {searcher}\n");
    ExperimentConfig::parse(&text, None).expect("bench config parses")
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect("a number"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 5);
    let seeds = arg(&args, "--seeds", 10);
    let trials = arg(&args, "--trials", 1000);
    let evals = arg(&args, "--evals", 100);
    let int_max = arg(&args, "--int-max", 8) as i64;
    // `--only tpe/in-memory` runs one throughput row and no quality runs (for profiling).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let dir = std::env::temp_dir().join(format!("drover-search-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path: PathBuf = dir.join("searcher.json");
    let mut report = Map::new();

    if only.as_deref().is_none_or(|o| o == "decisions") {
        println!(
            "== decisions: microseconds per searcher call that decides (a validation or an exit), 10,000 trials, median of {runs} runs"
        );
        println!("{:<44} {:>8} {:>8} {:>8} {:>9} {:>9}", "searcher", "trials", "calls", "p50 us", "p99 us", "max us");
        let doubling = |t: f64| if t == 0.0 { 1.0 } else { t * 2.0 };
        #[allow(clippy::type_complexity)]
        let cases: [(&str, String, &dyn Fn(f64) -> f64, f64); 6] = [
            ("async_halving, 100 running", "{name: async_halving, metric: loss, max_trials: 10000, max_concurrent_trials: 100, num_rungs: 4, divisor: 4, time_metric: t, max_time: 64}".into(), &doubling, 64.0),
            ("adaptive_asha, 100 running", "{name: adaptive_asha, metric: loss, max_trials: 10000, max_concurrent_trials: 100, max_rungs: 5, divisor: 4, time_metric: t, max_time: 256}".into(), &doubling, 256.0),
            ("pbt sync, population 100 x 100 generations", "{name: pbt, metric: loss, population_size: 100, max_generations: 100, generation_length: 4, time_metric: t, max_concurrent_trials: 100, min_improvement: 0}".into(), &|t: f64| t + 4.0, 400.0),
            ("pbt async, population 100 x 100", "{name: pbt, metric: loss, population_size: 100, max_generations: 100, generation_length: 4, time_metric: t, max_concurrent_trials: 100, min_improvement: 0, synchronous: false}".into(), &|t: f64| t + 4.0, 400.0),
            ("pbt sync, population 1000 x 10", "{name: pbt, metric: loss, population_size: 1000, max_generations: 10, generation_length: 4, time_metric: t, max_concurrent_trials: 100, min_improvement: 0}".into(), &|t: f64| t + 4.0, 40.0),
            ("pbt async truncation, population 1000 x 10", "{name: pbt, metric: loss, population_size: 1000, max_generations: 10, generation_length: 4, time_metric: t, max_concurrent_trials: 100, min_improvement: 0, synchronous: false, exploit: truncation}".into(), &|t: f64| t + 4.0, 40.0),
        ];
        for (name, searcher, step, max_time) in cases {
            // Medians over runs of each run's percentiles.
            let (mut p50s, mut p99s, mut maxes) = (Vec::new(), Vec::new(), Vec::new());
            let mut calls = 0;
            let mut created = 0;
            for _ in 0..runs {
                let (times, c) = decision_times(&searcher, step, max_time);
                p50s.push(percentile(&times, 0.5));
                p99s.push(percentile(&times, 0.99));
                maxes.push(percentile(&times, 1.0));
                (calls, created) = (times.len(), c);
            }
            let (p50, p99, max) = (median(p50s), median(p99s), median(maxes));
            println!("{name:<44} {created:>8} {calls:>8} {p50:>8.1} {p99:>9.1} {max:>9.1}");
            report.insert(
                format!("decisions.{name}"),
                json!({"trials": created, "calls": calls, "p50_us": p50, "p99_us": p99, "max_us": max}),
            );
        }
        println!();
    }
    if only.as_deref() == Some("decisions") {
        println!("JSON {}", Value::Object(report));
        return;
    }
    println!("== throughput: {trials} trials, 5 hyperparameters (int 1..{int_max}), one at a time, median of {runs} runs");
    println!(
        "{:<8} {:<16} {:>9} {:>9} {:>11} {:>22} {:>14}",
        "method", "mode", "wall s", "cpu s", "trials/s", "ms/trial first/last 100", "snapshot KiB"
    );
    for method in ["tpe", "random"] {
        for persist in [Persist::Memory, Persist::File, Persist::FileFsync] {
            if only.as_ref().is_some_and(|o| *o != format!("{method}/{}", persist.name())) {
                continue;
            }
            let cfg = config(&throughput_space(int_max), method, trials);
            let mut totals = Vec::new();
            let mut cpus = Vec::new();
            let mut first = Vec::new();
            let mut last = Vec::new();
            for run in 0..runs {
                let cpu = thread_cpu_seconds();
                let (_, times) = drive(&cfg, run as u64, persist, &path, &trivial);
                cpus.push(thread_cpu_seconds() - cpu);
                assert_eq!(times.len(), trials);
                totals.push(times.iter().sum::<f64>());
                let k = 100.min(trials);
                first.push(times[..k].iter().sum::<f64>() / k as f64 * 1e3);
                last.push(times[trials - k..].iter().sum::<f64>() / k as f64 * 1e3);
            }
            let size = if persist == Persist::Memory { 0.0 } else { std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1024.0) };
            let total = median(totals.clone());
            let cpu = median(cpus.clone());
            let (f, l) = (median(first), median(last));
            println!(
                "{method:<8} {:<16} {total:>9.3} {cpu:>9.3} {:>11.0} {:>22} {:>14.1}",
                persist.name(),
                trials as f64 / total,
                format!("{f:.3} / {l:.3}"),
                size
            );
            report.insert(
                format!("throughput.{method}.{}", persist.name()),
                json!({"total_s": total, "runs_s": totals, "cpu_s": cpu, "runs_cpu_s": cpus, "trials_per_s": trials as f64 / total, "ms_first100": f, "ms_last100": l, "snapshot_kib": size}),
            );
        }
    }

    if only.is_none() {
        println!("\n== quality: best-found regret after {evals} evaluations, {seeds} seeds (median [IQR])");
    }
    let branin_space = "  x1: {type: double, minval: -5, maxval: 10}\n  x2: {type: double, minval: 0, maxval: 15}\n";
    let hartmann_space: String = (0..6).map(|j| format!("  x{j}: {{type: double, minval: 0, maxval: 1}}\n")).collect();
    #[allow(clippy::type_complexity)]
    let problems: [(&str, &str, f64, &dyn Fn(&Map<String, Value>) -> f64); 2] =
        [("branin", branin_space, BRANIN_MIN, &branin), ("hartmann6", &hartmann_space, HARTMANN6_MIN, &hartmann6)];
    for (name, space, optimum, f) in problems {
        if only.is_some() {
            break;
        }
        for method in ["tpe", "random"] {
            let cfg = config(space, method, evals);
            let regrets: Vec<f64> = (0..seeds)
                .map(|seed| {
                    let (losses, _) = drive(&cfg, seed as u64, Persist::Memory, &path, f);
                    losses.iter().copied().fold(f64::INFINITY, f64::min) - optimum
                })
                .collect();
            let (q1, q3) = quartiles(&regrets);
            let m = median(regrets.clone());
            println!("{name:<10} {method:<7} median regret {m:.5}  [{q1:.5}, {q3:.5}]");
            report.insert(format!("quality.{name}.{method}"), json!({"median_regret": m, "q1": q1, "q3": q3, "regrets": regrets}));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("\nJSON {}", Value::Object(report));
}
