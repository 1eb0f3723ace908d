//! Asynchronous successive halving in its stopping form, as Determined runs `async_halving`
//! since 0.38: trials train to `max_time` on their own, and at each rung the searcher stops
//! those outside the top `1/divisor` of what that rung has seen so far. `adaptive_asha` runs a
//! tournament of such brackets with different numbers of rungs.

use std::collections::{BTreeMap, BTreeSet};

use drover_core::SplitMix64;
use drover_core::hparams::{self, HyperparameterSpace};
use serde::{Deserialize, Serialize};

use crate::{Outcome, Proposal, RequestId, SearchMethod};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// Value of the time metric a trial must reach to be judged at this rung.
    pub units_needed: f64,
    /// Losses recorded here (smaller is better), sorted ascending.
    pub losses: Vec<(f64, RequestId)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AshaSearch {
    space: HyperparameterSpace,
    max_trials: usize,
    divisor: f64,
    pub(crate) rungs: Vec<Rung>,
    /// The next rung each live trial has yet to reach.
    next_rung: BTreeMap<RequestId, usize>,
    /// Trials already told to stop (or done); later validations of theirs are ignored.
    pub(crate) closed: BTreeSet<RequestId>,
    proposed: usize,
}

impl AshaSearch {
    pub fn new(space: HyperparameterSpace, max_trials: usize, num_rungs: usize, divisor: f64, max_time: f64) -> AshaSearch {
        let num_rungs = num_rungs.max(1);
        let rungs = (0..num_rungs)
            .map(|i| Rung { units_needed: (max_time / divisor.powi((num_rungs - i - 1) as i32)).max(1.0), losses: Vec::new() })
            .collect();
        AshaSearch { space, max_trials, divisor, rungs, next_rung: BTreeMap::new(), closed: BTreeSet::new(), proposed: 0 }
    }

    /// How many of `n` trials recorded at a rung may go on: the top `n / divisor`, at least one.
    pub fn keep(&self, n: usize) -> usize {
        ((n as f64 / self.divisor) as usize).max(1)
    }
}

impl SearchMethod for AshaSearch {
    fn propose(&mut self, request_id: RequestId, rng: &mut SplitMix64) -> Option<Proposal> {
        if self.proposed >= self.max_trials {
            return None;
        }
        self.proposed += 1;
        self.next_rung.insert(request_id, 0);
        Some(Proposal::fresh(hparams::sample_space(&self.space, rng)))
    }

    fn validated(&mut self, request_id: RequestId, loss: f64, time: f64) -> Vec<RequestId> {
        if self.closed.contains(&request_id) {
            return Vec::new();
        }
        let Some(&start) = self.next_rung.get(&request_id) else { return Vec::new() };
        let loss = if loss.is_nan() { f64::INFINITY } else { loss };
        let last = self.rungs.len() - 1;
        let mut rung = start;
        while rung <= last && time >= self.rungs[rung].units_needed {
            let losses = &mut self.rungs[rung].losses;
            // Ties rank the newcomer last, so an earlier equal result is never displaced.
            let index = losses.partition_point(|(l, _)| *l <= loss);
            losses.insert(index, (loss, request_id));
            let recorded = losses.len();
            let keep = self.keep(recorded);
            if rung == last || index >= keep {
                self.closed.insert(request_id);
                self.next_rung.remove(&request_id);
                return vec![request_id];
            }
            rung += 1;
        }
        self.next_rung.insert(request_id, rung);
        Vec::new()
    }

    fn exited(&mut self, request_id: RequestId, _outcome: Outcome) {
        self.next_rung.remove(&request_id);
        self.closed.insert(request_id);
    }

    fn exhausted(&self) -> bool {
        self.proposed >= self.max_trials
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.max_trials)
    }
}

/// Several ASHA brackets sharing one trial budget, weighted so that each gets about the same
/// compute; the brackets that stop most aggressively are served first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveAsha {
    pub(crate) brackets: Vec<AshaSearch>,
    /// Live trials each bracket may run at once.
    concurrency: Vec<usize>,
    live: Vec<usize>,
    bracket_of: BTreeMap<RequestId, usize>,
}

/// The bracket shapes of Determined's `mode`.
pub fn bracket_rungs(mode: &str, max_rungs: usize) -> Vec<usize> {
    let max_rungs = max_rungs.max(1);
    let mut rungs: Vec<usize> = match mode {
        "aggressive" => vec![max_rungs],
        "conservative" => (1..=max_rungs).collect(),
        _ => ((max_rungs - 1) / 2 + 1..=max_rungs).collect(),
    };
    rungs.reverse();
    rungs
}

