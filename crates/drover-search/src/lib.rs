//! Searchers as sans-IO state machines: the master feeds events in (a trial was created,
//! reported a validation, exited or failed) and gets actions out (create a trial with these
//! hyperparameters, stop a trial, shut the search down). Trials decide their own training
//! length; searchers only observe validations, as in Determined 0.38+.
//!
//! [`Searcher`] does the bookkeeping every method shares (request ids, the concurrency limit,
//! when to shut down); each method (`simple`, `asha`, `tpe`) only proposes hyperparameters and
//! decides which trials to stop. `custom` proposes nothing: an external advisor posts actions
//! ([`Searcher::external_actions`]) and reads the search's event log.
//!
//! Architecture invariant: no IO, no clock, no global randomness. The same events give the same
//! actions, and [`Searcher::snapshot`] / [`Searcher::restore`] capture everything, so a master
//! restarted from its store resumes a search exactly where it was.

pub mod asha;
pub mod custom;
pub mod pbt;
pub mod preview;
pub mod simple;
pub mod tpe;

use std::collections::BTreeSet;

use drover_core::SplitMix64;
use drover_core::config::{ExperimentConfig, SearcherConfig};
use drover_core::limits::{MAX_CONCURRENT_TRIALS, MAX_EI_CANDIDATES, MAX_RUNGS, MAX_TRIALS};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::asha::{AdaptiveAsha, AshaSearch};
use crate::custom::CustomSearch;
pub use crate::custom::{AdvisorAction, Event, SequencedEvent};
use crate::pbt::{PbtParams, PbtSearch};
use crate::simple::{GridSearch, RandomSearch};
use crate::tpe::TpeSearch;

/// The searcher's own id for a trial, unique within a search.
pub type RequestId = u64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Create a trial; with `checkpoint_from`, it starts from that trial's latest checkpoint.
    Create {
        request_id: RequestId,
        hparams: Map<String, Value>,
        seed: u64,
        checkpoint_from: Option<RequestId>,
    },
    Stop {
        request_id: RequestId,
    },
    /// The search is over; `failure` when not one trial succeeded.
    Shutdown {
        failure: bool,
    },
}

/// What a method wants to run next.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub hparams: Map<String, Value>,
    pub checkpoint_from: Option<RequestId>,
}

impl Proposal {
    pub fn fresh(hparams: Map<String, Value>) -> Proposal {
        Proposal { hparams, checkpoint_from: None }
    }
}

/// How a trial ended, as a method sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to its end, or stopped when asked.
    Completed,
    /// It failed beyond its restarts.
    Failed,
}

/// One search strategy. `loss` is always oriented so that smaller is better.
pub trait SearchMethod {
    /// The next trial, which will get `request_id`, or `None` if none is wanted now.
    fn propose(&mut self, request_id: RequestId, rng: &mut SplitMix64) -> Option<Proposal>;
    /// A validation of the searcher metric at `time` (the time metric); returns trials to stop.
    fn validated(&mut self, _request_id: RequestId, _loss: f64, _time: f64) -> Vec<RequestId> {
        Vec::new()
    }
    fn exited(&mut self, _request_id: RequestId, _outcome: Outcome) {}
    /// A checkpoint of the trial is stored, so another trial may start from it.
    fn checkpointed(&mut self, _request_id: RequestId) {}
    /// No proposal will ever come again.
    fn exhausted(&self) -> bool;
    /// The search cannot succeed whatever its trials did (e.g. PBT whose trials save no
    /// checkpoint); it then ends as a failure.
    fn cannot_succeed(&self) -> bool {
        false
    }
    /// Trials the search runs in all, when known up front.
    fn total_trials(&self) -> Option<usize>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Config(String),
    #[error("cannot restore the searcher: {0}")]
    Snapshot(String),
    /// An advisor's actions were refused; none of them was applied.
    #[error("{field}: {message}")]
    Refused { field: String, message: String },
    /// The search takes no more actions.
    #[error("{0}")]
    Closed(String),
}

// Externally tagged: an internally tagged enum buffers its content, and integer map keys
// (request ids) do not survive that round trip through JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Method {
    Random(RandomSearch),
    Grid(GridSearch),
    AsyncHalving(AshaSearch),
    AdaptiveAsha(AdaptiveAsha),
    Tpe(TpeSearch),
    Pbt(PbtSearch),
    Custom(CustomSearch),
}

