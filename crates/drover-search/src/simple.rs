//! Random and grid search: propose until the budget or the grid is used up, observe nothing.

use std::collections::VecDeque;

use drover_core::SplitMix64;
use drover_core::hparams::{self, HyperparameterSpace};
use drover_core::limits::MAX_GRID_POINTS;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Proposal, RequestId, SearchError, SearchMethod};

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

/// Walks the grid one point at a time: the state is the space and the index of the next
/// point, so neither memory nor the snapshot grows with the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridSearch {
    #[serde(default)]
    pub(crate) space: HyperparameterSpace,
    /// Index of the next point to hand out, in [`hparams::grid`]'s order.
    #[serde(default)]
    pub(crate) next: usize,
    pub(crate) total: usize,
    /// Snapshots saved before the grid was walked lazily list the points not yet handed out
    /// instead; such a search goes on from that list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) remaining: Option<VecDeque<Map<String, Value>>>,
}

impl GridSearch {
    /// The grid over `space`, refused (naming the hyperparameter at fault) when a continuous
    /// hyperparameter has no `count` or the grid has more than [`MAX_GRID_POINTS`] points.
    /// Nothing proportional to the grid is allocated.
    pub fn new(space: HyperparameterSpace) -> Result<GridSearch, SearchError> {
        let total = hparams::grid_size(&space, "hyperparameters").map_err(|e| SearchError::Config(e.to_string()))?;
        if total > MAX_GRID_POINTS {
            return Err(SearchError::Config(format!(
                "hyperparameters: the grid has {total} points, more than the limit of {MAX_GRID_POINTS}"
            )));
        }
        Ok(GridSearch { space, next: 0, total, remaining: None })
    }
}

impl SearchMethod for GridSearch {
    fn propose(&mut self, _request_id: RequestId, _rng: &mut SplitMix64) -> Option<Proposal> {
        if let Some(remaining) = &mut self.remaining {
            return remaining.pop_front().map(Proposal::fresh);
        }
        if self.next >= self.total {
            return None;
        }
        let point = hparams::grid_point(&self.space, self.next);
        self.next += 1;
        Some(Proposal::fresh(point))
    }

    fn exhausted(&self) -> bool {
        match &self.remaining {
            Some(remaining) => remaining.is_empty(),
            None => self.next >= self.total,
        }
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.total)
    }
}