impl AdaptiveAsha {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        space: HyperparameterSpace,
        max_trials: usize,
        max_concurrent: usize,
        mode: &str,
        max_rungs: usize,
        divisor: f64,
        max_time: f64,
    ) -> AdaptiveAsha {
        // No more rungs than the time budget or the trial budget can fill.
        let log_div = |x: f64| (x.max(1.0).ln() / divisor.ln()).floor() as usize;
        let max_rungs = max_rungs.min(log_div(max_time) + 1).min(log_div(max_trials as f64) + 1).max(1);
        let shapes = bracket_rungs(mode, max_rungs);
        let weights: Vec<f64> = shapes.iter().map(|&r| divisor.powi(r as i32 - 1) / r as f64).collect();
        let total_weight: f64 = weights.iter().sum();
        let mut trials: Vec<usize> = weights.iter().map(|w| ((max_trials as f64 * w / total_weight).round() as usize).max(1)).collect();
        // Rounding may miss the budget; settle the difference on the largest bracket.
        let assigned: usize = trials.iter().sum();
        let largest = (0..trials.len()).max_by_key(|&i| trials[i]).unwrap_or(0);
        if assigned > max_trials {
            trials[largest] = trials[largest].saturating_sub(assigned - max_trials).max(1);
        } else {
            trials[largest] += max_trials - assigned;
        }
        let per_bracket = (max_concurrent / shapes.len()).max(1);
        let brackets: Vec<AshaSearch> =
            shapes.iter().zip(&trials).map(|(&r, &n)| AshaSearch::new(space.clone(), n, r, divisor, max_time)).collect();
        AdaptiveAsha {
            concurrency: vec![per_bracket; brackets.len()],
            live: vec![0; brackets.len()],
            brackets,
            bracket_of: BTreeMap::new(),
        }
    }
}

impl SearchMethod for AdaptiveAsha {
    fn propose(&mut self, request_id: RequestId, rng: &mut SplitMix64) -> Option<Proposal> {
        let open = |i: &usize| !self.brackets[*i].exhausted();
        // Each bracket's share first; then any bracket with budget left, so no slot idles.
        let chosen = (0..self.brackets.len())
            .filter(open)
            .find(|&i| self.live[i] < self.concurrency[i])
            .or_else(|| (0..self.brackets.len()).find(open))?;
        let proposal = self.brackets[chosen].propose(request_id, rng)?;
        self.live[chosen] += 1;
        self.bracket_of.insert(request_id, chosen);
        Some(proposal)
    }

    fn validated(&mut self, request_id: RequestId, loss: f64, time: f64) -> Vec<RequestId> {
        match self.bracket_of.get(&request_id) {
            Some(&b) => self.brackets[b].validated(request_id, loss, time),
            None => Vec::new(),
        }
    }

    fn exited(&mut self, request_id: RequestId, outcome: Outcome) {
        if let Some(b) = self.bracket_of.remove(&request_id) {
            self.live[b] -= 1;
            self.brackets[b].exited(request_id, outcome);
        }
    }

    fn exhausted(&self) -> bool {
        self.brackets.iter().all(SearchMethod::exhausted)
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.brackets.iter().filter_map(SearchMethod::total_trials).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_follow_determined() {
        let a = AshaSearch::new(Default::default(), 10, 3, 4.0, 100.0);
        let units: Vec<f64> = a.rungs.iter().map(|r| r.units_needed).collect();
        assert_eq!(units, vec![6.25, 25.0, 100.0]);
        let a = AshaSearch::new(Default::default(), 10, 5, 4.0, 16.0);
        assert_eq!(a.rungs[0].units_needed, 1.0, "at least one unit");
    }

    #[test]
    fn stops_outside_the_top_fraction_and_at_the_top_rung() {
        let mut a = AshaSearch::new(Default::default(), 10, 2, 2.0, 10.0);
        let mut rng = SplitMix64::new(1);
        for id in 1..=4 {
            a.propose(id, &mut rng).unwrap();
        }
        // Rung 0 needs 5 units. The first trial is kept (keep >= 1).
        assert!(a.validated(1, 0.5, 5.0).is_empty());
        // Second, worse: 2 recorded, keep 1, it ranks 2nd -> stop.
        assert_eq!(a.validated(2, 0.9, 5.0), vec![2]);
        // Third, best so far: keeps going.
        assert!(a.validated(3, 0.1, 5.0).is_empty());
        // Too early for a rung: nothing happens.
        assert!(a.validated(4, 0.0, 4.0).is_empty());
        // Reaching the top rung ends a trial.
        assert_eq!(a.validated(3, 0.05, 10.0), vec![3]);
        // A stopped trial's later reports change nothing.
        assert!(a.validated(2, 0.0, 10.0).is_empty());
        assert_eq!(a.rungs[0].losses.len(), 3);
    }

    #[test]
    fn adaptive_brackets_share_the_budget() {
        assert_eq!(bracket_rungs("aggressive", 5), vec![5]);
        assert_eq!(bracket_rungs("standard", 5), vec![5, 4, 3]);
        assert_eq!(bracket_rungs("conservative", 3), vec![3, 2, 1]);
        let a = AdaptiveAsha::new(Default::default(), 100, 8, "standard", 5, 4.0, 1000.0);
        assert_eq!(a.total_trials(), Some(100));
        let sizes: Vec<usize> = a.brackets.iter().map(|b| b.max_trials).collect();
        assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "{sizes:?}");
        // A short time budget caps the rungs: 1 + log4(16) = 3.
        let a = AdaptiveAsha::new(Default::default(), 100, 8, "aggressive", 5, 4.0, 16.0);
        assert_eq!(a.brackets[0].rungs.len(), 3);
    }
}
