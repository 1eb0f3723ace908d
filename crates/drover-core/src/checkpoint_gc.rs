//! Which checkpoints a garbage collection deletes, by Determined's policy: keep each trial's
//! `save_trial_latest` newest and `save_trial_best` best, the experiment's
//! `save_experiment_best` best, and every pinned one; delete the rest. Pure: the master feeds
//! in what it knows and carries the answer out (files first, rows after).

use std::collections::{BTreeMap, BTreeSet};

/// What the policy needs to know of one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointFacts {
    pub uuid: String,
    pub trial_id: i64,
    pub step: i64,
    /// Order of registration, to break ties between equal steps.
    pub created_at: i64,
    /// The searcher metric the checkpoint's weights had reached; `None` when never validated.
    pub score: Option<f64>,
    /// Kept whatever the policy: pinned by a user or a server, or still needed (the checkpoint a
    /// waiting or running trial starts from, e.g. a PBT clone's source).
    pub pinned: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    pub save_experiment_best: u32,
    pub save_trial_best: u32,
    pub save_trial_latest: u32,
}

/// The uuids to delete, in input order.
pub fn to_delete(checkpoints: &[CheckpointFacts], policy: GcPolicy, smaller_is_better: bool) -> Vec<String> {
    // Best first: smaller loss, or larger accuracy; unscored checkpoints are never "best".
    let better = |a: &&CheckpointFacts, b: &&CheckpointFacts| {
        let (x, y) = (a.score.unwrap(), b.score.unwrap());
        let order = if smaller_is_better { x.total_cmp(&y) } else { y.total_cmp(&x) };
        order.then(b.step.cmp(&a.step)).then(a.uuid.cmp(&b.uuid))
    };
    let mut keep: BTreeSet<&str> = checkpoints.iter().filter(|c| c.pinned).map(|c| c.uuid.as_str()).collect();
    let mut by_trial: BTreeMap<i64, Vec<&CheckpointFacts>> = BTreeMap::new();
    for c in checkpoints {
        by_trial.entry(c.trial_id).or_default().push(c);
    }
    for list in by_trial.values() {
        let mut latest = list.clone();
        latest.sort_by(|a, b| b.step.cmp(&a.step).then(b.created_at.cmp(&a.created_at)).then(a.uuid.cmp(&b.uuid)));
        keep.extend(latest.iter().take(policy.save_trial_latest as usize).map(|c| c.uuid.as_str()));
        let mut best: Vec<&CheckpointFacts> = list.iter().copied().filter(|c| c.score.is_some_and(f64::is_finite)).collect();
        best.sort_by(better);
        keep.extend(best.iter().take(policy.save_trial_best as usize).map(|c| c.uuid.as_str()));
    }
    let mut best: Vec<&CheckpointFacts> = checkpoints.iter().filter(|c| c.score.is_some_and(f64::is_finite)).collect();
    best.sort_by(better);
    keep.extend(best.iter().take(policy.save_experiment_best as usize).map(|c| c.uuid.as_str()));
    checkpoints.iter().filter(|c| !keep.contains(c.uuid.as_str())).map(|c| c.uuid.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(uuid: &str, trial_id: i64, step: i64, score: Option<f64>) -> CheckpointFacts {
        CheckpointFacts { uuid: uuid.into(), trial_id, step, created_at: step, score, pinned: false }
    }

    /// Trial 1: a1 (step 1, 0.5), a2 (step 2, 0.2), a3 (step 3, 0.9). Trial 2: b1 (0.1), b2 (no
    /// score). Smaller is better.
    fn sample() -> Vec<CheckpointFacts> {
        vec![
            ck("a1", 1, 1, Some(0.5)),
            ck("a2", 1, 2, Some(0.2)),
            ck("a3", 1, 3, Some(0.9)),
            ck("b1", 2, 1, Some(0.1)),
            ck("b2", 2, 2, None),
        ]
    }

    fn kept(policy: (u32, u32, u32), smaller: bool, pins: &[&str]) -> Vec<String> {
        let mut cks = sample();
        for c in &mut cks {
            c.pinned = pins.contains(&c.uuid.as_str());
        }
        let gone =
            to_delete(&cks, GcPolicy { save_experiment_best: policy.0, save_trial_best: policy.1, save_trial_latest: policy.2 }, smaller);
        cks.into_iter().map(|c| c.uuid).filter(|u| !gone.contains(u)).collect()
    }

    #[test]
    fn every_policy_combination_keeps_exactly_what_it_names() {
        // (experiment best, trial best, trial latest) -> kept, smaller is better.
        type Case<'a> = ((u32, u32, u32), &'a [&'a str]);
        let cases: [Case; 10] = [
            ((0, 0, 0), &[]),
            ((0, 0, 1), &["a3", "b2"]),
            ((0, 0, 2), &["a2", "a3", "b1", "b2"]),
            ((0, 1, 0), &["a2", "b1"]),
            ((0, 2, 0), &["a1", "a2", "b1"]),
            ((1, 0, 0), &["b1"]),
            ((2, 0, 0), &["a2", "b1"]),
            ((1, 1, 1), &["a2", "a3", "b1", "b2"]),
            ((0, 1, 1), &["a2", "a3", "b1", "b2"]),
            ((3, 0, 0), &["a1", "a2", "b1"]),
        ];
        for (policy, expected) in cases {
            assert_eq!(kept(policy, true, &[]), expected, "policy {policy:?}");
        }
        // Larger is better flips the bests, not the latests.
        assert_eq!(kept((1, 0, 0), false, &[]), vec!["a3"]);
        assert_eq!(kept((0, 1, 0), false, &[]), vec!["a3", "b1"]);
        assert_eq!(kept((0, 0, 1), false, &[]), vec!["a3", "b2"]);
    }

    #[test]
    fn pinned_checkpoints_survive_every_policy() {
        for e in 0..3 {
            for b in 0..3 {
                for l in 0..3 {
                    let k = kept((e, b, l), true, &["a1", "b2"]);
                    assert!(k.contains(&"a1".to_string()) && k.contains(&"b2".to_string()), "{e} {b} {l}: {k:?}");
                }
            }
        }
    }

    #[test]
    fn the_union_rule_holds_for_every_combination() {
        // Brute force: a checkpoint is kept iff pinned, or among its trial's latest N, its
        // trial's best N, or the experiment's best N.
        let cks = sample();
        for e in 0..4u32 {
            for b in 0..4u32 {
                for l in 0..4u32 {
                    let gone = to_delete(&cks, GcPolicy { save_experiment_best: e, save_trial_best: b, save_trial_latest: l }, true);
                    for c in &cks {
                        let same_trial: Vec<&CheckpointFacts> = cks.iter().filter(|o| o.trial_id == c.trial_id).collect();
                        let newer = same_trial.iter().filter(|o| o.step > c.step).count() as u32;
                        let rank = |pool: &[&CheckpointFacts]| {
                            c.score.map(|s| pool.iter().filter(|o| o.score.is_some_and(|x| x < s)).count() as u32)
                        };
                        let all: Vec<&CheckpointFacts> = cks.iter().collect();
                        let keep = newer < l || rank(&same_trial).is_some_and(|r| r < b) || rank(&all).is_some_and(|r| r < e);
                        assert_eq!(!gone.contains(&c.uuid), keep, "{} under ({e}, {b}, {l})", c.uuid);
                    }
                }
            }
        }
    }
}
