//! A dry run of a search on a synthetic objective, to see its plan before a slot is spent:
//! how many trials it starts, how much training time they get, which rungs they reach (ASHA)
//! and how many members each generation replaces (PBT).
//!
//! The objective: every trial has a quality `q` in [0, 1) drawn from its hyperparameters (the
//! same hyperparameters always get the same `q`), and its loss at training time `t` is
//! `q + 1 / (1 + t)`; so longer training helps everyone and better trials stay better. A PBT
//! member that starts from a checkpoint continues its parent's time. Trials run
//! `max_concurrent_trials` at a time, one time unit per turn, and report a validation every
//! unit; a trial stops when asked or at its end (`max_time`, or one unit for searchers that do
//! not use a time metric), saving a checkpoint as it goes.

use std::collections::{BTreeMap, VecDeque};

use drover_core::config::ExperimentConfig;
use serde::Serialize;

use crate::{Action, RequestId, SearchError, Searcher};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    pub searcher: String,
    pub trials: usize,
    /// Training time (in time-metric units) summed over all trials.
    pub total_time: f64,
    /// Training time one trial gets when nothing stops it early (PBT: one generation).
    pub time_per_trial: f64,
    /// The best (smallest) synthetic loss found.
    pub best_loss: Option<f64>,
    /// ASHA: every bracket's rungs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub brackets: Vec<BracketPlan>,
    /// PBT: every generation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub generations: Vec<GenerationPlan>,
    /// PBT: why it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_because: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BracketPlan {
    pub trials: usize,
    pub rungs: Vec<RungPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RungPlan {
    /// Training time a trial must reach to be judged here.
    pub time: f64,
    /// Trials that reached it.
    pub reached: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationPlan {
    pub generation: usize,
    pub members: usize,
    /// Members that copied a better one (and explored) instead of continuing their own line.
    pub replaced: usize,
    pub best_loss: Option<f64>,
}

struct SimTrial {
    quality: f64,
    time: f64,
    end: f64,
    stop: bool,
}

/// Runs the search of `config` with seed `seed` against the synthetic objective.
pub fn preview(config: &ExperimentConfig, seed: u64) -> Result<Preview, SearchError> {
    if config.searcher.name == "custom" {
        return Err(SearchError::Config("a `custom` search is planned by its advisor, not by drover: there is nothing to preview".into()));
    }
    let mut searcher = Searcher::new(config, seed)?;
    let s = &config.searcher;
    // Searchers that stop trials train them in time-metric units; others report once.
    let time_per_trial = match s.name.as_str() {
        "async_halving" | "adaptive_asha" => s.max_time.unwrap_or(1) as f64,
        // A member trains one generation; its line goes on in the next member.
        "pbt" => s.generation_length.unwrap_or(1) as f64,
        _ => 1.0,
    };
    let mut trials: BTreeMap<RequestId, SimTrial> = BTreeMap::new();
    let mut turn: VecDeque<RequestId> = VecDeque::new();
    let mut reached: BTreeMap<RequestId, f64> = BTreeMap::new();
    let mut total_time = 0.0;
    let mut best: Option<f64> = None;
    let mut pending: VecDeque<Action> = searcher.initial_trials().into();
    // Bounded: a search that never ends must not hang the preview.
    let mut budget = 10_000_000usize;
    loop {
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Create { request_id, hparams, checkpoint_from, .. } => {
                    let quality = quality_of(&serde_json::Value::Object(hparams), seed);
                    let start = checkpoint_from.and_then(|p| reached.get(&p).copied()).unwrap_or(0.0);
                    trials.insert(request_id, SimTrial { quality, time: start, end: start.max(0.0) + time_per_trial, stop: false });
                    turn.push_back(request_id);
                    pending.extend(searcher.trial_created(request_id));
                }
                Action::Stop { request_id } => {
                    if let Some(t) = trials.get_mut(&request_id) {
                        t.stop = true;
                    }
                }
                Action::Shutdown { .. } => {}
            }
        }
        let Some(id) = turn.pop_front() else { break };
        budget = budget.checked_sub(1).ok_or_else(|| SearchError::Config("the preview did not end within 10 million steps".into()))?;
        let t = trials.get_mut(&id).expect("a live trial");
        if t.stop || t.time >= t.end {
            reached.insert(id, t.time);
            searcher.checkpoint_saved(id);
            pending.extend(searcher.trial_exited(id));
            continue;
        }
        t.time += 1.0;
        total_time += 1.0;
        let loss = t.quality + 1.0 / (1.0 + t.time);
        best = Some(best.map_or(loss, |b: f64| b.min(loss)));
        reached.insert(id, t.time);
        let metric = if s.smaller_is_better { loss } else { -loss };
        let time = t.time;
        pending.extend(searcher.validation_completed(id, metric, time));
        searcher.checkpoint_saved(id);
        turn.push_back(id);
    }

    let mut preview = Preview {
        searcher: s.name.clone(),
        trials: trials.len(),
        total_time,
        time_per_trial,
        best_loss: best,
        brackets: Vec::new(),
        generations: Vec::new(),
        ended_because: None,
    };
    let rung_plan = |a: &crate::asha::AshaSearch, members: &[RequestId]| BracketPlan {
        trials: members.len(),
        rungs: a
            .rungs
            .iter()
            .map(|r| RungPlan {
                time: r.units_needed,
                reached: members.iter().filter(|m| reached.get(m).is_some_and(|t| *t >= r.units_needed)).count(),
            })
            .collect(),
    };
    match &searcher.method {
        crate::Method::AsyncHalving(a) => {
            let all: Vec<RequestId> = trials.keys().copied().collect();
            preview.brackets.push(rung_plan(a, &all));
        }
        crate::Method::AdaptiveAsha(a) => {
            // Every trial has ended, so a bracket's closed set is exactly its trials.
            for bracket in &a.brackets {
                let members: Vec<RequestId> = bracket.closed.iter().copied().collect();
                preview.brackets.push(rung_plan(bracket, &members));
            }
        }
        crate::Method::Pbt(p) => {
            // One pass: a search of many short generations must not cost generations x members.
            let mut by_generation: BTreeMap<usize, Vec<&crate::pbt::Member>> = BTreeMap::new();
            for m in p.members().values() {
                by_generation.entry(m.generation).or_default().push(m);
            }
            for (g, members) in by_generation {
                preview.generations.push(GenerationPlan {
                    generation: g,
                    members: members.len(),
                    replaced: members.iter().filter(|m| m.exploited).count(),
                    best_loss: members.iter().filter_map(|m| m.score).fold(None, |acc: Option<f64>, s| Some(acc.map_or(s, |a| a.min(s)))),
                });
            }
            preview.ended_because = p.ended_because().map(str::to_string);
        }
        _ => {}
    }
    Ok(preview)
}

