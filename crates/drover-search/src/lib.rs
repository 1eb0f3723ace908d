//! Searchers as sans-IO state machines: the master feeds events in (a trial was created,
//! reported a validation, exited or failed) and gets actions out (create a trial with these
//! hyperparameters, stop a trial, shut the search down). The trials decide their own training
//! length; the searcher only observes validations, as in Determined 0.38+.
//!
//! Architecture invariant: no IO, no clock, no global randomness. The same events give the same
//! actions, and [`Searcher::snapshot`] / [`Searcher::restore`] capture everything, so a master
//! restarted from its store resumes a search exactly where it was.

use std::collections::BTreeSet;

use drover_core::config::ExperimentConfig;
use drover_core::hparams::{self, HyperparameterSpace};
use drover_core::SplitMix64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The searcher's own id for a trial, unique within a search.
pub type RequestId = u64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    Create { request_id: RequestId, hparams: Map<String, Value>, seed: u64 },
    Stop { request_id: RequestId },
    /// The search is over; `failure` when not one trial succeeded.
    Shutdown { failure: bool },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Config(String),
    #[error("cannot restore the searcher: {0}")]
    Snapshot(String),
}

/// The search methods this build has; each keeps its whole state in plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
enum Method {
    /// `random` and `single` (a random search of one trial).
    Random { space: HyperparameterSpace, max_trials: usize },
    /// The grid points not yet handed out, in order.
    Grid { remaining: Vec<Map<String, Value>>, total: usize },
}

/// A search in progress: a method plus the bookkeeping every method shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Searcher {
    method: Method,
    rng: SplitMix64,
    max_concurrent: usize,
    next_request_id: RequestId,
    /// Created and not yet exited.
    live: BTreeSet<RequestId>,
    created: usize,
    exited: usize,
    failed: usize,
    shut_down: bool,
}

impl Searcher {
    /// Builds the searcher an experiment config describes, seeded with `seed`.
    pub fn new(config: &ExperimentConfig, seed: u64) -> Result<Searcher, SearchError> {
        let s = &config.searcher;
        let method = match s.name.as_str() {
            "single" => Method::Random { space: config.hyperparameters.clone(), max_trials: 1 },
            "random" => Method::Random {
                space: config.hyperparameters.clone(),
                max_trials: s.max_trials.ok_or_else(|| SearchError::Config("searcher.max_trials is required".into()))?,
            },
            "grid" => {
                let points = hparams::grid(&config.hyperparameters, "hyperparameters").map_err(|e| SearchError::Config(e.to_string()))?;
                let total = points.len();
                Method::Grid { remaining: points, total }
            }
            other => return Err(SearchError::Config(format!("unknown searcher `{other}`"))),
        };
        Ok(Searcher {
            method,
            rng: SplitMix64::new(seed),
            max_concurrent: s.max_concurrent_trials.max(1),
            next_request_id: 1,
            live: BTreeSet::new(),
            created: 0,
            exited: 0,
            failed: 0,
            shut_down: false,
        })
    }

    /// The first trials of the search.
    pub fn initial_trials(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.fill(&mut actions);
        self.maybe_shutdown(&mut actions);
        actions
    }

    /// A trial the master created for a `Create` action now exists. Nothing to do for the
    /// methods here; adaptive methods will track rungs from it.
    pub fn trial_created(&mut self, _request_id: RequestId) -> Vec<Action> {
        Vec::new()
    }

    /// A trial reported the searcher metric. Random and grid only observe.
    pub fn validation_completed(&mut self, _request_id: RequestId, _metric: f64) -> Vec<Action> {
        Vec::new()
    }

    /// A trial ended for good (completed, stopped or canceled).
    pub fn trial_exited(&mut self, request_id: RequestId) -> Vec<Action> {
        self.end(request_id, false)
    }

    /// A trial failed beyond its restarts. It counts as done and is not replaced.
    pub fn trial_failed(&mut self, request_id: RequestId) -> Vec<Action> {
        self.end(request_id, true)
    }

    /// Fraction of the search done, in [0, 1].
    pub fn progress(&self) -> f64 {
        let total = self.total_trials();
        if total == 0 {
            1.0
        } else {
            self.exited as f64 / total as f64
        }
    }