impl Method {
    fn get(&mut self) -> &mut dyn SearchMethod {
        match self {
            Method::Random(m) => m,
            Method::Grid(m) => m,
            Method::AsyncHalving(m) => m,
            Method::AdaptiveAsha(m) => m,
            Method::Tpe(m) => m,
            Method::Pbt(m) => m,
            Method::Custom(m) => m,
        }
    }

    fn view(&self) -> &dyn SearchMethod {
        match self {
            Method::Random(m) => m,
            Method::Grid(m) => m,
            Method::AsyncHalving(m) => m,
            Method::AdaptiveAsha(m) => m,
            Method::Tpe(m) => m,
            Method::Pbt(m) => m,
            Method::Custom(m) => m,
        }
    }
}

/// A search in progress: a method plus the bookkeeping every method shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Searcher {
    method: Method,
    rng: SplitMix64,
    smaller_is_better: bool,
    max_concurrent: usize,
    next_request_id: RequestId,
    /// Created and not yet exited.
    live: BTreeSet<RequestId>,
    /// Asked to stop and not yet exited; a second stop is not sent.
    stopping: BTreeSet<RequestId>,
    created: usize,
    exited: usize,
    failed: usize,
    shut_down: bool,
}

fn need<T: Copy>(value: Option<T>, field: &str) -> Result<T, SearchError> {
    value.ok_or_else(|| SearchError::Config(format!("searcher.{field} is required")))
}

/// The sizes a method's state or work is built from, against [`drover_core::limits`].
/// `ExperimentConfig::parse` enforces them already; a configuration made another way
/// (deserialised, or by hand) gets an error here rather than an allocation it cannot afford.
/// `pbt`'s population is checked by [`PbtParams::from_config`], a grid's size by
/// [`GridSearch::new`].
fn check_sizes(s: &SearcherConfig) -> Result<(), SearchError> {
    let at_most = |field: &str, value: Option<usize>, max: usize| match value {
        Some(v) if v > max => Err(SearchError::Config(format!("searcher.{field}: {v} is more than the limit of {max}"))),
        _ => Ok(()),
    };
    at_most("max_trials", s.max_trials, MAX_TRIALS)?;
    at_most("max_concurrent_trials", Some(s.max_concurrent_trials), MAX_CONCURRENT_TRIALS)?;
    at_most("num_rungs", s.num_rungs, MAX_RUNGS)?;
    at_most("max_rungs", Some(s.max_rungs), MAX_RUNGS)?;
    at_most("n_ei_candidates", Some(s.n_ei_candidates), MAX_EI_CANDIDATES)
}

impl Searcher {
    /// Builds the searcher an experiment config describes, seeded with `seed`.
    pub fn new(config: &ExperimentConfig, seed: u64) -> Result<Searcher, SearchError> {
        let s = &config.searcher;
        check_sizes(s)?;
        let space = config.hyperparameters.clone();
        let max_time = || -> Result<f64, SearchError> { Ok(need(s.max_time, "max_time")? as f64) };
        let method = match s.name.as_str() {
            "single" => Method::Random(RandomSearch { space, max_trials: 1, proposed: 0 }),
            "random" => Method::Random(RandomSearch { space, max_trials: need(s.max_trials, "max_trials")?, proposed: 0 }),
            "grid" => Method::Grid(GridSearch::new(space)?),
            "async_halving" => Method::AsyncHalving(AshaSearch::new(
                space,
                need(s.max_trials, "max_trials")?,
                need(s.num_rungs, "num_rungs")?,
                s.divisor,
                max_time()?,
            )),
            "adaptive_asha" => Method::AdaptiveAsha(AdaptiveAsha::new(
                space,
                need(s.max_trials, "max_trials")?,
                s.max_concurrent_trials,
                &s.mode,
                s.max_rungs,
                s.divisor,
                max_time()?,
            )),
            "tpe" => Method::Tpe(
                TpeSearch::new(space, need(s.max_trials, "max_trials")?, s.n_startup_trials, s.n_ei_candidates)
                    .map_err(SearchError::Config)?,
            ),
            "pbt" => Method::Pbt(PbtSearch::new(space, PbtParams::from_config(s).map_err(SearchError::Config)?, seed)),
            "custom" => {
                Method::Custom(CustomSearch::new(space, &s.metric, s.smaller_is_better, s.max_trials, s.max_concurrent_trials.max(1)))
            }
            other => return Err(SearchError::Config(format!("unknown searcher `{other}`"))),
        };
        Ok(Searcher {
            method,
            rng: SplitMix64::new(seed),
            smaller_is_better: s.smaller_is_better,
            max_concurrent: s.max_concurrent_trials.max(1),
            next_request_id: 1,
            live: BTreeSet::new(),
            stopping: BTreeSet::new(),
            created: 0,
            exited: 0,
            failed: 0,
            shut_down: false,
        })
    }