/// A quality in [0, 1) that depends only on the hyperparameters and the seed.
fn quality_of(hparams: &serde_json::Value, seed: u64) -> f64 {
    // FNV-1a over the canonical JSON (maps are ordered), mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in hparams.to_string().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    drover_core::SplitMix64::new(h).next_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(searcher: &str) -> ExperimentConfig {
        let text = format!("name: t\nentrypoint: x\nhyperparameters:\n  lr: {{type: log, minval: -4, maxval: -1}}\nsearcher: {searcher}\n");
        ExperimentConfig::parse(&text, None).unwrap()
    }

    #[test]
    fn asha_plan_shows_fewer_trials_at_each_rung() {
        let p = preview(&config("{name: async_halving, metric: l, max_trials: 64, num_rungs: 3, divisor: 4, time_metric: t, max_time: 16, max_concurrent_trials: 8}"), 1).unwrap();
        assert_eq!(p.trials, 64);
        let rungs = &p.brackets[0].rungs;
        assert_eq!(rungs.iter().map(|r| r.time).collect::<Vec<_>>(), vec![1.0, 4.0, 16.0]);
        assert_eq!(rungs[0].reached, 64);
        assert!(rungs[1].reached < 64 && rungs[2].reached < rungs[1].reached && rungs[2].reached >= 1, "{rungs:?}");
        assert!(p.total_time < 64.0 * 16.0, "stopping saves training time: {}", p.total_time);
    }

    #[test]
    fn adaptive_plan_has_one_entry_per_bracket() {
        let p = preview(&config("{name: adaptive_asha, metric: l, max_trials: 40, max_rungs: 3, divisor: 3, time_metric: t, max_time: 27, max_concurrent_trials: 4}"), 2).unwrap();
        assert_eq!(p.brackets.len(), 2);
        assert_eq!(p.brackets.iter().map(|b| b.trials).sum::<usize>(), 40);
    }

    #[test]
    fn pbt_plan_counts_generations_and_replacements() {
        let p = preview(&config("{name: pbt, metric: l, population_size: 6, max_generations: 4, generation_length: 3, time_metric: t, max_concurrent_trials: 3}"), 3).unwrap();
        assert_eq!(p.trials, 24);
        assert_eq!(p.generations.len(), 4);
        assert!(p.generations.iter().all(|g| g.members == 6));
        assert_eq!(p.generations[0].replaced, 0);
        assert!(p.generations[1..].iter().all(|g| g.replaced >= 1), "the worst member always loses: {:?}", p.generations);
        assert_eq!(p.total_time, 6.0 * 4.0 * 3.0);
        assert_eq!(p.ended_because.as_deref(), Some("all 4 generations ran"));
    }

    #[test]
    fn random_reports_once_per_trial() {
        let p = preview(&config("{name: random, metric: l, max_trials: 7}"), 4).unwrap();
        assert_eq!((p.trials, p.total_time), (7, 7.0));
        assert!(p.brackets.is_empty() && p.generations.is_empty());
    }
}
