//! An advisor for drover's `custom` searcher: a steady-state (1+1) evolution strategy that
//! runs a random point first, then proposes points around the best result so far, widening its
//! steps after an improvement and narrowing them after a miss (the 1/5 success rule).
//!
//! ```text
//! drover up                                                  # one shell
//! drover experiment create examples/digits/custom.yaml       # prints "Created experiment N"
//! drover-example-advisor N --trials 16                       # another shell
//! ```
//!
//! It keeps as many trials running as the experiment allows, and once `--trials` of them have
//! ended it shuts the search down, so the experiment completes. Its state lives in memory: it
//! drives an experiment from the start and is not meant to take over from another advisor.

mod strategy;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use drover_core::HyperparameterSpace;
use drover_sdk::advisor::{Advisor, AdvisorAction, SearcherEventKind};
use serde_json::{Map, Value};

use crate::strategy::Strategy;

#[derive(Parser)]
#[command(about = "Drives a drover experiment that uses the `custom` searcher with a (1+1) evolution strategy")]
struct Args {
    /// The experiment to drive.
    experiment_id: i64,
    #[arg(long, env = "DROVER_MASTER", default_value = "http://127.0.0.1:8080")]
    master: String,
    /// Trials to run in all (default: the experiment's max_trials, else 16).
    #[arg(long)]
    trials: Option<usize>,
    /// Trials to run at once (default and at most: the experiment's max_concurrent_trials).
    #[arg(long)]
    parallel: Option<usize>,
    /// First step size, as a fraction of each hyperparameter's range.
    #[arg(long, default_value_t = 0.25)]
    sigma: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// How long the master is given to come back (e.g. from a restart) before the advisor gives up.
const UNREACHABLE_FOR: Duration = Duration::from_secs(300);

struct Running {
    hparams: Map<String, Value>,
    trial_id: i64,
    /// Best value of the searcher metric reported so far, as reported.
    best: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.sigma > 0.0 && args.sigma <= 1.0, "--sigma must be in (0, 1]");
    let mut advisor = Advisor::connect(&args.master, args.experiment_id)
        .with_context(|| format!("cannot drive experiment {} at {}", args.experiment_id, args.master))?;

    // The first event describes the search; without it there is no space to search.
    let first = loop {
        let events = next_events(&mut advisor)?;
        if let Some(first) = events.into_iter().next() {
            break first;
        }
        if advisor.is_finished() {
            bail!("experiment {} is already {}", args.experiment_id, advisor.experiment_state());
        }
    };
    let SearcherEventKind::Initialized { metric, smaller_is_better, max_trials, max_concurrent_trials, hyperparameters } = first.kind
    else {
        bail!("experiment {}'s first events were already taken by another advisor; this one only starts searches", args.experiment_id);
    };
    let space: HyperparameterSpace = serde_json::from_value(hyperparameters).context("reading the experiment's hyperparameter space")?;
    let cap = max_trials.map(|n| n as usize);
    let budget = args.trials.or(cap).unwrap_or(16).min(cap.unwrap_or(usize::MAX));
    let parallel = args.parallel.unwrap_or(usize::MAX).clamp(1, max_concurrent_trials as usize);
    println!(
        "experiment {}: {budget} trials, {parallel} at a time, {} {metric}",
        args.experiment_id,
        if smaller_is_better { "minimising" } else { "maximising" }
    );

    let mut strategy = Strategy::new(space, args.sigma, args.seed);
    let mut running: BTreeMap<u64, Running> = BTreeMap::new();
    let (mut created, mut ended, mut with_result) = (0usize, 0usize, 0usize);
    let mut best: Option<(f64, i64)> = None;
    loop {
        let wanted = parallel.saturating_sub(running.len()).min(budget - created);
        if wanted > 0 {
            let points: Vec<Map<String, Value>> = (0..wanted).map(|_| strategy.propose()).collect();
            let actions = points.iter().map(|p| AdvisorAction::Create { hparams: p.clone(), checkpoint_from: None }).collect();
            let response = advisor.post(actions).context("creating trials")?;
            for (c, hparams) in response.created.into_iter().zip(points) {
                println!("request {} (trial {}): {}", c.request_id, c.trial_id, describe(&hparams));
                running.insert(c.request_id, Running { hparams, trial_id: c.trial_id, best: None });
            }
            created += wanted;
        }
        if created == budget && running.is_empty() {
            break;
        }
        for event in next_events(&mut advisor)? {
            match event.kind {
                SearcherEventKind::ValidationCompleted { request_id, metric: value, .. } => {
                    if let Some(r) = running.get_mut(&request_id) {
                        let better = |a: f64, b: f64| if smaller_is_better { a < b } else { a > b };
                        r.best = Some(r.best.map_or(value, |b| if better(value, b) { value } else { b }));
                    }
                }
                SearcherEventKind::TrialExited { request_id } | SearcherEventKind::TrialFailed { request_id } => {
                    let Some(r) = running.remove(&request_id) else { continue };
                    ended += 1;
                    let Some(value) = r.best else {
                        println!("request {request_id} (trial {}) ended without a {metric}", r.trial_id);
                        continue;
                    };
                    with_result += 1;
                    // The strategy minimises; larger-is-better metrics are negated for it.
                    let improved = strategy.observe(r.hparams, if smaller_is_better { value } else { -value });
                    if improved {
                        best = Some((value, r.trial_id));
                    }
                    let (best_value, best_trial) = best.expect("a result was just observed");
                    println!(
                        "request {request_id} (trial {}): {metric} {value:.4}{} | best {best_value:.4} (trial {best_trial}), step {:.3}, {ended}/{budget} done",
                        r.trial_id,
                        if improved { " (new best)" } else { "" },
                        strategy.sigma()
                    );
                }
                SearcherEventKind::Initialized { .. } | SearcherEventKind::TrialCreated { .. } => {}
            }
        }
        if advisor.is_finished() {
            bail!("experiment {} ended ({}) before the advisor was done", args.experiment_id, advisor.experiment_state());
        }
    }

    advisor.post(vec![AdvisorAction::Shutdown { failure: with_result == 0 }]).context("shutting the search down")?;
    match (best, strategy.best()) {
        (Some((value, trial)), Some(hparams)) => println!("done: best {metric} {value:.4} from trial {trial}: {}", describe(hparams)),
        _ => println!("done: no trial reported {metric}"),
    }
    Ok(())
}

/// The next events, riding out a master that is briefly unreachable.
fn next_events(advisor: &mut Advisor) -> anyhow::Result<Vec<drover_sdk::advisor::SearcherEvent>> {
    let since = Instant::now();
    loop {
        match advisor.next_events(Duration::from_secs(30)) {
            Ok(events) => return Ok(events),
            Err(e) if e.is_transient() && since.elapsed() < UNREACHABLE_FOR => {
                eprintln!("waiting for the master: {e}");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e).context("polling the search's events"),
        }
    }
}

fn describe(hparams: &Map<String, Value>) -> String {
    hparams.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}