    /// The first trials of the search.
    pub fn initial_trials(&mut self) -> Vec<Action> {
        self.after_event(Vec::new())
    }

    /// A trial the master created for a `Create` action now exists.
    pub fn trial_created(&mut self, request_id: RequestId) -> Vec<Action> {
        self.custom_trial_created(request_id);
        Vec::new()
    }

    /// A trial reported the searcher metric `metric` when its time metric stood at `time`.
    pub fn validation_completed(&mut self, request_id: RequestId, metric: f64, time: f64) -> Vec<Action> {
        if !self.live.contains(&request_id) {
            return Vec::new();
        }
        let loss = if self.smaller_is_better { metric } else { -metric };
        let stops = self.method.get().validated(request_id, loss, time);
        let mut actions = Vec::new();
        for id in stops {
            if self.live.contains(&id) && self.stopping.insert(id) {
                actions.push(Action::Stop { request_id: id });
            }
        }
        self.after_event(actions)
    }

    /// A checkpoint of the trial is registered: from now on other trials may start from it.
    pub fn checkpoint_saved(&mut self, request_id: RequestId) {
        if self.live.contains(&request_id) {
            self.method.get().checkpointed(request_id);
        }
    }

    /// Whether a validation can change this search's state (and so must be saved): every
    /// method but those that fix their trials up front.
    pub fn learns_from_validations(&self) -> bool {
        !matches!(self.method, Method::Random(_) | Method::Grid(_))
    }

    /// The population of a `pbt` search, when this is one.
    pub fn pbt(&self) -> Option<&PbtSearch> {
        match &self.method {
            Method::Pbt(p) => Some(p),
            _ => None,
        }
    }

    /// A trial ended for good (completed, stopped or canceled).
    pub fn trial_exited(&mut self, request_id: RequestId) -> Vec<Action> {
        self.end(request_id, Outcome::Completed)
    }

    /// A trial failed beyond its restarts. It counts as done and is not replaced.
    pub fn trial_failed(&mut self, request_id: RequestId) -> Vec<Action> {
        self.end(request_id, Outcome::Failed)
    }

    /// Fraction of the search done, in [0, 1].
    pub fn progress(&self) -> f64 {
        match self.total_trials() {
            Some(0) | None => f64::from(u8::from(self.shut_down)),
            Some(total) => (self.exited as f64 / total as f64).min(1.0),
        }
    }

    /// How many trials this search runs in all, when known up front.
    pub fn total_trials(&self) -> Option<usize> {
        self.method.view().total_trials()
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

    fn end(&mut self, request_id: RequestId, outcome: Outcome) -> Vec<Action> {
        // A duplicate exit (e.g. replayed after a master restart) must not count twice.
        if !self.live.remove(&request_id) {
            return Vec::new();
        }
        self.stopping.remove(&request_id);
        self.exited += 1;
        if outcome == Outcome::Failed {
            self.failed += 1;
        }
        self.method.get().exited(request_id, outcome);
        self.after_event(Vec::new())
    }

    /// Creates trials while there is room and the method wants them, then shuts down once
    /// nothing runs and nothing more will be proposed.
    fn after_event(&mut self, mut actions: Vec<Action>) -> Vec<Action> {
        while !self.shut_down && self.live.len() < self.max_concurrent {
            let request_id = self.next_request_id;
            let Some(proposal) = self.method.get().propose(request_id, &mut self.rng) else { break };
            self.next_request_id += 1;
            self.created += 1;
            self.live.insert(request_id);
            let seed = self.rng.next_u64() >> 1; // fits an i64 column
            actions.push(Action::Create { request_id, hparams: proposal.hparams, seed, checkpoint_from: proposal.checkpoint_from });
        }
        if !self.shut_down && self.live.is_empty() && self.method.view().exhausted() {
            self.shut_down = true;
            let failure = (self.exited > 0 && self.failed == self.exited) || self.method.view().cannot_succeed();
            actions.push(Action::Shutdown { failure });
        }
        actions
    }
}

#[cfg(test)]
mod tests;
