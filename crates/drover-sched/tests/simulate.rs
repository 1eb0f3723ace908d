//! The seeded simulator (`drover_sched::sim`) under proptest: every invariant it checks holds for
//! any seed, and restoring the scheduler from its snapshot at every step changes no decision.
//! A long run: `cargo run -p drover-sched --release --example simulate -- --steps N --seed S`.

use drover_sched::sim::{SimConfig, simulate};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn simulated_clusters_keep_every_invariant(seed in any::<u64>()) {
        let report = simulate(&SimConfig { seed, steps: 300, restore_every_step: false }).map_err(|v| TestCaseError::fail(v.to_string()))?;
        prop_assert!(report.started > 0);
    }
}

proptest! {
    // Each case snapshots and restores the whole state at every step of two runs: slower.
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn restoring_at_every_step_changes_no_decision(seed in any::<u64>()) {
        let plain = simulate(&SimConfig { seed, steps: 100, restore_every_step: false }).map_err(|v| TestCaseError::fail(v.to_string()))?;
        let restored = simulate(&SimConfig { seed, steps: 100, restore_every_step: true }).map_err(|v| TestCaseError::fail(v.to_string()))?;
        prop_assert_eq!(plain, restored);
    }
}

/// The simulation is busy enough to exercise queueing, preemption, kills and lost agents.
#[test]
fn a_fixed_seed_exercises_every_path() {
    let report = simulate(&SimConfig { seed: 7, steps: 1_000, restore_every_step: false }).unwrap();
    assert!(report.max_pending > 50, "{report:?}");
    assert_eq!(report.max_passed_over, 3, "the starvation bound is reached, never passed: {report:?}");
    assert!(report.preempted > 0 && report.killed > 0 && report.lost > 0 && report.refused > 0 && report.drain_steps > 0, "{report:?}");
    assert!(report.killed < report.preempted, "some preemptions finish before their deadline: {report:?}");
    let again = simulate(&SimConfig { seed: 7, steps: 1_000, restore_every_step: false }).unwrap();
    assert_eq!(report, again, "same seed, same run");
}
