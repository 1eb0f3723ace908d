//! Searchers on a real model: the digits example (`examples/digits`, a candle MLP) with random
//! search, adaptive ASHA and PBT at about the same budget of epochs, each run through
//! `drover run` on the embedded cluster as a user would. Reports, per searcher, the median over
//! seeds of the best validation accuracy, the wall time and the epochs actually trained.
//!
//! The budget: 320 epochs. Random: 8 trials of 40 epochs. PBT: 8 members, 10 generations of 4
//! epochs. Adaptive ASHA: 20 trials that may each train 40 epochs, which `preview-search`
//! puts at about 320 epochs once the weak are stopped. Same space for all: learning rate
//! (log 1e-4..1e-1) and batch size (16..128), 128 hidden units.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::report::{Table, median};

const SPACE: &str = "\
hyperparameters:
  learning_rate: {type: log, minval: -4, maxval: -1}
  batch_size: {type: categorical, vals: [16, 32, 64, 128]}
  hidden: 128
  epochs: 40
";

const COMMON: &str = "\
environment:
  environment_variables: [RAYON_NUM_THREADS=1]
max_restarts: 0
";

fn searchers() -> [(&'static str, &'static str); 3] {
    [
        ("random", "{name: random, metric: validation_accuracy, smaller_is_better: false, max_trials: 8, max_concurrent_trials: 2"),
        (
            "adaptive_asha",
            "{name: adaptive_asha, metric: validation_accuracy, smaller_is_better: false, time_metric: epochs, max_time: 40, max_trials: 20, divisor: 3, max_rungs: 4, max_concurrent_trials: 2",
        ),
        (
            "pbt",
            "{name: pbt, metric: validation_accuracy, smaller_is_better: false, time_metric: epochs, population_size: 8, generation_length: 4, max_generations: 10, min_improvement: 0, max_concurrent_trials: 2",
        ),
    ]
}

struct Outcome {
    best: f64,
    wall: f64,
    epochs: f64,
    trials: usize,
}

/// Epochs trained in a run: each trial's last epoch, less the epoch it started from (a PBT
/// member continues its parent's count).
fn epochs_trained(summary: &Value) -> f64 {
    let trials = summary["trials"].as_array().cloned().unwrap_or_default();
    let last = |id: &Value| trials.iter().find(|t| t["trial_id"] == *id).and_then(|t| t["last_step"].as_f64()).unwrap_or(0.0);
    trials
        .iter()
        .map(|t| t["last_step"].as_f64().unwrap_or(0.0) - t.get("parent_trial_id").filter(|p| !p.is_null()).map_or(0.0, last))
        .sum()
}

fn run_one(drover: &Path, context: &Path, searcher: &str, seed: u64) -> Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let config = format!("name: bench-{seed}\nentrypoint: digits\n{SPACE}searcher: {searcher}, seed: {seed}}}\n{COMMON}");
    let file = dir.path().join("search.yaml");
    std::fs::write(&file, config)?;
    let started = Instant::now();
    let out = Command::new(drover)
        .args(["run", file.to_str().unwrap(), context.to_str().unwrap(), "--output", "json", "--cpu-slots", "2", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .context("running drover")?;
    let wall = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("drover run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let summary: Value = serde_json::from_slice(&out.stdout).context("drover run --output json")?;
    Ok(Outcome {
        best: summary["best_trial"]["best_value"].as_f64().unwrap_or(f64::NAN),
        wall,
        epochs: epochs_trained(&summary),
        trials: summary["trials"].as_array().map_or(0, Vec::len),
    })
}

pub fn run(runs: usize) -> Result<()> {
    let drover = crate::sibling("drover")?;
    crate::sibling("digits")?;
    let context = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/digits");
    println!("## Searchers on the digits MLP, 320-epoch budget, median of {runs} seeds\n");
    let mut table = Table::new(&["searcher", "best validation_accuracy", "wall s", "epochs trained", "trials", "runs (best)"]);
    for (name, searcher) in searchers() {
        let mut outcomes = Vec::new();
        for seed in 0..runs as u64 {
            let o = run_one(&drover, &context, searcher, seed)?;
            eprintln!("{name} seed {seed}: best {:.4}, {:.1} s, {} epochs, {} trials", o.best, o.wall, o.epochs, o.trials);
            outcomes.push(o);
        }
        let col = |f: &dyn Fn(&Outcome) -> f64| median(&outcomes.iter().map(f).collect::<Vec<_>>());
        table.row(vec![
            name.to_string(),
            format!("{:.4}", col(&|o| o.best)),
            format!("{:.1}", col(&|o| o.wall)),
            format!("{:.0}", col(&|o| o.epochs)),
            format!("{:.0}", col(&|o| o.trials as f64)),
            outcomes.iter().map(|o| format!("{:.4}", o.best)).collect::<Vec<_>>().join(" "),
        ]);
    }
    table.print();
    Ok(())
}
