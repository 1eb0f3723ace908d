//! Random and grid search: propose until the budget or the grid is used up, observe nothing.

use drover_core::SplitMix64;
use drover_core::hparams::{self, HyperparameterSpace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Proposal, RequestId, SearchMethod};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomSearch {
    pub(crate) space: HyperparameterSpace,
    pub(crate) max_trials: usize,
    pub(crate) proposed: usize,
}

impl SearchMethod for RandomSearch {
    fn propose(&mut self, _request_id: RequestId, rng: &mut SplitMix64) -> Option<Proposal> {
        if self.proposed >= self.max_trials {
            return None;
        }
        self.proposed += 1;
        Some(Proposal::fresh(hparams::sample_space(&self.space, rng)))
    }

    fn exhausted(&self) -> bool {
        self.proposed >= self.max_trials
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.max_trials)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridSearch {
    /// The grid points not yet handed out, in order.
    pub(crate) remaining: Vec<Map<String, Value>>,
    pub(crate) total: usize,
}

impl SearchMethod for GridSearch {
    fn propose(&mut self, _request_id: RequestId, _rng: &mut SplitMix64) -> Option<Proposal> {
        if self.remaining.is_empty() {
            return None;
        }
        Some(Proposal::fresh(self.remaining.remove(0)))
    }

    fn exhausted(&self) -> bool {
        self.remaining.is_empty()
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.total)
    }
}