    /// How many trials this search runs in all.
    pub fn total_trials(&self) -> usize {
        match &self.method {
            Method::Random { max_trials, .. } => *max_trials,
            Method::Grid { total, .. } => *total,
        }
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    pub fn snapshot(&self) -> String {
        serde_json::to_string(self).expect("a searcher is plain data")
    }

    pub fn restore(snapshot: &str) -> Result<Searcher, SearchError> {
        serde_json::from_str(snapshot).map_err(|e| SearchError::Snapshot(e.to_string()))
    }

    fn end(&mut self, request_id: RequestId, failed: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        // A duplicate exit (e.g. replayed after a master restart) must not count twice.
        if !self.live.remove(&request_id) {
            return actions;
        }
        self.exited += 1;
        if failed {
            self.failed += 1;
        }
        self.fill(&mut actions);
        self.maybe_shutdown(&mut actions);
        actions
    }

    /// Creates trials while there is room under `max_concurrent` and work left.
    fn fill(&mut self, actions: &mut Vec<Action>) {
        while !self.shut_down && self.live.len() < self.max_concurrent {
            let hparams = match &mut self.method {
                Method::Random { space, max_trials } => {
                    if self.created >= *max_trials {
                        break;
                    }
                    hparams::sample_space(space, &mut self.rng)
                }
                Method::Grid { remaining, .. } => {
                    if remaining.is_empty() {
                        break;
                    }
                    remaining.remove(0)
                }
            };
            let request_id = self.next_request_id;
            self.next_request_id += 1;
            self.created += 1;
            self.live.insert(request_id);
            let seed = self.rng.next_u64() >> 1; // fits an i64 column
            actions.push(Action::Create { request_id, hparams, seed });
        }
    }

    fn maybe_shutdown(&mut self, actions: &mut Vec<Action>) {
        if !self.shut_down && self.live.is_empty() && self.created >= self.total_trials() {
            self.shut_down = true;
            actions.push(Action::Shutdown { failure: self.exited > 0 && self.failed == self.exited });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(searcher: &str) -> ExperimentConfig {
        let text = format!(
            "name: t\nentrypoint: x\nhyperparameters:\n  lr: {{type: log, minval: -3, maxval: -1, count: 3}}\n  h: {{type: categorical, vals: [1, 2]}}\nsearcher: {searcher}\n"
        );
        ExperimentConfig::parse(&text, None).unwrap()
    }

    fn creates(actions: &[Action]) -> Vec<RequestId> {
        actions.iter().filter_map(|a| if let Action::Create { request_id, .. } = a { Some(*request_id) } else { None }).collect()
    }

    #[test]
    fn random_respects_max_trials_and_concurrency_then_shuts_down() {
        let mut s = Searcher::new(&config("{name: random, metric: m, max_trials: 5, max_concurrent_trials: 2}"), 1).unwrap();
        let first = s.initial_trials();
        assert_eq!(creates(&first), vec![1, 2]);
        assert_eq!(creates(&s.trial_exited(1)), vec![3]);
        assert_eq!(creates(&s.trial_failed(2)), vec![4]);
        assert_eq!(creates(&s.trial_exited(3)), vec![5]);
        assert!(s.trial_exited(4).is_empty());
        assert_eq!(s.trial_exited(5), vec![Action::Shutdown { failure: false }]);
        assert!(s.is_shut_down());
        assert_eq!(s.progress(), 1.0);
    }

    #[test]
    fn duplicate_exits_are_ignored() {
        let mut s = Searcher::new(&config("{name: random, metric: m, max_trials: 3, max_concurrent_trials: 1}"), 1).unwrap();
        s.initial_trials();
        assert_eq!(creates(&s.trial_exited(1)), vec![2]);
        assert!(s.trial_exited(1).is_empty());
        assert_eq!(s.progress(), 1.0 / 3.0);
    }

    #[test]
    fn grid_visits_every_point_once() {
        let mut s = Searcher::new(&config("{name: grid, metric: m, max_concurrent_trials: 4}"), 1).unwrap();
        let mut seen = Vec::new();
        let mut pending: Vec<Action> = s.initial_trials();
        while let Some(a) = pending.pop() {
            match a {
                Action::Create { request_id, hparams, .. } => {
                    seen.push(serde_json::to_string(&hparams).unwrap());
                    pending.extend(s.trial_exited(request_id));
                }
                Action::Shutdown { failure } => assert!(!failure),
                Action::Stop { .. } => unreachable!(),
            }
        }
        assert_eq!(seen.len(), 6);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6);
        assert!(s.is_shut_down());
    }

    #[test]
    fn all_failed_is_a_failure_and_single_runs_one() {
        let mut s = Searcher::new(&config("{name: single, metric: m}"), 1).unwrap();
        assert_eq!(creates(&s.initial_trials()), vec![1]);
        assert_eq!(s.trial_failed(1), vec![Action::Shutdown { failure: true }]);
    }

    proptest! {
        /// Whatever order trials end in: never more live than max_concurrent, never more
        /// created than max_trials, exactly one shutdown, and a snapshot taken at any point
        /// restores to a searcher that produces the very same future actions.
        #[test]
        fn invariants_and_exact_restore(
            max_trials in 1usize..30,
            max_concurrent in 1usize..6,
            seed in any::<u64>(),
            choices in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..80),
            snap_at in 0usize..80,
        ) {
            let cfg = config(&format!("{{name: random, metric: m, max_trials: {max_trials}, max_concurrent_trials: {max_concurrent}}}"));
            let mut s = Searcher::new(&cfg, seed).unwrap();
            let mut live: Vec<RequestId> = creates(&s.initial_trials());
            let mut created = live.len();
            let mut shutdowns = 0;
            let mut restored: Option<Searcher> = None;
            for (i, (pick, fail)) in choices.iter().enumerate() {
                if live.is_empty() { break; }
                if i == snap_at { restored = Some(Searcher::restore(&s.snapshot()).unwrap()); }
                let id = live.remove(pick.index(live.len()));
                let actions = if *fail { s.trial_failed(id) } else { s.trial_exited(id) };
                if let Some(r) = restored.as_mut() {
                    let again = if *fail { r.trial_failed(id) } else { r.trial_exited(id) };
                    prop_assert_eq!(&again, &actions);
                }
                for a in &actions {
                    match a {
                        Action::Create { request_id, .. } => { live.push(*request_id); created += 1; }
                        Action::Shutdown { .. } => shutdowns += 1,
                        Action::Stop { .. } => {}
                    }
                }
                prop_assert!(live.len() <= max_concurrent);
                prop_assert!(created <= max_trials);
            }
            if live.is_empty() {
                prop_assert_eq!(created, max_trials);
                prop_assert_eq!(shutdowns, 1);
            } else {
                prop_assert_eq!(shutdowns, 0);
            }
        }
    }
}
